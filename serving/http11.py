"""HTTP/1.1 framing on asyncio: connections, request parsing and responses, no API.

An HTTP/1.1 server on an asyncio event loop of its own thread: keep-alive, pipelined
requests answered in order, Content-Length bodies. Malformed requests get an error and then
the connection closes: 411 (no Content-Length on a POST, or a chunked body), 413 (the body
is read and dropped first, unless it is over 4x the limit), 400 (bad request line or header;
a Content-Length that is not ASCII digits, given twice, or beside a Transfer-Encoding),
431 (headers over MAX_HEADER_BYTES), 408 (a request head or body that does not arrive within
its timeout). Idle connections close after IDLE_TIMEOUT_SECONDS; beyond max_connections open
connections, new ones are answered 503 and closed. What a request means is a subclass's
`answer` (tfprod.serving.rest answers TF Serving's REST API).
"""

import asyncio
import concurrent.futures
import errno
import http
import json
import logging
import re
import socket
import threading
import time
from typing import Optional, Tuple

from tfprod.serving.event_loop import EventLoopThread

LOG = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 120.0  # an idle keep-alive connection is closed after this long
HEADER_TIMEOUT_SECONDS = 10.0  # a request head must arrive within this long of its first byte (or of connecting)
BODY_TIMEOUT_SECONDS = 60.0  # a request body must arrive within this long of its head
MAX_CONNECTIONS = 1000  # open connections beyond this are answered 503 and closed
LIMIT_LOG_INTERVAL_SECONDS = 60.0  # at most one log line per interval about refused connections or accept errors
LISTEN_BACKLOG = 128  # many clients connecting at once are not refused
SERVER_NAME = "tfprod-serving"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a header name (RFC 9110 token)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


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
    """One client connection: parses requests from the byte stream and answers them in order.

    Reading is timed: a request's head must arrive within the server's header timeout (counted
    from its first byte, or from the connection for the first request) and its body within the
    body timeout of the head; otherwise 408 and the connection closes (a fresh connection that
    sent nothing is closed without an answer). Between requests, IDLE_TIMEOUT_SECONDS applies.
    When the client goes away, its requests not answered yet are dropped: a queued one never
    runs, the one being answered is cancelled (a model call already running finishes unseen).
    """

    def __init__(self, server: "HttpServer"):
        self._server = server
        self._transport = None
        self._loop = None
        self._buffer = bytearray()
        self._body_needed = None  # (method, path, headers, keep_alive, length) while a body is arriving
        self._discarding = 0  # bytes of an oversized body still to drop
        self._pending: "asyncio.Queue[Optional[Request]]" = asyncio.Queue()
        self._worker = None
        self._idle_timer = None
        self._last_activity = 0.0
        self._read_deadline = None  # loop time by which the head or body being read must be complete
        self._read_what = ("headers", 0.0)  # what is being read and its timeout, for the 408's message
        self._read_timer = None  # fires at or before _read_deadline; moved on when it fires early
        self._closing = False
        self._busy = False  # a request is being answered
        self._refused = False  # over the connection limit: answered 503 and closed, never read

    # ----- transport events ----------------------------------------------------------------------
    def connection_made(self, transport):
        self._transport = transport
        server = self._server
        if len(server._connections) >= server.max_connections:
            self._refused = True
            server._refuse(transport)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small answers must not wait for the client's delayed ACK (Nagle's algorithm).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._connections.add(self)
        self._loop = loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._answer_in_order())
        self._last_activity = loop.time()
        self._idle_timer = loop.call_later(IDLE_TIMEOUT_SECONDS, self._idle_timeout)
        self._set_read_deadline(server.header_timeout_seconds, "headers")

    def connection_lost(self, exc):
        if self._refused:
            return
        self._server._connections.discard(self)
        self._closing = True
        for timer in (self._idle_timer, self._read_timer):
            if timer is not None:
                timer.cancel()
        # Nobody will read the answers: what is queued is not run, what is being answered stops
        # at its next wait (a batched predict leaves the batch queue, an unbatched one that has not
        # started leaves the thread pool's queue).
        while not self._pending.empty():
            self._pending.get_nowait()
        self._pending.put_nowait(None)
        if self._busy:
            self._worker.cancel()

    def data_received(self, data: bytes):
        if self._refused:
            return
        self._last_activity = self._loop.time()  # the idle timer checks it when it fires
        if self._discarding:
            self._discarding -= min(self._discarding, len(data))
            if self._discarding == 0:
                self._read_deadline = None
                self._pending.put_nowait(self._body_needed)  # the 413, answered now the body is read
                self._body_needed = None
            return
        if self._closing:
            return
        if self._read_deadline is None:  # the first byte of a request: its head is timed from now
            self._set_read_deadline(self._server.header_timeout_seconds, "headers")
        self._buffer += data
        try:
            self._parse()
        except HttpError as error:
            self._read_deadline = None
            self._pending.put_nowait(error)
            self._closing = True  # answer what came before, then this error, then close

    # ----- read timeouts ------------------------------------------------------------------------------
    def _set_read_deadline(self, seconds: float, what: str) -> None:
        """From now, the head or body (`what`) must be read within `seconds`.

        One timer per connection, armed when needed and moved on when it fires before the deadline,
        so a request costs no timer operations in the usual case.
        """
        deadline = self._loop.time() + seconds
        self._read_deadline = deadline
        self._read_what = (what, seconds)
        timer = self._read_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._read_timer = self._loop.call_at(deadline, self._check_read_deadline)

    def _request_read(self) -> None:
        """A whole request is in: time the next one's head if it has begun, else the connection is idle."""
        if self._buffer:
            self._set_read_deadline(self._server.header_timeout_seconds, "headers")
        else:
            self._read_deadline = None

    def _check_read_deadline(self) -> None:
        self._read_timer = None
        deadline = self._read_deadline
        if deadline is None or self._transport.is_closing():
            return
        if self._loop.time() < deadline:
            self._read_timer = self._loop.call_at(deadline, self._check_read_deadline)
            return
        self._read_deadline = None
        if self._discarding:  # the client stopped sending an oversized body: answer its 413 now
            self._discarding = 0
            self._pending.put_nowait(self._body_needed)
            self._body_needed = None
            return
        if self._closing:
            return
        self._closing = True
        what, seconds = self._read_what
        if what == "headers" and not self._buffer:  # connected and sent nothing: no request to answer
            self._transport.close()
            return
        self._pending.put_nowait(HttpError(408, f"request {what} not received within {seconds:g} s", close=True))

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
                self._request_read()
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise HttpError(431, f"request headers exceed {MAX_HEADER_BYTES} bytes", close=True)
                return
            if end > MAX_HEADER_BYTES:  # the whole head arrived in one read: same limit
                raise HttpError(431, f"request headers exceed {MAX_HEADER_BYTES} bytes", close=True)
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[:end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise HttpError(400, f"bad request line {lines[0][:200]!r}", close=True)
            method, target, version = parts
            headers = parse_headers(lines[1:])
            connection = headers.get("connection", "").lower()
            keep_alive = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
            path = target.split("?", 1)[0]
            length_text = headers.get("content-length")
            if "transfer-encoding" in headers:
                if length_text is not None:  # which one frames the body? A smuggling attempt: refuse
                    raise HttpError(400, "a request cannot have both Transfer-Encoding and Content-Length",
                                    close=True)
                raise HttpError(411, "chunked bodies are not supported: send a Content-Length header", close=True)
            if length_text is None:
                if method == "POST":
                    raise HttpError(411, "a POST needs a Content-Length header", close=True)
                self._pending.put_nowait(Request(method, path, headers, b"", keep_alive))
                self._request_read()
                continue
            length = parse_content_length(length_text)
            self._set_read_deadline(self._server.body_timeout_seconds, "body")
            limit = self._server.max_body_bytes
            if length > limit:
                error = HttpError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes",
                                   close=True)
                if length > 4 * limit:  # not worth reading: answer now and close
                    raise error
                # Read and drop the body (within the body timeout) so the client can finish
                # sending and read the 413.
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
        loop = self._loop
        quiet_for = loop.time() - self._last_activity
        if quiet_for >= IDLE_TIMEOUT_SECONDS and self._idle():
            self._transport.close()
        else:
            self._idle_timer = loop.call_later(max(1.0, IDLE_TIMEOUT_SECONDS - quiet_for), self._idle_timeout)

    def close_if_idle(self) -> None:
        if self._idle():
            self._transport.close()


def parse_headers(lines) -> dict:
    """{lower-case name: value} of a request's header lines.

    Strict where leniency lets a proxy and this server read one request differently (request
    smuggling): a name must be a token (no space before the colon, no folded lines), a value has
    no CR, LF or NUL, and Content-Length or Transfer-Encoding may appear only once (even twice
    with the same value is refused). Other repeated headers: the last one counts.

    Raises:
        HttpError: 400 naming the offending line or header.
    """
    headers = {}
    for line in lines:
        name, separator, value = line.partition(":")
        if not separator or not _TOKEN.fullmatch(name) or any(bad in value for bad in "\r\n\0"):
            raise HttpError(400, f"bad header line {line[:200]!r}", close=True)
        name = name.lower()
        if name in headers and name in ("content-length", "transfer-encoding"):
            raise HttpError(400, f"more than one {name} header", close=True)
        headers[name] = value.strip(" \t")
    return headers


def parse_content_length(text: str) -> int:
    """A Content-Length value: ASCII decimal digits only (no sign, space, underscore or list).

    Raises:
        HttpError: 400 for anything else.
    """
    if not (text.isascii() and text.isdigit()):
        raise HttpError(400, f"bad Content-Length {text[:100]!r}: expected decimal digits", close=True)
    try:
        return int(text)
    except ValueError:  # thousands of digits (Python's int-from-text limit)
        raise HttpError(400, f"bad Content-Length {text[:100]!r}: too long", close=True) from None


class HttpServer:
    """An HTTP/1.1 server on an event loop of its own thread; subclasses answer the requests.

    Args:
        address: (host, port); port 0 picks a free port (see server_address).
        max_body_bytes: larger request bodies get 413.
        name: names the event loop's thread ("rest" is tfprod's REST API).
        max_threads: threads of the pool that blocking handlers run in (self._executor).
        header_timeout_seconds: a request head must arrive within this long (408 otherwise).
        body_timeout_seconds: a request body must arrive within this long of its head (408 otherwise).
        max_connections: open connections beyond this are answered 503 and closed at once.
        start_serving: False binds the port but accepts no connection until start_serving()
            (clients are refused meanwhile), so a taken port is reported before slow work.

    Raises:
        OSError: the port cannot be bound.
        ValueError: a timeout or the connection limit is not positive.
    """

    def __init__(self, address: Tuple[str, int], max_body_bytes: int, name: str = "http",
                 max_threads: int = 64, *, header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS,
                 body_timeout_seconds: float = BODY_TIMEOUT_SECONDS, max_connections: int = MAX_CONNECTIONS,
                 start_serving: bool = True):
        for what, value in (("header timeout", header_timeout_seconds), ("body timeout", body_timeout_seconds),
                            ("connection limit", max_connections)):
            if not value > 0:
                raise ValueError(f"the {what} must be positive, got {value}")
        self.max_body_bytes = max_body_bytes
        self.header_timeout_seconds = header_timeout_seconds
        self.body_timeout_seconds = body_timeout_seconds
        self.max_connections = max_connections
        self._refused_since_log = 0
        self._refused_logged_at = None  # time.monotonic() of the last line about refused connections
        self._accept_failed_logged_at = None
        self._connections = set()
        self._active = 0
        self._active_changed = threading.Condition()
        self._thread_name = name.upper() if name == "rest" else name
        self._thread = EventLoopThread(name, max_threads)
        self._loop, self._executor = self._thread.loop, self._thread.executor
        self._server = None
        try:
            self.server_address = self._thread.run(self._start(*address, start_serving), 60)
        except BaseException:
            self._thread.close()
            raise

    async def _start(self, host: str, port: int, start_serving: bool):
        self._loop.set_exception_handler(self._loop_exception)
        try:
            self._server = await self._loop.create_server(lambda: Connection(self), host, port,
                                                          backlog=LISTEN_BACKLOG, reuse_address=True,
                                                          start_serving=start_serving)
        except OSError as error:
            raise OSError(f"cannot bind the {self._thread_name} port {host}:{port}: {error}") from error
        return self._server.sockets[0].getsockname()[:2]

    def start_serving(self) -> None:
        """Starts accepting connections on the port bound by a server made with start_serving=False."""
        self._thread.run(self._server.start_serving(), 10)

    # ----- overload -----------------------------------------------------------------------------------
    def _refuse(self, transport) -> None:
        """Answers a connection over max_connections with 503 and closes it; logs once, then once a minute."""
        transport.write(json_response(
            503, {"error": f"the server has {self.max_connections} connections open, its limit; retry later"},
            keep_alive=False))
        transport.close()
        self._refused_since_log += 1
        now = time.monotonic()
        if self._refused_logged_at is None:
            LOG.warning("%s connection limit of %d reached (--rest_max_connections): new connections are "
                        "answered 503 and closed until some close", self._thread_name, self.max_connections)
        elif now - self._refused_logged_at >= LIMIT_LOG_INTERVAL_SECONDS:
            LOG.warning("%s connection limit of %d: %d connections refused in the last %.0f s",
                        self._thread_name, self.max_connections, self._refused_since_log,
                        now - self._refused_logged_at)
        else:
            return
        self._refused_logged_at = now
        self._refused_since_log = 0

    def _loop_exception(self, loop, context) -> None:
        """The event loop's error handler: an accept() out of file descriptors (or memory) is one
        warning a minute, not a traceback a second. asyncio itself retries the accept after a second."""
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES and "accept" in context.get("message", ""):
            now = time.monotonic()
            if self._accept_failed_logged_at is None or \
                    now - self._accept_failed_logged_at >= LIMIT_LOG_INTERVAL_SECONDS:
                self._accept_failed_logged_at = now
                LOG.warning("%s cannot accept connections: %s; retrying every second. Raise the open-file "
                            "limit (ulimit -n) or lower --rest_max_connections", self._thread_name, error)
            return
        loop.default_exception_handler(context)

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
