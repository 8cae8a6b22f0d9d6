"""The model server as users run it: `tfprod serve` processes on 127.0.0.1 with real ports.

One session fixture runs the pipeline (`tfprod run`) on a small MNIST subset and takes its
pushed SavedModel; the server serves it beside a small TF1-style model with classify and
regress signatures (tests/serving_models.py). Clients are the stock tensorflow_serving.apis
gRPC stubs and plain HTTP.
"""

import base64
import http.client
import json
import os
import pathlib
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc, regression_pb2)

from tests.conftest import MNIST_CONFIG, REPO_ROOT, load_sample, write_idx_dataset
from tests.serving_models import build_examples_model, copy_version, example

pytestmark = pytest.mark.e2e

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
MAX_REQUEST_BYTES = 1_000_000


# ----- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pushed_model_dir(tmp_path_factory):
    """A model pushed by the pipeline itself, on 600 training images (small CNN, 1 epoch)."""
    train_images, train_labels, test_images, test_labels = load_sample()
    data_dir = write_idx_dataset(tmp_path_factory.mktemp("serving_data"), train_images[:600],
                                 train_labels[:600], test_images[:100], test_labels[:100])
    output_dir = tmp_path_factory.mktemp("serving_run")
    result = subprocess.run(
        [TFPROD, "run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir), "--output-dir", str(output_dir),
         "--set", "trainer.epochs=1", "--set", "trainer.batch_size=64", "--set", "eval.accuracy_threshold=0.05",
         "--set", "model.cnn.filters=[8,16]", "--set", "model.cnn.dense_units=32",
         # The servers are under test here, not the pipeline's InfraValidator (tests/e2e).
         "--set", "infra.enabled=false"],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output_dir / "run_summary.json").read_text())
    assert summary["blessed"] is True
    return pathlib.Path(summary["pushed_model_dir"])


@pytest.fixture(scope="session")
def in_process_model(pushed_model_dir):
    return tf.saved_model.load(str(pushed_model_dir))


@pytest.fixture(scope="session")
def examples_model_dir(tmp_path_factory):
    return build_examples_model(str(tmp_path_factory.mktemp("examples_model") / "model"))


class ServerProcess:
    """A `tfprod serve` subprocess; its stderr goes to a file, its ports come from its first stdout line."""

    def __init__(self, arguments, log_path: pathlib.Path, start_timeout: float = 180.0, open_files=None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        limit = None
        if open_files is not None:  # the server's soft and hard open-file limits (ulimit -n)
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        self.process = subprocess.Popen([TFPROD, "serve", "--port", "0", "--rest_api_port", "0", *arguments],
                                        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        preexec_fn=limit)
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=start_timeout):
            self.stop()
            raise AssertionError(f"server did not start in {start_timeout} s:\n{self.log()[-3000:]}")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        announced = json.loads(line)
        self.rest_port = announced["rest_port"]
        self.grpc_port = announced["grpc_port"]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def http(self, method: str, path: str, body=None, timeout: float = 30.0):
        """One HTTP request on a fresh connection; returns (status, parsed JSON or text)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            connection.request(method, path, body=body)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(payload)
        return response.status, payload.decode()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if hasattr(self, "channel"):
            self.channel.close()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory, pushed_model_dir, examples_model_dir):
    """tfprod serve with a models.config (two models), batching and Prometheus metrics."""
    root = tmp_path_factory.mktemp("serving_root")
    copy_version(str(pushed_model_dir), str(root / "models" / "mnist_cnn"), 1)
    copy_version(examples_model_dir, str(root / "models" / "examples"), 1)
    (root / "models.config").write_text("""
model_config_list {
  config { name: "mnist_cnn" base_path: "models/mnist_cnn" model_platform: "tensorflow" }
  config {
    name: "examples" base_path: "models/examples" model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
  }
}
""")
    (root / "batching.config").write_text("""
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 8
allowed_batch_sizes: 32
""")
    (root / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    process = ServerProcess([
        "--model_config_file", str(root / "models.config"), "--enable_batching",
        "--batching_parameters_file", str(root / "batching.config"),
        "--monitoring_config_file", str(root / "monitoring.config"),
        "--file_system_poll_wait_seconds", "0.3", "--max_request_bytes", str(MAX_REQUEST_BYTES),
        "--tensorflow_intra_op_parallelism", "1", "--tensorflow_inter_op_parallelism", "2"],
        root / "server.log")
    process.root = root
    yield process
    assert process.stop() == 0, process.log()[-3000:]


def _images(count: int, seed: int = 0) -> np.ndarray:
    return load_sample()[2][seed:seed + count].astype(np.float32)


def _serialized_examples(images: np.ndarray):
    serialized = []
    for image in images:
        value = tf.train.Example()
        value.features.feature["image"].int64_list.value.extend(image.astype(np.int64).ravel().tolist())
        serialized.append(value.SerializeToString())
    return serialized


def _predict_request(model: str, signature: str, inputs, version=None, label=None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


# ----- the exporter's warm-up file ------------------------------------------------------------
def test_pipeline_writes_warmup_requests_and_the_server_replays_them(pushed_model_dir, server):
    path = pushed_model_dir / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(record)
            for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    signatures = {log.predict_log.request.model_spec.signature_name for log in logs}
    assert signatures == {"serving_default", "serving_raw"}
    assert f"model mnist_cnn version 1: replayed {len(logs)} warm-up requests" in server.log()


# ----- predictions equal the SavedModel in process -------------------------------------------
def test_rest_predictions_equal_the_saved_model(server, in_process_model):
    images = _images(5)
    expected = in_process_model.signatures["serving_raw"](image=tf.constant(images))
    expected_probabilities = expected["probabilities"].numpy()
    expected_classes = expected["class_id"].numpy().tolist()

    # Row format, the signature's single input unnamed.
    status, answer = server.http("POST", "/v1/models/mnist_cnn:predict",
                                 {"signature_name": "serving_raw", "instances": images.tolist()})
    assert status == 200, answer
    rows = answer["predictions"]
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected_probabilities, atol=1e-5)
    assert [row["class_id"] for row in rows] == expected_classes
    # Row format with named inputs, through the version URL.
    status, answer = server.http("POST", "/v1/models/mnist_cnn/versions/1:predict",
                                 {"signature_name": "serving_raw",
                                  "instances": [{"image": image.tolist()} for image in images]})
    assert status == 200 and [row["class_id"] for row in answer["predictions"]] == expected_classes
    # Columnar format.
    status, answer = server.http("POST", "/v1/models/mnist_cnn:predict",
                                 {"signature_name": "serving_raw", "inputs": {"image": images.tolist()}})
    assert status == 200, answer
    np.testing.assert_allclose(answer["outputs"]["probabilities"], expected_probabilities, atol=1e-5)
    assert answer["outputs"]["class_id"] == expected_classes
    # serving_default (the default signature) with serialized tf.Examples as {"b64": ...}.
    encoded = [{"b64": base64.b64encode(item).decode()} for item in _serialized_examples(images)]
    status, answer = server.http("POST", "/v1/models/mnist_cnn:predict", {"instances": encoded})
    assert status == 200, answer
    np.testing.assert_allclose([row["probabilities"] for row in answer["predictions"]],
                               expected_probabilities, atol=1e-5)
    status, answer = server.http("POST", "/v1/models/mnist_cnn:predict", {"inputs": {"examples": encoded}})
    assert status == 200 and answer["outputs"]["class_id"] == expected_classes


def test_grpc_predictions_equal_the_saved_model(server, in_process_model):
    images = _images(4, seed=10)
    expected = in_process_model.signatures["serving_raw"](image=tf.constant(images))
    response = server.prediction.Predict(_predict_request("mnist_cnn", "serving_raw", {"image": images}),
                                         timeout=30)
    assert response.model_spec.name == "mnist_cnn" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_raw"
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               expected["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["class_id"]), expected["class_id"].numpy())

    request = _predict_request("mnist_cnn", "", {"examples": np.array(_serialized_examples(images), dtype=object)},
                               version=1)
    request.output_filter.append("class_id")
    response = server.prediction.Predict(request, timeout=30)
    assert list(response.outputs) == ["class_id"]
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["class_id"]), expected["class_id"].numpy())


def test_status_and_metadata_over_rest_and_grpc(server):
    status, answer = server.http("GET", "/v1/models/mnist_cnn")
    assert status == 200
    assert answer == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, answer = server.http("GET", "/v1/models/examples/labels/stable")
    assert status == 200 and answer["model_version_status"][0]["version"] == "1"

    status, answer = server.http("GET", "/v1/models/mnist_cnn/versions/1/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": "mnist_cnn", "signature_name": "", "version": "1"}
    signature_defs = answer["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_raw", "transform_features"} <= set(signature_defs)
    assert signature_defs["serving_raw"]["inputs"]["image"]["dtype"] == "DT_FLOAT"

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mnist_cnn"
    response = server.models.GetModelStatus(request, timeout=10)
    assert [(item.version, item.state) for item in response.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist_cnn"
    response = server.prediction.GetModelMetadata(request, timeout=10)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert signature_map.signature_def["serving_raw"].outputs["probabilities"].dtype == tf.float32.as_datatype_enum


def test_classify_regress_and_multi_inference(server):
    status, answer = server.http("POST", "/v1/models/examples:classify", {
        "signature_name": "classify_x", "context": {"x": [1.0, 2.0]}, "examples": [{}, {"x": [-2.0, -1.0]}]})
    assert status == 200, answer
    first, second = answer["results"]
    assert [label for label, _ in first] == ["negative", "positive"]
    assert first[1][1] > 0.9 and second[0][1] > 0.9
    status, answer = server.http("POST", "/v1/models/examples/labels/stable:regress",
                                 {"signature_name": "regress_x", "examples": [{"x": [1.5, 2.0]}, {"x": [0.0, -1.0]}]})
    assert status == 200 and answer == {"results": [3.5, -1.0]}

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = "classify_x"
    request.input.example_list.examples.extend([example(1, 2)])
    result = server.prediction.Classify(request, timeout=10).result
    assert [entry.label for entry in result.classifications[0].classes] == ["negative", "positive"]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = "regress_x"
    request.input.example_list_with_context.context.CopyFrom(example(2, 2))
    request.input.example_list_with_context.examples.add()
    assert [item.value for item in server.prediction.Regress(request, timeout=10).result.regressions] == [4.0]

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x", "tensorflow/serving/classify"), ("regress_x", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "examples"
        task.model_spec.signature_name = signature
    request.input.example_list.examples.extend([example(0.5, 0.5)])
    results = server.prediction.MultiInference(request, timeout=10).results
    assert results[0].classification_result.classifications[0].classes[1].label == "positive"
    assert results[1].regression_result.regressions[0].value == pytest.approx(1.0)
    # Classify needs a classification signature, as in TF Serving.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "mnist_cnn"
    request.input.example_list.examples.extend([example(1, 2)])
    with pytest.raises(grpc.RpcError) as raised:
        server.prediction.Classify(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


IMAGE = np.zeros([28, 28]).tolist()


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/models/mnist_cnn:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/mnist_cnn:predict", {"signature_name": "serving_raw", "instances": [[["a"] * 28] * 28]}, 400,
     "expects float32 values but got string"),
    ("/v1/models/mnist_cnn:predict", {"signature_name": "serving_raw", "instances": [[[0.0] * 27] * 28]}, 400,
     "has shape [1, 28, 27]"),
    ("/v1/models/nope:predict", {"instances": [IMAGE]}, 404, "Servable not found"),
    ("/v1/models/mnist_cnn/versions/7:predict", {"instances": [IMAGE]}, 404, "Specific(mnist_cnn, 7)"),
    ("/v1/models/mnist_cnn/versions/x:predict", {"instances": [IMAGE]}, 400, "version must be"),
    ("/v1/models/examples/labels/canary:predict", {"instances": [[1.0, 2.0]]}, 404, "version label: canary"),
    ("/v1/models/mnist_cnn:predict", {"signature_name": "nope", "instances": [IMAGE]}, 404, "\"nope\" not found"),
    ("/v1/models/mnist_cnn:predict", {"signature_name": "serving_raw", "instances": [IMAGE], "inputs": [IMAGE]},
     400, "Not both"),
    ("/v1/models/mnist_cnn:predict", {"signature_name": "serving_raw"}, 400, "Missing 'inputs' or 'instances'"),
    ("/v1/models/mnist_cnn:predict", {"instances": [[0.0] * 10] * (MAX_REQUEST_BYTES // 40)}, 413, "exceeds the limit"),
    ("/v1/models/mnist_cnn:explode", {"instances": [IMAGE]}, 404, "Malformed request"),
])
def test_rest_errors_are_tf_serving_style_and_the_server_stays_up(server, path, body, status, fragment):
    got_status, answer = server.http("POST", path, body)
    assert got_status == status, answer
    assert set(answer) == {"error"} and fragment in answer["error"]
    assert server.process.poll() is None
    got_status, answer = server.http("POST", "/v1/models/examples:predict", {"instances": [[1.0, 2.0]]})
    assert got_status == 200 and answer["predictions"][0]["sum"] == 3.0


def test_grpc_errors_carry_tf_serving_status_codes(server):
    cases = [
        (_predict_request("nope", "serving_raw", {"image": np.zeros([1, 28, 28], np.float32)}), grpc.StatusCode.NOT_FOUND),
        (_predict_request("mnist_cnn", "serving_raw", {"image": np.zeros([1, 28, 28], np.float64)}),
         grpc.StatusCode.INVALID_ARGUMENT),
        (_predict_request("mnist_cnn", "serving_raw", {"pixels": np.zeros([1, 28, 28], np.float32)}),
         grpc.StatusCode.INVALID_ARGUMENT),
        (_predict_request("mnist_cnn", "serving_raw", {"image": np.zeros([1, 28, 28], np.float32)}, version=9),
         grpc.StatusCode.NOT_FOUND),
        (_predict_request("mnist_cnn", "nope", {"image": np.zeros([1, 28, 28], np.float32)}), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as raised:
            server.prediction.Predict(request, timeout=10)
        assert raised.value.code() == code, raised.value.details()


def test_tensorflow_thread_flags_reach_tensorflow(server):
    assert "TensorFlow thread pools: intra-op 1, inter-op 2" in server.log()


def test_prometheus_metrics_and_health(server):
    server.prediction.Predict(_predict_request("mnist_cnn", "serving_raw", {"image": _images(1)}), timeout=30)
    status, text = server.http("GET", "/monitoring/prometheus/metrics")
    assert status == 200
    assert 'tfprod_serving_request_count{model="mnist_cnn",version="1",api="predict",protocol="grpc",status="OK"}' in text
    assert 'api="predict",protocol="rest",status="OK"' in text
    assert 'status="NOT_FOUND"' in text
    assert 'tfprod_serving_batch_size_count{model="mnist_cnn",version="1",signature="serving_raw"}' in text
    assert 'tfprod_serving_model_load_count{model="mnist_cnn",version="1",result="ok"} 1' in text
    assert server.http("GET", "/healthz")[0] == 200
    assert server.http("GET", "/readyz") == (200, {"ready": True, "draining": False})


def test_hot_reload_under_load_drops_no_request(server, pushed_model_dir):
    """Push version 2 while REST and gRPC clients send requests: none fails, version 2 serves after."""
    images = _images(2, seed=20)
    failures, versions_seen, counts = [], set(), {"rest": 0, "grpc": 0}
    stop = threading.Event()
    lock = threading.Lock()

    def grpc_client():
        request = _predict_request("mnist_cnn", "serving_raw", {"image": images})
        while not stop.is_set():
            try:
                response = server.prediction.Predict(request, timeout=30)
                with lock:
                    versions_seen.add(response.model_spec.version.value)
                    counts["grpc"] += 1
            except grpc.RpcError as error:
                failures.append(f"grpc {error.code()}: {error.details()}")

    def rest_client():
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        body = json.dumps({"signature_name": "serving_raw", "instances": images.tolist()})
        while not stop.is_set():
            try:
                connection.request("POST", "/v1/models/mnist_cnn:predict", body=body)
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    failures.append(f"rest {response.status}: {payload[:200]}")
                with lock:
                    counts["rest"] += 1
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"rest {error!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        connection.close()

    threads = [threading.Thread(target=target) for target in (grpc_client, grpc_client, rest_client, rest_client)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        copy_version(str(pushed_model_dir), str(server.root / "models" / "mnist_cnn"), 2)
        deadline = time.monotonic() + 90
        while 2 not in versions_seen and time.monotonic() < deadline and not failures:
            time.sleep(0.2)
        time.sleep(1.0)  # keep the load on while version 1 is unloaded
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:5]
    assert versions_seen == {1, 2}
    assert counts["rest"] > 5 and counts["grpc"] > 5, counts
    status, answer = server.http("GET", "/v1/models/mnist_cnn")
    assert [item["version"] for item in answer["model_version_status"]] == ["2"]  # latest{1}: 1 unloaded
    response = server.prediction.Predict(_predict_request("mnist_cnn", "serving_raw", {"image": images}), timeout=30)
    assert response.model_spec.version.value == 2


def test_corrupt_new_version_is_reported_and_the_old_one_keeps_serving(server):
    broken = server.root / "models" / "mnist_cnn" / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    deadline = time.monotonic() + 30
    answer = {}
    while time.monotonic() < deadline:
        _, answer = server.http("GET", "/v1/models/mnist_cnn/versions/3")
        if "model_version_status" in answer and answer["model_version_status"][0]["state"] == "END":
            break
        time.sleep(0.3)
    entry = answer["model_version_status"][0]
    assert entry["state"] == "END" and entry["status"]["error_code"] == "UNKNOWN"
    assert entry["status"]["error_message"]
    response = server.prediction.Predict(
        _predict_request("mnist_cnn", "serving_raw", {"image": _images(1)}), timeout=30)
    assert response.model_spec.version.value == 2
    _, answer = server.http("GET", "/v1/models/mnist_cnn/versions/2")
    assert answer["model_version_status"][0]["state"] == "AVAILABLE"
    shutil.rmtree(broken)


def test_reload_config_over_grpc(server):
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = "mnist_cnn", str(server.root / "models" / "mnist_cnn"), "tensorflow"
    model.model_version_policy.all.SetInParent()
    server.models.HandleReloadConfigRequest(request, timeout=60)
    _, answer = server.http("GET", "/v1/models/mnist_cnn")
    # Policy all {}: version 1 (still on disk, unloaded under latest{1}) is served again beside 2.
    assert [item["version"] for item in answer["model_version_status"] if item["state"] == "AVAILABLE"] == ["2", "1"]
    response = server.prediction.Predict(
        _predict_request("mnist_cnn", "serving_raw", {"image": _images(1)}, version=1), timeout=30)
    assert response.model_spec.version.value == 1
    assert server.http("GET", "/v1/models/examples")[0] == 404  # no longer configured


def test_predict_cli_over_rest_and_grpc(server, in_process_model, tmp_path):
    images = _images(2, seed=30)
    expected = in_process_model.signatures["serving_raw"](image=tf.constant(images))["class_id"].numpy().tolist()
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"signature_name": "serving_raw", "instances": images.tolist()}))
    rest = subprocess.run([TFPROD, "predict", "--model_name", "mnist_cnn", "--server", f"127.0.0.1:{server.rest_port}",
                           "--request", f"@{request_file}"], env=ENV, capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert [row["class_id"] for row in json.loads(rest.stdout)["predictions"]] == expected
    over_grpc = subprocess.run([TFPROD, "predict", "--protocol", "grpc", "--model_name", "mnist_cnn", "--server",
                                f"127.0.0.1:{server.grpc_port}", "--request", f"@{request_file}"],
                               env=ENV, capture_output=True, text=True, timeout=120)
    assert over_grpc.returncode == 0, over_grpc.stderr[-2000:]
    assert json.loads(over_grpc.stdout)["outputs"]["class_id"] == expected


def test_graceful_shutdown_drains_in_flight_requests(tmp_path, examples_model_dir):
    """SIGTERM while requests wait in a batch (1.5 s batch timeout): all of them are answered, exit code 0."""
    copy_version(examples_model_dir, str(tmp_path / "examples"), 1)
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1500000 }\nnum_batch_threads { value: 1 }\n")
    process = ServerProcess(["--model_name", "examples", "--model_base_path", str(tmp_path / "examples"),
                             "--enable_batching", "--batching_parameters_file", str(tmp_path / "batching.config")],
                            tmp_path / "server.log")
    results = []

    def call(value):
        results.append(process.http("POST", "/v1/models/examples:predict", {"instances": [[value, 1.0]]}))

    threads = [threading.Thread(target=call, args=(float(index),)) for index in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    process.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert process.process.wait(60) == 0, process.log()[-2000:]
    assert sorted(answer["predictions"][0]["sum"] for _, answer in results) == [1.0, 2.0, 3.0, 4.0]
    assert all(status == 200 for status, _ in results)
    assert "shutting down: draining" in process.log()
    process.stop()


def test_a_port_in_use_is_reported_before_the_models_load(tmp_path, examples_model_dir):
    """Both ports are bound before any model loads: a taken port ends `tfprod serve` at once (exit 2),
    naming the address and the flag."""
    copy_version(examples_model_dir, str(tmp_path / "examples"), 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for flag, ports in (("--port", [str(port), "0"]), ("--rest_api_port", ["0", str(port)])):
            result = subprocess.run(
                [TFPROD, "serve", "--port", ports[0], "--rest_api_port", ports[1], "--model_name", "examples",
                 "--model_base_path", str(tmp_path / "examples")],
                cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=180)
            assert result.returncode == 2, result.stderr[-2000:]
            assert f"127.0.0.1:{port}" in result.stderr and f"choose another port with {flag}" in result.stderr, \
                result.stderr[-2000:]
            assert "loading model" not in result.stderr  # reported before the model load began
            assert "Traceback" not in result.stderr


def test_rest_and_model_polling_survive_a_flood_past_the_open_file_limit(tmp_path, examples_model_dir):
    """300 clients connect and send half a request line to a server limited to 128 open files (its
    connection limit, 1000, cannot protect it): accept() fails with EMFILE. The header timeout
    frees the descriptors without the clients closing anything, REST answers again, the failed
    accepts are one log line, and polling still loads a new version."""
    copy_version(examples_model_dir, str(tmp_path / "examples"), 1)
    process = ServerProcess(["--model_name", "examples", "--model_base_path", str(tmp_path / "examples"),
                             "--file_system_poll_wait_seconds", "0.3", "--rest_header_timeout_seconds", "1"],
                            tmp_path / "server.log", open_files=128)
    flood = []
    try:
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", process.rest_port))  # beyond the backlog, the handshake waits
            flood.append(sock)
        time.sleep(0.5)
        for sock in flood:
            try:
                sock.send(b"GET /heal")
            except OSError:  # not connected (yet)
                pass
        deadline = time.monotonic() + 60
        while True:
            try:
                if process.http("GET", "/healthz", timeout=2)[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            assert time.monotonic() < deadline, "REST did not answer again within 60 s:\n" + process.log()[-3000:]
        recovered = time.monotonic() - deadline + 60
        copy_version(examples_model_dir, str(tmp_path / "examples"), 2)
        deadline = time.monotonic() + 60
        while process.http("GET", "/v1/models/examples")[1]["model_version_status"][0]["version"] != "2":
            assert time.monotonic() < deadline, "version 2 was not loaded:\n" + process.log()[-3000:]
            time.sleep(0.3)
        status, answer = process.http("POST", "/v1/models/examples:predict", {"instances": [[1.0, 2.0]]})
        assert status == 200 and answer["predictions"][0]["sum"] == 3.0
        log = process.log()
        assert log.count("cannot accept connections") == 1, log[-3000:]
        assert "Too many open files" in log
        print(f"REST answered again {recovered:.1f} s after the flood")
    finally:
        for sock in flood:
            sock.close()
        assert process.stop() == 0, process.log()[-3000:]


def test_a_base_path_with_nothing_to_serve_is_an_error_at_start_unless_allowed(tmp_path, examples_model_dir):
    """`tfprod serve` on a base path that does not exist, or holds no version that loads, exits 2 at
    start naming the model, the path and why (TF Serving would wait silently); with
    --allow_empty_base_path it starts, says it waits, and serves a version pushed later."""
    missing = tmp_path / "does" / "not" / "exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    for base_path, why in ((missing, "the directory does not exist"),
                           (empty, "it holds no version directory"),
                           (broken, "version 1 failed")):
        result = subprocess.run(
            [TFPROD, "serve", "--port", "0", "--rest_api_port", "0", "--model_name", "examples",
             "--model_base_path", str(base_path)],
            cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"model 'examples' at {base_path}: {why}" in result.stderr, result.stderr[-2000:]
        assert "--allow_empty_base_path" in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""  # never announced its ports as serving

    process = ServerProcess(["--model_name", "examples", "--model_base_path", str(empty),
                             "--allow_empty_base_path", "--file_system_poll_wait_seconds", "0.3"],
                            tmp_path / "server.log")
    try:
        assert "no version to serve yet" in process.log()
        copy_version(examples_model_dir, str(empty), 3)
        deadline = time.monotonic() + 60
        while True:
            status, body = process.http("GET", "/v1/models/examples")
            available = status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
            if available or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert available, body
    finally:
        assert process.stop() == 0, process.log()[-3000:]
