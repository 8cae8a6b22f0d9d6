"""Unit tests of the serving library: config files, JSON codec, batching, metrics, model manager.

Real TensorFlow SavedModels (small TF1-style ones from tests/serving_models.py) in temp dirs;
no server process here (see test_serving_e2e.py for those).
"""

import asyncio
import base64
import json
import shutil
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfprod.serving import config as config_lib
from tfprod.serving import json_codec
from tfprod.serving.batching import SignatureBatcher, padded_size
from tfprod.serving.config import BatchingParameters
from tfprod.serving.errors import (ConfigFileError, DeadlineExceededError, InvalidArgumentError, NotFoundError,
                            UnavailableError)
from tfprod.serving.metrics import ServerMetrics
from tfprod.serving.model_manager import ModelManager
from tests.serving_models import build_examples_model, copy_version, example

State = get_model_status_pb2.ModelVersionStatus.State


# ----- configuration files ------------------------------------------------------------------
def test_batching_parameters_file_is_parsed_with_tf_serving_field_names():
    parameters = config_lib.parse_batching_parameters("""
        # as in TF Serving's docs
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 1500 }
        max_enqueued_batches { value: 20 }
        num_batch_threads { value: 3 }
        allowed_batch_sizes: 16
        allowed_batch_sizes: 64
        pad_variable_length_inputs: true
    """)
    assert parameters == BatchingParameters(64, 1500, 20, 3, (16, 64), True)


@pytest.mark.parametrize("text, fragment", [
    ("max_batch_size: 64", "max_batch_size { value: N }"),
    ("max_batch_sise { value: 64 }", "unknown batching parameter"),
    ("max_batch_size { value: 32 } allowed_batch_sizes: 16", "must equal max_batch_size"),
    ("max_batch_size { value: 32 } allowed_batch_sizes: 32 allowed_batch_sizes: 16", "increase strictly"),
    ("max_batch_size { value: 32", "missing '}'"),
])
def test_bad_batching_parameters_name_the_problem(text, fragment):
    with pytest.raises(ConfigFileError, match=None) as raised:
        config_lib.parse_batching_parameters(text)
    assert fragment in str(raised.value)


def test_monitoring_config(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text('prometheus_config {\n  enable: true,\n  path: "/metrics/here"\n}\n')
    assert config_lib.load_monitoring_config(str(path)) == config_lib.MonitoringConfig(True, "/metrics/here")
    assert config_lib.load_monitoring_config(None).prometheus_enabled is False
    path.write_text("prometheus_config { enable: true path: \"no-slash\" }")
    with pytest.raises(ConfigFileError, match="must start with"):
        config_lib.load_monitoring_config(str(path))


def test_model_server_config_file_and_relative_base_paths(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("""
        model_config_list {
          config { name: "a" base_path: "models/a" model_platform: "tensorflow"
                   model_version_policy { latest { num_versions: 2 } } }
          config { name: "b" base_path: "/abs/b" model_version_policy { specific { versions: 3 versions: 5 } }
                   version_labels { key: "stable" value: 3 } }
        }""")
    config = config_lib.load_model_server_config(str(path))
    first, second = config.model_config_list.config
    assert first.base_path == str(tmp_path / "models" / "a")
    assert second.base_path == "/abs/b"
    assert config_lib.policy_versions(first, [1, 7, 3, 4]) == [4, 7]
    assert config_lib.policy_versions(second, [1, 3, 4, 5]) == [3, 5]
    everything = model_server_config_pb2.ModelConfig(name="c", base_path="/x")
    everything.model_version_policy.all.SetInParent()
    assert config_lib.policy_versions(everything, [2, 1]) == [1, 2]
    default = model_server_config_pb2.ModelConfig(name="d", base_path="/x")
    assert config_lib.policy_versions(default, [2, 10, 9]) == [10]


@pytest.mark.parametrize("text, fragment", [
    ("model_config_list { config { base_path: \"/x\" } }", "needs a name"),
    ("model_config_list { config { name: \"a\" } }", "needs a base_path"),
    ("model_config_list { config { name: \"a\" base_path: \"/x\" } config { name: \"a\" base_path: \"/y\" } }",
     "configured twice"),
    ("model_config_list { config { name: \"a\" base_path: \"/x\" model_platform: \"pytorch\" } }", "model_platform"),
    ("model_config_list { config { nam: \"a\" } }", "not a valid ModelServerConfig"),
])
def test_bad_model_server_config_names_the_problem(tmp_path, text, fragment):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as raised:
        config_lib.load_model_server_config(str(path))
    assert fragment in str(raised.value)


# ----- JSON codec -----------------------------------------------------------------------------
def test_predict_request_shapes():
    name, request_format, inputs = json_codec.decode_predict_request(b'{"instances": [[1, 2], [3, 4.5]]}')
    assert (name, request_format) == ("", json_codec.ROW_FORMAT)
    np.testing.assert_array_equal(inputs[None], [[1, 2], [3, 4.5]])

    _, _, inputs = json_codec.decode_predict_request(
        b'{"signature_name": "s", "instances": [{"a": 1, "b": {"b64": "aGk="}}, {"a": 2, "b": "yo"}]}')
    np.testing.assert_array_equal(inputs["a"], [1, 2])
    assert list(inputs["b"]) == [b"hi", b"yo"]

    name, request_format, inputs = json_codec.decode_predict_request(
        b'{"signature_name": "s", "inputs": {"a": [[1], [2]], "b": true}}')
    assert (name, request_format) == ("s", json_codec.COLUMNAR_FORMAT)
    assert inputs["a"].shape == (2, 1) and inputs["a"].dtype == np.int64
    assert inputs["b"].dtype == np.bool_ and inputs["b"].shape == ()
    _, _, inputs = json_codec.decode_predict_request(b'{"inputs": [{"b64": "AAE="}]}')
    assert list(inputs[None]) == [b"\x00\x01"]


@pytest.mark.parametrize("body, fragment", [
    (b"{bad json", "JSON Parse error"),
    (b"[1, 2]", "not an object"),
    (b'{"instances": [1], "inputs": [1]}', "Not both"),
    (b'{"signature_name": "x"}', "Missing 'inputs' or 'instances'"),
    (b'{"instances": []}', "non-empty list"),
    (b'{"instances": [[1, 2], [3]]}', "same length"),
    (b'{"instances": [1, "a"]}', "mix types"),
    # A left-out or null input is a missing value only for one number or string per row.
    (b'{"instances": [{"a": [1, 2]}, {"b": [2, 3]}]}', "same named inputs"),
    (b'{"instances": [{"a": [1, 2]}, {"a": null}]}', "same named inputs"),
    (b'{"instances": [{"a": 1}, 2]}', "mixes named"),
    (b'{"instances": [null]}', "unsupported JSON value"),
    (b'{"instances": [{"b64": "***"}]}', "not valid base64"),
    (b'{"instances": [1], "extra": 1}', "unknown request field"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_bad_predict_bodies_are_invalid_argument(body, fragment):
    with pytest.raises(InvalidArgumentError) as raised:
        json_codec.decode_predict_request(body)
    assert fragment in str(raised.value)


json_scalars = st.one_of(st.integers(-2 ** 53, 2 ** 53), st.floats(allow_nan=False, allow_infinity=False, width=32),
                         st.booleans(), st.text(max_size=5), st.binary(max_size=5).map(
                             lambda raw: {"b64": base64.b64encode(raw).decode()}))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=3)), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(json_values, st.dictionaries(
    st.sampled_from(["instances", "inputs", "signature_name", "other"]), json_values, max_size=3)))
def test_any_json_body_decodes_or_fails_with_invalid_argument(value):
    """Fuzz: whatever JSON a client sends, decoding either works or is a clean 400."""
    try:
        _, request_format, inputs = json_codec.decode_predict_request(json.dumps(value).encode())
    except InvalidArgumentError as error:
        assert str(error)
        return
    assert request_format in (json_codec.ROW_FORMAT, json_codec.COLUMNAR_FORMAT)
    assert all(isinstance(array, np.ndarray) for array in inputs.values())


@st.composite
def rectangular_tensors(draw):
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    kind = draw(st.sampled_from(["int", "float", "bool", "bytes"]))
    size = int(np.prod(shape))
    if kind == "int":
        values = draw(st.lists(st.integers(-2 ** 62, 2 ** 62), min_size=size, max_size=size))
        return np.array(values, np.int64).reshape(shape)
    if kind == "float":
        values = draw(st.lists(st.floats(-1e6, 1e6).filter(lambda v: v != int(v)), min_size=size, max_size=size))
        return np.array(values, np.float64).reshape(shape)
    if kind == "bool":
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
    values = draw(st.lists(st.binary(max_size=6), min_size=size, max_size=size))
    array = np.empty(size, dtype=object)
    array[:] = values
    return array.reshape(shape)


def _to_json(array: np.ndarray):
    if array.dtype == object:
        return json_codec._map_nested(array, lambda raw: {"b64": base64.b64encode(raw).decode()})
    return array.tolist()


@settings(max_examples=200, deadline=None)
@given(tensor=rectangular_tensors(), columnar=st.booleans())
def test_rectangular_tensors_round_trip_through_json(tensor, columnar):
    key = "inputs" if columnar else "instances"
    body = json.dumps({key: {"t": _to_json(tensor)} if columnar else _to_json(tensor)}).encode()
    _, _, inputs = json_codec.decode_predict_request(body)
    decoded = inputs["t"] if columnar else inputs[None]
    assert decoded.shape == tensor.shape
    if tensor.dtype == object:
        assert decoded.dtype == object and decoded.ravel().tolist() == tensor.ravel().tolist()
    else:
        assert decoded.dtype == tensor.dtype
        np.testing.assert_array_equal(decoded, tensor)
    # And back: the response encoder writes the same nested lists.
    encoded = json_codec.encode_predict_response({"t_bytes" if tensor.dtype == object else "t": tensor},
                                                 json_codec.COLUMNAR_FORMAT)
    assert encoded["outputs"] == _to_json(tensor)


def test_predict_response_shapes():
    outputs = {"scores": np.array([[0.5, 0.5], [1.0, 0.0]], np.float32), "label_bytes": np.array([b"a", b"b"], object)}
    row = json_codec.encode_predict_response(outputs, json_codec.ROW_FORMAT)
    assert row == {"predictions": [{"label_bytes": {"b64": "YQ=="}, "scores": [0.5, 0.5]},
                                   {"label_bytes": {"b64": "Yg=="}, "scores": [1.0, 0.0]}]}
    single = json_codec.encode_predict_response({"y": np.array([1, 2])}, json_codec.ROW_FORMAT)
    assert single == {"predictions": [1, 2]}
    columnar = json_codec.encode_predict_response({"y": np.array([1, 2]), "z": np.array(["é".encode()], object)},
                                                  json_codec.COLUMNAR_FORMAT)
    assert columnar == {"outputs": {"y": [1, 2], "z": ["é"]}}
    with pytest.raises(InvalidArgumentError, match="same batch size"):
        json_codec.encode_predict_response({"y": np.array([1, 2]), "z": np.array([1])}, json_codec.ROW_FORMAT)


def test_examples_request_merges_context():
    name, serialized = json_codec.decode_examples_request(json.dumps({
        "signature_name": "c", "context": {"x": [1.0, 2.0], "tag": "ctx"},
        "examples": [{}, {"x": [3.0, 4.0], "n": 7, "raw": {"b64": "AAE="}}]}).encode())
    import tensorflow as tf
    first, second = (tf.train.Example.FromString(item) for item in serialized)
    assert name == "c"
    assert list(first.features.feature["x"].float_list.value) == [1.0, 2.0]
    assert list(second.features.feature["x"].float_list.value) == [3.0, 4.0]
    assert second.features.feature["tag"].bytes_list.value == [b"ctx"]
    assert second.features.feature["n"].int64_list.value == [7]
    assert second.features.feature["raw"].bytes_list.value == [b"\x00\x01"]
    for body in (b'{"examples": []}', b'{"examples": [1]}', b'{"examples": [{"x": [1, "a"]}]}',
                 b'{"examples": [{"x": true}]}', b'{"instances": [1]}'):
        with pytest.raises(InvalidArgumentError):
            json_codec.decode_examples_request(body)


# ----- batching -------------------------------------------------------------------------------
def test_padded_size():
    assert padded_size(3, (4, 8)) == 4
    assert padded_size(8, (4, 8)) == 8
    assert padded_size(5, ()) == 5


def test_batcher_groups_concurrent_requests_and_returns_each_its_rows():
    batches = []

    def run(inputs):
        time.sleep(0.01)
        return {"double": inputs["x"] * 2}

    batcher = SignatureBatcher(run, BatchingParameters(max_batch_size=16, batch_timeout_micros=20000,
                                                       num_batch_threads=1, allowed_batch_sizes=(8, 16)),
                               on_batch=lambda size, padded: batches.append((size, padded)))
    results = {}

    def client(index):
        rows = np.full((1 + index % 3, 2), index, np.int64)
        results[index] = (rows, batcher.submit({"x": rows}, rows.shape[0], timeout=10))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.stop()
    for rows, outputs in results.values():
        np.testing.assert_array_equal(outputs["double"], rows * 2)
    assert sum(size for size, _ in batches) == sum(1 + index % 3 for index in range(24))
    assert max(size for size, _ in batches) > 3, batches  # requests were really batched together
    assert all(padded in (8, 16) for _, padded in batches)


def test_batcher_splits_large_requests_and_reports_full_queue_and_deadline():
    release = threading.Event()

    def run(inputs):
        release.wait(5)
        return {"y": inputs["x"] + 1}

    batcher = SignatureBatcher(run, BatchingParameters(max_batch_size=4, batch_timeout_micros=0,
                                                       max_enqueued_batches=1, num_batch_threads=1))
    release.set()
    big = np.arange(10)
    np.testing.assert_array_equal(batcher.submit({"x": big}, 10, timeout=5)["y"], big + 1)
    release.clear()
    blocker = threading.Thread(target=lambda: batcher.submit({"x": np.arange(4)}, 4, timeout=5))
    blocker.start()
    time.sleep(0.2)  # the thread now runs the blocker's batch; the queue is empty
    with pytest.raises(DeadlineExceededError):
        batcher.submit({"x": np.arange(3)}, 3, timeout=0.2)
    queued = threading.Thread(target=lambda: batcher.submit({"x": np.arange(4)}, 4, timeout=5))
    queued.start()
    time.sleep(0.2)
    with pytest.raises(UnavailableError, match="queue is full"):
        batcher.submit({"x": np.arange(2)}, 2, timeout=1)
    release.set()
    blocker.join()
    queued.join()
    batcher.stop()


def test_async_batcher_batches_coroutines_splits_large_requests_and_times_out():
    """submit_async (the gRPC server's path): one batch thread serves many coroutines of one loop."""
    batches = []
    release = threading.Event()
    release.set()

    def run(inputs):
        release.wait(5)
        time.sleep(0.01)
        return {"double": inputs["x"] * 2}

    batcher = SignatureBatcher(run, BatchingParameters(max_batch_size=16, batch_timeout_micros=20000,
                                                       max_enqueued_batches=4, num_batch_threads=1),
                               on_batch=lambda size, padded: batches.append(size))

    async def scenario():
        rows = [np.full((1 + index % 3, 2), index, np.int64) for index in range(24)]
        answers = await asyncio.gather(*[batcher.submit_async({"x": row}, row.shape[0], timeout=10)
                                         for row in rows])
        for row, answer in zip(rows, answers):
            np.testing.assert_array_equal(answer["double"], row * 2)
        big = np.arange(40).reshape(40, 1)  # more than max_batch_size: split, run, joined in order
        np.testing.assert_array_equal((await batcher.submit_async({"x": big}, 40, timeout=10))["double"], big * 2)
        release.clear()  # the batch thread now hangs in run(): a short deadline expires
        with pytest.raises(DeadlineExceededError):
            await batcher.submit_async({"x": np.ones((1, 2), np.int64)}, 1, timeout=0.3)
        release.set()

    asyncio.run(scenario())
    batcher.stop()
    assert max(batches[:10]) > 3, batches  # the 24 coroutines were really batched together
    assert sum(batches) >= sum(1 + index % 3 for index in range(24)) + 40


def test_tensor_proto_fast_paths_match_tensorflow():
    """protocol's numpy.frombuffer / tensor_content paths give what tf.make_ndarray/make_tensor_proto give."""
    import tensorflow as tf

    from tfprod.serving import protocol

    for array in (np.random.RandomState(0).rand(3, 28, 28).astype(np.float32), np.arange(6, dtype=np.int64),
                  np.array([[True, False]]), np.arange(4, dtype=np.uint8).reshape(2, 2), np.float64(2.5),
                  np.array([b"a", b"bc"], dtype=object), np.zeros((0, 3), np.float32)):
        proto = tf.make_tensor_proto(array)
        decoded = protocol.array_from_tensor_proto("x", proto)
        assert decoded.dtype == np.asarray(array).dtype and decoded.shape == np.asarray(array).shape
        np.testing.assert_array_equal(decoded, array)
        encoded = protocol.tensor_proto(np.asarray(array))
        np.testing.assert_array_equal(tf.make_ndarray(encoded), array)
        assert encoded.dtype == proto.dtype
    broken = tf.make_tensor_proto(np.ones((2, 2), np.float32))
    broken.tensor_content = broken.tensor_content[:-4]
    with pytest.raises(InvalidArgumentError, match="tensor_content holds 12 bytes"):
        protocol.array_from_tensor_proto("image", broken)


@pytest.mark.parametrize("value", [
    [[1.0, 2], [3, 4]], [[True, False]], [1, 2, 3], 5, 2.5, True, [[1, 2], [3]], [], [[]], [1, True],
    [1.5, True], [2 ** 63], [-2 ** 63], [2 ** 64], ["a", "b"], [{"b64": "aGVsbG8="}], [[1], 2],
    [float("nan"), 1.0], [[[0.25] * 28] * 28], [1.5, 10 ** 400], [1, 10 ** 400], [[[[1]]] * 2] * 3,
    [[[1]], [2]], json.loads("[" * 40 + "1" + "]" * 40), json.loads("[" * 32 + "1" + "]" * 32)])
def test_json_tensor_fast_path_agrees_with_the_general_decoder(value, monkeypatch):
    """The C-speed decoding of regular numeric lists gives the general walk's array or error."""
    def decode():
        try:
            return json_codec.tensor_from_json(value), None
        except InvalidArgumentError as error:
            return None, str(error)

    fast, fast_error = decode()
    monkeypatch.setattr(json_codec, "_numeric_tensor_fast", lambda *_arguments: None)
    general, general_error = decode()
    assert fast_error == general_error
    if general is not None:
        assert fast.dtype == general.dtype and fast.shape == general.shape
        np.testing.assert_array_equal(fast, general)


# ----- metrics --------------------------------------------------------------------------------
def test_metrics_text_format():
    metrics = ServerMetrics()
    metrics.record_request("m", 3, "predict", "grpc", "OK", 0.004)
    metrics.record_request("m", 3, "predict", "grpc", "OK", 0.2)
    metrics.batch_size.observe(5, model="m", version="3", signature="s")
    text = metrics.render()
    labels = 'model="m",version="3",api="predict",protocol="grpc",status="OK"'
    assert f"tfprod_serving_request_count{{{labels}}} 2\n" in text
    assert f'tfprod_serving_request_latency_seconds_bucket{{{labels},le="0.005"}} 1\n' in text
    assert f'tfprod_serving_request_latency_seconds_bucket{{{labels},le="+Inf"}} 2\n' in text
    assert 'tfprod_serving_batch_size_bucket{model="m",version="3",signature="s",le="8"} 1' in text


# ----- model manager --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def examples_model(tmp_path_factory):
    return build_examples_model(str(tmp_path_factory.mktemp("examples_model") / "model"))


def _manager(base_path, policy=None, labels=None, batching=None):
    config = config_lib.model_config_from_flags("ex", str(base_path))
    model = config.model_config_list.config[0]
    if policy is not None:
        model.model_version_policy.CopyFrom(policy)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return ModelManager(config, batching=batching, poll_seconds=0)


def _states(manager):
    return {status.version: State.Name(status.state) for status in manager.version_statuses("ex")}


def test_manager_policies_labels_and_failed_loads(tmp_path, examples_model):
    base = tmp_path / "ex"
    copy_version(examples_model, str(base), 1)
    policy = model_server_config_pb2.ModelConfig().model_version_policy
    policy.latest.num_versions = 2
    manager = _manager(base, policy, labels={"stable": 1})
    manager.start()
    assert _states(manager) == {1: "AVAILABLE"}
    copy_version(examples_model, str(base), 2)
    copy_version(examples_model, str(base), 3)
    manager.poll_once()
    assert _states(manager) == {2: "AVAILABLE", 3: "AVAILABLE"}  # latest{2}: version 1 unloaded
    assert manager.resolve_version("ex") == 3
    with pytest.raises(NotFoundError, match="Specific"):
        manager.resolve_version("ex", label="stable")  # label points at the unloaded version 1
    with pytest.raises(NotFoundError, match="Unrecognized servable version label"):
        manager.resolve_version("ex", label="nope")
    with pytest.raises(NotFoundError, match="no model named"):
        manager.resolve_version("other")

    # A corrupt newer version is reported with its error; the previous ones keep serving.
    (base / "4").mkdir()
    (base / "4" / "saved_model.pb").write_bytes(b"not a protobuf")
    manager.poll_once()
    statuses = {status.version: status for status in manager.version_statuses("ex")}
    assert State.Name(statuses[4].state) == "END" and statuses[4].status.error_message
    assert manager.resolve_version("ex") == 3
    with manager.servable("ex") as servable:
        _, values = servable.regress("regress_x", [example(1, 2).SerializeToString()])
    assert values.tolist() == [3.0]
    assert manager.metrics.load_events.value(model="ex", version="4", result="error") == 1
    # Once fixed on disk, it loads on the next poll.
    shutil.rmtree(base / "4")
    copy_version(examples_model, str(base), 4)
    manager.poll_once()
    assert manager.resolve_version("ex") == 4
    manager.stop()


def test_failed_newest_version_leaves_the_previous_one_serving(tmp_path, examples_model):
    """latest{1}: a corrupt version 2 must not take version 1 offline."""
    base = tmp_path / "ex"
    copy_version(examples_model, str(base), 1)
    manager = _manager(base)
    manager.start()
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"garbage")
    manager.poll_once()
    manager.poll_once()  # unchanged on disk: not retried, nothing unloaded
    assert _states(manager) == {1: "AVAILABLE", 2: "END"}
    assert manager.resolve_version("ex") == 1
    assert manager.metrics.load_events.value(model="ex", version="2", result="error") == 1
    shutil.rmtree(base / "2")
    copy_version(examples_model, str(base), 3)
    manager.poll_once()
    assert _states(manager) == {3: "AVAILABLE"}
    manager.stop()


def test_unload_waits_for_in_flight_requests(tmp_path, examples_model):
    base = tmp_path / "ex"
    copy_version(examples_model, str(base), 1)
    manager = _manager(base)
    manager.start()
    unloaded = threading.Event()
    with manager.servable("ex") as servable:
        copy_version(examples_model, str(base), 2)
        poller = threading.Thread(target=lambda: (manager.poll_once(), unloaded.set()))
        poller.start()
        time.sleep(1.0)
        # Version 2 is loaded, version 1 waits for this request before it is unloaded.
        assert manager.resolve_version("ex") == 2
        assert not unloaded.is_set()
        _, outputs = servable.predict("", {"x": np.array([[1.0, 1.0]], np.float32)})
        assert outputs["sum"].tolist() == [2.0]
    poller.join(10)
    assert unloaded.is_set()
    assert _states(manager) == {2: "AVAILABLE"}
    manager.stop()


def test_values_of_the_wrong_kind_get_a_hint_naming_the_signature_that_takes_them(examples_model):
    """JSON numbers sent to a signature of serialized tf.Examples (the pipeline's serving_default)
    are refused with the signature that takes numbers named, and the other way round (issue 18)."""
    from tfprod.serving.servable import Servable

    servable = Servable("ex", 1, examples_model)
    with pytest.raises(InvalidArgumentError) as raised:
        servable.predict("regress_x", {"inputs": np.array([1.0, 2.0])})
    assert "input 'inputs' expects string values but got float64" in raised.value.message
    assert ("signature 'serving_default' takes numbers: name it in the request "
            '(REST: "signature_name": "serving_default"') in raised.value.message
    with pytest.raises(InvalidArgumentError) as raised:
        servable.predict("", {"x": np.array([[b"a", b"b"]], object)})
    assert "signature 'classify_x' or 'regress_x' takes strings" in raised.value.message
    # gRPC's typed tensors keep TF Serving's own message.
    with pytest.raises(InvalidArgumentError, match=r"^Expects arg 'inputs' to be string but float64 is provided$"):
        servable.predict("regress_x", {"inputs": np.array([1.0, 2.0])}, strict_dtypes=True)


def test_servable_checks_dtypes_shapes_and_inputs(examples_model):
    from tfprod.serving.servable import Servable

    servable = Servable("ex", 1, examples_model)
    with pytest.raises(InvalidArgumentError, match="shape"):
        servable.predict("", {"x": np.zeros([2, 3], np.float32)})
    with pytest.raises(InvalidArgumentError, match="expects float32 values but got string"):
        servable.predict("", {"x": np.array([[b"a", b"b"]], object)})
    with pytest.raises(InvalidArgumentError, match="to be float32 but float64"):
        servable.predict("", {"x": np.zeros([1, 2])}, strict_dtypes=True)
    with pytest.raises(InvalidArgumentError, match="unknown"):
        servable.predict("", {"x": np.zeros([1, 2], np.float32), "y": np.zeros([1])})
    with pytest.raises(NotFoundError, match="not found in signature def"):
        servable.predict("nope", {"x": np.zeros([1, 2], np.float32)})
    from tfprod.serving.errors import FailedPreconditionError
    with pytest.raises(FailedPreconditionError, match="tensorflow/serving/classify"):
        servable.classify("regress_x", [example(1, 2).SerializeToString()])
    _, classes, scores = servable.classify("classify_x", [example(1, 2).SerializeToString()])
    assert classes.tolist() == [[b"negative", b"positive"]]
    assert scores[0, 1] > 0.99
    servable.close()


# ----- deployment files for the real TF Serving -----------------------------------------------
DEPLOY_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "serving" / "deploy"


def _parse_serve_flags(flags):
    from tfprod import cli

    return cli.build_parser().parse_args(["serve", *flags])


def test_deploy_config_files_are_read_by_tfprod_serve():
    config = config_lib.load_model_server_config(str(DEPLOY_DIR / "models.config"))
    assert [model.base_path for model in config.model_config_list.config] == ["/models/mnist_cnn"]
    batching = config_lib.load_batching_parameters(str(DEPLOY_DIR / "batching.config"))
    assert batching.max_batch_size == 256 and batching.allowed_batch_sizes[-1] == 256
    assert config_lib.load_monitoring_config(str(DEPLOY_DIR / "monitoring.config")).prometheus_enabled


def test_compose_and_kubernetes_flags_work_for_both_servers():
    """The flags given to tensorflow_model_server are exactly the ones tfprod serve takes."""
    import yaml

    compose = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["tfserving"]["command"] == services["tfprod"]["command"]
    assert services["tfserving"]["volumes"] == services["tfprod"]["volumes"]
    assert services["tfserving"]["entrypoint"] == ["tensorflow_model_server"]
    args = _parse_serve_flags(services["tfprod"]["entrypoint"][2:] + services["tfprod"]["command"])
    assert (args.port, args.rest_api_port, args.enable_batching, args.host) == (8500, 8501, True, "0.0.0.0")
    assert args.model_config_file == "/config/models.config"

    documents = list(yaml.safe_load_all((DEPLOY_DIR / "kubernetes.yaml").read_text()))
    kinds = [document["kind"] for document in documents]
    assert kinds == ["ConfigMap", "Deployment", "Service", "NetworkPolicy"]
    container = documents[1]["spec"]["template"]["spec"]["containers"][0]
    args = _parse_serve_flags(container["args"])
    assert args.batching_parameters_file == "/config/batching.config"
    assert args.monitoring_config_file == "/config/monitoring.config"
    config_map = documents[0]["data"]
    assert config_map["models.config"].strip() in (DEPLOY_DIR / "models.config").read_text()
    assert config_lib.parse_batching_parameters(config_map["batching.config"]) == \
        config_lib.load_batching_parameters(str(DEPLOY_DIR / "batching.config"))


def test_warmup_file_round_trip_and_replay(tmp_path, examples_model):
    """The warm-up writer's TFRecord of PredictionLogs is what Servable.warm_up replays."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from tfprod.serving import warmup
    from tfprod.serving.servable import Servable

    requests = warmup.image_warmup_requests("mnist_cnn", 28, 28, batch_sizes=(1, 3))
    assert [(request.model_spec.signature_name, tf.make_ndarray(next(iter(request.inputs.values()))).shape[0])
            for request in requests] == [("serving_raw", 1), ("serving_default", 1),
                                         ("serving_raw", 3), ("serving_default", 3)]
    version_dir = tmp_path / "1"
    shutil.copytree(examples_model, version_dir)
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([2, 2], np.float32)))
    path = warmup.write_warmup_requests(str(version_dir), [request, request])
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert prediction_log_pb2.PredictionLog.FromString(records[0]).predict_log.request == request
    servable = Servable("ex", 1, str(version_dir))
    assert servable.warm_up() == 2
    # A warm-up request the model rejects makes the load fail, as in TF Serving.
    bad = predict_pb2.PredictRequest()
    bad.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([2, 5], np.float32)))
    warmup.write_warmup_requests(str(version_dir), [bad])
    with pytest.raises(InvalidArgumentError, match="shape"):
        servable.warm_up()
    servable.close()


def test_request_scope_records_each_outcome_and_refuses_requests_while_draining():
    import types

    from tfprod.serving.service import ServingService

    service = ServingService(types.SimpleNamespace(metrics=ServerMetrics()))
    with service.request("predict", "grpc") as record:
        record.model, record.version = "m", 1
    for error in (NotFoundError("no such model"), ValueError("bug"), asyncio.CancelledError()):
        with pytest.raises(type(error)):
            with service.request("predict", "grpc") as record:
                record.model, record.version = "m", 1
                raise error
    count = service.metrics.request_count
    assert [count.value(model="m", version="1", api="predict", protocol="grpc", status=status)
            for status in ("OK", "NOT_FOUND", "INTERNAL", "CANCELLED")] == [1, 1, 1, 1]
    assert service.wait_drained(0.1)  # every scope left: nothing in flight
    service.start_draining()
    with pytest.raises(UnavailableError):
        with service.request("predict", "rest"):
            pass
    assert count.value(model="", version="", api="predict", protocol="rest", status="UNAVAILABLE") == 1


def test_negative_tensorflow_thread_counts_are_refused_before_tensorflow_is_touched():
    from tfprod.serving.server import configure_tensorflow_threads

    with pytest.raises(ConfigFileError, match="--tensorflow_intra_op_parallelism must be 0"):
        configure_tensorflow_threads(-1, 0)
    with pytest.raises(ConfigFileError, match="--tensorflow_inter_op_parallelism must be 0"):
        configure_tensorflow_threads(0, -2)
