"""The gRPC API (TF Serving's PredictionService and ModelService) over the shared service.

The server is grpc.aio's, on an asyncio event loop of its own thread. Predict runs on the loop:
it decodes the request, queues it in the batcher and awaits its slice of the batch, so requests
waiting for a batch hold no thread. The other methods (and Predict on a model without batching)
run their blocking work in a thread pool (ServerOptions.grpc_max_threads threads, 64 by default).
"""

import asyncio
import concurrent.futures
import logging
import threading
from typing import Awaitable, Callable, Optional, Tuple

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from tfprod.serving import protocol, request_log
from tfprod.serving.errors import DeadlineExceededError, InvalidArgumentError, ServingError
from tfprod.serving.event_loop import EventLoopThread
from tfprod.serving.servable import CLASSIFY_METHOD, REGRESS_METHOD
from tfprod.serving.service import ServingService

LOG = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _spec(model_spec) -> Tuple[str, Optional[int], Optional[str]]:
    if not model_spec.name:
        raise InvalidArgumentError("model_spec.name is required")
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    if version is not None and label is not None:
        raise InvalidArgumentError("set model_spec.version or model_spec.version_label, not both")
    return model_spec.name, version, label


def _fill_spec(target, name: str, version: int, signature_name: Optional[str] = None) -> None:
    target.name = name
    target.version.value = version
    if signature_name is not None:
        target.signature_name = signature_name


def _remaining(context) -> Optional[float]:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e9 else None


def _check_deadline(context) -> None:
    """Work the client no longer waits for is not started: call just before the model runs.

    Raises:
        DeadlineExceededError: the client's deadline has passed (e.g. while a large request was decoded).
    """
    remaining = _remaining(context)
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError("the client's deadline passed before the model ran")


class _Base:
    def __init__(self, service: ServingService, executor: concurrent.futures.Executor):
        self.service = service
        self._executor = executor

    async def _run_async(self, api: str, context, handler: Callable[[object], Awaitable]):
        """Runs `await handler(record)`, turning errors into the RPC's status."""
        try:
            with self.service.request(api, "grpc") as record:
                return await handler(record)
        except ServingError as error:
            await context.abort(error.code, error.message)
        except Exception as error:  # report, never crash the server
            LOG.exception("%s failed", api)
            await context.abort(grpc.StatusCode.INTERNAL, f"{api} failed: {error}")

    async def _run(self, api: str, context, handler: Callable[[object], object]):
        """Runs the blocking handler(record) in the thread pool."""
        loop = asyncio.get_running_loop()
        return await self._run_async(api, context,
                                     lambda record: loop.run_in_executor(self._executor, handler, record))


class PredictionServicer(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    def _log(self, build, request, response) -> None:
        """Samples an answered call into the request log (--request_log_dir); never raises or blocks."""
        log = self.service.request_log
        if log is not None and log.sample():
            log.submit(build, request, response)

    def _logged(self, build, request, response):
        self._log(build, request, response)
        return response

    async def Predict(self, request: predict_pb2.PredictRequest, context):
        async def handle(record):
            name, version, label = _spec(request.model_spec)
            served, signature, outputs = await self.service.predict_tensor_protos_async(
                record, name, version, label, request.model_spec.signature_name, request.inputs,
                list(request.output_filter), _remaining(context),
                # decoding a large request can take longer than the deadline
                before_model=lambda: _check_deadline(context))
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, name, served, signature)
            for key, value in outputs.items():
                protocol.fill_tensor_proto(response.outputs[key], value)
            self._log(request_log.predict_log, request, response)
            return response
        return await self._run_async("predict", context, handle)

    def _classify(self, record, request, context) -> classification_pb2.ClassificationResponse:
        name, version, label = _spec(request.model_spec)
        examples = protocol.serialized_examples(request.input)
        _check_deadline(context)  # it may have waited for a thread of the pool
        served, signature, classes, scores = self.service.classify(
            record, name, version, label, request.model_spec.signature_name, examples, _remaining(context))
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, name, served, signature)
        fill_classifications(response.result, classes, scores, len(examples))
        return response

    def _regress(self, record, request, context) -> regression_pb2.RegressionResponse:
        name, version, label = _spec(request.model_spec)
        examples = protocol.serialized_examples(request.input)
        _check_deadline(context)
        served, signature, values = self.service.regress(
            record, name, version, label, request.model_spec.signature_name, examples, _remaining(context))
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, name, served, signature)
        for value in values:
            response.result.regressions.add(value=float(value))
        return response

    async def Classify(self, request, context):
        return await self._run("classify", context, lambda record: self._logged(
            request_log.classify_log, request, self._classify(record, request, context)))

    async def Regress(self, request, context):
        return await self._run("regress", context, lambda record: self._logged(
            request_log.regress_log, request, self._regress(record, request, context)))

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        def handle(record):
            if not request.tasks:
                raise InvalidArgumentError("MultiInferenceRequest has no tasks")
            specs = {(task.model_spec.name, task.model_spec.version.value if task.model_spec.HasField("version")
                      else None, task.model_spec.version_label) for task in request.tasks}
            if len(specs) != 1:
                raise InvalidArgumentError("all MultiInference tasks must name the same model and version")
            signatures = [task.model_spec.signature_name for task in request.tasks]
            if len(set(signatures)) != len(signatures):
                raise InvalidArgumentError("MultiInference tasks must use different signatures")
            response = inference_pb2.MultiInferenceResponse()
            for task in request.tasks:
                result = response.results.add()
                if task.method_name == CLASSIFY_METHOD:
                    sub = classification_pb2.ClassificationRequest(model_spec=task.model_spec, input=request.input)
                    answer = self._classify(record, sub, context)
                    result.model_spec.CopyFrom(answer.model_spec)
                    result.classification_result.CopyFrom(answer.result)
                elif task.method_name == REGRESS_METHOD:
                    sub = regression_pb2.RegressionRequest(model_spec=task.model_spec, input=request.input)
                    answer = self._regress(record, sub, context)
                    result.model_spec.CopyFrom(answer.model_spec)
                    result.regression_result.CopyFrom(answer.result)
                else:
                    raise InvalidArgumentError(f"MultiInference supports methods {CLASSIFY_METHOD} and "
                                               f"{REGRESS_METHOD}, not {task.method_name!r}")
            return self._logged(request_log.multi_inference_log, request, response)
        return await self._run("multi_inference", context, handle)

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        def handle(record):
            name, version, label = _spec(request.model_spec)
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise InvalidArgumentError(
                    f"metadata_field must be exactly [\"signature_def\"], got {fields}")
            served, signature_map = self.service.signature_def_map(record, name, version, label)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_spec(response.model_spec, name, served)
            response.metadata["signature_def"].Pack(signature_map)
            return response
        return await self._run("get_model_metadata", context, handle)


def fill_classifications(result: classification_pb2.ClassificationResult, classes, scores, count: int) -> None:
    """Fills ClassificationResult from classes/scores arrays [N, K] (either may be None)."""
    for row in range(count):
        classifications = result.classifications.add()
        width = (classes if classes is not None else scores).shape[1]
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[row, column])


class ModelServicer(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService."""

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        def handle(record):
            name, version, label = _spec(request.model_spec)
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.extend(self.service.model_status(record, name, version, label))
            return response
        return await self._run("get_model_status", context, handle)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        def handle(record):
            self.service.reload_config(request.config)
            return model_management_pb2.ReloadConfigResponse()
        return await self._run("reload_config", context, handle)


class GrpcServer:
    """A started grpc.aio server on an event loop of its own thread.

    stop(grace) blocks nobody: it returns an event that is set once the server has stopped
    (as grpc.Server.stop does). With start=False the port is bound and no RPC is served until
    start(), so a taken port is reported before slow work (loading models).
    """

    def __init__(self, service: ServingService, port: int, host: str, max_workers: int,
                 max_message_bytes: int, start: bool = True):
        self._thread = EventLoopThread("grpc", max_workers)
        self._executor = self._thread.executor
        self._server = None
        self._stopped = None
        try:
            self.port = self._thread.run(self._bind(service, port, host, max_message_bytes), 60)
            if start:
                self.start()
        except BaseException:
            self._thread.close()
            raise

    def start(self) -> None:
        """Starts serving RPCs on the bound port."""
        self._thread.run(self._server.start(), 60)

    async def _bind(self, service: ServingService, port: int, host: str, max_message_bytes: int) -> int:
        self._server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", max_message_bytes),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(service, self._executor), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service, self._executor),
                                                                  self._server)
        try:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as error:  # grpcio raises where older versions returned 0
            raise OSError(f"cannot bind the gRPC port {host}:{port}: {error}") from error
        if bound == 0:
            raise OSError(f"cannot bind the gRPC port {host}:{port}")
        return bound

    def stop(self, grace: Optional[float] = None) -> threading.Event:
        """Stops accepting RPCs; those running get `grace` seconds. Returns an event set when done."""
        if self._stopped is not None:
            return self._stopped
        self._stopped = threading.Event()
        stopping = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._thread.loop)

        def finish(_future):
            self._thread.close()
            self._stopped.set()

        stopping.add_done_callback(lambda future: threading.Thread(target=finish, args=(future,),
                                                                   daemon=True).start())
        return self._stopped


def create_server(service: ServingService, port: int, host: str = "127.0.0.1", max_workers: int = 64,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  start: bool = True) -> Tuple[GrpcServer, int]:
    """Builds and starts the gRPC server (start=False: bound, serving after server.start()); returns
    (server, bound port).

    Raises:
        OSError: the port cannot be bound.
    """
    server = GrpcServer(service, port, host, max_workers, max_message_bytes, start)
    return server, server.port
