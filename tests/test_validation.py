"""The curated schema and the anomalies gate, on statistics computed by real TFDV."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from tfprod.contract import features

from tfprod.pipeline import validation
from tests.conftest import CURATED_SCHEMA


def _stats_for(tmp_path, images, labels):
    path = str(tmp_path / "examples.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for image, label in zip(images, labels):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                features.IMAGE_KEY: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=np.ravel(image).astype(np.int64))),
                features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            })).SerializeToString())
    return tfdv.generate_statistics_from_tfrecord(path)


def _anomalies(tmp_path, images, labels):
    schema = tfdv.load_schema_text(str(CURATED_SCHEMA))
    return tfdv.validate_statistics(_stats_for(tmp_path, images, labels), schema)


def _write_split(anomalies_uri, split, anomalies):
    split_dir = os.path.join(anomalies_uri, f"Split-{split}")
    os.makedirs(split_dir, exist_ok=True)
    with open(os.path.join(split_dir, validation.SCHEMA_DIFF_FILE), "wb") as handle:
        handle.write(anomalies.SerializeToString())


def test_clean_mnist_has_no_anomalies(tmp_path, mnist_sample):
    images, labels = mnist_sample[0][:200], mnist_sample[1][:200]
    anomalies = _anomalies(tmp_path, images, labels)
    assert validation.describe_anomalies({"train": anomalies}) == []


def test_labels_out_of_range_are_flagged(tmp_path, mnist_sample):
    labels = mnist_sample[1][:200].astype(np.int64)
    labels[:5] = 12
    lines = validation.describe_anomalies({"test": _anomalies(tmp_path, mnist_sample[0][:200], labels)})
    assert len(lines) == 1
    assert "feature 'label'" in lines[0] and "split 'test'" in lines[0]
    assert "12" in lines[0] or "range" in lines[0].lower()


def test_images_of_another_size_are_flagged(tmp_path):
    images = np.random.RandomState(0).randint(0, 256, size=(50, 32, 32))
    lines = validation.describe_anomalies(
        {"train": _anomalies(tmp_path, images, np.arange(50) % 10)})
    assert any("feature 'image'" in line for line in lines)


def test_gate_raises_naming_features_and_passes_clean_data(tmp_path, mnist_sample):
    images, labels = mnist_sample[0][:100], mnist_sample[1][:100].astype(np.int64)
    clean = _anomalies(tmp_path, images, labels)
    bad_labels = labels.copy()
    bad_labels[0] = -1
    bad = _anomalies(tmp_path, images, bad_labels)

    uri = str(tmp_path / "anomalies")
    _write_split(uri, "train", clean)
    _write_split(uri, "test", bad)
    validation.check_anomalies(uri, ["train"])  # no anomalies: no error
    with pytest.raises(validation.DataValidationError) as error:
        validation.check_anomalies(uri, ["train", "test"])
    message = str(error.value)
    assert "split 'test', feature 'label'" in message
    assert "split 'train'" not in message
    assert "run stops before training" in message
