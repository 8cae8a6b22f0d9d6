"""Reliability probe: hostile inputs and faults against `tfprod serve` and `tfprod run` (issue 19).

Starts `tfprod serve` (a subprocess on 127.0.0.1, free ports, batching and metrics on, polling
every second) on a small SavedModel with a variable (built here with TensorFlow), then runs a
bounded set of probes, one or more per serving defect 1-10 of issue 19, and the cheap pipeline
ones (11, 14, 15; nothing that needs a whole pipeline run). Each probe records the expected
answer and the observed one, the time it took, and:

- crash: the server process exited (or a CLI ended with a Python traceback);
- hang: the probe reached its time bound with no answer (a connection still open, a process
  still running);
- data lost: models the server stopped serving because of the probe;
- serving after: a normal predict over REST and gRPC answered right after the probe (the
  server is restarted for the next probe when it is down).

Flags that newer code has (connection cap, header/body read timeouts, decoded tensor limit,
disabling config reload) are found in `tfprod serve --help` and passed, lowered, only when they
exist, so the same script runs against older and newer code. Every wait is bounded (a few
seconds); the whole run takes about two to three minutes on two cores.

    .venv/bin/python -m bench.reliability_probe [--skip-pipeline]

Writes docs/reliability.md and docs/benchmarks/reliability_probe.json.
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, List, Optional

import tfprod  # noqa: F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = "probe"
TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
START_TIMEOUT_S = 90.0
BATCH_TIMEOUT_MICROS = 300_000  # a lone request waits this long for its batch (the deadline probes)
LOWERED = {"connections": 100, "header_timeout_s": 2.0, "body_timeout_s": 2.0,
           "tensor_bytes": 1 << 20}
FLOOD_CONNECTIONS = 300


# ----- the model and the server ------------------------------------------------------------
def build_model(export_dir: str) -> str:
    """A SavedModel with one variable: serving_default {"x": [N, 2] float} -> {"y": x . w}."""
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([1.0, 2.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.linalg.matvec(x, self.w)}

    module = Linear()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def serve_flags() -> Dict[str, str]:
    """{role: flag} of the optional flags this `tfprod serve` has (from its --help)."""
    text = subprocess.run([TFPROD, "serve", "--help"], capture_output=True, text=True,
                          timeout=120).stdout
    flags = sorted(set(re.findall(r"(--[a-z0-9_]+)", text)))
    roles = {
        "connections": lambda f: "connection" in f and ("max" in f or "limit" in f),
        "header_timeout_s": lambda f: "header" in f and "timeout" in f,
        "body_timeout_s": lambda f: "body" in f and "timeout" in f,
        "tensor_bytes": lambda f: "tensor" in f and "bytes" in f,
        "config_reload": lambda f: "reload" in f,
    }
    found = {}
    for role, matches in roles.items():
        for flag in flags:
            if matches(flag):
                found[role] = flag
                break
    return found


def optional_flag_args(flags: Dict[str, str]) -> List[str]:
    args = []
    for role in ("connections", "header_timeout_s", "body_timeout_s", "tensor_bytes"):
        if role in flags:
            value = LOWERED[role]
            flag = flags[role]
            if flag.endswith("_ms"):
                value = value * 1000
            args.append(f"{flag}={int(value) if float(value).is_integer() else value}")
    if "config_reload" in flags:  # reloading turned off, whichever way the flag is named
        flag = flags["config_reload"]
        args.append(f"{flag}={'true' if 'disable' in flag else 'false'}")
    return args


class Server:
    """A `tfprod serve` subprocess; stderr goes to a log file."""

    def __init__(self, workdir: pathlib.Path, base_path: pathlib.Path, extra: List[str],
                 port: str = "0", label: str = "server"):
        self.log_path = workdir / f"{label}.log"
        batching = workdir / "batching.config"
        batching.write_text(f"max_batch_size {{ value: 8 }}\nbatch_timeout_micros {{ value: "
                            f"{BATCH_TIMEOUT_MICROS} }}\nnum_batch_threads {{ value: 2 }}\n")
        monitoring = workdir / "monitoring.config"
        monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
        self.command = [TFPROD, "serve", "--port", port, "--rest_api_port", "0",
                        "--model_name", MODEL, "--model_base_path", str(base_path),
                        "--enable_batching", "--batching_parameters_file", str(batching),
                        "--monitoring_config_file", str(monitoring),
                        "--file_system_poll_wait_seconds", "1", *extra]
        self.log = open(self.log_path, "a")
        self.began = time.monotonic()
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self.log,
                                        stdin=subprocess.DEVNULL, text=True)
        self.ports: Optional[dict] = None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        """True once the ports are announced; False when the process exits or times out."""
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = self.process.stdout.readline()
                if not line:
                    self.process.wait(timeout=10)
                    return False
                if line.startswith("{"):
                    self.ports = json.loads(line)
                    return True
        return False

    @property
    def rest(self) -> int:
        return self.ports["rest_port"]

    @property
    def grpc(self) -> int:
        return self.ports["grpc_port"]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# ----- clients -------------------------------------------------------------------------------
def http_call(port: int, method: str, path: str, body: Optional[bytes] = None,
              timeout: float = 5.0):
    """(status, body bytes) of one REST call; status None when no answer came."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        return None, repr(error).encode()


def raw_exchange(port: int, data: bytes, wait_s: float, read_limit: int = 1 << 16,
                 stop_on_status: bool = False) -> dict:
    """Sends raw bytes, then reads until the server closes or wait_s passes.

    Returns {"status": first status code or None, "closed": whether the server closed,
    "seconds": how long until it answered/closed (or wait_s)}.
    """
    began = time.monotonic()
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        try:
            connection.sendall(data)
        except OSError:
            closed = True
        connection.settimeout(0.2)
        while not closed and time.monotonic() - began < wait_s:
            try:
                chunk = connection.recv(read_limit)
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if stop_on_status and re.match(rb"HTTP/1\.[01] \d{3}", received):
                break
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    return {"status": int(match.group(1)) if match else None, "closed": closed,
            "seconds": round(time.monotonic() - began, 2)}


def tensor(values=None, shape=(1, 2), dtype=None):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype if dtype is not None else types_pb2.DT_FLOAT)
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]))
    proto.float_val.extend(values if values is not None else [1.0, 2.0])
    return proto


def grpc_predict(port: int, proto=None, timeout: float = 5.0):
    """(status code name, seconds) of one gRPC Predict."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(proto if proto is not None else tensor())
    began = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(request, timeout=timeout)
            code, detail = "OK", ""
        except grpc.RpcError as error:
            code, detail = error.code().name, (error.details() or "")[:120]
    return code, detail, round(time.monotonic() - began, 2)


def normal_predict(server: Server) -> bool:
    """A good predict answers over REST and gRPC."""
    if server is None or not server.alive() or not server.ports:
        return False
    status, body = http_call(server.rest, "POST", f"/v1/models/{MODEL}:predict",
                             b'{"instances": [[1.0, 2.0]]}')
    code, _, _ = grpc_predict(server.grpc)
    return status == 200 and b"5" in body and code == "OK"


def metrics(server: Server) -> str:
    status, body = http_call(server.rest, "GET", "/monitoring/prometheus/metrics")
    return body.decode(errors="replace") if status == 200 else ""


def metric_sum(text: str, prefix: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def version_states(server: Server) -> Dict[str, str]:
    status, body = http_call(server.rest, "GET", f"/v1/models/{MODEL}")
    if status != 200:
        return {}
    return {entry["version"]: entry["state"]
            for entry in json.loads(body).get("model_version_status", [])}


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ----- results -------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    defect: str
    probe: str
    expected: str
    observed: str = ""
    as_expected: bool = False
    seconds: float = 0.0
    crash: bool = False
    hang: bool = False
    data_lost: str = "no"
    serving_after: Optional[bool] = None  # None: not a serving probe


class Context:
    """The running server, restarted when a probe brings it down."""

    def __init__(self, workdir: pathlib.Path, model_dir: str, flags: Dict[str, str]):
        self.workdir = workdir
        self.model_dir = model_dir
        self.flags = flags
        self.extra = optional_flag_args(flags)
        self.base = workdir / "models" / MODEL
        self.base.mkdir(parents=True)
        shutil.copytree(model_dir, self.base / "1")
        self.restarts = 0
        self.server = self._start()

    def _start(self) -> Server:
        server = Server(self.workdir, self.base, self.extra, label=f"server{self.restarts}")
        if not server.wait_ready():
            raise RuntimeError(f"tfprod serve did not start; see {server.log_path}")
        return server

    def ensure_up(self) -> None:
        if not self.server.alive():
            self.server.stop()
            self.restarts += 1
            self.server = self._start()


def run_probe(context: Optional[Context], result: Result, body: Callable[[Result], None]) -> Result:
    began = time.monotonic()
    try:
        body(result)
    except Exception as error:  # the probe itself failed: reported in the row, the run goes on
        result.observed = f"probe error: {error!r}"[:200]
    result.seconds = round(time.monotonic() - began, 2)
    if context is not None:
        result.crash = result.crash or not context.server.alive()
        result.serving_after = normal_predict(context.server)
        if result.crash:
            context.ensure_up()
    print(f"[{result.defect}] {result.probe}: {result.observed} "
          f"({'as expected' if result.as_expected else 'NOT as expected'}, {result.seconds} s, "
          f"serving after: {yes_no(result.serving_after)})", flush=True)
    return result


# ----- serving probes --------------------------------------------------------------------------
def serving_probes(context: Context) -> List[Result]:
    from tensorflow.core.framework import types_pb2

    results = []
    server = lambda: context.server  # noqa: E731  (restarted servers are picked up)
    flags = context.flags
    slow_bound = (LOWERED["header_timeout_s"] + 3.0) if "header_timeout_s" in flags else 6.0
    body_bound = (LOWERED["body_timeout_s"] + 3.0) if "body_timeout_s" in flags else 6.0

    def grpc_case(defect, probe, proto, expected_codes, expected_text):
        def body(result):
            code, detail, _ = grpc_predict(server().grpc, proto, timeout=20)
            result.observed = f"{code} {detail}".strip()
            result.as_expected = code in expected_codes
        results.append(run_probe(context, Result(defect, probe, expected_text), body))

    # 1. decoded size
    grpc_case("1", "gRPC Predict, shape [2^20, 2^20, 2^20], one float_val (4 EiB decoded)",
              tensor([1.0], shape=(1 << 20, 1 << 20, 1 << 20)), {"INVALID_ARGUMENT"},
              "INVALID_ARGUMENT before allocating")
    def decoded_size(result):
        code, detail, seconds = grpc_predict(server().grpc, tensor([1.0], shape=(2_000_000, 2)),
                                             timeout=10)
        _, _, next_seconds = grpc_predict(server().grpc, timeout=30)
        result.observed = (f"{code} {detail[:60]} after {seconds} s; the next normal predict "
                           f"took {next_seconds} s")
        result.as_expected = code == "INVALID_ARGUMENT"
        result.hang = code == "DEADLINE_EXCEEDED"  # no answer within the client's 10 s

    results.append(run_probe(context, Result(
        "1", "gRPC Predict, shape [2000000, 2], one float_val (61 B -> 16 MB decoded)",
        "INVALID_ARGUMENT (shape vs float_val / decoded-size limit) at once"), decoded_size))

    # 2. slow and half-sent requests, connection flood
    def slow(defect, probe, data, bound, expected_statuses=(408, None)):
        def body(result):
            answer = raw_exchange(server().rest, data, bound)
            if answer["closed"] or answer["status"]:
                result.observed = (f"{answer['status'] or 'no answer'}, closed after "
                                   f"{answer['seconds']} s")
                result.as_expected = answer["status"] in expected_statuses or answer["closed"]
            else:
                result.observed = f"still open after {bound:.0f} s"
                result.hang = True
        results.append(run_probe(context, Result(defect, probe,
                                                 f"closed (408 or EOF) within {bound:.0f} s"),
                                 body))

    slow("2", "REST: partial request line, then silence", b"POST /v1/models/probe:pre", slow_bound)
    slow("2", "REST: unterminated headers, then silence",
         b"POST /v1/models/probe:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n", slow_bound)
    slow("2", "REST: headers say 100 body bytes, none sent",
         b"POST /v1/models/probe:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
         body_bound)
    slow("2", "REST: body over 4x --max_request_bytes announced, 1 KB sent",
         b"POST /v1/models/probe:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 80000000\r\n\r\n"
         + b"[" * 1024, body_bound, expected_statuses=(413,))

    def flood(result):
        """FLOOD_CONNECTIONS idle connections: those over the cap must be refused (503 and
        closed) at once; the ones under it are closed by the header timeout, after which a
        normal predict answers although the flood's sockets are still open on this side."""
        sockets = []
        try:
            for _ in range(FLOOD_CONNECTIONS):
                try:
                    sockets.append(socket.create_connection(("127.0.0.1", server().rest), timeout=2))
                except OSError:
                    break
            time.sleep(1.5)
            held = refused = 0
            for connection in sockets:
                connection.setblocking(False)
                try:
                    first = connection.recv(64)
                except BlockingIOError:
                    held += 1  # open, nothing answered: waiting for a request
                    continue
                except OSError:
                    first = b""
                refused += first == b"" or first.startswith(b"HTTP/1.1 503")
            predict_during = normal_predict(server())
            timeout = LOWERED["header_timeout_s"] if "header_timeout_s" in flags else 0.0
            time.sleep(timeout + 1.0)
            predict_after = normal_predict(server())
        finally:
            for connection in sockets:
                connection.close()
        cap = LOWERED["connections"] if "connections" in flags else None
        log = server().log_text()
        notes = sum(1 for line in log.splitlines() if "connection" in line.lower()
                    and ("limit" in line.lower() or "max" in line.lower()))
        result.observed = (f"{held}/{len(sockets)} held, {refused} refused (503 or closed); "
                           f"predict during the flood {'OK' if predict_during else 'refused'}, "
                           f"after the header timeout with the flood still open "
                           f"{'OK' if predict_after else 'FAILED'}; {notes} cap log lines")
        result.as_expected = (cap is not None and held <= cap + 5 and predict_after
                              and notes <= 2)

    results.append(run_probe(context, Result(
        "2", f"{FLOOD_CONNECTIONS} idle REST connections"
        + (f" ({flags['connections']}={LOWERED['connections']})" if "connections" in flags
           else " (no connection-cap flag)"),
        f"at most the cap ({LOWERED['connections']}) held, the rest refused; predict OK once the "
        "header timeout closes the idle ones (the flood still open); one log line"),
        flood))

    # 4. a failed version is retried when its files are completed in place
    def failed_retry(result):
        data_file = next((pathlib.Path(context.model_dir) / "variables").glob("variables.data-*"))
        staging = context.base.parent / ".staging-2"
        shutil.copytree(context.model_dir, staging)
        (staging / "variables" / data_file.name).write_bytes(b"")
        os.rename(staging, context.base / "2")
        failed = wait_for(lambda: "version 2 failed" in server().log_text(), 8)
        with open(context.base / "2" / "variables" / data_file.name, "r+b") as handle:
            handle.write(data_file.read_bytes())  # completed in place: same name, same folder
        loaded = wait_for(lambda: version_states(server()).get("2") == "AVAILABLE", 8)
        result.observed = (f"load {'failed' if failed else 'did not fail'} on the empty file; "
                           f"after completing it: version 2 "
                           f"{'AVAILABLE' if loaded else 'never retried (8 s)'}")
        result.as_expected = loaded

    results.append(run_probe(context, Result(
        "4", "version 2 with an empty variables.data, then the file completed in place",
        "version 2 retried and AVAILABLE within 8 s"), failed_retry))

    # 3. a version directory named "²" (isdigit() true, int() fails)
    def superscript_hot(result):
        before = server().log_text().count("Traceback")
        (context.base / "²").mkdir()
        time.sleep(3)
        shutil.copytree(context.model_dir, context.base / ".staging-3")
        os.rename(context.base / ".staging-3", context.base / "3")
        loaded = wait_for(lambda: version_states(server()).get("3") == "AVAILABLE", 6)
        tracebacks = server().log_text().count("Traceback") - before
        shutil.rmtree(context.base / "²")
        result.observed = (f"{tracebacks} tracebacks in the log; version 3 added after it "
                           f"{'loaded' if loaded else 'NOT loaded in 6 s (hot reload stopped)'}")
        result.as_expected = loaded and tracebacks == 0

    results.append(run_probe(context, Result(
        "3", "directory '²' appears beside the versions (hot reload)",
        "ignored with one warning; new versions still load"), superscript_hot))

    # 6. unknown model names in metric labels
    def unknown_models(result):
        before = len(metrics(server()))
        connection = __import__("http.client").client.HTTPConnection("127.0.0.1", server().rest,
                                                                     timeout=5)
        statuses = set()
        for index in range(300):
            connection.request("POST", f"/v1/models/unknown-{index}:predict",
                               body=b'{"instances": [[1.0, 2.0]]}',
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            statuses.add(answer.status)
        connection.close()
        growth = len(metrics(server())) - before
        result.observed = f"answers {sorted(statuses)}; metrics page grew {growth / 1024:.1f} KB"
        result.as_expected = statuses == {404} and growth < 4096

    results.append(run_probe(context, Result(
        "6", "300 REST predicts for unknown model names",
        "404s; metrics page grows < 4 KB (one label for unknown models)"), unknown_models))

    # 7. client errors answered as server errors
    def rest_case(defect, probe, body_bytes, expected_statuses, expected_text):
        def body(result):
            status, answer = http_call(server().rest, "POST", f"/v1/models/{MODEL}:predict",
                                       body_bytes, timeout=10)
            result.observed = f"{status} {answer[:80].decode(errors='replace')}".strip()
            result.as_expected = status in expected_statuses
        results.append(run_probe(context, Result(defect, probe, expected_text), body))

    rest_case("7", "REST: instances nested 40 levels deep",
              b'{"instances": ' + b"[" * 40 + b"1.0" + b"]" * 40 + b"}", {400}, "400")
    rest_case("7", "REST: 100,000 '['", b'{"instances": ' + b"[" * 100_000 + b"}", {400}, "400")
    grpc_case("7", "gRPC Predict with dtype DT_RESOURCE", tensor([1.0, 2.0], dtype=types_pb2.DT_RESOURCE),
              {"INVALID_ARGUMENT"}, "INVALID_ARGUMENT")

    # 8. lenient HTTP parsing
    predict_head = b"POST /v1/models/probe:predict HTTP/1.1\r\nHost: x\r\n"
    good_body = b'{"instances": [[1.0, 2.0]]}'

    def http_case(probe, data, expected_statuses, expected_text):
        def body(result):
            answer = raw_exchange(server().rest, data, 5.0, stop_on_status=True)
            result.observed = (f"{answer['status'] or 'no answer'}"
                               + (", closed" if answer["closed"] else ""))
            result.as_expected = answer["status"] in expected_statuses
            result.hang = not answer["closed"] and answer["status"] is None
        results.append(run_probe(context, Result("8", probe, expected_text), body))

    http_case("70 KB of headers in one send",
              predict_head + b"X-Pad: " + b"a" * 70_000 + b"\r\nContent-Length: "
              + str(len(good_body)).encode() + b"\r\n\r\n" + good_body, {431}, "431")
    http_case("two conflicting Content-Length headers",
              predict_head + b"Content-Length: 2\r\nContent-Length: " + str(len(good_body)).encode()
              + b"\r\n\r\n" + good_body, {400}, "400")
    length = len(good_body)  # a good predict body, so that only the header can cause a 400
    http_case(f"Content-Length: +{length} (good body)",
              predict_head + f"Content-Length: +{length}\r\n\r\n".encode() + good_body, {400}, "400")
    http_case(f"Content-Length: {str(length)[0]}_{str(length)[1:]} (good body)",
              predict_head + f"Content-Length: {str(length)[0]}_{str(length)[1:]}\r\n\r\n".encode()
              + good_body, {400}, "400")

    # 9. work that outlives its client
    def expired_deadline(result):
        text = metrics(server())
        batches_before = metric_sum(text, "tfprod_serving_batch_size_count", model=MODEL)
        code, _, _ = grpc_predict(server().grpc, timeout=0.05)
        time.sleep(2 * BATCH_TIMEOUT_MICROS / 1e6 + 0.3)
        text = metrics(server())
        ran = metric_sum(text, "tfprod_serving_batch_size_count", model=MODEL) - batches_before
        result.observed = f"client saw {code}; the model ran {ran:.0f} batch(es) for it"
        result.as_expected = code == "DEADLINE_EXCEEDED" and ran == 0

    results.append(run_probe(context, Result(
        "9", f"gRPC Predict with a 50 ms deadline (batch timeout {BATCH_TIMEOUT_MICROS // 1000} ms)",
        "DEADLINE_EXCEEDED; the model does not run for it"), expired_deadline))

    def rest_disconnect(result):
        text = metrics(server())
        batches_before = metric_sum(text, "tfprod_serving_batch_size_count", model=MODEL)
        with socket.create_connection(("127.0.0.1", server().rest), timeout=5) as connection:
            connection.sendall(predict_head + b"Content-Length: " + str(len(good_body)).encode()
                               + b"\r\n\r\n" + good_body)
            time.sleep(0.05)
        time.sleep(2 * BATCH_TIMEOUT_MICROS / 1e6 + 0.3)
        ran = metric_sum(metrics(server()), "tfprod_serving_batch_size_count",
                         model=MODEL) - batches_before
        result.observed = f"the model ran {ran:.0f} batch(es) for the gone client"
        result.as_expected = ran == 0

    results.append(run_probe(context, Result(
        "9", "REST predict, client disconnects after 50 ms (waiting for its batch)",
        "the model does not run for it"), rest_disconnect))

    # 5. reconfiguration without authentication (last: it may unload every model)
    def reload_empty(result):
        import grpc
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.SetInParent()
        with grpc.insecure_channel(f"127.0.0.1:{server().grpc}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            try:
                stub.HandleReloadConfigRequest(request, timeout=20)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
        states = version_states(server())
        served = any(state == "AVAILABLE" for state in states.values())
        result.observed = f"{code}; model {MODEL} {'still served' if served else 'UNLOADED'}"
        result.as_expected = code != "OK" and served
        if not served:
            result.data_lost = f"model {MODEL} unloaded (every model)"

    flag = flags.get("config_reload")
    results.append(run_probe(context, Result(
        "5", "ModelService.HandleReloadConfigRequest with an empty config"
        + (f" ({flag}=false)" if flag else " (no flag to disable it)"),
        "refused; models still served"), reload_empty))
    return results


def start_probes(workdir: pathlib.Path, model_dir: str, extra: List[str]) -> List[Result]:
    """Probes that each start their own server: '²' present at start, the gRPC port in use."""
    results = []

    def superscript_start(result):
        base = workdir / "start-superscript" / MODEL
        base.mkdir(parents=True)
        shutil.copytree(model_dir, base / "1")
        (base / "²").mkdir()
        server = Server(workdir, base, extra, label="superscript")
        try:
            ready = server.wait_ready()
            up = ready and normal_predict(server)
            code = server.process.poll()
            log = server.log_text()
        finally:
            server.stop()
        result.crash = code not in (None, 0)
        result.serving_after = up
        result.observed = ("started and served version 1" if up else
                           f"exit {code}" + (" with a traceback" if "Traceback" in log else ""))
        result.as_expected = up

    results.append(run_probe(None, Result("3", "server starts with a '²' directory in the base path",
                                          "starts, serves version 1, one warning"), superscript_start))

    def port_in_use(result):
        base = workdir / "start-busy" / MODEL
        base.mkdir(parents=True)
        shutil.copytree(model_dir, base / "1")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            server = Server(workdir, base, extra, port=str(port), label="busy")
            try:
                ready = server.wait_ready(60)
                code = server.process.wait(timeout=5) if not ready else None
            except subprocess.TimeoutExpired:
                code = None
            seconds = time.monotonic() - server.began
            log = server.log_text()
            server.stop()
        loaded_first = "loading model" in log
        result.observed = (f"exit {code} after {seconds:.1f} s; the model was "
                           f"{'loaded first' if loaded_first else 'not loaded'}"
                           + ("; traceback" if "Traceback" in log else ""))
        result.hang = ready
        result.as_expected = code == 2 and not loaded_first
        result.serving_after = None

    results.append(run_probe(None, Result("10", "gRPC port already in use",
                                          "exit 2 naming the port, before loading the model"),
                             port_in_use))
    return results


# ----- pipeline probes -------------------------------------------------------------------------
def pipeline_worker(cases_json: str) -> int:
    """Runs `tfprod run` cases one after another in this process (TFX is imported once).

    Prints a JSON line when each case starts and when it ends (exit code, stderr text, seconds,
    whether it raised); the parent kills this process at its time bound.
    """
    import contextlib
    import io
    import traceback

    from tfprod import cli

    for case in json.loads(cases_json):
        print(json.dumps({"start": case["defect"]}), flush=True)
        began = time.monotonic()
        buffer = io.StringIO()
        raised = False
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(case["argv"])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # what a user would see as a traceback and exit 1
                traceback.print_exc(file=buffer)
                code, raised = 1, True
        print(json.dumps({"end": case["defect"], "code": code, "text": buffer.getvalue()[-4000:],
                          "raised": raised, "seconds": round(time.monotonic() - began, 2)}),
              flush=True)
    return 0


def launch_pipeline_probes(workdir: pathlib.Path) -> tuple:
    """Starts the cheap `tfprod run` failures in one worker process; collect_pipeline_probes
    reads their outcomes."""
    import numpy as np

    from tfprod.contract import idx

    config = str(REPO_ROOT / "configs" / "mnist_cnn.yaml")
    not_a_dir = workdir / "output-is-a-file"
    not_a_dir.write_text("a file\n")
    odd_data = workdir / "idx-27x28"
    odd_data.mkdir()
    rng = np.random.RandomState(0)
    idx.write_idx(str(odd_data / idx.TRAIN_IMAGES), rng.randint(0, 256, (64, 27, 28)).astype(np.uint8))
    idx.write_idx(str(odd_data / idx.TRAIN_LABELS), (np.arange(64) % 10).astype(np.uint8))
    idx.write_idx(str(odd_data / idx.TEST_IMAGES), rng.randint(0, 256, (32, 27, 28)).astype(np.uint8))
    idx.write_idx(str(odd_data / idx.TEST_LABELS), (np.arange(32) % 10).astype(np.uint8))
    run = ["run", "--config", config]
    cases = [  # the IDX case last: on code that does not catch it, the pipeline starts
        ("11", "tfprod run --output-dir <a file>", run + ["--output-dir", str(not_a_dir)],
         "exit 2 naming --output-dir, no traceback",
         lambda code, text: code == 2 and "--output-dir" in text and "Traceback" not in text),
        ("15", "tfprod run --set model.name=nope (a value the model registry refuses)",
         run + ["--output-dir", str(workdir / "out-set"), "--set", "model.name=nope"],
         "exit 2 naming --set", lambda code, text: code == 2 and "--set" in text),
        ("14", "tfprod run on IDX images of 27x28",
         run + ["--output-dir", str(workdir / "out-idx"), "--data-dir", str(odd_data)],
         f"exit 2/3 at once naming {idx.TRAIN_IMAGES}",
         lambda code, text: code in (2, 3) and idx.TRAIN_IMAGES in text),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.reliability_probe", "--pipeline-worker",
         json.dumps([{"defect": defect, "argv": argv} for defect, _, argv, _, _ in cases])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        cwd=REPO_ROOT)
    return process, cases, time.monotonic()


def collect_pipeline_probes(launched: tuple, bound_s: float) -> List[Result]:
    """The outcomes of launch_pipeline_probes, waiting at most bound_s from the launch."""
    process, cases, began = launched
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = began + bound_s
    started, ended = {}, {}
    while time.monotonic() < deadline and len(ended) < len(cases):
        if not selector.select(timeout=0.5):
            continue
        line = process.stdout.readline()
        if not line:
            break
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if "start" in event:
            started[event["start"]] = time.monotonic()
        else:
            ended[event["end"]] = event
    process.kill()
    process.wait()
    results = []
    for defect, probe, _, expected, check in cases:
        result = Result(defect, probe, expected, data_lost="-")
        event = ended.get(defect)
        if event is None:
            result.hang = defect in started
            result.seconds = round(time.monotonic() - started.get(defect, time.monotonic()), 1)
            result.observed = (f"still running after {result.seconds:.0f} s (killed): not caught "
                               "up front" if defect in started else
                               f"not reached within {bound_s:.0f} s")
        else:
            text, code = event["text"], event["code"]
            last = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
            result.seconds = event["seconds"]
            result.crash = event["raised"] or "Traceback" in text
            result.observed = (f"exit {code}" + (" with a traceback" if result.crash else "")
                               + f": {last[0].strip()[:120]}")
            result.as_expected = check(code, text)
        print(f"[{defect}] {probe}: {result.observed} "
              f"({'as expected' if result.as_expected else 'NOT as expected'}, {result.seconds} s)",
              flush=True)
        results.append(result)
    return results


# ----- report ----------------------------------------------------------------------------------
def yes_no(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def markdown(report: dict) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    rows = report["results"]
    lines = [
        "# Reliability probe: hostile input and faults",
        "",
        "Generated by `bench/reliability_probe.py` (issue 19): `tfprod serve` on a small SavedModel "
        "(127.0.0.1, free ports, batching with a "
        f"{BATCH_TIMEOUT_MICROS // 1000} ms batch timeout, metrics on, polling every second), then "
        "one or more bounded probes per serving defect 1-10 and the cheap pipeline ones (11, 14, 15). "
        "Re-measure with:",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"- date: {report['date']}",
        f"- code: {report['git']}",
        f"- machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"load average at end {report['machine']['load_average_at_end']}; "
        f"Python {report['machine']['python']}, TensorFlow {report['machine']['tensorflow']}",
        "- optional `tfprod serve` flags found and passed (lowered): "
        + (", ".join(f"`{arg}`" for arg in report["flags_passed"]) or "none"),
        f"- {sum(r['as_expected'] for r in rows)} of {len(rows)} probes answered as expected; "
        f"crashes {sum(r['crash'] for r in rows)}, hangs {sum(r['hang'] for r in rows)}, "
        f"data lost {sum(r['data_lost'] not in ('no', '-') for r in rows)}; "
        f"whole run {report['seconds']:.0f} s",
        "",
        "Columns: *crash* = the server exited (or a CLI printed a Python traceback); *hang* = no answer "
        "within the probe's bound; *data lost* = models the server stopped serving because of the probe; "
        "*serving after* = a normal REST and gRPC predict answered right after (the server is restarted "
        "when it went down); `-` = not applicable.",
        "",
        "| # | probe (input) | expected | observed | as expected | s | crash | hang | data lost | serving after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(cell(value) for value in (
            r["defect"], r["probe"], r["expected"], r["observed"],
            "yes" if r["as_expected"] else "**no**", r["seconds"], yes_no(r["crash"]),
            yes_no(r["hang"]), r["data_lost"], yes_no(r["serving_after"]))) + " |")
    lines += ["", "Not probed here (they need a whole pipeline run, a kill -9 mid-run or gigabytes of "
              "memory): 12 (Pusher atomicity), 13 (config.yaml overwritten by a crashed run, RUNNING "
              "executions), the rest of 11 (parent is a file, immutable or read-only output dir), and "
              "1's 15 MB JSON body peak.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-pipeline", action="store_true", help="serving probes only")
    parser.add_argument("--pipeline-bound", type=float, default=150.0,
                        help="seconds the `tfprod run` probes may take in all (TFX's import "
                        "included) before their process is killed")
    parser.add_argument("--pipeline-worker", help=argparse.SUPPRESS)
    parser.add_argument("--output-md", default=str(REPO_ROOT / "docs" / "reliability.md"))
    parser.add_argument("--output-json",
                        default=str(REPO_ROOT / "docs" / "benchmarks" / "reliability_probe.json"))
    args = parser.parse_args(argv)
    if args.pipeline_worker:
        return pipeline_worker(args.pipeline_worker)
    began = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tfprod-reliability-"))
    try:
        flags = serve_flags()
        model_dir = build_model(str(workdir / "model"))
        extra = optional_flag_args(flags)
        print(f"optional flags passed: {extra or 'none'}", flush=True)
        context = Context(workdir, model_dir, flags)
        # The pipeline probes' process (TFX's import alone takes tens of seconds) runs beside
        # the serving probes, which mostly wait.
        launched = None if args.skip_pipeline else launch_pipeline_probes(workdir)
        try:
            results = serving_probes(context)
        finally:
            context.server.stop()
        results += start_probes(workdir, model_dir, extra)
        if launched is not None:
            results += collect_pipeline_probes(launched, args.pipeline_bound)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    from bench import machine

    git = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True).stdout.strip()
    report = {
        "command": ".venv/bin/python -m bench.reliability_probe"
                   + (" --skip-pipeline" if args.skip_pipeline else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git[:100],
        "machine": machine.describe(),
        "flags_found": flags,
        "flags_passed": extra,
        "seconds": round(time.monotonic() - began, 1),
        "results": [dataclasses.asdict(result) for result in results],
    }
    pathlib.Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.output_json).write_text(json.dumps(report, indent=2) + "\n")
    pathlib.Path(args.output_md).write_text(markdown(report))
    print(f"wrote {args.output_md} and {args.output_json} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
