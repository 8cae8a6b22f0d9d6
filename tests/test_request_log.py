"""Request logging (`tfprod serve --request_log_dir`): PredictionLog TFRecords, sampling, caps, drops.

A real ModelServer (gRPC and REST on 127.0.0.1, free ports) serves the small TF1-style model of
tests/serving_models.py (predict, classify and regress signatures); the logs are read back with
the stock tensorflow_serving.apis.prediction_log_pb2 and tf.data.TFRecordDataset.
"""

import glob
import math
import os
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import inference_pb2, prediction_log_pb2

from tfprod.serving import request_log
from tfprod.serving.client import RestClient
from tfprod.serving.grpc_client import GrpcClient
from tfprod.serving.metrics import ServerMetrics
from tfprod.serving.server import ModelServer, ServerOptions
from tests.serving_models import build_examples_model, copy_version, example

MONITORING = 'prometheus_config { enable: true, path: "/metrics" }\n'


def _read_logs(directory):
    """Every record of the finished files, parsed with the stock PredictionLog (TFRecordDataset checks CRCs)."""
    logs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.tfrecord"))):
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(record.numpy())
            logs.append(log)
    return logs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("request_log")
    copy_version(build_examples_model(str(root / "model")), str(root / "ex"), 1)
    (root / "monitoring.config").write_text(MONITORING)
    options = ServerOptions(port=0, rest_api_port=0, model_name="ex", model_base_path=str(root / "ex"),
                            monitoring_config_file=str(root / "monitoring.config"),
                            file_system_poll_wait_seconds=0, enable_model_warmup=False,
                            request_log_dir=str(root / "logs"), request_log_sampling_rate=1.0,
                            request_log_max_file_bytes=4096)
    model_server = ModelServer(options)
    model_server.start()
    yield model_server
    model_server.stop()


def _swap_logger(server, directory, **options):
    """A fresh RequestLogger on the running server (the server's own stays aside); returns it."""
    metrics = server.service.metrics
    logger = request_log.RequestLogger(request_log.RequestLogOptions(str(directory), **options),
                                       drops=metrics.record_log_drop, written=metrics.record_log_written)
    server.service.request_log = logger
    return logger


def _one_of_each(server, rest, grpc_client, index):
    """One call of every logged kind; returns the kinds sent."""
    x0, x1 = float(index), 0.5
    answer = rest.predict("ex", instances=[[x0, x1]])
    assert answer["predictions"][0]["sum"] == pytest.approx(x0 + x1)
    rest.classify("ex", [{"x": [x0, x1]}], signature_name="classify_x")
    rest.regress("ex", [{"x": [x0, x1]}], signature_name="regress_x")
    outputs = grpc_client.predict("ex", {"x": np.array([[x0, x1]], np.float32)})
    assert outputs["sum"][0] == pytest.approx(x0 + x1)
    grpc_client.classify("ex", [example(x0, x1)], signature_name="classify_x")
    grpc_client.regress("ex", [example(x0, x1)], signature_name="regress_x")
    multi = inference_pb2.MultiInferenceRequest()
    for method, signature in (("tensorflow/serving/classify", "classify_x"),
                              ("tensorflow/serving/regress", "regress_x")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "ex"
        task.model_spec.signature_name = signature
    multi.input.example_list.examples.add().CopyFrom(example(x0, x1))
    grpc_client._invoke(grpc_client.prediction.MultiInference, multi)
    return 7


def test_logs_under_concurrent_load_are_complete_readable_and_never_half_written(server, tmp_path):
    logs_dir = tmp_path / "logs"
    logger = _swap_logger(server, logs_dir, sampling_rate=1.0, max_file_bytes=4096)
    threads, sent, failures = [], [0] * 6, []
    seen_while_running = []

    def client(slot):
        rest = RestClient(f"127.0.0.1:{server.rest_port}")
        grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
        try:
            for index in range(8):
                sent[slot] += _one_of_each(server, rest, grpc_client, slot * 100 + index)
        except Exception as error:  # reported below
            failures.append(error)
        finally:
            rest.close()
            grpc_client.close()

    def reader():  # a reader globbing *.tfrecord while files rotate never meets a half-written one
        while any(thread.is_alive() for thread in threads[:6]):
            seen_while_running.extend(_read_logs(str(logs_dir)))

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(6)]
    threads.append(threading.Thread(target=reader))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    logger.close()
    assert not glob.glob(str(logs_dir / "*.tmp")), "close() leaves no file half-written"
    names = sorted(os.listdir(logs_dir))
    assert len(names) > 3, f"4 KiB files rotate under this load: {names}"
    for name in names:
        prefix, stamp, pid, seq = name[:-len(".tfrecord")].split("-")
        assert (prefix, len(stamp), stamp[8], pid) == ("prediction_log", 21, "T", str(os.getpid())) and seq.isdigit()
    logs = _read_logs(str(logs_dir))
    assert len(logs) == sum(sent) == 6 * 8 * 7
    kinds = {}
    for log in logs:
        kinds[log.WhichOneof("log_type")] = kinds.get(log.WhichOneof("log_type"), 0) + 1
        spec = log.log_metadata.model_spec
        assert (spec.name, spec.version.value) == ("ex", 1)
        assert abs(log.log_metadata.timestamp_secs - time.time()) < 600
    assert kinds == {"predict_log": 6 * 8 * 2, "classify_log": 6 * 8 * 2, "regress_log": 6 * 8 * 2,
                     "multi_inference_log": 6 * 8}
    # REST's JSON predict is logged as the PredictRequest gRPC would send: the input named, in float32.
    rest_like = [log.predict_log for log in logs if log.WhichOneof("log_type") == "predict_log"]
    for entry in rest_like:
        assert entry.request.model_spec.signature_name in ("", "serving_default")
        inputs = tf.make_ndarray(entry.request.inputs["x"])
        assert inputs.dtype == np.float32 and inputs.shape == (1, 2)
        assert tf.make_ndarray(entry.response.outputs["sum"])[0] == pytest.approx(inputs.sum())
    assert {log.predict_log.response.model_spec.signature_name for log in logs
            if log.HasField("predict_log")} == {"serving_default"}
    for log in logs:
        if log.HasField("classify_log"):
            assert log.log_metadata.model_spec.signature_name == "classify_x"
            assert len(log.classify_log.request.input.example_list.examples) == 1
            assert len(log.classify_log.response.result.classifications[0].classes) == 2
    assert all(isinstance(log, prediction_log_pb2.PredictionLog) for log in seen_while_running)


def test_sampling_rate_is_honoured(server, tmp_path):
    # The draw itself, seeded: 20,000 requests at 10% land within 6 standard deviations (deterministic).
    logger = request_log.RequestLogger(request_log.RequestLogOptions(str(tmp_path / "unit"), sampling_rate=0.1),
                                       seed=20)
    drawn = sum(logger.sample() for _ in range(20000))
    assert abs(drawn - 2000) < 6 * math.sqrt(20000 * 0.1 * 0.9)
    assert not any(request_log.RequestLogger(request_log.RequestLogOptions(
        str(tmp_path / "zero"), sampling_rate=0.0)).sample() for _ in range(1000))
    logger.close()
    # Through the real server (unseeded): 300 REST predicts at 30%; 90 expected, sd 7.9, bound 8 sd.
    logger = _swap_logger(server, tmp_path / "server", sampling_rate=0.3)
    rest = RestClient(f"127.0.0.1:{server.rest_port}")
    for index in range(300):
        rest.predict("ex", instances=[[float(index), 0.0]])
    rest.close()
    logger.close()
    server_logs = _read_logs(str(tmp_path / "server"))
    assert {log.log_metadata.sampling_config.sampling_rate for log in server_logs} == {0.3}
    logged = len(server_logs)
    assert abs(logged - 90) < 8 * math.sqrt(300 * 0.3 * 0.7), logged


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    metrics = ServerMetrics()
    logger = request_log.RequestLogger(
        request_log.RequestLogOptions(str(tmp_path), sampling_rate=1.0, queue_size=2),
        drops=metrics.record_log_drop, written=metrics.record_log_written)
    release = threading.Event()

    def slow_build(timestamp):  # holds the writer so the queue fills
        release.wait(30)
        return prediction_log_pb2.PredictionLog()

    for _ in range(10):
        logger.submit(slow_build)  # returns at once even though the writer is stuck
    release.set()
    assert logger.flush()
    dropped = metrics.request_log_drops.value(reason="queue_full")
    assert 7 <= dropped <= 8  # one in the writer's hands, two queued (the first may be taken before the rest)
    assert metrics.request_log_written.value() == 10 - dropped
    logger.close()
    assert 'tfprod_serving_request_log_drop_count{reason="queue_full"}' in metrics.render()


def test_the_total_cap_deletes_the_oldest_files_and_drops_what_cannot_fit(tmp_path):
    metrics = ServerMetrics()
    options = request_log.RequestLogOptions(str(tmp_path), sampling_rate=1.0, max_file_bytes=1000,
                                            max_total_bytes=3000)
    logger = request_log.RequestLogger(options, drops=metrics.record_log_drop, written=metrics.record_log_written)

    def build(size, timestamp):
        log = prediction_log_pb2.PredictionLog()
        log.log_metadata.model_spec.name = "m" * size
        log.log_metadata.timestamp_secs = timestamp
        return log

    for _ in range(60):
        logger.submit(build, 200)
        assert logger.flush()
    logger.submit(build, 5000)  # larger than the whole cap: dropped, counted
    logger.close()
    files = sorted(glob.glob(str(tmp_path / "*.tfrecord")))
    assert sum(os.path.getsize(path) for path in files) <= 3000
    assert len(files) >= 3 and int(files[0].rsplit("-", 1)[1].split(".")[0]) > 1, "the oldest were deleted"
    assert metrics.request_log_drops.value(reason="over_cap") == 1
    assert all(len(log.log_metadata.model_spec.name) == 200 for log in _read_logs(str(tmp_path)))


def test_rotation_by_time_finishes_an_idle_file(tmp_path):
    logger = request_log.RequestLogger(request_log.RequestLogOptions(str(tmp_path), sampling_rate=1.0,
                                                                     rotate_seconds=0.3))
    logger.submit(lambda timestamp: prediction_log_pb2.PredictionLog())
    assert logger.flush()
    deadline = time.monotonic() + 10
    while not glob.glob(str(tmp_path / "*.tfrecord")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(glob.glob(str(tmp_path / "*.tfrecord"))) == 1 and not glob.glob(str(tmp_path / "*.tmp"))
    logger.close()


def test_requests_never_fail_when_the_log_directory_breaks(server, tmp_path):
    logs_dir = tmp_path / "logs"
    metrics = server.service.metrics
    logger = _swap_logger(server, logs_dir, sampling_rate=1.0, max_file_bytes=600)
    before = metrics.request_log_drops.value(reason="write_error")
    rest = RestClient(f"127.0.0.1:{server.rest_port}")
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    for index in range(5):
        rest.predict("ex", instances=[[float(index), 1.0]])
    assert logger.flush()
    # The directory disappears and a plain file takes its place: no file can be opened there (even as root).
    shutil.rmtree(logs_dir)
    logs_dir.write_text("not a directory")
    for index in range(40):
        assert rest.predict("ex", instances=[[float(index), 1.0]])["predictions"][0]["sum"] == pytest.approx(
            index + 1.0)
        assert grpc_client.predict("ex", {"x": np.array([[index, 1.0]], np.float32)})["sum"][0] == pytest.approx(
            index + 1.0)
    assert logger.flush()
    logger.close()
    assert metrics.request_log_drops.value(reason="write_error") - before >= 40
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/metrics", timeout=10).read().decode()
    assert 'tfprod_serving_request_log_drop_count{reason="write_error"}' in page
    assert "tfprod_serving_request_log_record_count" in page
    rest.close()
    grpc_client.close()


def test_bad_flags_are_config_errors(tmp_path):
    from tfprod.serving.errors import ConfigFileError

    for flags, fragment in (({"request_log_sampling_rate": 1.5}, "--request_log_sampling_rate"),
                            ({"request_log_max_total_bytes": 0}, "--request_log_max_total_bytes"),
                            ({"request_log_max_file_bytes": 10, "request_log_max_total_bytes": 5},
                             "--request_log_max_file_bytes")):
        with pytest.raises(ConfigFileError, match=fragment):
            ServerOptions(request_log_dir=str(tmp_path), **flags).request_log_options()
    assert ServerOptions().request_log_options() is None


def test_the_server_finishes_its_log_file_on_stop(server):
    """The module's own server logs at rate 1 into its --request_log_dir (checked after its other tests)."""
    logger = server.request_log
    server.service.request_log = logger  # the other tests swapped theirs in
    rest = RestClient(f"127.0.0.1:{server.rest_port}")
    rest.predict("ex", instances=[[1.0, 2.0]])
    rest.close()
    assert logger.flush()
    directory = logger.options.directory
    assert glob.glob(os.path.join(directory, "*.tmp"))  # being written
    logger.close()
    assert not glob.glob(os.path.join(directory, "*.tmp"))
    logs = _read_logs(directory)
    assert logs and logs[-1].log_metadata.model_spec.name == "ex"
    assert tf.make_ndarray(logs[-1].predict_log.request.inputs["x"]).tolist() == [[1.0, 2.0]]


def test_a_full_disk_drops_and_counts_and_the_next_file_carries_on(tmp_path):
    """The open log file's descriptor is pointed at /dev/full, so the kernel answers ENOSPC to the next write."""
    metrics = ServerMetrics()
    logger = request_log.RequestLogger(request_log.RequestLogOptions(str(tmp_path), sampling_rate=1.0),
                                       drops=metrics.record_log_drop, written=metrics.record_log_written)

    def build(name, timestamp):
        log = prediction_log_pb2.PredictionLog()
        log.log_metadata.model_spec.name = name
        return log

    logger.submit(build, "before")
    assert logger.flush()
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, logger._file.fileno())  # the disk is full from now on, for this file
    os.close(full)
    logger.submit(build, "lost")
    logger.submit(build, "after")
    assert logger.flush()
    logger.close()
    assert metrics.request_log_drops.value(reason="disk_full") == 1
    assert [log.log_metadata.model_spec.name for log in _read_logs(str(tmp_path))] == ["after"]
    assert not glob.glob(str(tmp_path / "*.tmp"))


def test_the_serve_flags_reach_the_server_options(monkeypatch, tmp_path):
    """`tfprod serve --request_log_*` (the parser and _serve_command) hands every flag to ServerOptions."""
    from tfprod import cli
    from tfprod.serving import server as server_module

    seen = {}

    class Stop(Exception):
        pass

    def capture(options):
        seen["options"] = options
        raise Stop

    monkeypatch.setattr(server_module, "ModelServer", capture)
    with pytest.raises(Stop):
        cli.main(["serve", "--model_base_path", str(tmp_path), "--request_log_dir", str(tmp_path / "logs"),
                  "--request_log_sampling_rate", "0.25", "--request_log_max_file_bytes", "1000",
                  "--request_log_rotate_seconds", "60", "--request_log_max_total_bytes", "5000",
                  "--request_log_queue_size", "7"])
    log_options = seen["options"].request_log_options()
    assert (log_options.directory, log_options.sampling_rate, log_options.max_file_bytes, log_options.rotate_seconds,
            log_options.max_total_bytes, log_options.queue_size) == (str(tmp_path / "logs"), 0.25, 1000, 60.0, 5000, 7)
