"""Load test of `tfprod serve`: closed-loop clients in separate processes, REST and gRPC.

For each protocol (rest, grpc), request size (1 and 32 images) and concurrency (1, 8, 32, 64),
`--client-processes` load-generator processes (separate from the server) share `concurrency`
closed-loop clients (each sends its next request when the last one is answered) for --seconds,
against a server started with dynamic batching. It reports req/s, predictions/s, p50/p95/p99
latency and how much CPU the server and the load generator used (in cores, out of the
machine's), and compares predictions/s with the in-process ceiling: the SavedModel's serving_raw
signature called directly at batch 256 (measured before and after the load cells; their mean is
the reference).

The load generator does as little as a client can: the request is serialized once (a stock
PredictRequest for gRPC, a TF Serving JSON body for REST) and each call sends those bytes; the
gRPC answer is checked once with the stock PredictionService stub before the cells run.

--load-generator picks the load generator. `native` (the default, `auto`, when both are on PATH)
runs compiled tools, which need about a tenth of the CPU per request of the Python clients and so
leave the cores to the server being measured:
- gRPC: h2load (Debian package nghttp2-client) over HTTP/2 without TLS (h2c), posting the
  PredictRequest bytes with gRPC's 5-byte length prefix; `concurrency` = connections x streams per
  connection. A gRPC error comes back as HTTP 200 with a non-zero grpc-status trailer, which
  h2load counts as a success, so errors are counted from the server's Prometheus counter
  tfprod_serving_request_count (all statuses but OK) plus h2load's own failed requests.
- REST: wrk (Debian package wrk) with a Lua script that posts the JSON body; non-2xx answers,
  connect/read/write errors and timeouts count as errors.
`python` runs threads with the sync grpc client / http.client in up to --client-processes
processes.

    .venv/bin/python -m bench.serving_bench --model-dir OUT/serving/mnist_cnn/<version>

--compare-serving-dir DIR runs every cell a second time, right after the first, against a server whose
`serving` package comes from DIR (e.g. `git archive main serving | tar -x -C DIR`), so a change
can be compared with the code before it under the same machine load.

Writes docs/benchmarks/serving_bench.json and .md.
"""

import argparse
import json
import os
import pathlib
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAME = "mnist_cnn"
SIGNATURE = "serving_raw"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
GOALS = {"grpc": 0.5, "rest": 0.3}  # share of the in-process ceiling at concurrency 64, 1 image/request
P99_GOAL_MS = 50.0
NOT_ERRORS = ("OK", "CANCELLED")  # server statuses that are not errors of the server
WARM_UP_SECONDS = 1  # h2load's --warm-up-time before each measured gRPC window
NATIVE_TOOLS = {"grpc": "h2load", "rest": "wrk"}
TOOL_PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}
WRK_PREFIX = "tfprod-wrk"  # the lines the wrk Lua script prints in done()


class LoadGeneratorError(RuntimeError):
    """The load generator cannot run, or ran and its results cannot be trusted."""


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used so far, summed over cores (Linux /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


OTHER_CPU_LIMIT = 0.25  # cores other processes may use during a cell before the run is called shared


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----- the load generator (runs in its own processes; imports neither TF nor numpy) ----------
def run_load(protocol: str, port: int, clients: int, seconds: float, payload_path: str) -> dict:
    """Runs `clients` closed-loop client threads once told to start (a line on stdin)."""
    payload = pathlib.Path(payload_path).read_bytes()
    latencies, errors = [], []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    start_event = threading.Event()
    deadline_holder = {}

    if protocol == "grpc":
        import grpc

        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(min(clients, 4))]
        # Identity (de)serializers: the bytes of a stock PredictRequest go out as they are.
        methods = [channel.unary_unary(PREDICT_METHOD) for channel in channels]

        def make_call(index):
            method = methods[index % len(methods)]
            return lambda: method(payload, timeout=30)
    else:
        import http.client

        def make_call(index):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

            def call():
                connection.request("POST", f"/v1/models/{MODEL_NAME}:predict", body=payload,
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            return call

    def client(index):
        try:
            call = make_call(index)
            call()  # one untimed request opens the connection
        except Exception as error:  # reported; this client sits the cell out
            with lock:
                errors.append("first request: " + repr(error)[:200])
            ready.wait()
            return
        ready.wait()
        start_event.wait()
        mine = []
        while True:
            started = time.perf_counter()
            if started >= deadline_holder["end"]:
                break
            try:
                call()
            except Exception as error:  # counted and reported, the loop goes on
                with lock:
                    errors.append(repr(error)[:200])
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdin.readline()  # the parent says go when every load process is ready
    cpu_before = time.process_time()
    began = time.perf_counter()
    deadline_holder["end"] = began + seconds
    start_event.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {"seconds": elapsed, "cpu_seconds": time.process_time() - cpu_before,
            "latencies": latencies, "errors": errors}


# ----- the in-process ceiling ------------------------------------------------------------------
def in_process_ceiling(model_dir: str, seconds: float, batch: int = 256) -> dict:
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    function = model.signatures[SIGNATURE]
    images = tf.constant(np.random.RandomState(0).randint(0, 256, size=(batch, 28, 28)).astype(np.float32))
    for _ in range(3):
        function(image=images)
    count, began, cpu_began = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - began < seconds:
        function(image=images)["class_id"].numpy()
        count += 1
    elapsed = time.perf_counter() - began
    return {"batch": batch, "seconds": round(elapsed, 2), "predictions_per_second": count * batch / elapsed,
            "cpu_ms_per_prediction": 1000 * (time.process_time() - cpu_began) / (count * batch),
            "load_average": [round(value, 2) for value in os.getloadavg()]}


# ----- payloads --------------------------------------------------------------------------------
def images(batch: int):
    import numpy as np

    return np.random.RandomState(0).randint(0, 256, size=(batch, 28, 28)).astype(np.float32)


def write_payload(protocol: str, batch: int, directory: pathlib.Path) -> pathlib.Path:
    """The request the load generator sends, serialized once."""
    path = directory / f"{protocol}-{batch}.bin"
    if protocol == "grpc":
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = SIGNATURE
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images(batch)))
        path.write_bytes(request.SerializeToString())
    else:
        path.write_bytes(json.dumps({"signature_name": SIGNATURE, "instances": images(batch).tolist()}).encode())
    return path


def check_grpc_answer(port: int, model_dir: str) -> None:
    """One Predict with the stock stub; its answer must equal the SavedModel's, or the bench stops."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = SIGNATURE
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images(4)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    expected = tf.saved_model.load(model_dir).signatures[SIGNATURE](image=tf.constant(images(4)))
    got = tf.make_ndarray(response.outputs["class_id"])
    if not np.array_equal(got, expected["class_id"].numpy()):
        raise RuntimeError(f"the server's answer {got} differs from the SavedModel's")


# ----- orchestration -----------------------------------------------------------------------------
def start_server(model_dir: str, workdir: pathlib.Path, num_batch_threads: int, batch_timeout_micros: int,
                 serving_dir: str = None, intra_op_threads: int = 0):
    """Starts `tfprod serve` on the model with batching and metrics; returns (process, announced ports).

    intra_op_threads > 0 is passed as --tensorflow_intra_op_parallelism; a server from serving_dir (older
    code, which may not have that flag) gets TensorFlow's TF_NUM_INTRAOP_THREADS instead, to the same effect.
    """
    base = workdir / "models" / MODEL_NAME
    base.mkdir(parents=True)
    shutil.copytree(model_dir, base / "1")
    batching = workdir / "batching.config"
    batching.write_text(
        "max_batch_size { value: 256 }\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: 1000 }}\nnum_batch_threads {{ value: {num_batch_threads} }}\n")
    monitoring = workdir / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    environment = dict(os.environ)
    thread_flags = []
    if serving_dir:  # another `serving` package first on the path (the code to compare with)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [serving_dir, environment.get("PYTHONPATH")]))
        if intra_op_threads:
            environment["TF_NUM_INTRAOP_THREADS"] = str(intra_op_threads)
    elif intra_op_threads:
        thread_flags = ["--tensorflow_intra_op_parallelism", str(intra_op_threads)]
    tfprod = os.path.join(os.path.dirname(sys.executable), "tfprod")
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen(
        [tfprod, "serve", "--port", "0", "--rest_api_port", "0", "--model_name", MODEL_NAME,
         "--model_base_path", str(base), "--enable_batching", "--batching_parameters_file", str(batching),
         "--file_system_poll_wait_seconds", "0",
         "--monitoring_config_file", str(monitoring), *thread_flags],
        stdout=subprocess.PIPE, stderr=log, text=True, env=environment)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=300):
        process.kill()
        raise RuntimeError("the server did not start; see " + str(workdir / "server.log"))
    line = process.stdout.readline()
    if not line:
        raise RuntimeError("the server exited; see " + str(workdir / "server.log"))
    return process, json.loads(line)


def batch_totals(rest_port: int) -> tuple:
    """(batches run, rows in them) so far, from the server's Prometheus batch-size histogram."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30) as answer:
        text = answer.read().decode()
    count = rows = 0.0
    for line in text.splitlines():
        if line.startswith("tfprod_serving_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("tfprod_serving_batch_size_sum"):
            rows += float(line.rsplit(" ", 1)[1])
    return count, rows


def run_cell(protocol, port, concurrency, batch, seconds, payload, processes, server_pid, rest_port) -> dict:
    """Runs one cell with the clients spread over up to `processes` load processes."""
    count = max(1, min(processes, concurrency))
    shares = [concurrency // count + (1 if index < concurrency % count else 0) for index in range(count)]
    workers = [subprocess.Popen([sys.executable, "-m", "bench.serving_bench", "--worker", protocol, str(port),
                                 str(share), str(seconds), str(payload)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO_ROOT)
               for share in shares]
    for worker in workers:
        line = worker.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"load generator failed: {worker.stderr.read()[-2000:]}")
    load_before = os.getloadavg()
    batches_before, rows_before = batch_totals(rest_port)
    server_cpu_before = process_cpu_seconds(server_pid)
    machine_before = machine_busy_seconds()
    began = time.perf_counter()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = []
    for worker in workers:
        output, error_text = worker.communicate(timeout=seconds + 120)
        if worker.returncode != 0:
            raise RuntimeError(f"load generator failed: {error_text[-2000:]}")
        results.append(json.loads(output.strip().splitlines()[-1]))
    wall = time.perf_counter() - began
    server_cpu = process_cpu_seconds(server_pid) - server_cpu_before
    machine_busy = machine_busy_seconds() - machine_before
    batches_after, rows_after = batch_totals(rest_port)
    elapsed = max(result["seconds"] for result in results)
    latencies = [value for result in results for value in result["latencies"]]
    errors = [value for result in results for value in result["errors"]]
    return {
        "protocol": protocol, "concurrency": concurrency, "batch": batch, "client_processes": count,
        "seconds": round(elapsed, 2), "requests": len(latencies), "errors": len(errors),
        "error_examples": errors[:3],
        "requests_per_second": len(latencies) / elapsed,
        "predictions_per_second": len(latencies) * batch / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000, "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "server_cpu_cores": server_cpu / wall,
        "client_cpu_cores": sum(result["cpu_seconds"] for result in results) / elapsed,
        "server_cpu_ms_per_request": 1000 * server_cpu / max(1, len(latencies)),
        "mean_batch_size": (rows_after - rows_before) / max(1.0, batches_after - batches_before),
        "load_average_1min": round(load_before[0], 2),
        # what the rest of the machine used meanwhile (the load generator's start-up and exit included)
        "other_cpu_cores": max(0.0, machine_busy - server_cpu
                               - sum(result["cpu_seconds"] for result in results)) / wall,
    }


# ----- the native load generator (h2load for gRPC, wrk for REST) ---------------------------------
def resolve_load_generator(choice: str, which=shutil.which) -> tuple:
    """Which load generator runs: returns (kind, note), kind "native" or "python".

    Args:
        choice: "auto", "native" or "python" (--load-generator).
        which: finds a program on PATH (shutil.which; replaceable in tests).

    Returns:
        The kind and, when `auto` falls back to Python, a note saying why (else "").

    Raises:
        LoadGeneratorError: `native` was asked for and a tool is missing, or `choice` is unknown.
    """
    if choice not in ("auto", "native", "python"):
        raise LoadGeneratorError(f"unknown load generator {choice!r}: use auto, native or python")
    if choice == "python":
        return "python", ""
    missing = [tool for tool in NATIVE_TOOLS.values() if not which(tool)]
    if not missing:
        return "native", ""
    why = ", ".join(f"{tool} (Debian package {TOOL_PACKAGES[tool]})" for tool in missing)
    if choice == "native":
        raise LoadGeneratorError(f"--load-generator native needs {why} on PATH; install it or pass "
                                 "--load-generator python")
    return "python", f"not found on PATH: {why}"


def tool_version(tool: str) -> str:
    """The first line a native tool prints about its version (`h2load --version`, `wrk -v`)."""
    flag = "--version" if tool == "h2load" else "-v"
    answer = subprocess.run([tool, flag], capture_output=True, text=True, timeout=30)
    lines = (answer.stdout + answer.stderr).strip().splitlines()
    # wrk's line goes on with its copyright notice
    return lines[0].split(" Copyright")[0].strip() if lines else f"{tool} (no version printed)"


def h2load_layout(concurrency: int) -> tuple:
    """(connections, streams per connection) with connections x streams == concurrency.

    Up to 4 connections: the largest number <= 4 that divides `concurrency` (1 -> 1 x 1, 8 -> 4 x 2,
    6 -> 3 x 2, 7 -> 1 x 7).
    """
    if concurrency < 1:
        raise LoadGeneratorError(f"concurrency must be at least 1, got {concurrency}")
    connections = next(count for count in range(min(concurrency, 4), 0, -1) if concurrency % count == 0)
    return connections, concurrency // connections


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def _duration_text(seconds: float) -> str:
    """h2load's <DURATION>: whole seconds as "5", else milliseconds as "2500ms"."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{int(round(seconds * 1000))}ms"


def h2load_command(port: int, concurrency: int, seconds: float, data_path, log_path,
                   warm_up_seconds: float = WARM_UP_SECONDS) -> list:
    """The h2load command of one gRPC cell: closed loop, one thread, h2c, timed with a warm-up."""
    connections, streams = h2load_layout(concurrency)
    return ["h2load", "-t", "1", "-c", str(connections), "-m", str(streams),
            "-D", _duration_text(seconds), "--warm-up-time", _duration_text(warm_up_seconds),
            "-d", str(data_path), "-H", "content-type: application/grpc", "-H", "te: trailers",
            "--log-file", str(log_path), f"http://127.0.0.1:{port}{PREDICT_METHOD}"]


def parse_h2load_summary(output: str) -> dict:
    """h2load's `requests:` and `status codes:` lines as numbers.

    Returns:
        {"total", "started", "done", "succeeded", "failed", "errored", "timeout"} and
        {"2xx", "3xx", "4xx", "5xx"}. h2load's `failed` already includes `errored` (streams that
        broke) and non-2xx answers.

    Raises:
        LoadGeneratorError: the lines are missing (h2load failed before the summary).
    """
    counts = {}
    requests = re.search(r"^requests: (.*)$", output, re.MULTILINE)
    statuses = re.search(r"^status codes: (.*)$", output, re.MULTILINE)
    if not requests or not statuses:
        raise LoadGeneratorError("h2load printed no `requests:`/`status codes:` summary; its output ends with: "
                                 + output[-1500:])
    for value, name in re.findall(r"(\d+) (\w+)", requests.group(1)):
        counts[name] = int(value)
    for value, name in re.findall(r"(\d+) (\dxx)", statuses.group(1)):
        counts[name] = int(value)
    needed = {"total", "started", "done", "succeeded", "failed", "errored", "timeout", "2xx"}
    if not needed <= set(counts):
        raise LoadGeneratorError(f"h2load's summary lacks {sorted(needed - set(counts))}: {requests.group(0)!r}")
    return counts


def parse_h2load_log(text: str) -> list:
    """Rows of h2load's --log-file: (start microseconds since the epoch, HTTP status, duration microseconds).

    h2load writes one row per request that ended in the measured window (not the warm-up); the
    status is -1 for a stream that failed.
    """
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise LoadGeneratorError(f"h2load log line {number} has {len(fields)} columns, expected 3: {line!r}")
        rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return rows


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def wrk_script(payload_path) -> str:
    """wrk's Lua script: POST the JSON body from `payload_path`, print the results in done().

    The request is built once (no per-request Lua callbacks, which would cost wrk CPU).
    """
    return f"""-- written by bench/serving_bench.py
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local payload = assert(io.open({_lua_string(str(payload_path))}, "rb"))
wrk.body = payload:read("*a")
payload:close()

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("{WRK_PREFIX} requests %d\\n", summary.requests))
  io.write(string.format("{WRK_PREFIX} duration_us %d\\n", summary.duration))
  for _, p in ipairs({{50, 95, 99}}) do
    io.write(string.format("{WRK_PREFIX} p%d_us %d\\n", p, latency:percentile(p)))
  end
  io.write(string.format("{WRK_PREFIX} errors_connect %d\\n", errors.connect))
  io.write(string.format("{WRK_PREFIX} errors_read %d\\n", errors.read))
  io.write(string.format("{WRK_PREFIX} errors_write %d\\n", errors.write))
  io.write(string.format("{WRK_PREFIX} errors_status %d\\n", errors.status))
  io.write(string.format("{WRK_PREFIX} errors_timeout %d\\n", errors.timeout))
end
"""


def wrk_command(port: int, concurrency: int, seconds: int, script_path) -> list:
    """The wrk command of one REST cell: one thread, `concurrency` connections, closed loop."""
    return ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "30s", "--latency",
            "-s", str(script_path), f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"]


def parse_wrk_output(output: str) -> dict:
    """The numbers the Lua script's done() printed (`tfprod-wrk NAME VALUE` lines).

    Raises:
        LoadGeneratorError: a number is missing (wrk failed before done()).
    """
    values = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == WRK_PREFIX:
            values[fields[1]] = int(fields[2])
    needed = {"requests", "duration_us", "p50_us", "p95_us", "p99_us", "errors_connect", "errors_read",
              "errors_write", "errors_status", "errors_timeout"}
    if not needed <= set(values):
        raise LoadGeneratorError(f"wrk's script printed no {sorted(needed - set(values))}; wrk's output ends "
                                 "with: " + output[-1500:])
    return values


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict:
    """What the bench reads from the server's Prometheus text.

    Returns:
        {"batches", "rows"}: the batch-size histogram's count and sum (as batch_totals), and
        "requests": {(protocol, status): count} of tfprod_serving_request_count for api="predict".
    """
    snapshot = {"batches": 0.0, "rows": 0.0, "requests": {}}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_and_labels, value = line.rsplit(" ", 1)
        name = name_and_labels.split("{", 1)[0]
        if name == "tfprod_serving_batch_size_count":
            snapshot["batches"] += float(value)
        elif name == "tfprod_serving_batch_size_sum":
            snapshot["rows"] += float(value)
        elif name == "tfprod_serving_request_count":
            labels = {key: re.sub(r"\\(.)", r"\1", raw) for key, raw in _LABEL.findall(name_and_labels)}
            if labels.get("api") == "predict":
                key = (labels.get("protocol", ""), labels.get("status", ""))
                snapshot["requests"][key] = snapshot["requests"].get(key, 0.0) + float(value)
    return snapshot


def scrape_metrics(rest_port: int) -> dict:
    """parse_metrics() of the server's /monitoring/prometheus/metrics now."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30) as answer:
        return parse_metrics(answer.read().decode())


def status_delta(before: dict, after: dict, protocol: str) -> dict:
    """{status: requests} the server counted for `protocol` between two parse_metrics() snapshots."""
    delta = {}
    for (measured_protocol, status), value in after["requests"].items():
        if measured_protocol == protocol:
            change = value - before["requests"].get((measured_protocol, status), 0.0)
            if change:
                delta[status] = int(round(change))
    return delta


def wait_until_listening(port: int, timeout: float = 30.0) -> None:
    """Returns once 127.0.0.1:port accepts a TCP connection, or raises LoadGeneratorError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                raise LoadGeneratorError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s "
                                         f"({error}); see the server's log") from error
            time.sleep(0.2)


def check_rest_answer(port: int, payload) -> None:
    """One REST predict with the payload the cells send; anything but HTTP 200 stops the bench."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", f"/v1/models/{MODEL_NAME}:predict", body=pathlib.Path(payload).read_bytes(),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise LoadGeneratorError(f"the server answered the REST payload {payload} with HTTP {response.status}: "
                                 f"{body[:300]!r}")


def run_tool(command: list, directory: pathlib.Path, timeout: float, at_window_start=None,
             window_start_seconds: float = 0.0) -> dict:
    """Runs a load-generator tool to its end, measuring its CPU.

    Args:
        command: the tool's argv.
        directory: where its stdout.txt and stderr.txt go.
        timeout: seconds after which it is killed (and LoadGeneratorError raised).
        at_window_start: called `window_start_seconds` after the start (the end of h2load's
            warm-up) to take the server's figures; its result is returned as "window_start".
        window_start_seconds: see at_window_start.

    Returns:
        {"began", "window_began", "ended" (perf_counter times), "cpu_seconds" (the tool's user +
        system CPU from the window start to its end), "stdout", "stderr", "window_start"}.
    """
    stdout_path, stderr_path = directory / "stdout.txt", directory / "stderr.txt"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    window_start, tool_cpu_at_window, window_began = None, 0.0, began
    status = rusage = None
    try:
        if at_window_start is not None:
            time.sleep(max(0.0, began + window_start_seconds - time.perf_counter()))
            window_began = time.perf_counter()
            try:
                tool_cpu_at_window = process_cpu_seconds(process.pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):  # already gone: its exit status tells
                tool_cpu_at_window = 0.0
            window_start = at_window_start()
        while True:
            pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - began > timeout:
                raise LoadGeneratorError(f"{command[0]} ran past {timeout:.0f} s: {shlex.join(command)}")
            time.sleep(0.05)
    finally:
        if status is None:  # not reaped: stop it before the error goes up
            process.kill()
            process.wait()
    ended = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    output, errors = stdout_path.read_text(), stderr_path.read_text()
    if process.returncode != 0:
        raise LoadGeneratorError(f"{shlex.join(command)} exited with {process.returncode}: "
                                 f"{(output + errors)[-2000:]}")
    return {"began": began, "window_began": window_began, "ended": ended,
            "cpu_seconds": rusage.ru_utime + rusage.ru_stime - tool_cpu_at_window,
            "stdout": output, "stderr": errors, "window_start": window_start}


def run_native_cell(protocol, port, concurrency, batch, seconds, payload, server_pid, rest_port,
                    workdir: pathlib.Path) -> dict:
    """Runs one cell with h2load (gRPC) or wrk (REST); the same figures as run_cell.

    gRPC: the measured window is h2load's -D after a --warm-up-time; latencies come from its
    log (requests that ended in the window with HTTP 2xx), requests are those less the gRPC
    errors the server counted in the window; the server's CPU and batches are taken from the
    window's start (sampled when the warm-up ends) to h2load's exit. Errors are the server's
    non-OK gRPC predict requests over the whole cell (warm-up included) plus h2load's failed
    requests. REST: wrk's whole run is the window (no warm-up); requests are wrk's answered
    requests less its non-2xx ones, errors are wrk's (status, connect, read, write, timeout).
    Server CPU per request divides by the requests the server counted in the window.
    """
    cell_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{protocol}-b{batch}-c{concurrency}-", dir=workdir))
    wait_until_listening(port)
    if protocol == "grpc":
        data_path = cell_dir / "request.grpc"
        data_path.write_bytes(grpc_frame(pathlib.Path(payload).read_bytes()))
        log_path = cell_dir / "h2load.log"
        command = h2load_command(port, concurrency, seconds, data_path, log_path)
        window_start_seconds = WARM_UP_SECONDS
    else:
        script_path = cell_dir / "post.lua"
        script_path.write_text(wrk_script(payload))
        command = wrk_command(port, concurrency, max(1, int(round(seconds))), script_path)
        window_start_seconds = 0.0

    def server_figures():
        return {"metrics": scrape_metrics(rest_port), "server_cpu": process_cpu_seconds(server_pid),
                "machine_busy": machine_busy_seconds(), "time": time.perf_counter()}

    load_before = os.getloadavg()
    before = server_figures()
    run = run_tool(command, cell_dir, timeout=seconds + WARM_UP_SECONDS + 120,
                   at_window_start=server_figures if protocol == "grpc" else None,
                   window_start_seconds=window_start_seconds)
    after = server_figures()
    window = run["window_start"] or before
    window_seconds = after["time"] - window["time"]
    server_cpu = after["server_cpu"] - window["server_cpu"]
    statuses_cell = status_delta(before["metrics"], after["metrics"], protocol)
    statuses_window = status_delta(window["metrics"], after["metrics"], protocol)
    # CANCELLED: requests still in flight when the tool stops and drops its connections (the server
    # records them as cancelled by the client); not errors of the server, reported on their own.
    server_errors = sum(count for status, count in statuses_cell.items() if status not in NOT_ERRORS)
    cell = {"protocol": protocol, "concurrency": concurrency, "batch": batch, "client_processes": 1,
            "load_generator": command[0], "load_generator_command": shlex.join(command)}
    if protocol == "grpc":
        summary = parse_h2load_summary(run["stdout"])
        rows = parse_h2load_log(log_path.read_text())
        latencies = [duration / 1e6 for _, status, duration in rows if 200 <= status < 300]
        measured_seconds = seconds
        if not after["metrics"]["requests"] and summary["2xx"]:
            raise LoadGeneratorError(
                "the server's /monitoring/prometheus/metrics has no tfprod_serving_request_count for "
                "api=\"predict\": gRPC errors (HTTP 200 with a grpc-status trailer) cannot be counted without it")
        errors = server_errors + summary["failed"]
        error_examples = [f"server: {count} {status}" for status, count in sorted(statuses_cell.items())
                          if status not in NOT_ERRORS]
        if summary["failed"]:
            error_examples.append(f"h2load: {summary['failed']} failed ({summary['errored']} errored, "
                                  f"{summary['timeout']} timeout)")
        cell.update({"tool_counts": summary, "tool_log_rows": len(rows),
                     "server_ok_in_window": statuses_window.get("OK", 0)})
        if summary["done"] == 0:
            raise LoadGeneratorError(f"h2load finished no request in the window: {shlex.join(command)}\n"
                                     + run["stdout"][-1500:])
    else:
        summary = parse_wrk_output(run["stdout"])
        wrk_errors = {name[len("errors_"):]: value for name, value in summary.items() if name.startswith("errors_")}
        errors = sum(wrk_errors.values())
        latencies = None
        measured_seconds = summary["duration_us"] / 1e6
        error_examples = [f"wrk: {value} {name}" for name, value in wrk_errors.items() if value]
        cell.update({"tool_counts": summary})
        if summary["requests"] == 0:
            raise LoadGeneratorError(f"wrk finished no request: {shlex.join(command)}\n" + run["stdout"][-1500:])
    cell["server_statuses"] = statuses_cell
    cell["cancelled_by_client"] = statuses_cell.get("CANCELLED", 0)
    if protocol == "grpc":
        # HTTP 2xx answers in the window less the gRPC errors the server counted in it: a gRPC error is an
        # HTTP 200 too (the latencies cannot tell them apart, and include any)
        window_errors = sum(count for status, count in statuses_window.items() if status not in NOT_ERRORS)
        requests = max(0, len(latencies) - window_errors)
        p50, p95, p99 = (percentile(latencies, fraction) * 1000 for fraction in (0.50, 0.95, 0.99))
    else:
        requests = summary["requests"] - summary["errors_status"]  # answered with 2xx (wrk counts them all)
        p50, p95, p99 = (summary[f"p{level}_us"] / 1000 for level in (50, 95, 99))
    batches = after["metrics"]["batches"] - window["metrics"]["batches"]
    rows_batched = after["metrics"]["rows"] - window["metrics"]["rows"]
    cell.update({
        "seconds": round(measured_seconds, 2), "requests": requests, "errors": errors,
        "error_examples": error_examples[:3],
        "requests_per_second": requests / measured_seconds,
        "predictions_per_second": requests * batch / measured_seconds,
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "server_cpu_cores": server_cpu / window_seconds,
        "client_cpu_cores": run["cpu_seconds"] / (run["ended"] - run["window_began"]),
        # per request the server counted in the same window (the tool's count if it counted none)
        "server_cpu_ms_per_request": 1000 * server_cpu / max(1, sum(statuses_window.values()) or requests),
        "mean_batch_size": rows_batched / max(1.0, batches),
        "load_average_1min": round(load_before[0], 2),
        # what the rest of the machine used in the window (this script's metric scrapes included)
        "other_cpu_cores": max(0.0, after["machine_busy"] - window["machine_busy"] - server_cpu
                               - run["cpu_seconds"]) / window_seconds,
    })
    if protocol == "grpc":
        succeeded, server_ok = summary["2xx"], cell["server_ok_in_window"]
        if abs(succeeded - server_ok) > max(concurrency, 0.05 * max(succeeded, server_ok)):
            print(f"warning: h2load counted {succeeded} HTTP 2xx answers in the window, the server {server_ok} OK "
                  "gRPC predictions", flush=True)
    return cell


def _table(cells, ceiling) -> list:
    lines = [
        "| protocol | images/request | concurrency | req/s | predictions/s | % of ceiling | p50 ms | p95 ms | "
        "p99 ms | errors | server CPU (cores) | server CPU ms/request | load generator CPU (cores) | mean batch | "
        "other processes' CPU (cores) | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        lines.append(
            f"| {cell['protocol']} | {cell['batch']} | {cell['concurrency']} | {cell['requests_per_second']:,.0f} | "
            f"{cell['predictions_per_second']:,.0f} | {100 * cell['predictions_per_second'] / ceiling:.1f}% | "
            f"{cell['p50_ms']:.1f} | {cell['p95_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['errors']} | "
            f"{cell['server_cpu_cores']:.2f} | {cell['server_cpu_ms_per_request']:.2f} | {cell['client_cpu_cores']:.2f} | "
            f"{cell['mean_batch_size']:.1f} | {_other_cpu_text(cell)} | {cell['load_average_1min']} |")
    return lines


def _other_cpu_text(cell) -> str:
    return f"{cell['other_cpu_cores']:.2f}" if "other_cpu_cores" in cell else "n/a"


def shared_machine(report: dict) -> Optional[str]:
    """Why the run's machine counts as shared, or None when it was quiet.

    The load average counts the benchmark's own server and load generator (and lags by minutes),
    so what counts is the CPU other processes took: in the 2 s before the benchmark started, and
    during each cell (the machine's busy time less the server's and the load generator's).
    """
    cells = report["cells"] + (report.get("compare_cells") or [])
    others = [cell["other_cpu_cores"] for cell in cells if "other_cpu_cores" in cell]
    if others and max(others) > OTHER_CPU_LIMIT:
        return (f"other processes used up to {max(others):.2f} cores during a cell (column 'other processes' "
                f"CPU'), more than {OTHER_CPU_LIMIT}")
    if report.get("busy_cores_at_start", 0.0) > OTHER_CPU_LIMIT:
        return (f"other processes used {report['busy_cores_at_start']:.2f} cores in the 2 s before the "
                "benchmark started")
    if not others:  # an old report: only the load averages
        busiest = max([report["load_average_start"][0], report["load_average_end"][0]]
                      + [cell["load_average_1min"] for cell in cells])
        if busiest > os.cpu_count():
            return f"the 1-minute load average reached {busiest:.1f} on {os.cpu_count()} cores"
    return None


def load_generator_text(report: dict) -> str:
    """The Markdown header's sentence on the load generator that ran (reports without the key: Python)."""
    generator = report.get("load_generator") or {"kind": "python"}
    if generator["kind"] == "python":
        text = (f"Load generator: Python (threads with the sync grpc client / http.client), up to "
                f"{report['client_processes']} processes (separate from the server) sharing the closed-loop "
                "clients")
        if generator.get("note"):
            text += f"; native tools not used: {generator['note']}"
        return text + "."
    parts = []
    tools = generator.get("tools", {})
    commands = generator.get("example_commands", {})
    if "grpc" in tools:
        parts.append(
            f"gRPC by `{tools['grpc']}` (one thread; concurrency C as min(C, 4) HTTP/2 connections without TLS "
            "x C/connections streams each, closed loop; the PredictRequest bytes with gRPC's 5-byte prefix "
            f"as the POST body; {WARM_UP_SECONDS} s warm-up before each measured window; gRPC errors, which "
            "come back as HTTP 200, counted from the server's `tfprod_serving_request_count` non-OK statuses "
            "plus h2load's failed requests)"
            + (f", e.g. `{commands['grpc']}`" if commands.get("grpc") else ""))
    if "rest" in tools:
        parts.append(
            f"REST by `{tools['rest']}` (one thread, C connections, closed loop, no warm-up; non-2xx answers, "
            "socket errors and timeouts count as errors)"
            + (f", e.g. `{commands['rest']}`" if commands.get("rest") else ""))
    return "Load generator: native tools in their own processes, " + "; ".join(parts) + "."


def markdown(report: dict) -> str:
    ceiling = report["ceiling_predictions_per_second"]
    before, after = report["ceiling_runs"]
    lines = [
        "# Serving benchmark (`bench/serving_bench.py`)", "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Load average (1, 5, 15 min): {' '.join(map(str, report['load_average_start']))} at the start, "
        f"{' '.join(map(str, report['load_average_end']))} at the end  ",
        f"Model: `{report['model_dir']}` (signature `{SIGNATURE}`, 28x28 float32 images)  ",
        f"Server: `tfprod serve --enable_batching` (max_batch_size 256, batch_timeout_micros "
        f"{report['batch_timeout_micros']}, num_batch_threads {report['num_batch_threads']}"
        + (f"; --tensorflow_intra_op_parallelism {report['intra_op_threads']}, TF_NUM_INTRAOP_THREADS for the "
           "server compared with" if report.get("intra_op_threads") else "") + ").  ",
        load_generator_text(report) + " CPU columns are cores used during the cell (the machine has "
        f"{os.cpu_count()}).  ",
        f"Each cell ran {report['seconds_per_cell']} s. In-process ceiling (SavedModel, batch 256, loop): "
        f"**{ceiling:,.0f} predictions/s** (mean of {before['predictions_per_second']:,.0f} before and "
        f"{after['predictions_per_second']:,.0f} after the cells).", "",
    ]
    shared = shared_machine(report)
    if shared:
        lines += [f"**The machine was shared during this run** ({shared}): the server and the load "
                  "generator got only part of the cores, and how much varied from cell to cell (server CPU "
                  "column). Absolute req/s and latencies are therefore low and noisy; the server's CPU time per "
                  "request and the before/after comparison of the same cell, run back to back, are the steadier "
                  "figures.", ""]
    if report.get("compare_cells"):
        lines += ["## This code", ""]
    lines += _table(report["cells"], ceiling)
    if report.get("compare_cells"):
        lines += ["", f"## Before (serving package from `{report['compare_serving_dir']}`), same run: each "
                      "cell ran right after the same cell above, same load generator", ""]
        lines += _table(report["compare_cells"], ceiling)
        lines += ["", "## This code / before (same cell, run back to back)", "",
                  "| protocol | images/request | concurrency | req/s ratio | server CPU ms/request before | "
                  "now | p99 before ms | p99 now ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for new, old in zip(report["cells"], report["compare_cells"]):
            ratio = new["requests_per_second"] / old["requests_per_second"] if old["requests_per_second"] else float("nan")
            lines.append(f"| {new['protocol']} | {new['batch']} | {new['concurrency']} | {ratio:.2f}x | "
                         f"{old['server_cpu_ms_per_request']:.2f} | {new['server_cpu_ms_per_request']:.2f} | "
                         f"{old['p99_ms']:.1f} | {new['p99_ms']:.1f} |")
    model_cpu = sum(run["cpu_ms_per_prediction"] for run in report["ceiling_runs"]) / 2
    lines += ["", "## Where the CPU goes (concurrency 64, one image per request)", "",
              f"The model alone needs {model_cpu:.2f} ms of CPU per image at batch 256 (in-process ceiling "
              "runs). Per request, in this run:", ""]
    for cell in report["cells"]:
        if cell["batch"] == 1 and cell["concurrency"] == 64:
            client_ms = 1000 * cell["client_cpu_cores"] / max(cell["requests_per_second"], 1e-9)
            total_ms = cell["server_cpu_ms_per_request"] + client_ms
            bound = 1000 * os.cpu_count() / total_ms
            reference = report.get("reference_ceiling") or ceiling
            lines.append(
                f"- {cell['protocol']}: server {cell['server_cpu_ms_per_request']:.2f} ms (model included, mean "
                f"batch {cell['mean_batch_size']:.1f}), load generator {client_ms:.2f} ms: "
                f"{total_ms:.2f} ms of CPU per request, so {os.cpu_count()} cores given wholly to this client "
                f"and server could serve at most ~{bound:,.0f} req/s = {bound / reference:.0%} of the "
                f"{'idle-machine ' if report.get('reference_ceiling') else ''}ceiling ({reference:,.0f} "
                "predictions/s).")
    lines += ["", "## Goals (concurrency 64, one image per request)", ""]
    if shared:
        lines += ["This run's ceiling was measured on the same shared machine, so shares of it say little "
                  "(the ceiling loop and each cell got different, varying shares of the cores). "
                  + ("Shares of the idle-machine ceiling "
                     f"({report['reference_ceiling']:,.0f} predictions/s, --reference-ceiling) follow each line."
                     if report.get("reference_ceiling") else ""), ""]
    for goal in report["goals"]:
        if shared:
            line = (f"- {goal['text']}: {goal['measured']} of this run's ceiling (no verdict: shared "
                    "machine)")
            if report.get("reference_ceiling"):
                line += (f"; {goal['reference_share']:.1%} of the idle-machine ceiling: "
                         f"**{'met' if goal['reference_met'] else 'NOT met'}**")
        else:
            line = f"- {goal['text']}: **{'met' if goal['met'] else 'NOT met'}** ({goal['measured']})"
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def evaluate_goals(cells, ceiling, reference_ceiling=None):
    goals = []
    for protocol, share in GOALS.items():
        cell = next((c for c in cells if c["protocol"] == protocol and c["batch"] == 1 and c["concurrency"] == 64), None)
        if cell is None:
            continue
        measured_share = cell["predictions_per_second"] / ceiling
        met = measured_share >= share
        text = f"{protocol}: >= {share:.0%} of the ceiling"
        measured = f"{measured_share:.1%}, p99 {cell['p99_ms']:.1f} ms"
        if protocol == "grpc":
            met = met and cell["p99_ms"] <= P99_GOAL_MS
            text += f" with p99 <= {P99_GOAL_MS:.0f} ms"
        goal = {"text": text, "met": met, "measured": measured}
        if reference_ceiling:
            goal["reference_share"] = cell["predictions_per_second"] / reference_ceiling
            goal["reference_met"] = goal["reference_share"] >= share and (
                protocol != "grpc" or cell["p99_ms"] <= P99_GOAL_MS)
        goals.append(goal)
    return goals


def run_all_cells(args, workdir: pathlib.Path, payloads) -> tuple:
    """Runs every cell; with --compare-serving-dir, each cell runs against the other server right after.

    Returns (cells, compare_cells or None).
    """
    servers = [("", None)]
    if args.compare_serving_dir:
        servers.append(("before ", os.path.abspath(args.compare_serving_dir)))
    started = []
    try:
        for label, serving_dir in servers:
            server_dir = workdir / ("before" if serving_dir else "now")
            server_dir.mkdir()
            process, ports = start_server(args.model_dir, server_dir, args.num_batch_threads,
                                          args.batch_timeout_micros, serving_dir, args.intra_op_threads)
            started.append((label, process, ports))
            if args.load_generator_kind == "native":  # the tools start measuring at once: the server must answer
                wait_until_listening(ports["rest_port"])
                wait_until_listening(ports["grpc_port"])
                for (protocol, _), payload in sorted(payloads.items()):
                    if protocol == "rest":
                        check_rest_answer(ports["rest_port"], payload)
            if "grpc" in args.protocols.split(","):
                check_grpc_answer(ports["grpc_port"], args.model_dir)
        results = {label: [] for label, _, _ in started}
        for protocol in args.protocols.split(","):
            for batch in (int(value) for value in args.batches.split(",")):
                for concurrency in (int(value) for value in args.concurrency.split(",")):
                    for label, process, ports in started:
                        port = ports["grpc_port"] if protocol == "grpc" else ports["rest_port"]
                        if args.load_generator_kind == "native":
                            cell = run_native_cell(protocol, port, concurrency, batch, args.seconds,
                                                   payloads[protocol, batch], process.pid, ports["rest_port"],
                                                   workdir)
                        else:
                            cell = run_cell(protocol, port, concurrency, batch, args.seconds,
                                            payloads[protocol, batch], args.client_processes, process.pid,
                                            ports["rest_port"])
                            cell["load_generator"] = "python"
                        results[label].append(cell)
                        print(f"{label}{protocol:4} batch {batch:3} c{concurrency:3}: "
                              f"{cell['requests_per_second']:8,.0f} req/s {cell['predictions_per_second']:8,.0f} "
                              f"pred/s  p50 {cell['p50_ms']:6.1f} p99 {cell['p99_ms']:6.1f} ms  errors {cell['errors']}  "
                              f"cpu server {cell['server_cpu_cores']:.2f} ({cell['server_cpu_ms_per_request']:.2f} "
                              f"ms/req) clients {cell['client_cpu_cores']:.2f}  mean batch "
                              f"{cell['mean_batch_size']:.1f}  load {cell['load_average_1min']}", flush=True)
    finally:
        for _, process, _ in started:
            process.send_signal(signal.SIGTERM)
        for _, process, _ in started:
            process.wait(60)
    return results[""], results.get("before ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a pushed SavedModel version directory")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--batches", default="1,32", help="images per request")
    parser.add_argument("--protocols", default="grpc,rest")
    parser.add_argument("--num-batch-threads", type=int, default=1,
                        help="the server's num_batch_threads (1: TensorFlow spreads each batch over the "
                             "cores itself, and the RPC handling keeps a core)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="the server's --tensorflow_intra_op_parallelism (0: TensorFlow's default, all cores; "
                             "1 leaves the request handling a core of its own on a small machine, but a batch then "
                             "runs on one core)")
    parser.add_argument("--batch-timeout-micros", type=int, default=2000, help="the server's batch_timeout_micros")
    parser.add_argument("--load-generator", choices=("auto", "native", "python"), default="auto",
                        help="native: h2load (gRPC) and wrk (REST); python: threads with the grpc client / "
                             "http.client in --client-processes processes; auto: native when both tools are on "
                             "PATH, else python")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="load-generator processes the clients of a cell are spread over "
                             "(--load-generator python only)")
    parser.add_argument("--compare-serving-dir",
                        help="a directory holding another `serving` package: every cell also runs against it")
    parser.add_argument("--reference-ceiling", type=float,
                        help="the ceiling (predictions/s) measured on this machine when idle; when this run's "
                             "machine is shared, the goals are also stated against it")
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "benchmarks" / "serving_bench"))
    args = parser.parse_args(argv)
    try:
        args.load_generator_kind, fallback_note = resolve_load_generator(args.load_generator)
    except LoadGeneratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    protocols = args.protocols.split(",")
    load_generator = {"kind": args.load_generator_kind, "requested": args.load_generator, "note": fallback_note}
    if args.load_generator_kind == "native":
        load_generator["tools"] = {protocol: tool_version(NATIVE_TOOLS[protocol]) for protocol in protocols}
        if "rest" in protocols and not float(args.seconds).is_integer():
            print(f"note: wrk takes whole seconds: REST cells run {max(1, int(round(args.seconds)))} s",
                  flush=True)
    print(f"load generator: {args.load_generator_kind}"
          + (f" ({fallback_note})" if fallback_note else "")
          + (": " + ", ".join(load_generator["tools"].values()) if "tools" in load_generator else ""), flush=True)

    load_at_start = [round(value, 2) for value in os.getloadavg()]
    busy_before, sampled_at = machine_busy_seconds(), time.perf_counter()
    time.sleep(2.0)  # what the machine does without this benchmark (the load average lags by minutes)
    busy_at_start = (machine_busy_seconds() - busy_before) / (time.perf_counter() - sampled_at)
    ceiling_before = in_process_ceiling(args.model_dir, seconds=max(args.seconds, 5.0))
    print(f"in-process ceiling: {ceiling_before['predictions_per_second']:,.0f} predictions/s", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = pathlib.Path(workdir)
        payloads = {(protocol, int(batch)): write_payload(protocol, int(batch), workdir)
                    for protocol in args.protocols.split(",") for batch in args.batches.split(",")}
        cells, compare_cells = run_all_cells(args, workdir, payloads)
    if args.load_generator_kind == "native":
        load_generator["example_commands"] = {  # the command of the protocol's busiest cell
            protocol: max((cell for cell in cells if cell["protocol"] == protocol),
                          key=lambda cell: (cell["concurrency"], cell["batch"]))["load_generator_command"]
            for protocol in protocols}
    ceiling_after = in_process_ceiling(args.model_dir, seconds=max(args.seconds, 5.0))
    print(f"in-process ceiling after: {ceiling_after['predictions_per_second']:,.0f} predictions/s", flush=True)
    ceiling = (ceiling_before["predictions_per_second"] + ceiling_after["predictions_per_second"]) / 2
    report = {
        "command": "python -m bench.serving_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": (f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.platform()}, Python "
                    f"{platform.python_version()}"),
        "load_average_start": load_at_start, "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "busy_cores_at_start": busy_at_start,
        "model_dir": args.model_dir, "seconds_per_cell": args.seconds, "num_batch_threads": args.num_batch_threads,
        "intra_op_threads": args.intra_op_threads,
        "batch_timeout_micros": args.batch_timeout_micros,
        "load_generator": load_generator,
        "client_processes": args.client_processes if args.load_generator_kind == "python" else None,
        "reference_ceiling": args.reference_ceiling,
        "ceiling_runs": [ceiling_before, ceiling_after], "ceiling_predictions_per_second": ceiling,
        "cells": cells, "compare_serving_dir": args.compare_serving_dir, "compare_cells": compare_cells,
        "goals": evaluate_goals(cells, ceiling, args.reference_ceiling),
    }
    write_report(args.output, report, markdown(report))
    return 0


def write_report(output: str, report: dict, text: str) -> None:
    """Writes OUTPUT.json (the report) and OUTPUT.md (text), and prints the text."""
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    path.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        protocol, port, clients, seconds, payload_path = sys.argv[2:7]
        print(json.dumps(run_load(protocol, int(port), int(clients), float(seconds), payload_path)))
        sys.exit(0)
    sys.exit(main())
