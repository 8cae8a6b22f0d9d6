"""The REST API on TF Serving's URLs, plus metrics and health endpoints.

  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
  GET  /monitoring/prometheus/metrics (when enabled), /healthz, /readyz (tfprod additions)

The server is an HTTP/1.1 server on an asyncio event loop of its own thread (keep-alive,
pipelined requests answered in order, Content-Length bodies). A predict on a batched signature
runs on the loop: the body is decoded there (in a worker thread when it is large), queued in
the batcher, and the connection waits for its slice of the batch without holding a thread.
Everything that blocks (status, metadata, classify, regress, unbatched predict, metrics) runs
in a thread pool.
"""

import asyncio
import concurrent.futures
import http
import logging
import re
import socket
import threading
from typing import Callable, Optional, Tuple

from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2

from tfprod.serving import json_codec
from tfprod.serving.errors import NotFoundError, ServingError
from tfprod.serving.event_loop import EventLoopThread
from tfprod.serving.service import ServingService, parse_version

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 120.0  # an idle keep-alive connection is closed after this long
LISTEN_BACKLOG = 128  # many clients connecting at once are not refused
INLINE_DECODE_BYTES = 64 * 1024  # larger predict bodies are decoded in a worker thread
SERVER_NAME = "tfprod-serving"
_MODEL_URL = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?$")


class _HttpError(Exception):
    """An HTTP-level problem (no body length, body too large, bad request line) answered before any API runs."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive")

    def __init__(self, method: str, path: str, headers: dict, body: bytes, keep_alive: bool):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


def _response(status: int, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n" + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
    return head.encode("latin-1") + body


def _json_response(status: int, value, keep_alive: bool) -> bytes:
    return _response(status, json_codec.dumps(value), "application/json", keep_alive)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests from the byte stream and answers them in order."""

    def __init__(self, server: "RestServer"):
        self._server = server
        self._transport = None
        self._buffer = bytearray()
        self._body_needed = None  # (method, path, headers, keep_alive, length) while a body is arriving
        self._discarding = 0  # bytes of an oversized body still to drop
        self._pending: "asyncio.Queue[Optional[_Request]]" = asyncio.Queue()
        self._worker = None
        self._idle_timer = None
        self._last_activity = 0.0
        self._closing = False
        self._busy = False  # a request is being answered

    # ----- transport events ----------------------------------------------------------------------
    def connection_made(self, transport):
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small answers must not wait for the client's delayed ACK (Nagle's algorithm).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._answer_in_order())
        self._last_activity = loop.time()
        self._idle_timer = loop.call_later(IDLE_TIMEOUT_SECONDS, self._idle_timeout)

    def connection_lost(self, exc):
        self._server._connections.discard(self)
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._pending.put_nowait(None)

    def data_received(self, data: bytes):
        self._last_activity = self._worker.get_loop().time()  # the idle timer checks it when it fires
        if self._discarding:
            self._discarding -= min(self._discarding, len(data))
            if self._discarding == 0:
                self._pending.put_nowait(self._body_needed)  # the 413, answered now the body is read
                self._body_needed = None
            return
        if self._closing:
            return
        self._buffer += data
        try:
            self._parse()
        except _HttpError as error:
            self._pending.put_nowait(error)
            self._closing = True  # answer what came before, then this error, then close

    # ----- parsing --------------------------------------------------------------------------------
    def _parse(self) -> None:
        while not self._closing and not self._discarding:
            if self._body_needed is not None:
                method, path, headers, keep_alive, length = self._body_needed
                if len(self._buffer) < length:
                    return
                body = bytes(self._buffer[:length])
                del self._buffer[:length]
                self._body_needed = None
                self._pending.put_nowait(_Request(method, path, headers, body, keep_alive))
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise _HttpError(431, f"request headers exceed {MAX_HEADER_BYTES} bytes", close=True)
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[:end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise _HttpError(400, f"bad request line {lines[0][:200]!r}", close=True)
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                name, separator, value = line.partition(":")
                if not separator:
                    raise _HttpError(400, f"bad header line {line[:200]!r}", close=True)
                headers[name.strip().lower()] = value.strip()
            connection = headers.get("connection", "").lower()
            keep_alive = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
            path = target.split("?", 1)[0]
            if "transfer-encoding" in headers:
                raise _HttpError(411, "chunked bodies are not supported: send a Content-Length header", close=True)
            length_text = headers.get("content-length")
            if length_text is None:
                if method == "POST":
                    raise _HttpError(411, "a POST needs a Content-Length header", close=True)
                self._pending.put_nowait(_Request(method, path, headers, b"", keep_alive))
                continue
            try:
                length = int(length_text)
                if length < 0:
                    raise ValueError(length_text)
            except ValueError:
                raise _HttpError(400, f"bad Content-Length {length_text!r}", close=True) from None
            limit = self._server.max_body_bytes
            if length > limit:
                error = _HttpError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes",
                                   close=True)
                if length > 4 * limit:  # not worth reading: answer now and close
                    raise error
                # Read and drop the body so the client can finish sending and read the 413.
                dropped = min(length, len(self._buffer))
                del self._buffer[:dropped]
                self._discarding = length - dropped
                if self._discarding == 0:
                    raise error
                self._body_needed = error
                self._closing = True
                return
            self._body_needed = (method, path, headers, keep_alive, length)

    # ----- answering ------------------------------------------------------------------------------
    async def _answer_in_order(self) -> None:
        while True:
            item = await self._pending.get()
            if item is None:
                return
            if isinstance(item, _HttpError):
                self._write(_json_response(item.status, {"error": item.message}, keep_alive=False))
                self._transport.close()
                return
            self._busy = True
            self._server._track(+1)
            try:
                self._write(await self._server.answer(item))
            finally:
                self._server._track(-1)
                self._busy = False
            if not item.keep_alive:
                self._transport.close()
                return

    def _write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def _idle(self) -> bool:
        return not self._busy and self._pending.empty() and self._body_needed is None and not self._buffer

    def _idle_timeout(self) -> None:
        """Closes the connection once it has been idle for IDLE_TIMEOUT_SECONDS (one timer per connection,
        moved on when it fires rather than on every request)."""
        loop = self._worker.get_loop()
        quiet_for = loop.time() - self._last_activity
        if quiet_for >= IDLE_TIMEOUT_SECONDS and self._idle():
            self._transport.close()
        else:
            self._idle_timer = loop.call_later(max(1.0, IDLE_TIMEOUT_SECONDS - quiet_for), self._idle_timeout)

    def close_if_idle(self) -> None:
        if self._idle():
            self._transport.close()


class RestServer:
    """The REST server on an event loop of its own thread, bound to one ServingService.

    Args:
        address: (host, port); port 0 picks a free port (see server_address).
        service: the shared request handling.
        max_body_bytes: larger request bodies get 413.
        metrics_path: the Prometheus path, or None when metrics are off.
        max_threads: threads for the blocking APIs.
    """

    def __init__(self, address: Tuple[str, int], service: ServingService,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics_path: Optional[str] = None,
                 max_threads: int = 64):
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path
        self._connections = set()
        self._active = 0
        self._active_changed = threading.Condition()
        self._thread = EventLoopThread("rest", max_threads)
        self._loop, self._executor = self._thread.loop, self._thread.executor
        self._server = None
        try:
            self.server_address = self._thread.run(self._start(*address), 60)
        except BaseException:
            self._thread.close()
            raise

    async def _start(self, host: str, port: int):
        try:
            self._server = await self._loop.create_server(lambda: _Connection(self), host, port,
                                                          backlog=LISTEN_BACKLOG, reuse_address=True)
        except OSError as error:
            raise OSError(f"cannot bind the REST port {host}:{port}: {error}") from error
        return self._server.sockets[0].getsockname()[:2]

    # ----- bookkeeping ------------------------------------------------------------------------------
    def _track(self, delta: int) -> None:
        with self._active_changed:
            self._active += delta
            self._active_changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no request is being handled (its answer written), up to timeout seconds."""
        with self._active_changed:
            return self._active_changed.wait_for(lambda: self._active == 0, timeout)

    def shutdown(self) -> None:
        """Stops accepting connections and closes the idle ones; answers in progress still go out."""
        if self._server is None or self._thread.closed:
            return

        async def close():
            self._server.close()
            for connection in list(self._connections):
                connection.close_if_idle()

        self._thread.run(close(), 10)

    def server_close(self) -> None:
        """Closes every connection and stops the event loop."""
        if self._thread.closed:
            return

        async def close_all():
            for connection in list(self._connections):
                if connection._transport is not None:
                    connection._transport.close()
            await asyncio.sleep(0)

        try:
            self._thread.run(close_all(), 10)
        except (concurrent.futures.TimeoutError, RuntimeError):
            LOG.warning("REST connections did not close in time")
        self._thread.close()

    # ----- routing ----------------------------------------------------------------------------------
    async def answer(self, request: _Request) -> bytes:
        """The whole HTTP answer (head and body) to one request."""
        keep_alive = request.keep_alive
        try:
            method, path = request.method, request.path
            if method == "GET":
                if self.metrics_path and path == self.metrics_path:
                    text = await self._loop.run_in_executor(self._executor, self.service.metrics.render)
                    return _response(200, text.encode("utf-8"), "text/plain; version=0.0.4", keep_alive)
                if path == "/healthz":
                    return _json_response(200, {"status": "alive"}, keep_alive)
                if path == "/readyz":
                    ready = self.service.manager.is_ready() and not self.service.draining
                    return _json_response(200 if ready else 503, {"ready": ready, "draining": self.service.draining},
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
            return _json_response(status, value, keep_alive)
        except ServingError as error:
            return _json_response(error.http_status, {"error": error.message}, keep_alive)
        except Exception as error:  # answer and keep serving; the log has the traceback
            LOG.exception("REST request %s %s failed", request.method, request.path)
            return _json_response(500, {"error": f"internal error: {error}"}, keep_alive)

    # ----- APIs ---------------------------------------------------------------------------------------
    async def _predict(self, model, version, label, body):
        service = self.service
        with service.request("predict", "rest") as record:
            if len(body) > INLINE_DECODE_BYTES:  # a large body would stall every other connection
                decoded = await self._loop.run_in_executor(self._executor, json_codec.decode_predict_request, body)
            else:
                decoded = json_codec.decode_predict_request(body)
            signature_name, request_format, inputs = decoded
            _, _, outputs = await service.predict_async(record, model, version, label, signature_name, inputs)
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
            _, _, classes, scores = service.classify(record, model, version, label, signature_name, examples)
            return 200, json_codec.encode_classify_response(classes, scores, len(examples))

    def _regress(self, model, version, label, body):
        service = self.service
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


def create_server(service: ServingService, port: int, host: str = "127.0.0.1",
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                  metrics_path: Optional[str] = None) -> Tuple[RestServer, int]:
    """Builds and starts the REST server; returns (server, bound port).

    Raises:
        OSError: the port cannot be bound.
    """
    server = RestServer((host, port), service, max_body_bytes, metrics_path)
    return server, server.server_address[1]
