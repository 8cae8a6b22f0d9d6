"""The pure helpers of bench/serving_bench.py's native load generator (h2load, wrk).

No benchmark runs here: the parsers get text in the formats h2load 1.52 and wrk 4.1 print (copied
from real runs on this machine), and the commands are checked as argument lists. bench/ is a
package that is not installed: it imports because pytest puts the repository root (the folder
above the tests package) on sys.path.
"""

import struct

import pytest

from bench import serving_bench


H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 1s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 226.00 req/s, 43.95KB/s
requests: 226 total, 226 started, 224 done, 221 succeeded, 5 failed, 2 errored, 0 timeout
status codes: 222 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 43.95KB (45008) total, 1.33KB (1365) headers (space savings 96.08%), 58.79KB (60200) data
"""

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:44221/v1/models/mnist_cnn:predict
  1 threads and 4 connections
  Latency Distribution
     50%    5.44ms
  1484 requests in 2.10s, 599.97KB read
Requests/sec:    706.48
tfprod-wrk requests 1484
tfprod-wrk duration_us 2100554
tfprod-wrk p50_us 5438
tfprod-wrk p95_us 7217
tfprod-wrk p99_us 14601
tfprod-wrk errors_connect 0
tfprod-wrk errors_read 1
tfprod-wrk errors_write 0
tfprod-wrk errors_status 3
tfprod-wrk errors_timeout 0
"""

METRICS = """# HELP tfprod_serving_request_count Requests by model, version, API, protocol and status.
# TYPE tfprod_serving_request_count counter
tfprod_serving_request_count{model="mnist_cnn",version="1",api="predict",protocol="grpc",status="OK"} 431
tfprod_serving_request_count{model="mnist_cnn",version="1",api="get_model_status",protocol="grpc",status="OK"} 2
tfprod_serving_request_count{model="no_such_model",version="",api="predict",protocol="grpc",status="NOT_FOUND"} 4609
tfprod_serving_request_count{model="mnist_cnn",version="1",api="predict",protocol="rest",status="OK"} 17
tfprod_serving_request_count{model="a \\"quoted\\" name",version="1",api="predict",protocol="grpc",status="OK"} 3
# TYPE tfprod_serving_batch_size histogram
tfprod_serving_batch_size_bucket{model="mnist_cnn",version="1",signature="serving_raw",le="1"} 10
tfprod_serving_batch_size_sum{model="mnist_cnn",version="1",signature="serving_raw"} 96
tfprod_serving_batch_size_count{model="mnist_cnn",version="1",signature="serving_raw"} 24
"""


@pytest.mark.parametrize("concurrency, layout", [
    (1, (1, 1)), (2, (2, 1)), (4, (4, 1)), (6, (3, 2)), (7, (1, 7)), (8, (4, 2)), (32, (4, 8)), (64, (4, 16))])
def test_h2load_layout_spreads_concurrency_over_at_most_four_connections(concurrency, layout):
    connections, streams = serving_bench.h2load_layout(concurrency)
    assert (connections, streams) == layout
    assert connections * streams == concurrency


def test_h2load_layout_rejects_zero():
    with pytest.raises(serving_bench.LoadGeneratorError):
        serving_bench.h2load_layout(0)


def test_grpc_frame_is_flag_length_message():
    message = bytes(range(200)) * 3
    framed = serving_bench.grpc_frame(message)
    assert framed[0] == 0
    assert struct.unpack(">I", framed[1:5])[0] == len(message)
    assert framed[5:] == message


def test_h2load_command():
    command = serving_bench.h2load_command(4321, 64, 2.5, "/tmp/request.grpc", "/tmp/h2load.log")
    assert command[0] == "h2load"
    options = dict(zip(command[1:-1], command[2:-1]))  # each option with the word after it
    assert options["-t"] == "1" and options["-c"] == "4" and options["-m"] == "16"
    assert options["-D"] == "2500ms" and options["--warm-up-time"] == "1"
    assert options["-d"] == "/tmp/request.grpc" and options["--log-file"] == "/tmp/h2load.log"
    headers = [command[index + 1] for index, value in enumerate(command) if value == "-H"]
    assert headers == ["content-type: application/grpc", "te: trailers"]
    assert command[-1] == "http://127.0.0.1:4321/tensorflow.serving.PredictionService/Predict"
    whole_seconds = serving_bench.h2load_command(1, 1, 5.0, "d", "l")
    assert whole_seconds[whole_seconds.index("-D") + 1] == "5"
    assert whole_seconds[whole_seconds.index("-c") + 1] == "1" and whole_seconds[whole_seconds.index("-m") + 1] == "1"


def test_parse_h2load_summary():
    counts = serving_bench.parse_h2load_summary(H2LOAD_OUTPUT)
    assert counts == {"total": 226, "started": 226, "done": 224, "succeeded": 221, "failed": 5, "errored": 2,
                      "timeout": 0, "2xx": 222, "3xx": 0, "4xx": 1, "5xx": 0}


def test_parse_h2load_summary_without_summary_says_what_h2load_printed():
    with pytest.raises(serving_bench.LoadGeneratorError, match="connect to 127.0.0.1"):
        serving_bench.parse_h2load_summary("starting benchmark...\nclient could not connect to 127.0.0.1:1\n")


def test_parse_h2load_log():
    rows = serving_bench.parse_h2load_log("1795677303682814\t200\t4450\n1795677303687326\t-1\t4507\n\n")
    assert rows == [(1795677303682814, 200, 4450), (1795677303687326, -1, 4507)]
    with pytest.raises(serving_bench.LoadGeneratorError, match="line 1"):
        serving_bench.parse_h2load_log("1795677303682814 200\n")


def test_wrk_script_and_command():
    script = serving_bench.wrk_script('/tmp/a "b"/rest-1.bin')
    assert 'io.open("/tmp/a \\"b\\"/rest-1.bin", "rb")' in script
    assert 'wrk.method = "POST"' in script and 'wrk.headers["Content-Type"] = "application/json"' in script
    for name in ("requests", "duration_us", "errors_status", "errors_timeout"):
        assert f"tfprod-wrk {name} %d" in script
    assert "latency:percentile(p)" in script
    assert "function request" not in script and "function response" not in script  # no per-request Lua
    command = serving_bench.wrk_command(4321, 1, 5, "/tmp/post.lua")
    assert command == ["wrk", "-t", "1", "-c", "1", "-d", "5s", "--timeout", "30s", "--latency", "-s",
                       "/tmp/post.lua", "http://127.0.0.1:4321/v1/models/mnist_cnn:predict"]


def test_parse_wrk_output():
    values = serving_bench.parse_wrk_output(WRK_OUTPUT)
    assert values["requests"] == 1484 and values["duration_us"] == 2100554
    assert (values["p50_us"], values["p95_us"], values["p99_us"]) == (5438, 7217, 14601)
    assert values["errors_read"] == 1 and values["errors_status"] == 3
    with pytest.raises(serving_bench.LoadGeneratorError, match="errors_status"):
        serving_bench.parse_wrk_output(WRK_OUTPUT.replace("tfprod-wrk errors_status 3\n", ""))


def test_parse_metrics_and_status_delta():
    snapshot = serving_bench.parse_metrics(METRICS)
    assert snapshot["batches"] == 24 and snapshot["rows"] == 96
    assert snapshot["requests"] == {("grpc", "OK"): 434, ("grpc", "NOT_FOUND"): 4609, ("rest", "OK"): 17}
    later = serving_bench.parse_metrics(METRICS.replace("} 4609", "} 4700").replace("} 431", "} 531")
                                + 'tfprod_serving_request_count{model="m",version="",api="predict",'
                                  'protocol="grpc",status="INVALID_ARGUMENT"} 2\n')
    assert serving_bench.status_delta(snapshot, later, "grpc") == {"OK": 100, "NOT_FOUND": 91, "INVALID_ARGUMENT": 2}
    assert serving_bench.status_delta(snapshot, later, "rest") == {}


def test_resolve_load_generator():
    everything = {"h2load": "/usr/bin/h2load", "wrk": "/usr/bin/wrk"}.get
    no_wrk = {"h2load": "/usr/bin/h2load"}.get
    assert serving_bench.resolve_load_generator("auto", everything) == ("native", "")
    assert serving_bench.resolve_load_generator("python", everything) == ("python", "")
    kind, note = serving_bench.resolve_load_generator("auto", no_wrk)
    assert kind == "python" and "wrk (Debian package wrk)" in note and "h2load" not in note
    with pytest.raises(serving_bench.LoadGeneratorError, match="--load-generator python"):
        serving_bench.resolve_load_generator("native", no_wrk)
    with pytest.raises(serving_bench.LoadGeneratorError, match="use auto, native or python"):
        serving_bench.resolve_load_generator("rust", everything)


def test_load_generator_text_describes_what_ran():
    native = {"client_processes": None, "load_generator": {
        "kind": "native", "tools": {"grpc": "h2load nghttp2/1.52.0"},
        "example_commands": {"grpc": "h2load -t 1 -c 4 -m 16 ..."}}}
    text = serving_bench.load_generator_text(native)
    assert "`h2load nghttp2/1.52.0`" in text and "`h2load -t 1 -c 4 -m 16 ...`" in text
    assert "wrk" not in text and "Python" not in text
    python = {"client_processes": 4, "load_generator": {"kind": "python", "note": "not found on PATH: wrk"}}
    text = serving_bench.load_generator_text(python)
    assert text.startswith("Load generator: Python") and "up to 4 processes" in text and "wrk" in text
    assert "h2load" not in serving_bench.load_generator_text({"client_processes": 4})  # reports from before the option


def test_wait_until_listening_names_the_port():
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(serving_bench.LoadGeneratorError, match=f"127.0.0.1:{port}"):
        serving_bench.wait_until_listening(port, timeout=0.3)


def test_shared_machine_counts_other_processes_cpu_not_the_benchmarks_own_load():
    """The server and load generator push the load average above the core count by themselves; only CPU
    taken by other processes (or a busy machine before the run) makes the run a shared one."""
    cores = serving_bench.os.cpu_count()
    quiet_cell = {"other_cpu_cores": 0.05, "load_average_1min": cores + 0.5}
    report = {"cells": [quiet_cell], "compare_cells": None, "load_average_start": [0.4, 0.5, 0.5],
              "load_average_end": [cores + 0.6, 1.0, 1.0]}
    assert serving_bench.shared_machine(report) is None
    busy_cell = dict(quiet_cell, other_cpu_cores=0.9)
    assert "0.90 cores" in serving_bench.shared_machine(dict(report, compare_cells=[busy_cell]))
    # A previous run's load average lingers: only CPU really taken before the start counts.
    assert serving_bench.shared_machine(dict(report, load_average_start=[cores + 3.0, 1.0, 1.0],
                                     busy_cores_at_start=0.05)) is None
    assert "before the benchmark started" in serving_bench.shared_machine(dict(report, busy_cores_at_start=1.2))
    old_cell = {"load_average_1min": cores + 5.0}  # a report written before other_cpu_cores existed
    assert "load average reached" in serving_bench.shared_machine(dict(report, cells=[old_cell]))


def test_machine_busy_seconds_grows_with_work():
    before = serving_bench.machine_busy_seconds()
    deadline = serving_bench.time.perf_counter() + 0.3
    while serving_bench.time.perf_counter() < deadline:
        pass
    assert serving_bench.machine_busy_seconds() - before >= 0.2
