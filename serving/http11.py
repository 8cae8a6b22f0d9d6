"""HTTP/1.1 framing on asyncio: connections, request parsing and responses, no API.

An HTTP/1.1 server on an asyncio event loop of its own thread: keep-alive, pipelined
requests answered in order, Content-Length bodies. Malformed requests get an error and then
the connection closes: 411 (no Content-Length on a POST, or a chunked body), 413 (the body
is read and dropped first, unless it is over 4x the limit), 400 (bad request line, header or
Content-Length), 431 (headers over MAX_HEADER_BYTES). Idle connections close after
IDLE_TIMEOUT_SECONDS. What a request means is a subclass's `answer` (tfprod.serving.rest
answers TF Serving's REST API).
"""

import asyncio
import concurrent.futures
import http
import json
import logging
import socket
import threading
from typing import Optional, Tuple

from tfprod.serving.event_loop import EventLoopThread

LOG = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 120.0  # an idle keep-alive connection is closed after this long
LISTEN_BACKLOG = 128  # many clients connecting at once are not refused
SERVER_NAME = "tfprod-serving"


class HttpError(Exception):
    """An HTTP-level problem (no body length, body too large, bad request line) answered before any API runs."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive")

    def __init__(self, method: str, path: str, headers: dict, body: bytes, keep_alive: bool):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


def response(status: int, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n" + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
    return head.encode("latin-1") + body


def json_response(status: int, value, keep_alive: bool) -> bytes:
    """A response with a JSON body (compact separators, UTF-8)."""
    body = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return response(status, body, "application/json", keep_alive)


class Connection(asyncio.Protocol):
    """One client connection: parses requests from the byte stream and answers them in order."""

    def __init__(self, server: "HttpServer"):
        self._server = server
        self._transport = None
        self._buffer = bytearray()
        self._body_needed = None  # (method, path, headers, keep_alive, length) while a body is arriving
        self._discarding = 0  # bytes of an oversized body still to drop
        self._pending: "asyncio.Queue[Optional[Request]]" = asyncio.Queue()
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
        except HttpError as error:
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
                self._pending.put_nowait(Request(method, path, headers, body, keep_alive))
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise HttpError(431, f"request headers exceed {MAX_HEADER_BYTES} bytes", close=True)
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[:end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise HttpError(400, f"bad request line {lines[0][:200]!r}", close=True)
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                name, separator, value = line.partition(":")
                if not separator:
                    raise HttpError(400, f"bad header line {line[:200]!r}", close=True)
                headers[name.strip().lower()] = value.strip()
            connection = headers.get("connection", "").lower()
            keep_alive = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
            path = target.split("?", 1)[0]
            if "transfer-encoding" in headers:
                raise HttpError(411, "chunked bodies are not supported: send a Content-Length header", close=True)
            length_text = headers.get("content-length")
            if length_text is None:
                if method == "POST":
                    raise HttpError(411, "a POST needs a Content-Length header", close=True)
                self._pending.put_nowait(Request(method, path, headers, b"", keep_alive))
                continue
            try:
                length = int(length_text)
                if length < 0:
                    raise ValueError(length_text)
            except ValueError:
                raise HttpError(400, f"bad Content-Length {length_text!r}", close=True) from None
            limit = self._server.max_body_bytes
            if length > limit:
                error = HttpError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes",
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
            if isinstance(item, HttpError):
                self._write(json_response(item.status, {"error": item.message}, keep_alive=False))
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


class HttpServer:
    """An HTTP/1.1 server on an event loop of its own thread; subclasses answer the requests.

    Args:
        address: (host, port); port 0 picks a free port (see server_address).
        max_body_bytes: larger request bodies get 413.
        name: names the event loop's thread ("rest" is tfprod's REST API).
        max_threads: threads of the pool that blocking handlers run in (self._executor).
    """

    def __init__(self, address: Tuple[str, int], max_body_bytes: int, name: str = "http",
                 max_threads: int = 64):
        self.max_body_bytes = max_body_bytes
        self._connections = set()
        self._active = 0
        self._active_changed = threading.Condition()
        self._thread_name = name.upper() if name == "rest" else name
        self._thread = EventLoopThread(name, max_threads)
        self._loop, self._executor = self._thread.loop, self._thread.executor
        self._server = None
        try:
            self.server_address = self._thread.run(self._start(*address), 60)
        except BaseException:
            self._thread.close()
            raise

    async def _start(self, host: str, port: int):
        try:
            self._server = await self._loop.create_server(lambda: Connection(self), host, port,
                                                          backlog=LISTEN_BACKLOG, reuse_address=True)
        except OSError as error:
            raise OSError(f"cannot bind the {self._thread_name} port {host}:{port}: {error}") from error
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
            LOG.warning("%s connections did not close in time", self._thread_name)
        self._thread.close()

    async def answer(self, request: Request) -> bytes:
        """The whole HTTP answer (head and body) to one request."""
        raise NotImplementedError
