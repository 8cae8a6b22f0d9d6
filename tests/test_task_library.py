"""The TFLite Task Library's ImageClassifier runs tfprod's .tflite files, as an app would.

tfprod's export (`mobile.export.export_tflite`, what `tfprod tflite` and the pipeline's
TFLiteConverter run) writes the files; tests/task_library_classify.py then classifies real
images with tflite-support 0.4.4's `ImageClassifier` in its own virtualenv (.venv-tasklib,
`make task-library-venv`: tflite-support cannot be imported beside TensorFlow). Its top-1
must be LiteRT's, with the class names of the model's labels file.

The SavedModels are small but real: a real tf.Transform run (Beam) of the image task's
preprocessing_fn, a small Keras model trained for three epochs, the image task's own serving
signatures (grayscale) or the shared signature skeleton with an RGB [N, H, W, 3] input and
the class names saved as assets/labels.txt, as the photo task saves them.
"""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from tfprod.contract import features, layout
from tfprod.mobile import export, metadata
from tfprod.mobile.verify import TfliteClassifier
from tests.conftest import REPO_ROOT, SHARED_DATA

TASKLIB_PYTHON = REPO_ROOT / ".venv-tasklib" / "bin" / "python"
CLASSIFY_SCRIPT = REPO_ROOT / "tests" / "task_library_classify.py"
PHOTO_CLASSES = ("Faces_easy", "Leopards", "Motorbikes", "airplanes", "watch")


def task_library_python() -> pathlib.Path:
    """The Task Library venv's Python; fails (not skips) with the command that builds it."""
    if not TASKLIB_PYTHON.is_file():
        pytest.fail(f"{TASKLIB_PYTHON} is missing: run `make task-library-venv` (make test "
                    "builds it; it needs Debian's libusb-1.0-0)")
    return TASKLIB_PYTHON


def run_task_library(images: np.ndarray, model_paths, directory: pathlib.Path):
    """{model path: the script's result} for uint8 RGB images [N, H, W, 3]."""
    images_path = directory / "images.npy"
    np.save(images_path, images)
    result = subprocess.run(
        [str(task_library_python()), str(CLASSIFY_SCRIPT), str(images_path),
         *map(str, model_paths)], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {line["model"]: line for line in lines}


def build_saved_model(directory: pathlib.Path, images: np.ndarray, labels: np.ndarray,
                      num_classes: int, class_names=None) -> str:
    """A trained image classifier exported with the serving signatures tfprod converts.

    images: uint8 [N, H, W] (grayscale: the image task's IDX signatures) or [N, H, W, 3]
    (RGB: serving_raw takes [N, H, W, 3]; class_names go to assets/labels.txt).
    """
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from tfprod.pipeline.tasks import signatures as skeleton
    from tfprod.pipeline.tasks.image import preprocessing

    height, width = images.shape[1:3]
    size = int(np.prod(images.shape[1:]))
    flat = images.reshape(len(images), size).astype(np.int64)
    raw_spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([size], tf.int64),
                features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    raw_metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(raw_spec))
    rows = [{features.IMAGE_KEY: row, features.LABEL_KEY: int(label)}
            for row, label in zip(flat, labels)]
    transform_dir = str(directory / "transform")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(directory / "tft_tmp")):
        transform_fn = (pipeline | beam.Create(rows), raw_metadata) | \
            tft_beam.AnalyzeDataset(preprocessing.preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # The raw schema beside the transform graph, as TFX's Transform writes it.
    metadata_io.write_metadata(raw_metadata, os.path.join(
        transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    tf_transform_output = tft.TFTransformOutput(transform_dir)
    transformed = tf_transform_output.transform_features_layer()(
        {features.IMAGE_KEY: tf.constant(flat), features.LABEL_KEY: tf.constant(labels, tf.int64)})
    x = transformed[features.IMAGE_TRANSFORMED_KEY].numpy()
    y = transformed[features.LABEL_KEY].numpy()

    tf.keras.utils.set_random_seed(0)
    channels = 1 if images.ndim == 3 else images.shape[-1]
    model = tf.keras.Sequential([
        tf.keras.layers.Input([size], name=features.IMAGE_TRANSFORMED_KEY),
        tf.keras.layers.Reshape([height, width, channels]),
        tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(num_classes, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)

    if images.ndim == 3:
        from tfprod.pipeline.tasks.image import signatures as image_signatures

        serving = image_signatures.make_serving_signatures(model, tf_transform_output,
                                                           height, width)
    else:
        serving = skeleton.make_signatures(
            model, tf_transform_output,
            outputs=lambda model, xf: {features.PROBABILITIES_OUTPUT:
                                       model(xf[features.IMAGE_TRANSFORMED_KEY])},
            raw_input=tf.TensorSpec([None, height, width, channels], tf.float32,
                                    name=features.IMAGE_KEY),
            raw_to_features=lambda image: {features.IMAGE_KEY: tf.cast(
                tf.round(tf.reshape(image, [-1, size])), tf.int64)})
    if class_names:
        labels_path = directory / layout.LABELS_FILE_NAME
        labels_path.write_text("".join(f"{name}\n" for name in class_names))
        model.class_labels = tf.saved_model.Asset(str(labels_path))
    saved_model_dir = str(directory / "saved_model")
    tf.saved_model.save(model, saved_model_dir, signatures=serving)
    return saved_model_dir


def assert_task_library_agrees(result, model_path: str, images: np.ndarray, labels):
    """The Task Library's top-1 is LiteRT's (one of LiteRT's best, should two tie), with
    the same score, and its class names are the model's labels."""
    assert "error" not in result, result
    assert result["labels"] == list(labels)
    model_bytes = pathlib.Path(model_path).read_bytes()
    assert metadata.read_associated_files(model_bytes)["labels.txt"].decode().splitlines() \
        == list(labels)
    classifier = TfliteClassifier(model_bytes, "litert")
    assert classifier.input["shape"].tolist() == [1, *images.shape[1:]]
    probabilities = classifier.predict(images.astype(np.float32))
    assert len(result["top1"]) == len(images)
    for row, expected in zip(result["top1"], probabilities):
        best = set(np.flatnonzero(expected == expected.max()).tolist())
        assert row["index"] in best, (model_path, row, expected)
        assert row["label"] == labels[row["index"]]
        assert row["score"] == pytest.approx(float(expected.max()), abs=1e-4)


@pytest.mark.e2e
def test_task_library_classifies_mnist_like_litert(tmp_path, mnist_sample):
    """The 28x28 grayscale CNN: float32, int8 (float IO, the pipeline's default) and int8
    with uint8 IO all load in ImageClassifier; int8 IO, which it does not take, is refused
    with its own message."""
    train_images, train_labels, test_images, test_labels = mnist_sample
    saved_model_dir = build_saved_model(tmp_path, train_images[:1000], train_labels[:1000], 10)
    calibration = train_images[:100].astype(np.float32)
    test = test_images[:40].astype(np.float32)
    files = {}
    for int8_io, modes, channels in (("float32", ["float32", "int8"], None),
                                     ("uint8", ["int8"], None), ("int8", ["int8"], None),
                                     ("gray", ["float32"], 1)):
        result = export.export_tflite(
            saved_model_dir, str(tmp_path / int8_io), "mnist_tiny", "3", calibration, test,
            test_labels[:40], export.ExportOptions(
                modes=modes, int8_io="float32" if channels else int8_io, runtimes=["litert"],
                latency_examples=5, input_channels=channels))
        files.update({f"{mode}/{int8_io}": path for mode, path in result.model_files.items()})
    # The app's view: each gray digit as an RGB bitmap (three equal channels).
    rgb = np.repeat(test_images[:40, :, :, np.newaxis], 3, axis=-1).astype(np.uint8)
    results = run_task_library(rgb, files.values(), tmp_path)
    digits = [str(digit) for digit in range(10)]
    for name in ("float32/float32", "int8/float32", "int8/uint8"):
        assert_task_library_agrees(results[files[name]], files[name], rgb, digits)
    assert "kTfLiteUint8/kTfLiteFloat32, got INT8" in results[files["int8/int8"]]["error"]
    # input_channels=1 keeps a [1, 28, 28, 1] GRAYSCALE input (for apps that call the
    # interpreter); the Task Library does not take it, which is why RGB is the default.
    gray = TfliteClassifier(pathlib.Path(files["float32/gray"]).read_bytes(), "litert")
    assert gray.input["shape"].tolist() == [1, 28, 28, 1]
    assert "Only RGB color space" in results[files["float32/gray"]]["error"]
    np.testing.assert_allclose(
        gray.predict(test[:10]),
        TfliteClassifier(pathlib.Path(files["float32/float32"]).read_bytes(),
                         "litert").predict(test[:10]), atol=1e-5)
    # The digits are classified, not just agreed on: the tiny model is right on most.
    top1 = [row["index"] for row in results[files["float32/float32"]]["top1"]]
    assert np.mean(np.array(top1) == test_labels[:40]) >= 0.5


def _photos(split: str, per_class: int, size: int = 32):
    from PIL import Image

    images, labels = [], []
    for class_id, name in enumerate(PHOTO_CLASSES):
        folder = SHARED_DATA / "caltech101_5" / split / name
        for path in sorted(folder.iterdir())[:per_class]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((size, size))))
            labels.append(class_id)
    return np.stack(images).astype(np.uint8), np.array(labels)


@pytest.mark.e2e
def test_task_library_classifies_rgb_photos_like_litert(tmp_path):
    """An RGB model ([1, 32, 32, 3], colour space RGB) whose class names come from the
    SavedModel's assets/labels.txt, on real Caltech-101 photos (../shared/data)."""
    train_images, train_labels = _photos("train", 16)
    test_images, test_labels = _photos("test", 4)
    saved_model_dir = build_saved_model(tmp_path, train_images, train_labels,
                                        len(PHOTO_CLASSES), PHOTO_CLASSES)
    result = export.export_tflite(
        saved_model_dir, str(tmp_path / "tflite"), "photos_tiny", "1",
        train_images[:100].astype(np.float32), test_images.astype(np.float32),
        test_labels,
        export.ExportOptions(modes=["float32", "int8"], int8_io="uint8", runtimes=["litert"],
                             latency_examples=5))
    assert result.report["labels"] == list(PHOTO_CLASSES)
    results = run_task_library(test_images, result.model_files.values(), tmp_path)
    for path in result.model_files.values():
        assert_task_library_agrees(results[path], path, test_images, PHOTO_CLASSES)
