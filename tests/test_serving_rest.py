"""The REST server's HTTP/1.1 handling, over raw sockets on 127.0.0.1.

A real `serving.rest` server (asyncio, in this process) in front of a real ModelManager serving
the small TF1-style model of tests/serving_models.py, with batching on. The API behaviour
(TF Serving's URLs, bodies and errors) is covered against `tfprod serve` in test_serving_e2e.py;
this file covers the connection handling: keep-alive, pipelining, Connection: close, body
limits, malformed requests, large bodies, many simultaneous connections, read timeouts, the
connection limit and the metrics' bounded labels.
"""

import contextlib
import json
import logging
import socket
import threading
import time

import pytest

from tfprod.serving import config as config_lib
from tfprod.serving import http11, rest
from tfprod.serving.config import BatchingParameters
from tfprod.serving.model_manager import ModelManager
from tfprod.serving.service import ServingService
from tests.serving_models import build_examples_model, copy_version

MAX_BODY = 200_000


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest_server")
    model_dir = build_examples_model(str(root / "model"))
    copy_version(model_dir, str(root / "ex"), 1)
    manager = ModelManager(config_lib.model_config_from_flags("ex", str(root / "ex")), poll_seconds=0,
                           batching=BatchingParameters(max_batch_size=64, batch_timeout_micros=1000, max_enqueued_batches=1000,
                                                       num_batch_threads=1))
    manager.start()
    yield ServingService(manager, default_timeout_seconds=30)
    manager.stop(drain_seconds=5)


@contextlib.contextmanager
def _server(service, **limits):
    """A REST server on a free port of 127.0.0.1 (limits: HttpServer's timeouts and connection limit)."""
    server, port = rest.create_server(service, 0, max_body_bytes=MAX_BODY, metrics_path="/metrics", **limits)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def rest_server(service):
    with _server(service) as port:
        yield port


def _predict_request(values, close=False, extra_headers=""):
    body = json.dumps({"instances": values}).encode()
    head = (f"POST /v1/models/ex:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra_headers}" + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode() + body


def _read_answers(sock, count, timeout=30.0):
    """Reads `count` HTTP answers from sock; returns [(status, headers, body bytes)]."""
    sock.settimeout(timeout)
    buffer, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed after {len(answers)} answers; got {buffer[:300]!r}")
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed in the middle of a body")
            buffer += chunk
        answers.append((int(lines[0].split(" ")[1]), headers, buffer[:length]))
        buffer = buffer[length:]
    return answers


def _closed_by_server(sock, timeout=10.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def test_keep_alive_and_pipelined_requests_are_answered_in_order(rest_server):
    with _connect(rest_server) as sock:
        # Three requests in one write: the answers come back in the order asked.
        sock.sendall(b"".join(_predict_request([[float(index), 1.0]]) for index in range(3)))
        answers = _read_answers(sock, 3)
        assert [json.loads(body)["predictions"][0]["sum"] for _, _, body in answers] == [1.0, 2.0, 3.0]
        assert all(status == 200 and "connection" not in headers for status, headers, _ in answers)
        # The connection stays open for the next request.
        sock.sendall(b"GET /v1/models/ex HTTP/1.1\r\nHost: x\r\n\r\n")
        (status, _, body), = _read_answers(sock, 1)
        assert status == 200 and json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"


def test_connection_close_and_http_1_0_close_after_the_answer(rest_server):
    with _connect(rest_server) as sock:
        sock.sendall(_predict_request([[2.0, 2.0]], close=True))
        (status, headers, body), = _read_answers(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["predictions"][0]["sum"] == 4.0
        assert _closed_by_server(sock)
    with _connect(rest_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        (status, _, body), = _read_answers(sock, 1)
        assert status == 200 and json.loads(body) == {"status": "alive"}
        assert _closed_by_server(sock)


@pytest.mark.parametrize("raw, status, fragment", [
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nHost: x\r\n\r\n", 411, "Content-Length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "chunked"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "bad Content-Length"),
    (b"HELLO\r\n\r\n", 400, "bad request line"),
    (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad header line"),
    (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (http11.MAX_HEADER_BYTES + 10), 431, "headers exceed"),
    # The whole head in one write, its end included: the same limit.
    (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "headers exceed"),
    # Two Content-Lengths (different, or even equal: refused too), or one beside Transfer-Encoding:
    # a proxy could frame the body differently (request smuggling).
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
     400, "more than one content-length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
     400, "more than one content-length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
     400, "both Transfer-Encoding and Content-Length"),
    # Content-Length is ASCII digits only (Python's int() takes all of these but the last).
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", 400, "bad Content-Length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n{}", 400, "bad Content-Length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n{}", 400, "bad Content-Length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length:  1 0\r\n\r\n{}", 400, "bad Content-Length"),
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}", 400, "bad Content-Length"),
    # A space before the colon or a folded line: not a header name.
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length : 2\r\n\r\n{}", 400, "bad header line"),
    (b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400, "bad header line"),
])
def test_malformed_requests_get_an_error_and_the_connection_closes(rest_server, raw, status, fragment):
    with _connect(rest_server) as sock:
        sock.sendall(raw)
        (got, headers, body), = _read_answers(sock, 1)
        assert got == status and fragment in json.loads(body)["error"]
        assert headers["connection"] == "close" and _closed_by_server(sock)
    with _connect(rest_server) as sock:  # the server is still up
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert _read_answers(sock, 1)[0][0] == 200


def test_oversized_bodies_get_413(rest_server):
    # Somewhat too large: the body is read and dropped, then 413, so the client sees the answer.
    with _connect(rest_server) as sock:
        body = b"x" * (MAX_BODY + 1)
        sock.sendall(b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        (status, _, answer), = _read_answers(sock, 1)
        assert status == 413 and "exceeds the limit of 200000 bytes" in json.loads(answer)["error"]
        assert _closed_by_server(sock)
    # Far too large: answered as soon as the head arrives, without waiting for the body.
    with _connect(rest_server) as sock:
        sock.sendall(b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (10 * MAX_BODY))
        (status, _, answer), = _read_answers(sock, 1)
        assert status == 413


def test_body_split_over_many_writes_and_a_large_body(rest_server):
    with _connect(rest_server) as sock:
        request = _predict_request([[1.5, 1.5]])
        for start in range(0, len(request), 7):  # the head and body arrive in small pieces
            sock.sendall(request[start:start + 7])
        (status, _, body), = _read_answers(sock, 1)
        assert status == 200 and json.loads(body)["predictions"][0]["sum"] == 3.0
        # A body above the inline-decoding size is decoded in a worker thread: same answer format.
        rows = [[float(index), 0.5] for index in range(6000)]
        request = _predict_request(rows)
        assert len(request) > rest.INLINE_DECODE_BYTES
        sock.sendall(request)
        (status, _, body), = _read_answers(sock, 1)
        assert status == 200, body[:300]
        predictions = json.loads(body)["predictions"]
        assert len(predictions) == 6000
        assert [row["sum"] for row in predictions[:3]] == [0.5, 1.5, 2.5]


def test_many_simultaneous_connections_are_all_answered(rest_server):
    """100 clients connect at once (beyond the old server's backlog of 5), each sends 3 requests."""
    results, errors = [], []
    lock = threading.Lock()

    def client(index):
        try:
            with _connect(rest_server) as sock:
                for repeat in range(3):
                    sock.sendall(_predict_request([[float(index), float(repeat)]]))
                    (status, _, body), = _read_answers(sock, 1)
                    with lock:
                        results.append((status, json.loads(body)["predictions"][0]["sum"], index + repeat))
        except Exception as error:  # collected and reported by the assertion below
            with lock:
                errors.append(repr(error))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert len(results) == 300
    assert all(status == 200 and got == float(expected) for status, got, expected in results)


def test_idle_keep_alive_connections_are_closed_and_busy_ones_kept(rest_server, monkeypatch):
    monkeypatch.setattr(http11, "IDLE_TIMEOUT_SECONDS", 0.3)
    with _connect(rest_server) as idle, _connect(rest_server) as busy:
        for sock in (idle, busy):
            sock.sendall(_predict_request([[1.0, 1.0]]))
            assert _read_answers(sock, 1)[0][0] == 200
        for index in range(8):  # `busy` asks every 0.2 s, within the timeout each time
            time.sleep(0.2)
            busy.sendall(_predict_request([[float(index), 0.0]]))
            assert _read_answers(busy, 1)[0][0] == 200
        assert _closed_by_server(idle, timeout=5.0)
        busy.sendall(_predict_request([[2.0, 0.0]]))
        assert _read_answers(busy, 1)[0][0] == 200


# ----- read timeouts and the connection limit -----------------------------------------------------
@pytest.mark.parametrize("raw, status", [
    (b"", None),  # connected, sent nothing: closed without an answer
    (b"GET /heal", 408),  # half a request line
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 408),  # headers never terminated
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"instances\"", 408),  # body missing
    # An oversized body being read and dropped for its 413, and the client stops sending.
    (b"POST /v1/models/ex:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * 1000, 413),
])
def test_slow_or_half_sent_requests_are_answered_and_closed_within_the_timeouts(service, raw, status):
    with _server(service, header_timeout_seconds=0.5, body_timeout_seconds=0.5) as port:
        with _connect(port) as sock:
            started = time.monotonic()
            sock.sendall(raw)
            if status is None:
                assert _closed_by_server(sock, timeout=10.0)
            else:
                (got, headers, body), = _read_answers(sock, 1, timeout=10.0)
                assert got == status and headers["connection"] == "close", body
                assert _closed_by_server(sock, timeout=10.0)
            assert time.monotonic() - started < 5.0  # 0.5 s timeouts, with room for a loaded machine
        with _connect(port) as sock:  # the server is still up
            sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert _read_answers(sock, 1)[0][0] == 200


def test_read_timeouts_spare_keep_alive_connections_between_requests_and_slow_but_steady_clients(service):
    with _server(service, header_timeout_seconds=0.5, body_timeout_seconds=0.5) as port, _connect(port) as sock:
        sock.sendall(_predict_request([[1.0, 1.0]]))
        assert _read_answers(sock, 1)[0][0] == 200
        time.sleep(1.0)  # idle between requests: the idle timeout applies (120 s), not the header timeout
        request = _predict_request([[2.0, 2.0]])
        for start in range(0, len(request), 40):  # in pieces, each well within the timeouts
            sock.sendall(request[start:start + 40])
            time.sleep(0.02)
        (status, _, body), = _read_answers(sock, 1)
        assert status == 200 and json.loads(body)["predictions"][0]["sum"] == 4.0


def test_connections_over_the_limit_get_503_with_one_log_line_and_the_server_recovers(service, caplog):
    """300 connections that send nothing against a limit of 50: 50 are held (until the header timeout
    closes them), the other 250 are answered 503 at once; one warning in the log, not 250."""
    limit, flood = 50, 300
    caplog.set_level(logging.WARNING, logger=http11.__name__)
    with _server(service, header_timeout_seconds=4.0, max_connections=limit) as port:
        sockets = []
        try:
            for _ in range(flood):
                sockets.append(_connect(port))
            time.sleep(0.5)
            refused, held = 0, []
            for sock in sockets:
                sock.setblocking(False)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    held.append(sock)
                    continue
                assert data.startswith(b"HTTP/1.1 503 ") and b"connections open, its limit" in data, data[:200]
                refused += 1
            assert (len(held), refused) == (limit, flood - limit)
            started = time.monotonic()
            for sock in held:  # the header timeout closes what never sent a request
                sock.setblocking(True)
                assert _closed_by_server(sock, timeout=20.0)
            assert time.monotonic() - started < 15.0
        finally:
            for sock in sockets:
                sock.close()
        with _connect(port) as sock:
            sock.sendall(_predict_request([[1.0, 2.0]]))
            assert _read_answers(sock, 1)[0][0] == 200
    lines = [record.getMessage() for record in caplog.records if "connection limit" in record.getMessage()]
    assert len(lines) == 1 and "--rest_max_connections" in lines[0], lines


# ----- metrics ----------------------------------------------------------------------------------
def _metrics_page(port) -> bytes:
    with _connect(port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        (status, _, body), = _read_answers(sock, 1)
    assert status == 200
    return body


def test_unknown_model_names_share_one_metrics_label(rest_server):
    """2,000 requests naming 2,000 unknown models grow the metrics page by one series, not 2,000."""
    with _connect(rest_server) as sock:
        sock.sendall(_predict_request([[1.0, 2.0]]))
        assert _read_answers(sock, 1)[0][0] == 200
    before = _metrics_page(rest_server)
    for connection in range(4):
        with _connect(rest_server) as sock:
            names = [f"no_such_model_{connection}_{index}" for index in range(500)]
            body = b'{"instances": [[1.0, 2.0]]}'
            sock.sendall(b"".join(b"POST /v1/models/%s:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                                  % (name.encode(), len(body), body) for name in names))
            assert {status for status, _, _ in _read_answers(sock, len(names))} == {404}
    after = _metrics_page(rest_server).decode()
    assert len(after) - len(before) < 10_000, len(after) - len(before)
    assert "no_such_model" not in after
    assert ('tfprod_serving_request_count{model="_unknown",version="",api="predict",protocol="rest",'
            'status="NOT_FOUND"} 2000') in after
    assert 'tfprod_serving_request_count{model="ex",' in after  # a configured model keeps its own label
