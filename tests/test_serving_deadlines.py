"""Work nobody waits for is not run: gRPC deadlines and REST clients that went away.

Real gRPC and REST servers (in this process, on 127.0.0.1) in front of a ModelManager whose
servables count their model calls and make each take SLOW_CALL_SECONDS, with one thread for
model calls, so a second request has to wait for the first. Batched requests are covered by
the batcher's own check.
"""

import asyncio
import concurrent.futures
import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

from tfprod.serving import config as config_lib
from tfprod.serving import grpc_server, rest
from tfprod.serving import service as service_module
from tfprod.serving.batching import SignatureBatcher
from tfprod.serving.config import BatchingParameters
from tfprod.serving.errors import DeadlineExceededError
from tfprod.serving.model_manager import ModelManager
from tfprod.serving.servable import Servable
from tfprod.serving.service import ServingService
from tests.serving_models import build_examples_model, copy_version, example

SLOW_CALL_SECONDS = 1.0


class CountingServable(Servable):
    """A Servable whose model calls are counted and slowed down."""

    calls = []
    lock = threading.Lock()

    def _call(self, signature, inputs):
        with self.lock:
            self.calls.append(inputs)
        time.sleep(SLOW_CALL_SECONDS)
        return super()._call(signature, inputs)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("deadlines")
    copy_version(build_examples_model(str(root / "model")), str(root / "ex"), 1)
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(root / "ex")), poll_seconds=0,
                           warm_up=False, servable_factory=CountingServable)
    manager.start()
    yield ServingService(manager, default_timeout_seconds=30)
    manager.stop(drain_seconds=5)


@pytest.fixture()
def calls():
    CountingServable.calls.clear()
    return CountingServable.calls


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


# ----- gRPC -------------------------------------------------------------------------------------------
def _grpc_request(value: float) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ex"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[value, 1.0]], np.float32)))
    return request


def _sum(response: predict_pb2.PredictResponse) -> list:
    return tf.make_ndarray(response.outputs["sum"]).tolist()


def test_grpc_predict_past_its_deadline_before_the_model_call_is_not_run(service, calls, monkeypatch):
    """The deadline passes while the request is decoded (a large request on a busy server): the
    client gets DEADLINE_EXCEEDED and the model is never called for it."""
    server, port = grpc_server.create_server(service, 0, max_workers=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert _sum(stub.Predict(_grpc_request(1.0), timeout=30)) == [2.0]
        assert len(calls) == 1
        decode = service_module.arrays_for_signature

        def slow_decode(*args, **kwargs):
            time.sleep(0.6)
            return decode(*args, **kwargs)

        monkeypatch.setattr(service_module, "arrays_for_signature", slow_decode)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(_grpc_request(2.0), timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.6 + SLOW_CALL_SECONDS)  # the handler has finished whatever it was going to do
        assert len(calls) == 1
        # A request with time to spare still runs.
        assert _sum(stub.Predict(_grpc_request(3.0), timeout=30)) == [4.0]
        assert len(calls) == 2
    finally:
        channel.close()
        server.stop(grace=0).wait(10)


class ExpiredContext:
    """A grpc.aio servicer context whose client deadline has passed."""

    def __init__(self):
        self.aborted = None

    def time_remaining(self):
        return 0.0

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize("method", ["Predict", "Classify"])
def test_grpc_handlers_do_not_start_the_model_after_the_deadline(service, calls, method):
    """Deterministic form of the test above: the handler sees a passed deadline before the model call.

    (Without the check the model may still be spared, by grpc cancelling the handler before a pool
    thread takes the call: a race the test above cannot control.)"""
    if method == "Predict":
        request = _grpc_request(1.0)
    else:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = "ex", "classify_x"
        request.input.example_list.examples.append(example(1.0, 2.0))
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        servicer = grpc_server.PredictionServicer(service, executor)
        context = ExpiredContext()
        with pytest.raises(grpc.aio.AbortError):
            asyncio.run(getattr(servicer, method)(request, context))
    assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED, context.aborted
    assert "deadline passed before the model ran" in context.aborted[1]
    assert calls == []


def test_batcher_refuses_a_request_whose_deadline_has_passed():
    runs = []
    batcher = SignatureBatcher(lambda inputs: runs.append(inputs) or inputs,
                               BatchingParameters(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1),
                               name="m/1/s")
    try:
        with pytest.raises(DeadlineExceededError, match="deadline passed before it was queued"):
            batcher.submit({"x": np.zeros((1, 2))}, 1, timeout=0.0)
        assert batcher.submit({"x": np.ones((1, 2))}, 1, timeout=10.0)["x"].tolist() == [[1.0, 1.0]]
        assert len(runs) == 1
    finally:
        batcher.stop()


# ----- REST -------------------------------------------------------------------------------------------
def _rest_request(value: float) -> bytes:
    body = json.dumps({"instances": [[value, 1.0]]}).encode()
    return b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_rest_requests_of_a_client_that_went_away_are_not_run(service, calls):
    """While one request holds the only model thread, a client sends a request and disconnects, and
    another pipelines two and disconnects: none of those three reaches the model."""
    server = rest.RestServer(("127.0.0.1", 0), service, max_threads=1)
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as busy:
            busy.sendall(_rest_request(1.0))
            assert _wait_for(lambda: len(calls) == 1)  # the model thread is taken for SLOW_CALL_SECONDS
            for raw in (_rest_request(2.0), _rest_request(3.0) + _rest_request(4.0)):
                with socket.create_connection(("127.0.0.1", port), timeout=30) as gone:
                    gone.sendall(raw)
                    time.sleep(0.1)  # read and queued by the server
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += busy.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
        time.sleep(SLOW_CALL_SECONDS + 0.5)  # time for a wrongly queued call to start
        assert [inputs["x"][0, 0] for inputs in calls] == [1.0]
    finally:
        server.shutdown()
        server.server_close()
