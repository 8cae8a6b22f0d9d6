"""Shared fixtures. Keras 2 must be chosen before TensorFlow is first imported."""

import os

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "mnist_sample"
MNIST_CONFIG = REPO_ROOT / "configs" / "mnist_cnn.yaml"
CURATED_SCHEMA = REPO_ROOT / "configs" / "schemas" / "image_28x28_10class.pbtxt"
# The shared datasets (../shared/data beside the checkout, as in CI; see its README).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def load_sample():
    """The shipped MNIST sample as (train_images, train_labels, test_images, test_labels)."""
    from tfprod.contract import idx

    train = idx.read_image_label_pair(str(SAMPLE_DIR / idx.TRAIN_IMAGES),
                                      str(SAMPLE_DIR / idx.TRAIN_LABELS))
    test = idx.read_image_label_pair(str(SAMPLE_DIR / idx.TEST_IMAGES),
                                     str(SAMPLE_DIR / idx.TEST_LABELS))
    return train[0], train[1], test[0], test[1]


def write_idx_dataset(directory, train_images, train_labels, test_images, test_labels):
    """Writes the four IDX files of an image dataset into directory; returns its path."""
    from tfprod.contract import idx

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    idx.write_idx(str(directory / idx.TRAIN_IMAGES), np.asarray(train_images, np.uint8))
    idx.write_idx(str(directory / idx.TRAIN_LABELS), np.asarray(train_labels, np.uint8))
    idx.write_idx(str(directory / idx.TEST_IMAGES), np.asarray(test_images, np.uint8))
    idx.write_idx(str(directory / idx.TEST_LABELS), np.asarray(test_labels, np.uint8))
    return directory


@pytest.fixture(scope="session")
def mnist_sample():
    return load_sample()


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory, mnist_sample):
    """500 train / 100 test real MNIST images, for fast data-path tests."""
    train_images, train_labels, test_images, test_labels = mnist_sample
    return write_idx_dataset(tmp_path_factory.mktemp("tiny_mnist"), train_images[:500],
                             train_labels[:500], test_images[:100], test_labels[:100])
