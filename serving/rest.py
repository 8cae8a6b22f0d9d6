"""The REST API on TF Serving's URLs, plus metrics and health endpoints.

  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
  GET  /monitoring/prometheus/metrics (when enabled), /healthz, /readyz (tfprod additions)

The routes run on tfprod.serving.http11's HTTP/1.1 server. A predict on a batched signature
runs on the event loop: the body is decoded there (in a worker thread when it is large),
queued in the batcher, and the connection waits for its slice of the batch without holding a
thread. Everything that blocks (status, metadata, classify, regress, unbatched predict,
metrics) runs in a thread pool.
"""

import logging
import re
from typing import Callable, Optional, Tuple

from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2

from tfprod.serving import json_codec, request_log
from tfprod.serving.errors import NotFoundError, ServingError
from tfprod.serving.http11 import HttpServer, Request, json_response, response
from tfprod.serving.service import ServingService, parse_version

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
INLINE_DECODE_BYTES = 64 * 1024  # larger predict bodies are decoded in a worker thread
_MODEL_URL = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?$")


class RestServer(HttpServer):
    """TF Serving's REST API on an HTTP/1.1 server of its own thread, bound to one ServingService.

    Args:
        address: (host, port); port 0 picks a free port (see server_address).
        service: the shared request handling.
        max_body_bytes: larger request bodies get 413.
        metrics_path: the Prometheus path, or None when metrics are off.
        max_threads: threads for the blocking APIs.
        **limits: HttpServer's header_timeout_seconds, body_timeout_seconds, max_connections and
            start_serving.
    """

    def __init__(self, address: Tuple[str, int], service: ServingService,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics_path: Optional[str] = None,
                 max_threads: int = 64, **limits):
        self.service = service
        self.metrics_path = metrics_path
        super().__init__(address, max_body_bytes, name="rest", max_threads=max_threads, **limits)

    # ----- routing ----------------------------------------------------------------------------------
    async def answer(self, request: Request) -> bytes:
        """The whole HTTP answer (head and body) to one request."""
        keep_alive = request.keep_alive
        try:
            method, path = request.method, request.path
            if method == "GET":
                if self.metrics_path and path == self.metrics_path:
                    text = await self._loop.run_in_executor(self._executor, self.service.metrics.render)
                    return response(200, text.encode("utf-8"), "text/plain; version=0.0.4", keep_alive)
                if path == "/healthz":
                    return json_response(200, {"status": "alive"}, keep_alive)
                if path == "/readyz":
                    ready = self.service.manager.is_ready() and not self.service.draining
                    return json_response(200 if ready else 503, {"ready": ready, "draining": self.service.draining},
                                          keep_alive)
            match = _MODEL_URL.match(path)
            suffix = match.group("suffix") if match else None
            verb_ok = match and ((method == "GET" and suffix in (None, "/metadata")) or
                                 (method == "POST" and suffix in (":predict", ":classify", ":regress")))
            if not verb_ok:
                raise NotFoundError(f"Malformed request: {method} {path}")
            model = match.group("model")
            version = parse_version(match.group("version")) if match.group("version") is not None else None
            label = match.group("label")
            if suffix == ":predict":
                status, value = await self._predict(model, version, label, request.body)
            else:
                handler: Callable = {None: self._status, "/metadata": self._metadata,
                                     ":classify": self._classify, ":regress": self._regress}[suffix]
                status, value = await self._loop.run_in_executor(self._executor, handler, model, version, label,
                                                                 request.body)
            return json_response(status, value, keep_alive)
        except ServingError as error:
            return json_response(error.http_status, {"error": error.message}, keep_alive)
        except Exception as error:  # answer and keep serving; the log has the traceback
            LOG.exception("REST request %s %s failed", request.method, request.path)
            return json_response(500, {"error": f"internal error: {error}"}, keep_alive)

    # ----- APIs ---------------------------------------------------------------------------------------
    async def _predict(self, model, version, label, body):
        service = self.service
        with service.request("predict", "rest") as record:
            if len(body) > INLINE_DECODE_BYTES:  # a large body would stall every other connection
                decoded = await self._loop.run_in_executor(self._executor, json_codec.decode_predict_request, body,
                                                           service.max_tensor_bytes)
            else:
                decoded = json_codec.decode_predict_request(body, service.max_tensor_bytes)
            signature_name, request_format, inputs = decoded
            served, signature, outputs = await service.predict_async(record, model, version, label, signature_name,
                                                                     inputs)
            log = service.request_log
            if log is not None and log.sample():
                log.submit(request_log.predict_log_from_arrays, model, served, signature,
                           record.signature.input_dtypes, inputs, outputs)
            if sum(value.size for value in outputs.values()) > INLINE_DECODE_BYTES // 8:
                return 200, await self._loop.run_in_executor(
                    self._executor, json_codec.encode_predict_response, outputs, request_format)
            return 200, json_codec.encode_predict_response(outputs, request_format)

    def _status(self, model, version, label, body):
        service = self.service
        with service.request("get_model_status", "rest") as record:
            statuses = service.model_status(record, model, version, label)
        return 200, {"model_version_status": [status_json(status) for status in statuses]}

    def _metadata(self, model, version, label, body):
        service = self.service
        with service.request("get_model_metadata", "rest") as record:
            served, signature_map = service.signature_def_map(record, model, version, label)
        return 200, {
            "model_spec": {"name": model, "signature_name": "", "version": str(served)},
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True)}}

    def _classify(self, model, version, label, body):
        service = self.service
        with service.request("classify", "rest") as record:
            signature_name, examples = json_codec.decode_examples_request(body)
            served, signature, classes, scores = service.classify(record, model, version, label, signature_name,
                                                                  examples)
            log = service.request_log
            if log is not None and log.sample():
                log.submit(request_log.classify_log_from_examples, model, served, signature, examples, classes,
                           scores)
            return 200, json_codec.encode_classify_response(classes, scores, len(examples))

    def _regress(self, model, version, label, body):
        service = self.service
        with service.request("regress", "rest") as record:
            signature_name, examples = json_codec.decode_examples_request(body)
            served, signature, values = service.regress(record, model, version, label, signature_name, examples)
            log = service.request_log
            if log is not None and log.sample():
                log.submit(request_log.regress_log_from_examples, model, served, signature, examples, values)
            return 200, json_codec.encode_regress_response(values)


def status_json(status) -> dict:
    """A ModelVersionStatus as TF Serving's REST API writes it (every field present)."""
    return {"version": str(status.version),
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(status.state),
            "status": {"error_code": error_codes_pb2.Code.Name(status.status.error_code),
                       "error_message": status.status.error_message}}


def create_server(service: ServingService, port: int, host: str = "127.0.0.1",
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                  metrics_path: Optional[str] = None, **limits) -> Tuple[RestServer, int]:
    """Builds and starts the REST server; returns (server, bound port).

    limits: HttpServer's header_timeout_seconds, body_timeout_seconds, max_connections and
    start_serving (False: bound, not accepting until server.start_serving()).

    Raises:
        OSError: the port cannot be bound.
    """
    server = RestServer((host, port), service, max_body_bytes, metrics_path, **limits)
    return server, server.server_address[1]
