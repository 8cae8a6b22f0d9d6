"""The request handling both servers share: model lookup, metrics, timeouts, draining.

REST and gRPC only translate their wire formats to these calls and back.
"""

import asyncio
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfprod.serving.protocol import arrays_for_signature
from tfprod.serving.errors import InvalidArgumentError, ServingError, UnavailableError
from tfprod.serving.metrics import ServerMetrics
from tfprod.serving.model_manager import ModelManager

Arrays = Dict[str, np.ndarray]

# The decoded size of one request's input tensors (--max_request_tensor_bytes). Twice the default
# --max_request_bytes (16 MiB): a request whose values are all in the message (tensor_content,
# packed values, JSON numbers) decodes to about its own size, so this passes every such request
# while a tensor repeated from one value (a few bytes asking for gigabytes) is refused.
DEFAULT_MAX_TENSOR_BYTES = 32 * 1024 * 1024


class RequestRecord:
    """Filled in while a request runs; recorded in the metrics when it ends."""

    __slots__ = ("model", "version", "status", "signature")

    def __init__(self):
        self.model = ""
        self.version = None
        self.status = "OK"
        self.signature = None  # the SignatureInfo a REST predict ran (its input names and dtypes, for the log)


class RequestScope:
    """`with service.request(api, protocol) as record:` (a class, not a generator: this runs per request)."""

    __slots__ = ("_service", "_api", "_protocol", "_record", "_started")

    def __init__(self, service: "ServingService", api: str, protocol: str):
        self._service = service
        self._api = api
        self._protocol = protocol

    def __enter__(self) -> RequestRecord:
        service = self._service
        self._record = RequestRecord()
        self._started = time.perf_counter()
        with service._in_flight_changed:
            if service._draining:
                service.metrics.record_request("", None, self._api, self._protocol, "UNAVAILABLE", 0.0)
                raise UnavailableError("the server is shutting down; retry on another replica")
            service._in_flight += 1
        return self._record

    def __exit__(self, error_type, error, traceback) -> bool:
        record, service = self._record, self._service
        if isinstance(error, ServingError):
            record.status = error.code.name
        elif isinstance(error, asyncio.CancelledError):  # the client went away
            record.status = "CANCELLED"
        elif error is not None:
            record.status = "INTERNAL"
        service.metrics.record_request(record.model, record.version, self._api, self._protocol, record.status,
                                       time.perf_counter() - self._started)
        with service._in_flight_changed:
            service._in_flight -= 1
            service._in_flight_changed.notify_all()
        return False  # the error, if any, goes on to the protocol layer


class ServingService:
    """Runs requests against a ModelManager.

    Args:
        manager: the model manager.
        default_timeout_seconds: the timeout of a request that brings none (REST).
        max_tensor_bytes: the largest decoded size of one request's input tensors.
        enable_config_reload: whether HandleReloadConfigRequest may change the served models.
        allow_empty_config: whether a reload may remove every model.
    """

    def __init__(self, manager: ModelManager, default_timeout_seconds: Optional[float] = None,
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES, enable_config_reload: bool = True,
                 allow_empty_config: bool = False):
        self.manager = manager
        self.max_tensor_bytes = max_tensor_bytes
        self.enable_config_reload = enable_config_reload
        self.allow_empty_config = allow_empty_config
        self.metrics: ServerMetrics = manager.metrics
        self.default_timeout_seconds = default_timeout_seconds
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        self._draining = False
        # A serving.request_log.RequestLogger when --request_log_dir is set; the REST and gRPC
        # layers sample into it after answering (they hold the wire messages it logs).
        self.request_log = None

    # ----- request accounting ------------------------------------------------------------------
    def request(self, api: str, protocol: str) -> "RequestScope":
        """Counts a request in flight and records its outcome and latency (a `with` block).

        Raises (on entering):
            UnavailableError: the server is draining for shutdown.
        """
        return RequestScope(self, api, protocol)

    def start_draining(self) -> None:
        """New requests are refused from now on; those in flight finish."""
        with self._in_flight_changed:
            self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    def wait_drained(self, timeout: float) -> bool:
        with self._in_flight_changed:
            return self._in_flight_changed.wait_for(lambda: self._in_flight == 0, timeout)

    def timeout(self, remaining: Optional[float] = None) -> Optional[float]:
        return remaining if remaining is not None else self.default_timeout_seconds

    # ----- APIs -------------------------------------------------------------------------------
    def predict(self, record: RequestRecord, model: str, version: Optional[int], label: Optional[str],
                signature_name: str, inputs: Arrays, output_filter: Sequence[str] = (),
                timeout: Optional[float] = None, strict_dtypes: bool = False) -> Tuple[int, str, Arrays]:
        record.model = model
        with self.manager.servable(model, version, label) as servable:
            record.version = servable.version
            signature, outputs = servable.predict(signature_name, inputs, output_filter, self.timeout(timeout),
                                                  strict_dtypes, max_bytes=self.max_tensor_bytes)
            return servable.version, signature.name, outputs

    async def predict_async(self, record: RequestRecord, model: str, version: Optional[int],
                            label: Optional[str], signature_name: str, inputs: Arrays,
                            output_filter: Sequence[str] = (), timeout: Optional[float] = None,
                            strict_dtypes: bool = False) -> Tuple[int, str, Arrays]:
        """predict() for asyncio code (the gRPC server): the event loop is not blocked meanwhile."""
        record.model = model
        with self.manager.servable(model, version, label) as servable:
            record.version = servable.version
            signature, outputs = await servable.predict_async(signature_name, inputs, output_filter,
                                                              self.timeout(timeout), strict_dtypes,
                                                              max_bytes=self.max_tensor_bytes)
            record.signature = signature
            return servable.version, signature.name, outputs

    async def predict_tensor_protos_async(self, record: RequestRecord, model: str, version: Optional[int],
                                          label: Optional[str], signature_name: str,
                                          protos: Mapping[str, tensor_pb2.TensorProto],
                                          output_filter: Sequence[str] = (),
                                          timeout: Optional[float] = None,
                                          before_model: Optional[Callable[[], None]] = None
                                          ) -> Tuple[int, str, Arrays]:
        """predict_async() on a gRPC request's TensorProtos: they are checked against the signature
        (names, dtypes, shapes, value counts, decoded size) before any array is allocated.
        before_model, if given, runs after decoding and may raise to stop the call (a deadline
        that passed while decoding)."""
        record.model = model
        with self.manager.servable(model, version, label) as servable:
            record.version = servable.version
            signature = servable.signature(signature_name)
            inputs = arrays_for_signature(protos, list(signature.input_dtypes), signature.input_dtype_enums,
                                          signature.input_shapes, self.max_tensor_bytes)
            if before_model is not None:
                before_model()
            signature, outputs = await servable.predict_async(signature_name, inputs, output_filter,
                                                              self.timeout(timeout), strict_dtypes=True)
            return servable.version, signature.name, outputs

    def classify(self, record: RequestRecord, model: str, version: Optional[int], label: Optional[str],
                 signature_name: str, examples: List[bytes], timeout: Optional[float] = None):
        record.model = model
        with self.manager.servable(model, version, label) as servable:
            record.version = servable.version
            signature, classes, scores = servable.classify(signature_name, examples, self.timeout(timeout))
            return servable.version, signature.name, classes, scores

    def regress(self, record: RequestRecord, model: str, version: Optional[int], label: Optional[str],
                signature_name: str, examples: List[bytes], timeout: Optional[float] = None):
        record.model = model
        with self.manager.servable(model, version, label) as servable:
            record.version = servable.version
            signature, values = servable.regress(signature_name, examples, self.timeout(timeout))
            return servable.version, signature.name, values

    def signature_def_map(self, record: RequestRecord, model: str, version: Optional[int],
                          label: Optional[str]) -> Tuple[int, get_model_metadata_pb2.SignatureDefMap]:
        record.model = model
        with self.manager.servable(model, version, label) as servable:
            record.version = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, info in servable.signatures.items():
                signature_map.signature_def[name].CopyFrom(info.definition)
            return servable.version, signature_map

    def reload_config(self, server_config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: anyone who reaches the port may call it (it has no authentication),
        so it can be switched off.

        Raises:
            ServingError: UNIMPLEMENTED when switched off; InvalidArgumentError for a bad config.
        """
        if not self.enable_config_reload:
            raise ServingError("HandleReloadConfigRequest is disabled on this server: it has no authentication, "
                               "so it is off by default when the server binds a non-loopback address; start "
                               "tfprod serve with --enable_model_config_reload=true to allow it",
                               grpc.StatusCode.UNIMPLEMENTED)
        self.manager.reload_config(server_config, allow_empty=self.allow_empty_config)

    def model_status(self, record: RequestRecord, model: str, version: Optional[int],
                     label: Optional[str]) -> List[get_model_status_pb2.ModelVersionStatus]:
        record.model = model
        return self.manager.version_statuses(model, version, label)


def parse_version(text: str) -> int:
    """A version number from a URL or flag; raises InvalidArgumentError if it is not one."""
    try:
        version = int(text)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"version must be a non-negative integer, got {text!r}") from error
    if version < 0:
        raise InvalidArgumentError(f"version must be a non-negative integer, got {text!r}")
    return version
