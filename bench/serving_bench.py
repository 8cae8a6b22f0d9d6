"""Load test of `tfprod serve`: closed-loop clients in separate processes, REST and gRPC.

For each protocol (rest, grpc), request size (1 and 32 images) and concurrency (1, 8, 32, 64),
a load-generator process runs `concurrency` closed-loop clients (each sends its next request
when the last one is answered) for --seconds, against a server started with dynamic batching.
It reports req/s, predictions/s and p50/p95/p99 latency, and compares predictions/s with the
in-process ceiling: the SavedModel's serving_raw signature called directly at batch 256.

    .venv/bin/python bench/serving_bench.py --model-dir OUT/serving/mnist_cnn/<version>

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
GOALS = {"grpc": 0.5, "rest": 0.3}  # share of the in-process ceiling at concurrency 64, 1 image/request
P99_GOAL_MS = 50.0


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# ----- the load generator (runs in its own process) ------------------------------------------
def run_load(protocol: str, port: int, concurrency: int, batch: int, seconds: float) -> dict:
    import numpy as np

    images = np.random.RandomState(0).randint(0, 256, size=(batch, 28, 28)).astype(np.float32)
    latencies, errors = [], []
    lock = threading.Lock()
    start_event = threading.Event()
    deadline_holder = {}

    if protocol == "grpc":
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = SIGNATURE
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(min(concurrency, 8))]
        stubs = [prediction_service_pb2_grpc.PredictionServiceStub(channel) for channel in channels]

        def make_call(index):
            stub = stubs[index % len(stubs)]
            return lambda: stub.Predict(request, timeout=30)
    else:
        import http.client

        body = json.dumps({"signature_name": SIGNATURE, "instances": images.tolist()}).encode()

        def make_call(index):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

            def call():
                connection.request("POST", f"/v1/models/{MODEL_NAME}:predict", body=body,
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            return call

    def client(index):
        call = make_call(index)
        call()  # one untimed request opens the connection
        start_event.wait()
        mine = []
        while time.perf_counter() < deadline_holder["end"]:
            started = time.perf_counter()
            try:
                call()
            except Exception as error:  # counted and reported, the loop goes on
                with lock:
                    errors.append(repr(error)[:200])
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    began = time.perf_counter()
    deadline_holder["end"] = began + seconds
    start_event.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {
        "protocol": protocol, "concurrency": concurrency, "batch": batch, "seconds": round(elapsed, 2),
        "requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
        "requests_per_second": len(latencies) / elapsed,
        "predictions_per_second": len(latencies) * batch / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000, "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


# ----- the in-process ceiling ------------------------------------------------------------------
def in_process_ceiling(model_dir: str, seconds: float, batch: int = 256) -> dict:
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    function = model.signatures[SIGNATURE]
    images = tf.constant(np.random.RandomState(0).randint(0, 256, size=(batch, 28, 28)).astype(np.float32))
    for _ in range(3):
        function(image=images)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        function(image=images)["class_id"].numpy()
        count += 1
    elapsed = time.perf_counter() - began
    return {"batch": batch, "seconds": round(elapsed, 2), "predictions_per_second": count * batch / elapsed}


# ----- orchestration -----------------------------------------------------------------------------
def start_server(model_dir: str, workdir: pathlib.Path, num_batch_threads: int):
    base = workdir / "models" / MODEL_NAME
    base.mkdir(parents=True)
    shutil.copytree(model_dir, base / "1")
    batching = workdir / "batching.config"
    batching.write_text(
        "max_batch_size { value: 256 }\nbatch_timeout_micros { value: 2000 }\n"
        f"max_enqueued_batches {{ value: 1000 }}\nnum_batch_threads {{ value: {num_batch_threads} }}\n")
    tfprod = os.path.join(os.path.dirname(sys.executable), "tfprod")
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen(
        [tfprod, "serve", "--port", "0", "--rest_api_port", "0", "--model_name", MODEL_NAME,
         "--model_base_path", str(base), "--enable_batching", "--batching_parameters_file", str(batching),
         "--file_system_poll_wait_seconds", "0"], stdout=subprocess.PIPE, stderr=log, text=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=300):
        process.kill()
        raise RuntimeError("the server did not start; see " + str(workdir / "server.log"))
    line = process.stdout.readline()
    if not line:
        raise RuntimeError("the server exited; see " + str(workdir / "server.log"))
    return process, json.loads(line)


def run_cell(protocol, port, concurrency, batch, seconds) -> dict:
    command = [sys.executable, __file__, "--worker", protocol, str(port), str(concurrency), str(batch), str(seconds)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    ceiling = report["ceiling"]["predictions_per_second"]
    lines = [
        "# Serving benchmark (`bench/serving_bench.py`)", "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Model: `{report['model_dir']}` (signature `{SIGNATURE}`, 28x28 float32 images)  ",
        f"Server: `tfprod serve --enable_batching` (max_batch_size 256, batch_timeout_micros 2000, "
        f"num_batch_threads {report['num_batch_threads']}); the load generator is a separate process of "
        "closed-loop client threads on the same machine.  ",
        f"Each cell ran {report['seconds_per_cell']} s. In-process ceiling (SavedModel, batch 256, loop): "
        f"**{ceiling:,.0f} predictions/s**.", "",
        "| protocol | images/request | concurrency | req/s | predictions/s | % of ceiling | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in report["cells"]:
        lines.append(
            f"| {cell['protocol']} | {cell['batch']} | {cell['concurrency']} | {cell['requests_per_second']:,.0f} | "
            f"{cell['predictions_per_second']:,.0f} | {100 * cell['predictions_per_second'] / ceiling:.1f}% | "
            f"{cell['p50_ms']:.1f} | {cell['p95_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['errors']} |")
    lines += ["", "## Goals (concurrency 64, one image per request)", ""]
    for goal in report["goals"]:
        lines.append(f"- {goal['text']}: **{'met' if goal['met'] else 'NOT met'}** ({goal['measured']})")
    lines.append("")
    return "\n".join(lines)


def evaluate_goals(cells, ceiling):
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
        goals.append({"text": text, "met": met, "measured": measured})
    return goals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a pushed SavedModel version directory")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--batches", default="1,32", help="images per request")
    parser.add_argument("--protocols", default="grpc,rest")
    parser.add_argument("--num-batch-threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "benchmarks" / "serving_bench"))
    args = parser.parse_args(argv)

    load_at_start = " ".join(f"{value:.1f}" for value in os.getloadavg())
    ceiling = in_process_ceiling(args.model_dir, seconds=max(args.seconds, 5.0))
    print(f"in-process ceiling: {ceiling['predictions_per_second']:,.0f} predictions/s", flush=True)
    cells = []
    with tempfile.TemporaryDirectory() as workdir:
        process, ports = start_server(args.model_dir, pathlib.Path(workdir), args.num_batch_threads)
        try:
            for protocol in args.protocols.split(","):
                port = ports["grpc_port"] if protocol == "grpc" else ports["rest_port"]
                for batch in (int(value) for value in args.batches.split(",")):
                    for concurrency in (int(value) for value in args.concurrency.split(",")):
                        cell = run_cell(protocol, port, concurrency, batch, args.seconds)
                        cells.append(cell)
                        print(f"{protocol:4} batch {batch:3} c{concurrency:3}: {cell['requests_per_second']:8,.0f} req/s "
                              f"{cell['predictions_per_second']:8,.0f} pred/s  p50 {cell['p50_ms']:6.1f} "
                              f"p99 {cell['p99_ms']:6.1f} ms  errors {cell['errors']}", flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    report = {
        "command": "python bench/serving_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": (f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.platform()}, Python "
                    f"{platform.python_version()}; load average at start {load_at_start}"),
        "model_dir": args.model_dir, "seconds_per_cell": args.seconds, "num_batch_threads": args.num_batch_threads,
        "ceiling": ceiling, "cells": cells,
        "goals": evaluate_goals(cells, ceiling["predictions_per_second"]),
    }
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        protocol, port, concurrency, batch, seconds = sys.argv[2:7]
        print(json.dumps(run_load(protocol, int(port), int(concurrency), int(batch), float(seconds))))
        sys.exit(0)
    sys.exit(main())
