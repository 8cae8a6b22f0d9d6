"""The REST API on TF Serving's URLs, plus metrics and health endpoints.

  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
  GET  /monitoring/prometheus/metrics (when enabled), /healthz, /readyz (tfprod additions)
"""

import http.server
import logging
import re
import socket
import socketserver
import threading
from typing import Optional, Tuple

from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2

from serving import json_codec
from serving.errors import NotFoundError, ServingError
from serving.service import ServingService, parse_version

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_MODEL_URL = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?$")


class RestServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP/1.1 server bound to one ServingService."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: many clients connecting at once are not refused

    def __init__(self, address: Tuple[str, int], service: ServingService,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics_path: Optional[str] = None):
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path
        self._active = 0
        self._active_changed = threading.Condition()
        super().__init__(address, _Handler)

    def track(self, delta: int) -> None:
        with self._active_changed:
            self._active += delta
            self._active_changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no request is being handled (its answer written), up to timeout seconds."""
        with self._active_changed:
            return self._active_changed.wait_for(lambda: self._active == 0, timeout)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfprod-serving"
    timeout = 120  # seconds an idle keep-alive connection may hold a thread

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK add ~40 ms to every small answer on a keep-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        LOG.debug("%s %s", self.address_string(), format % args)

    # ----- responses -----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, value) -> None:
        self._send(status, json_codec.dumps(value))

    def _send_error(self, error: ServingError) -> None:
        self._send_json(error.http_status, {"error": error.message})

    # ----- routing ---------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802  (http.server's naming)
        service: ServingService = self.server.service
        path = self.path.split("?", 1)[0]
        if self.server.metrics_path and path == self.server.metrics_path:
            self._send(200, service.metrics.render().encode("utf-8"), "text/plain; version=0.0.4")
            return
        if path == "/healthz":
            self._send_json(200, {"status": "alive"})
            return
        if path == "/readyz":
            ready = service.manager.is_ready() and not service.draining
            self._send_json(200 if ready else 503, {"ready": ready, "draining": service.draining})
            return
        self._route("GET", path)

    def do_POST(self):  # noqa: N802
        self._route("POST", self.path.split("?", 1)[0])

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise _HttpError(411, "a POST needs a Content-Length header")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise _HttpError(400, f"bad Content-Length {length!r}") from None
        if size > self.server.max_body_bytes:
            # Read and drop a body of moderate size so the client can finish sending and read the
            # 413 (closing early would break its pipe); close the connection on anything larger.
            if size <= 4 * self.server.max_body_bytes:
                remaining = size
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 65536))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self.close_connection = True
            raise _HttpError(413, f"request body of {size} bytes exceeds the limit of "
                                  f"{self.server.max_body_bytes} bytes")
        return self.rfile.read(size)

    def _route(self, method: str, path: str) -> None:
        self.server.track(+1)
        try:
            self._answer(method, path)
        finally:
            self.server.track(-1)

    def _answer(self, method: str, path: str) -> None:
        try:
            body = self._read_body() if method == "POST" else b""
            match = _MODEL_URL.match(path)
            suffix = match.group("suffix") if match else None
            verb_ok = match and ((method == "GET" and suffix in (None, "/metadata")) or
                                 (method == "POST" and suffix in (":predict", ":classify", ":regress")))
            if not verb_ok:
                raise NotFoundError(f"Malformed request: {method} {path}")
            model = match.group("model")
            version = parse_version(match.group("version")) if match.group("version") is not None else None
            label = match.group("label")
            handler = {None: self._status, "/metadata": self._metadata, ":predict": self._predict,
                       ":classify": self._classify, ":regress": self._regress}[suffix]
            status, value = handler(model, version, label, body)
            self._send_json(status, value)
        except _HttpError as error:
            self._send_json(error.status, {"error": error.message})
        except ServingError as error:
            self._send_error(error)
        except Exception as error:  # answer and keep serving; the log has the traceback
            LOG.exception("REST request %s %s failed", method, path)
            self._send_json(500, {"error": f"internal error: {error}"})

    # ----- APIs ------------------------------------------------------------------------------
    def _status(self, model, version, label, body):
        service: ServingService = self.server.service
        with service.request("get_model_status", "rest") as record:
            statuses = service.model_status(record, model, version, label)
        return 200, {"model_version_status": [status_json(status) for status in statuses]}

    def _metadata(self, model, version, label, body):
        service: ServingService = self.server.service
        with service.request("get_model_metadata", "rest") as record:
            served, signature_map = service.signature_def_map(record, model, version, label)
        return 200, {
            "model_spec": {"name": model, "signature_name": "", "version": str(served)},
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True)}}

    def _predict(self, model, version, label, body):
        service: ServingService = self.server.service
        with service.request("predict", "rest") as record:
            signature_name, request_format, inputs = json_codec.decode_predict_request(body)
            _, _, outputs = service.predict(record, model, version, label, signature_name, inputs)
            return 200, json_codec.encode_predict_response(outputs, request_format)

    def _classify(self, model, version, label, body):
        service: ServingService = self.server.service
        with service.request("classify", "rest") as record:
            signature_name, examples = json_codec.decode_examples_request(body)
            _, _, classes, scores = service.classify(record, model, version, label, signature_name, examples)
            return 200, json_codec.encode_classify_response(classes, scores, len(examples))

    def _regress(self, model, version, label, body):
        service: ServingService = self.server.service
        with service.request("regress", "rest") as record:
            signature_name, examples = json_codec.decode_examples_request(body)
            _, _, values = service.regress(record, model, version, label, signature_name, examples)
            return 200, json_codec.encode_regress_response(values)


def status_json(status) -> dict:
    """A ModelVersionStatus as TF Serving's REST API writes it (every field present)."""
    return {"version": str(status.version),
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(status.state),
            "status": {"error_code": error_codes_pb2.Code.Name(status.status.error_code),
                       "error_message": status.status.error_message}}


class _HttpError(Exception):
    """An HTTP-level problem (no body length, body too large) answered before any API runs."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def create_server(service: ServingService, port: int, host: str = "127.0.0.1",
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                  metrics_path: Optional[str] = None) -> Tuple[RestServer, int, threading.Thread]:
    """Builds the REST server and serves it on a thread; returns (server, bound port, thread)."""
    server = RestServer((host, port), service, max_body_bytes, metrics_path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="rest-server", daemon=True)
    thread.start()
    return server, server.server_address[1], thread
