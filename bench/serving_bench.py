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

    .venv/bin/python bench/serving_bench.py --model-dir OUT/serving/mnist_cnn/<version>

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
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAME = "mnist_cnn"
SIGNATURE = "serving_raw"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
GOALS = {"grpc": 0.5, "rest": 0.3}  # share of the in-process ceiling at concurrency 64, 1 image/request
P99_GOAL_MS = 50.0


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


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
                 serving_dir: str = None):
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
    if serving_dir:  # another `serving` package first on the path (the code to compare with)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [serving_dir, environment.get("PYTHONPATH")]))
    tfprod = os.path.join(os.path.dirname(sys.executable), "tfprod")
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen(
        [tfprod, "serve", "--port", "0", "--rest_api_port", "0", "--model_name", MODEL_NAME,
         "--model_base_path", str(base), "--enable_batching", "--batching_parameters_file", str(batching),
         "--file_system_poll_wait_seconds", "0",
         "--monitoring_config_file", str(monitoring)], stdout=subprocess.PIPE, stderr=log, text=True, env=environment)
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
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", protocol, str(port), str(share),
                                 str(seconds), str(payload)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for share in shares]
    for worker in workers:
        line = worker.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"load generator failed: {worker.stderr.read()[-2000:]}")
    load_before = os.getloadavg()
    batches_before, rows_before = batch_totals(rest_port)
    server_cpu_before = process_cpu_seconds(server_pid)
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
    }


def _table(cells, ceiling) -> list:
    lines = [
        "| protocol | images/request | concurrency | req/s | predictions/s | % of ceiling | p50 ms | p95 ms | "
        "p99 ms | errors | server CPU (cores) | server CPU ms/request | load generator CPU (cores) | mean batch | "
        "load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        lines.append(
            f"| {cell['protocol']} | {cell['batch']} | {cell['concurrency']} | {cell['requests_per_second']:,.0f} | "
            f"{cell['predictions_per_second']:,.0f} | {100 * cell['predictions_per_second'] / ceiling:.1f}% | "
            f"{cell['p50_ms']:.1f} | {cell['p95_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['errors']} | "
            f"{cell['server_cpu_cores']:.2f} | {cell['server_cpu_ms_per_request']:.2f} | {cell['client_cpu_cores']:.2f} | "
            f"{cell['mean_batch_size']:.1f} | {cell['load_average_1min']} |")
    return lines


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
        f"{report['batch_timeout_micros']}, num_batch_threads {report['num_batch_threads']}).  ",
        f"Load generator: up to {report['client_processes']} processes (separate from the server) sharing the "
        "closed-loop clients; CPU columns are cores used during the cell (the machine has "
        f"{os.cpu_count()}).  ",
        f"Each cell ran {report['seconds_per_cell']} s. In-process ceiling (SavedModel, batch 256, loop): "
        f"**{ceiling:,.0f} predictions/s** (mean of {before['predictions_per_second']:,.0f} before and "
        f"{after['predictions_per_second']:,.0f} after the cells).", "",
    ]
    busiest = max([report["load_average_start"][0], report["load_average_end"][0]]
                  + [cell["load_average_1min"] for cell in report["cells"] + (report.get("compare_cells") or [])])
    if busiest > os.cpu_count():
        lines += [f"**The machine was shared and overloaded during this run** (1-minute load average up to "
                  f"{busiest:.1f} on {os.cpu_count()} cores, see the last column): the server and the load "
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
    if busiest > os.cpu_count():
        lines += ["This run's ceiling was measured on the same overloaded machine, so shares of it say little "
                  "(the ceiling loop and each cell got different, varying shares of the cores). "
                  + ("Shares of the idle-machine ceiling "
                     f"({report['reference_ceiling']:,.0f} predictions/s, --reference-ceiling) follow each line."
                     if report.get("reference_ceiling") else ""), ""]
    for goal in report["goals"]:
        if busiest > os.cpu_count():
            line = (f"- {goal['text']}: {goal['measured']} of this run's ceiling (no verdict: overloaded "
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
                                          args.batch_timeout_micros, serving_dir)
            started.append((label, process, ports))
            if "grpc" in args.protocols.split(","):
                check_grpc_answer(ports["grpc_port"], args.model_dir)
        results = {label: [] for label, _, _ in started}
        for protocol in args.protocols.split(","):
            for batch in (int(value) for value in args.batches.split(",")):
                for concurrency in (int(value) for value in args.concurrency.split(",")):
                    for label, process, ports in started:
                        port = ports["grpc_port"] if protocol == "grpc" else ports["rest_port"]
                        cell = run_cell(protocol, port, concurrency, batch, args.seconds, payloads[protocol, batch],
                                        args.client_processes, process.pid, ports["rest_port"])
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a pushed SavedModel version directory")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--batches", default="1,32", help="images per request")
    parser.add_argument("--protocols", default="grpc,rest")
    parser.add_argument("--num-batch-threads", type=int, default=1,
                        help="the server's num_batch_threads (1: TensorFlow spreads each batch over the "
                             "cores itself, and the RPC handling keeps a core)")
    parser.add_argument("--batch-timeout-micros", type=int, default=2000, help="the server's batch_timeout_micros")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="load-generator processes the clients of a cell are spread over")
    parser.add_argument("--compare-serving-dir",
                        help="a directory holding another `serving` package: every cell also runs against it")
    parser.add_argument("--reference-ceiling", type=float,
                        help="the ceiling (predictions/s) measured on this machine when idle; when this run's "
                             "machine is overloaded, the goals are also stated against it")
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "benchmarks" / "serving_bench"))
    args = parser.parse_args(argv)

    load_at_start = [round(value, 2) for value in os.getloadavg()]
    ceiling_before = in_process_ceiling(args.model_dir, seconds=max(args.seconds, 5.0))
    print(f"in-process ceiling: {ceiling_before['predictions_per_second']:,.0f} predictions/s", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = pathlib.Path(workdir)
        payloads = {(protocol, int(batch)): write_payload(protocol, int(batch), workdir)
                    for protocol in args.protocols.split(",") for batch in args.batches.split(",")}
        cells, compare_cells = run_all_cells(args, workdir, payloads)
    ceiling_after = in_process_ceiling(args.model_dir, seconds=max(args.seconds, 5.0))
    print(f"in-process ceiling after: {ceiling_after['predictions_per_second']:,.0f} predictions/s", flush=True)
    ceiling = (ceiling_before["predictions_per_second"] + ceiling_after["predictions_per_second"]) / 2
    report = {
        "command": "python bench/serving_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": (f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.platform()}, Python "
                    f"{platform.python_version()}"),
        "load_average_start": load_at_start, "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "model_dir": args.model_dir, "seconds_per_cell": args.seconds, "num_batch_threads": args.num_batch_threads,
        "batch_timeout_micros": args.batch_timeout_micros,
        "client_processes": args.client_processes, "reference_ceiling": args.reference_ceiling,
        "ceiling_runs": [ceiling_before, ceiling_after], "ceiling_predictions_per_second": ceiling,
        "cells": cells, "compare_serving_dir": args.compare_serving_dir, "compare_cells": compare_cells,
        "goals": evaluate_goals(cells, ceiling, args.reference_ceiling),
    }
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        protocol, port, clients, seconds, payload_path = sys.argv[2:7]
        print(json.dumps(run_load(protocol, int(port), int(clients), float(seconds), payload_path)))
        sys.exit(0)
    sys.exit(main())
