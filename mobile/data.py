"""Images and labels for calibration and verification, from the pipeline or IDX files."""

import os
from typing import Optional, Tuple

import numpy as np

from tfprod import errors
from tfprod.contract import features, idx
from tfprod.mobile.options import CALIBRATION_SAMPLES_RANGE


class DataError(errors.ConfigError):
    """The calibration or test data cannot be read; the message names the path."""


def read_examples_split(examples_uri: str, split: str, height: int, width: int,
                        limit: Optional[int] = None, channels: int = 1,
                        serving_model=None) -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 0..255, labels int64 [N]) from an Examples artifact.

    Reads ExampleGen's gzipped tf.Example files in ``<examples_uri>/Split-<split>/``
    (``image``: height * width * channels int64 pixels, channels last). The images
    come in the image task's serving_raw layout: [N, height, width] for grayscale,
    [N, height, width, channels] otherwise.

    Photo folders' examples hold the encoded files (``image_bytes``) instead: they are
    decoded, resized and cropped by the SavedModel's own Transform graph
    (``transform_features``, so exactly as the served model sees them), and its pixel
    scaling is undone, so the result is the same 0..255 pixels at the model's size.
    That needs ``serving_model``.
    """
    import tensorflow as tf

    pattern = os.path.join(examples_uri, f"Split-{split}", "*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise DataError(f"no examples in {pattern}: is this an ExampleGen output with a "
                        f"'{split}' split?")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        dataset = dataset.take(limit)
    first = next(iter(dataset.take(1)), None)
    if first is not None and features.IMAGE_BYTES_KEY in tf.train.Example.FromString(
            first.numpy()).features.feature:
        if serving_model is None:
            raise DataError(f"{pattern} holds encoded image files ('{features.IMAGE_BYTES_KEY}'): "
                            "reading them needs the SavedModel whose Transform graph decodes them")
        return _decoded_through_transform(dataset, serving_model, height, width, channels)
    spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([height * width * channels], tf.int64),
            features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    images, labels = [], []
    for batch in dataset.batch(1024).map(lambda records: tf.io.parse_example(records, spec)):
        images.append(batch[features.IMAGE_KEY].numpy())
        labels.append(batch[features.LABEL_KEY].numpy())
    shape = (-1, height, width) if channels == 1 else (-1, height, width, channels)
    return np.concatenate(images).reshape(shape).astype(np.float32), np.concatenate(labels)


def _decoded_through_transform(dataset, serving_model, height: int, width: int,
                               channels: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels 0..255 and labels of encoded-image examples, through the model's Transform.

    The pixels are rounded to whole values, as an app's 8-bit bitmap would give them.
    """
    from tfprod.mobile import convert

    transform = serving_model.signatures[features.TRANSFORM_SIGNATURE]
    scaling = convert.probe_pixel_scaling(serving_model, height, width, channels)
    images, labels = [], []
    for batch in dataset.batch(256):
        transformed = transform(examples=batch)
        pixels = (transformed[features.IMAGE_TRANSFORMED_KEY].numpy() - scaling.offset) / scaling.scale
        images.append(np.clip(np.rint(pixels), 0, 255).reshape(-1, height, width, channels))
        labels.append(transformed[features.LABEL_KEY].numpy().reshape(-1))
    result = np.concatenate(images).astype(np.float32)
    if channels == 1:
        result = result.reshape(-1, height, width)
    return result, np.concatenate(labels).astype(np.int64)


def read_idx_split(data_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, height, width], labels) of an IDX directory's train or test files."""
    names = {"train": (idx.TRAIN_IMAGES, idx.TRAIN_LABELS),
             "test": (idx.TEST_IMAGES, idx.TEST_LABELS)}[split]
    paths = [os.path.join(data_dir, name) for name in names]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataError(f"IDX file(s) not found: {', '.join(missing)} (pass --data-dir with "
                        "the four MNIST-layout files)")
    images, labels = idx.read_image_label_pair(*paths)
    return images.astype(np.float32), labels.astype(np.int64)


def calibration_sample(images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """count images drawn at random (without replacement) for int8 calibration."""
    low, high = CALIBRATION_SAMPLES_RANGE
    if not low <= count <= high:
        raise DataError(f"calibration samples: expected {low}..{high}, got {count}")
    if len(images) < count:
        raise DataError(f"calibration needs {count} training images, only {len(images)} given")
    chosen = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    return images[np.sort(chosen)]
