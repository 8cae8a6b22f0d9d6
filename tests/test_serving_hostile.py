"""Hostile and broken input to the server's decoding and model management (issue 19, items 1, 3, 4, 5, 7).

A real gRPC and REST server in this process (127.0.0.1, free ports) in front of a real
ModelManager serving the small TF1-style model of tests/serving_models.py (input x: [N, 2]
float32), plus the decoding functions called directly where a signature of another shape is
needed. Every refusal must be a client error (INVALID_ARGUMENT / 400) that names the input,
come back fast, and allocate nothing like the size the request claims.
"""

import http.client
import json
import logging
import os
import shutil
import time
import tracemalloc

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from tfprod.serving import config as config_lib
from tfprod.serving import grpc_server, json_codec, model_manager, protocol, rest
from tfprod.serving.errors import InvalidArgumentError, TensorTooLargeError
from tfprod.serving.model_manager import ModelManager
from tfprod.serving.server import ServerOptions, is_loopback
from tfprod.serving.service import DEFAULT_MAX_TENSOR_BYTES, ServingService
from tests.serving_models import build_examples_model, copy_version

State = get_model_status_pb2.ModelVersionStatus.State
MIB = 1024 * 1024


# ----- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def examples_model(tmp_path_factory):
    return build_examples_model(str(tmp_path_factory.mktemp("hostile_model") / "model"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory, examples_model):
    """(service, gRPC channel, REST port), no batching, reload enabled as on 127.0.0.1."""
    root = tmp_path_factory.mktemp("hostile_servers")
    copy_version(examples_model, str(root / "ex"), 1)
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(root / "ex")), poll_seconds=0)
    manager.start()
    service = ServingService(manager, default_timeout_seconds=30)
    grpc_handle, grpc_port = grpc_server.create_server(service, 0)
    rest_handle, rest_port = rest.create_server(service, 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield service, channel, rest_port, root
    channel.close()
    rest_handle.shutdown()
    rest_handle.server_close()
    grpc_handle.stop(grace=1).wait(10)
    manager.stop(drain_seconds=5)


def _predict(channel, inputs, timeout=10):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ex"
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def _proto(dtype, shape, **values):
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def _post(port, path, body: bytes):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# ----- item 1: decoded size, checked before allocating ----------------------------------------
MNIST_SIGNATURE = (["image"], {"image": types_pb2.DT_FLOAT}, {"image": [-1, 28, 28]})


def test_a_61_byte_request_for_gigabytes_is_refused_before_allocating():
    """Issue 19's probe: DT_FLOAT [20000, 28, 28] with one float_val (a 63 MB broadcast), and
    dimensions 2^20 x 3 (4 EiB): both refused at once, naming the input and the limit."""
    huge = _proto(types_pb2.DT_FLOAT, [20000, 28, 28], float_val=[0.5])
    assert len(huge.SerializeToString()) < 64
    exabytes = _proto(types_pb2.DT_FLOAT, [2 ** 20] * 3, float_val=[0.5])
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(TensorTooLargeError, match=r"input 'image' \(shape \[20000, 28, 28\], float32\) would take "
                                                  r"62,720,000 bytes.*--max_request_tensor_bytes"):
        protocol.arrays_for_signature({"image": huge}, *MNIST_SIGNATURE, max_bytes=DEFAULT_MAX_TENSOR_BYTES)
    with pytest.raises(InvalidArgumentError, match=r"input 'image' has shape \[1048576, 1048576, 1048576\], but the "
                                                   r"signature expects \[\?,28,28\]"):
        protocol.arrays_for_signature({"image": exabytes}, *MNIST_SIGNATURE, max_bytes=DEFAULT_MAX_TENSOR_BYTES)
    # Without a signature (warm-up records) the size limit alone still holds.
    with pytest.raises(TensorTooLargeError, match="input 'image'"):
        protocol.array_from_tensor_proto("image", exabytes, max_bytes=DEFAULT_MAX_TENSOR_BYTES)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 1 * MIB, peak
    # Within the limit, one value is repeated over the shape, as TensorFlow does.
    small = protocol.arrays_for_signature({"image": _proto(types_pb2.DT_FLOAT, [2, 28, 28], float_val=[0.5])},
                                          *MNIST_SIGNATURE, max_bytes=DEFAULT_MAX_TENSOR_BYTES)
    assert small["image"].shape == (2, 28, 28) and np.all(small["image"] == 0.5)


@pytest.mark.parametrize("proto, fragment", [
    # The probe's request against this model: the batch dimension is free, the limit is not.
    (_proto(types_pb2.DT_FLOAT, [20_000_000, 2], float_val=[1.0]), "would take 160,000,000 bytes"),
    (_proto(types_pb2.DT_FLOAT, [2 ** 20] * 3, float_val=[1.0]), "has shape [1048576, 1048576, 1048576]"),
    (_proto(types_pb2.DT_FLOAT, [4, 2], float_val=[1.0, 2.0, 3.0]), "has 3 values in float_val, but shape [4, 2] "
                                                                    "needs 8 (or 1"),
    (_proto(types_pb2.DT_FLOAT, [4, 2]), "has 0 values in float_val"),
    (_proto(types_pb2.DT_FLOAT, [1, 3], float_val=[1.0]), "has shape [1, 3], but the signature expects [?,2]"),
    (_proto(types_pb2.DT_FLOAT, [-1, 2], float_val=[1.0]), "invalid shape [-1, 2]"),
    (_proto(types_pb2.DT_FLOAT, [1] * 40, float_val=[1.0]), "at most 32 dimensions"),
    (_proto(types_pb2.DT_FLOAT, [2, 2], tensor_content=b"\0" * 12), "tensor_content holds 12 bytes"),
    # Item 7: dtypes a request cannot carry are the client's error, not "predict failed: 20" (INTERNAL).
    (_proto(types_pb2.DT_RESOURCE, [1, 2]), "to be float32 but resource is provided"),
    (_proto(types_pb2.DT_VARIANT, [1, 2]), "to be float32 but variant is provided"),
    (_proto(999, [1, 2]), "to be float32 but unknown dtype 999 is provided"),
    (_proto(types_pb2.DT_DOUBLE, [1, 2], double_val=[1.0, 2.0]), "to be float32 but float64 is provided"),
])
def test_bad_grpc_tensors_are_invalid_argument_naming_the_input(servers, proto, fragment):
    _, channel, _, _ = servers
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as raised:
        _predict(channel, {"x": proto})
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert fragment in raised.value.details()
    assert "'x'" in raised.value.details()
    assert time.perf_counter() - started < 5.0
    # The server goes on answering.
    answer = _predict(channel, {"x": tf.make_tensor_proto(np.array([[1.0, 2.0]], np.float32))})
    assert tf.make_ndarray(answer.outputs["sum"]).tolist() == [3.0]


def test_bad_dtypes_without_a_signature_are_invalid_argument():
    """Warm-up records are decoded without a signature: a resource or unknown dtype is still a clean error."""
    for dtype in (types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, types_pb2.DT_INVALID, 999):
        with pytest.raises(InvalidArgumentError, match="input 'x' has dtype .* which a request cannot carry"):
            protocol.array_from_tensor_proto("x", _proto(dtype, [1]))


def test_the_decoded_size_limit_covers_rest_bodies(servers, monkeypatch):
    service, _, rest_port, _ = servers
    monkeypatch.setattr(service, "max_tensor_bytes", 1000)
    # 200 rows of 2 float32 = 1,600 bytes for the model: over a 1,000-byte limit.
    status, answer = _post(rest_port, "/v1/models/ex:predict", json.dumps({"instances": [[1.0, 2.0]] * 200}).encode())
    assert status == 400 and "--max_request_tensor_bytes" in answer["error"], answer
    # More values than bytes allowed: refused while decoding, before any array is built.
    status, answer = _post(rest_port, "/v1/models/ex:predict", json.dumps({"instances": [[1.0, 2.0]] * 600}).encode())
    assert status == 400 and "more than 1,000 values" in answer["error"], answer
    status, answer = _post(rest_port, "/v1/models/ex:predict", json.dumps({"instances": [[1.0, 2.0]] * 100}).encode())
    assert status == 200 and len(answer["predictions"]) == 100


def test_json_decoding_memory_stays_near_the_body_size():
    """A 4.8 MB body of integer image rows: Python's parser takes about 5x the body; the decoder
    adds the array and no list of every value (before: a flat list of every value besides the
    array). Traced peak here 8.0x the body, 9.2x before."""
    body = json.dumps({"instances": np.zeros((2000, 28, 28), int).tolist()}).encode()
    tracemalloc.start()
    _, _, inputs = json_codec.decode_predict_request(body)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert inputs[None].shape == (2000, 28, 28)
    assert peak < 8.6 * len(body), (peak, len(body))


# ----- item 7: client errors in REST bodies -----------------------------------------------------
@pytest.mark.parametrize("body, fragment", [
    ('{"instances": ' + "[" * 40 + "1.0" + "]" * 40 + "}", "nested more than 32 deep"),
    ('{"instances": ' + "[" * 100_000, "nested too deep"),
    ('{"instances": ' + "[" * 100_000 + "1" + "]" * 100_000 + "}", "nested too deep"),
    ('{"instances": [[1.5, ' + "9" * 400 + "]]}", "number out of range"),
    ('{"inputs": {"x": ' + "[" * 33 + '"a"' + "]" * 33 + "}}", "nested more than 32 deep"),
])
def test_deep_or_huge_json_is_a_400_not_a_500(servers, body, fragment):
    _, _, rest_port, _ = servers
    status, answer = _post(rest_port, "/v1/models/ex:predict", body.encode())
    assert status == 400, answer
    assert fragment in answer["error"]
    status, answer = _post(rest_port, "/v1/models/ex:predict", b'{"instances": [[1.0, 2.0]]}')
    assert status == 200


# ----- item 3: version directory names ----------------------------------------------------------
def test_only_ascii_decimal_directories_are_versions_and_others_are_reported_once(tmp_path, examples_model, caplog):
    base = tmp_path / "ex"
    copy_version(examples_model, str(base), 1)
    for name in ("²", "1a", "٣", str(2 ** 63), "notes"):
        (base / name).mkdir()
    (base / ".staging-7").mkdir()  # a pusher's temporary directory: skipped silently
    (base / "README").write_text("not a directory")
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(base)), poll_seconds=0)
    with caplog.at_level(logging.WARNING, logger=model_manager.__name__):
        manager.start()  # crashed with "invalid literal for int()" on "²"
        for _ in range(3):
            manager.poll_once()
    assert manager.resolve_version("ex") == 1
    warnings = [record.getMessage() for record in caplog.records if "ignoring" in record.getMessage()]
    assert sorted(warnings) == sorted(
        f"ignoring {name!r} in {base}: a version directory is named by a number (ASCII digits 0-9, at most "
        f"{2 ** 63 - 1})" for name in ("²", "1a", "٣", str(2 ** 63), "notes"))
    manager.stop()


def test_polling_survives_failing_passes_and_logs_them_once_then_the_recovery(
        tmp_path, examples_model, caplog, monkeypatch):
    """Passes that fail with "Too many open files" (a connection flood) do not stop polling nor log a
    traceback each; when they work again, one line says so and a new version loads."""
    base = tmp_path / "ex"
    copy_version(examples_model, str(base), 1)
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(base)), poll_seconds=0.02,
                           warm_up=False)
    manager.start()
    real_poll = manager.poll_once
    failing = {"passes": 0}

    def poll_once():
        if failing["passes"] < 25:
            failing["passes"] += 1
            raise OSError(24, "Too many open files")
        real_poll()

    monkeypatch.setattr(manager, "poll_once", poll_once)
    try:
        with caplog.at_level(logging.WARNING, logger=model_manager.__name__):
            deadline = time.monotonic() + 30
            while failing["passes"] < 25 and time.monotonic() < deadline:
                time.sleep(0.02)
            copy_version(examples_model, str(base), 2)
            recovered = "polling the model base paths works again after 25 failed passes"
            while time.monotonic() < deadline and not (
                    manager.resolve_version("ex") == 2
                    and any(record.getMessage() == recovered for record in caplog.records)):
                time.sleep(0.05)
        assert manager.resolve_version("ex") == 2  # polling went on after 25 failed passes
        messages = [record.getMessage() for record in caplog.records]
        assert sum("polling the model base paths failed" in message for message in messages) == 1, messages
        assert sum(record.exc_info is not None for record in caplog.records) == 1
        assert recovered in messages
    finally:
        manager.stop()


# ----- item 4: a failed version is retried when any of its files changes --------------------------
class _Weighted(tf.Module):
    def __init__(self):
        super().__init__()
        self.weights = tf.Variable([1.0, 1.0])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def serve(self, x):
        return {"sum": tf.reduce_sum(x * self.weights, axis=1)}


@pytest.fixture(scope="module")
def variables_model(tmp_path_factory):
    """A TF2 SavedModel with a variables/ directory (the TF1-style examples model has none)."""
    path = str(tmp_path_factory.mktemp("variables_model") / "model")
    module = _Weighted()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def _variables_file(version_dir) -> str:
    variables = os.path.join(version_dir, "variables")
    return os.path.join(variables, next(name for name in sorted(os.listdir(variables)) if ".data-" in name))


def test_a_version_completed_in_place_is_loaded(tmp_path, variables_model):
    base = tmp_path / "ex"
    copy_version(variables_model, str(base), 1)
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(base)), poll_seconds=0)
    manager.start()
    # Version 2 arrives with its variables' data written only in part (an interrupted copy).
    version_dir = copy_version(variables_model, str(base), 2)
    data_file = _variables_file(version_dir)
    complete = open(data_file, "rb").read()
    with open(data_file, "wb") as handle:
        handle.write(complete[: len(complete) // 2])
    manager.poll_once()
    manager.poll_once()
    statuses = {status.version: status for status in manager.version_statuses("ex")}
    assert statuses[2].state == State.END and statuses[2].status.error_message
    assert manager.resolve_version("ex") == 1
    assert manager.metrics.load_events.value(model="ex", version="2", result="error") == 1  # not retried unchanged
    # The same file is completed in place: variables/ itself keeps its mtime, the file does not.
    variables_mtime = os.stat(os.path.dirname(data_file)).st_mtime_ns
    with open(data_file, "wb") as handle:
        handle.write(complete)
    assert os.stat(os.path.dirname(data_file)).st_mtime_ns == variables_mtime
    manager.poll_once()
    assert manager.resolve_version("ex") == 2
    with manager.servable("ex") as servable:
        _, outputs = servable.predict("", {"x": np.array([[1.0, 2.0]], np.float32)})
    assert outputs["sum"].tolist() == [3.0]
    manager.stop()


def test_failed_versions_are_retried_with_backoff(tmp_path, examples_model, monkeypatch):
    assert [model_manager.retry_backoff(failures, 1.0) for failures in (1, 2, 3, 6, 7, 20)] == [1, 2, 4, 32, 60, 60]
    assert model_manager.retry_backoff(5, 0.0) == 0.0
    base = tmp_path / "ex"
    copy_version(examples_model, str(base), 1)
    now = [1000.0]
    monkeypatch.setattr(model_manager.time, "monotonic", lambda: now[0])
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(base)), poll_seconds=5)
    manager.poll_once()  # start() would poll in a thread: here each pass is explicit
    broken = base / "2"
    broken.mkdir()
    for attempt in range(3):
        (broken / "saved_model.pb").write_bytes(b"garbage %d" % attempt)  # changed every time
        manager.poll_once()
    # Changed three times, but tried once: the second try waits 5 s.
    assert manager.metrics.load_events.value(model="ex", version="2", result="error") == 1
    now[0] += 5.0
    manager.poll_once()
    assert manager.metrics.load_events.value(model="ex", version="2", result="error") == 2
    now[0] += 5.0  # the next wait is 10 s
    (broken / "saved_model.pb").write_bytes(b"garbage again")
    manager.poll_once()
    assert manager.metrics.load_events.value(model="ex", version="2", result="error") == 2
    shutil.rmtree(broken)
    copy_version(examples_model, str(base), 2)
    now[0] += 5.0
    manager.poll_once()
    assert manager.resolve_version("ex") == 2
    manager.stop()


# ----- item 5: HandleReloadConfigRequest ----------------------------------------------------------
def _reload(channel, base_paths):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()
    for name, base_path in base_paths.items():
        model = request.config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = name, str(base_path), "tensorflow"
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def test_reload_config_refuses_empty_configs_and_missing_base_paths_and_can_be_disabled(servers, monkeypatch):
    service, channel, rest_port, root = servers
    cases = [({}, grpc.StatusCode.INVALID_ARGUMENT, "would unload every model"),
             ({"ex": root / "nowhere"}, grpc.StatusCode.INVALID_ARGUMENT, "is not an existing directory"),
             ({"ex": "ex"}, grpc.StatusCode.INVALID_ARGUMENT, "absolute path")]
    for base_paths, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as raised:
            _reload(channel, base_paths)
        assert raised.value.code() == code and fragment in raised.value.details(), raised.value.details()
        assert service.manager.model_names() == ["ex"]
    _reload(channel, {"ex": root / "ex"})  # allowed: a valid config on a loopback server
    monkeypatch.setattr(service, "enable_config_reload", False)
    with pytest.raises(grpc.RpcError) as raised:
        _reload(channel, {"ex": root / "ex"})
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "--enable_model_config_reload" in raised.value.details()
    assert _post(rest_port, "/v1/models/ex:predict", b'{"instances": [[1.0, 2.0]]}')[0] == 200


@pytest.mark.parametrize("host, enabled", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("10.1.2.3", False), ("serving.example", False)])
def test_config_reload_is_enabled_by_default_only_on_loopback(host, enabled):
    assert is_loopback(host) is enabled
    assert ServerOptions(host=host).config_reload_enabled() is enabled
    assert ServerOptions(host=host, enable_model_config_reload=True).config_reload_enabled() is True
    assert ServerOptions(host="127.0.0.1", enable_model_config_reload=False).config_reload_enabled() is False


def test_tensor_limit_flag_defaults_to_twice_the_request_limit():
    from tfprod.serving.errors import ConfigFileError

    assert ServerOptions().tensor_bytes_limit() == 32 * MIB == DEFAULT_MAX_TENSOR_BYTES
    assert ServerOptions(max_request_bytes=100).tensor_bytes_limit() == 200
    assert ServerOptions(max_request_tensor_bytes=5).tensor_bytes_limit() == 5
    with pytest.raises(ConfigFileError, match="--max_request_tensor_bytes"):
        ServerOptions(max_request_tensor_bytes=0).tensor_bytes_limit()
