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
# `make test` runs the suite on two pytest-xdist workers, whole files at a time (a file's
# module fixtures, e.g. its pipeline run, are built once). These files share the session
# fixture mnist_mobile_run's pipeline run, so they go to the same worker as one unit.
SHARED_RUN_FILES = ("tests/report/", "tests/test_mobile.py", "tests/test_compression.py")


def pytest_xdist_make_scheduler(config, log):
    """Schedules by file (tests/e2e first, in collection order, so the longest files start
    early), with the SHARED_RUN_FILES as one unit."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.startswith(SHARED_RUN_FILES):
                return "mnist_mobile_run"
            return path

    return FileScheduling(config, log)


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


# One small real MNIST run with every TFLite mode, shared by the session: the report's tests
# (tests/report) and the TFLite tests (tests/test_mobile.py) read the same finished run rather
# than each training their own (a pipeline run is about 1.5 minutes of CI on 2 cores).
MOBILE_RUN_TRAIN_IMAGES = 2000
MOBILE_RUN_TEST_IMAGES = 300
MOBILE_RUN_TIMEOUT_SECONDS = 1200


# mnist_mobile_run's compression settings (tests/test_compression.py reads them): every
# technique, 10 fine-tune steps each.
MOBILE_RUN_COMPRESSION = {"compression": "[qat, prune, cluster, prune_qat]",
                          "finetune_max_steps": 10, "finetune_epochs": 1,
                          "target_sparsity": 0.5, "pruning_frequency": 5, "num_clusters": 16}


@pytest.fixture(scope="session")
def mnist_mobile_run(tmp_path_factory, mnist_sample):
    """A `tfprod run` of the MNIST CNN (2,000 train / 300 test images, 2 epochs, batch 32,
    accuracy gate 0.5): blessed, pushed, converted in all four TFLite modes and verified on
    both runtimes, compressed with all four techniques (MOBILE_RUN_COMPRESSION), with its
    report.html. A dict: data_dir, output_dir, summary, returncode,
    stdout, stderr."""
    import json
    import subprocess
    import sys

    train_images, train_labels, test_images, test_labels = mnist_sample
    root = tmp_path_factory.mktemp("mnist_mobile_run")
    data_dir = write_idx_dataset(
        root / "data", train_images[:MOBILE_RUN_TRAIN_IMAGES],
        train_labels[:MOBILE_RUN_TRAIN_IMAGES], test_images[:MOBILE_RUN_TEST_IMAGES],
        test_labels[:MOBILE_RUN_TEST_IMAGES])
    output_dir = root / "out"
    tfprod_command = os.path.join(os.path.dirname(sys.executable), "tfprod")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [tfprod_command, "run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
         "--output-dir", str(output_dir), "--set", "trainer.epochs=2",
         "--set", "trainer.batch_size=32", "--set", "eval.accuracy_threshold=0.5",
         "--set", "mobile.latency_examples=20"] + [
            argument for key, value in MOBILE_RUN_COMPRESSION.items()
            for argument in ("--set", f"mobile.{key}={value}")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=MOBILE_RUN_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output_dir / "run_summary.json").read_text())
    assert summary["blessed"] is True, summary
    return {"data_dir": data_dir, "output_dir": output_dir, "summary": summary,
            "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
