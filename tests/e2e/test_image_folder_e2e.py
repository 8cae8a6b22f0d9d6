"""Photo folders end to end: the shipped Caltech-101 sample (data/caltech101_sample, 47 real
JPEGs of 4 classes, two of them greyscale) through `tfprod run` with a tiny ResNet, 1 epoch,
a low floor; then `tfprod serve` on the pushed model, answering a base64 JPEG over REST and
the JPEG's bytes as a DT_STRING tensor over gRPC, with class names.

A corrupt file in a class folder stops the run before TFX starts (exit 3, naming it); the
same data with --set data.bad_images=skip runs, and the run summary lists the file. The
floor is low on purpose: 1 epoch on 31 photos checks the plumbing, the benchmark
(bench/photo_bench.py) the quality.
"""

import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
SAMPLE_DIR = REPO_ROOT / "data" / "caltech101_sample"
CLASSES = ["Faces_easy", "Leopards", "Motorbikes", "airplanes"]
SIZE = 40
MODEL_NAME = "photos"
# Small and fast: the plumbing, not the quality.
SMALL_RUN = ["--set", f"data.image_height={SIZE}", "--set", f"data.image_width={SIZE}",
             "--set", "trainer.epochs=1", "--set", "trainer.batch_size=16",
             "--set", "model.resnet.stem_filters=8", "--set", "model.resnet.filters=[8,16]",
             "--set", "eval.gate=absolute", "--set", "eval.accuracy_threshold=0.0",
             "--set", f"export.model_name={MODEL_NAME}"]


def tfprod_run(data_dir: pathlib.Path, output_dir: pathlib.Path, *extra: str):
    return subprocess.run(
        [TFPROD, "run", "--config", "configs/caltech101_5_resnet.yaml", "--data-dir",
         str(data_dir), "--output-dir", str(output_dir), *SMALL_RUN, *extra],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """(run summary, corrupt file) of a run on the sample plus one corrupt JPEG, skipped."""
    root = tmp_path_factory.mktemp("photos")
    data_dir = root / "data"
    shutil.copytree(SAMPLE_DIR, data_dir)
    corrupt = data_dir / "train" / "Leopards" / "image_9999.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")

    stopped = tfprod_run(data_dir, root / "stopped")
    assert stopped.returncode == 3, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert str(corrupt) in stopped.stderr and "data.bad_images=skip" in stopped.stderr
    assert not (root / "stopped" / "pipeline").exists()  # stopped before TFX started

    # The TFLite step too, in the two modes that need no calibration (31 photos are fewer
    # than int8 calibration's minimum of 100).
    result = tfprod_run(data_dir, root / "run", "--set", "data.bad_images=skip",
                        "--set", "mobile.enabled=true", "--set", "mobile.modes=[float32, dynamic]",
                        "--set", "mobile.latency_examples=5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{corrupt}:" in result.stdout  # the summary printed at the end lists it
    return json.loads((root / "run" / "run_summary.json").read_text()), corrupt


def test_run_skips_the_corrupt_file_and_pushes_a_photo_model(photo_run):
    summary, corrupt = photo_run
    assert summary["status"] == "succeeded" and summary["blessed"] is True
    assert summary["skipped_inputs"]["count"] == 1
    assert summary["skipped_inputs"]["files"][0]["file"] == str(corrupt)
    assert summary["metrics"]["example_count"] == 16
    assert 0.0 <= summary["metrics"]["accuracy"] <= 1.0
    assert summary["training"]["train_examples"] + summary["training"]["eval_examples"] == 31
    pushed = pathlib.Path(summary["pushed_model_dir"])
    assert (pushed / "assets" / "labels.txt").read_text().split() == CLASSES
    assert (pushed / "assets.extra" / "tf_serving_warmup_requests").is_file()
    # The report shows the sample photos in colour, with class names.
    report = pathlib.Path(summary["report_path"]).read_text(encoding="utf-8")
    assert "Sample images" in report and all(name in report for name in CLASSES)


def test_the_tflite_step_converts_the_photo_model(photo_run):
    """The TFLiteConverter reads the photo test split through the model's own Transform
    graph (decode, resize, crop) and verifies the files against the SavedModel."""
    summary, _ = photo_run
    assert set(summary["tflite_models"]) == {"float32", "dynamic"}
    report = json.loads(pathlib.Path(summary["tflite_report"]["json"]).read_text())
    assert report["test_examples"] == 16
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=summary["tflite_models"]["float32"])
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, SIZE, SIZE, 3]
    for model in report["models"]:
        for result in model["runtimes"].values():
            # Same pixels into both: the float32 file answers like the SavedModel.
            if model["mode"] == "float32":
                assert result["top1_agreement"] == 1.0, model
            assert 0.0 <= result["accuracy"] <= 1.0


def test_signatures_agree_on_bytes_examples_and_pixels(photo_run):
    summary, _ = photo_run
    model = tf.saved_model.load(summary["pushed_model_dir"])
    photos = [sorted((SAMPLE_DIR / "test" / name).glob("*.jpg"))[0] for name in CLASSES]
    encoded = [path.read_bytes() for path in photos]
    raw = model.signatures["serving_raw"](image_bytes=tf.constant(encoded))
    probabilities = raw["probabilities"].numpy()
    assert probabilities.shape == (4, 4) and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert [name.decode() for name in raw["class_name"].numpy()] == [
        CLASSES[i] for i in raw["class_id"].numpy()]
    examples = []
    for data in encoded:
        example = tf.train.Example()
        example.features.feature["image_bytes"].bytes_list.value.append(data)
        examples.append(example.SerializeToString())
    default = model.signatures["serving_default"](examples=tf.constant(examples))
    np.testing.assert_allclose(default["probabilities"].numpy(), probabilities, atol=1e-6)
    # Pixels already at the model's size answer as the PNG of the same pixels does.
    pixels = np.random.default_rng(0).integers(0, 256, [2, SIZE, SIZE, 3]).astype(np.uint8)
    from_pixels = model.signatures["serving_pixels"](pixels=tf.constant(pixels, tf.float32))
    from_png = model.signatures["serving_raw"](image_bytes=tf.constant(
        [tf.io.encode_png(image).numpy() for image in pixels]))
    np.testing.assert_allclose(from_pixels["probabilities"].numpy(),
                               from_png["probabilities"].numpy(), atol=1e-6)


def test_tfprod_serve_answers_b64_jpeg_over_rest_and_bytes_over_grpc(photo_run, tmp_path):
    """`tfprod serve` on 127.0.0.1: {"instances": [{"b64": JPEG}]} over REST, and the JPEG's
    bytes as a DT_STRING tensor over gRPC; both answer what the SavedModel answers."""
    from tensorflow_serving.apis import predict_pb2

    from tests.test_serving_e2e import ServerProcess

    summary, _ = photo_run
    pushed = pathlib.Path(summary["pushed_model_dir"])
    photos = [sorted((SAMPLE_DIR / "test" / name).glob("*.jpg"))[-1] for name in CLASSES]
    encoded = [path.read_bytes() for path in photos]
    expected = tf.saved_model.load(str(pushed)).signatures["serving_raw"](
        image_bytes=tf.constant(encoded))
    server = ServerProcess(["--model_name", MODEL_NAME, "--model_base_path", str(pushed.parent)],
                           tmp_path / "server.log")
    try:
        status, body = server.http("POST", f"/v1/models/{MODEL_NAME}:predict", {
            "signature_name": "serving_raw",
            "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded]},
            timeout=120)
        assert status == 200, body
        rows = body["predictions"]
        np.testing.assert_allclose([row["probabilities"] for row in rows],
                                   expected["probabilities"].numpy(), atol=1e-5)
        assert [row["class_name"] for row in rows] == [
            name.decode() for name in expected["class_name"].numpy()]
        assert all(row["class_name"] in CLASSES for row in rows)

        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = "serving_raw"
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto(np.array(encoded, dtype=object)))
        response = server.prediction.Predict(request, timeout=120)
        assert response.outputs["class_name"].dtype == tf.string.as_datatype_enum
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                                   expected["probabilities"].numpy(), atol=1e-5)
        assert [name.decode() for name in tf.make_ndarray(response.outputs["class_name"])] == [
            name.decode() for name in expected["class_name"].numpy()]

        status, body = server.http("POST", f"/v1/models/{MODEL_NAME}:predict", {
            "signature_name": "serving_raw", "instances": [{"b64": "bm90IGFuIGltYWdl"}]})
        assert status == 400, body  # "not an image": a client error, the server stays up
        status, _ = server.http("GET", f"/v1/models/{MODEL_NAME}")
        assert status == 200
    finally:
        assert server.stop() == 0, server.log()[-3000:]
