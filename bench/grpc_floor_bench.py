"""What Python gRPC itself costs per Predict, before any model or serving code runs.

Starts a gRPC server that answers /tensorflow.serving.PredictionService/Predict with a fixed,
pre-serialized PredictResponse (no decoding, no model, no batching), on grpc.aio, on grpc.aio with
the hand-off batching needs (each request awaits a future that another thread resolves every 2 ms,
its whole group in one call_soon_threadsafe, as serving/batching.py does), and on the thread-pool
server, and loads it with h2load exactly as `bench/serving_bench.py` loads
`tfprod serve` (the same 28x28 single-image PredictRequest, 4 connections x 16 streams =
concurrency 64, closed loop). It reports req/s and the CPU the server and h2load used per
request.

Added to the model's own CPU per image (the in-process ceiling runs of
docs/benchmarks/serving_bench.json), that gives the most single-image requests per second any
Python gRPC server could serve on this machine's cores, whatever its serving code does: the
floor under serving_bench's gRPC goal.

    .venv/bin/python -m bench.grpc_floor_bench [--seconds 5]

Needs h2load (Debian package nghttp2-client). Writes docs/benchmarks/grpc_floor.json and .md.
"""

import argparse
import asyncio
import json
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bench.machine import describe as describe_machine
from bench.serving_bench import (MODEL_NAME, PREDICT_METHOD, SIGNATURE, WARM_UP_SECONDS, grpc_frame,
                                 h2load_command, images, parse_h2load_log, parse_h2load_summary,
                                 process_cpu_seconds, run_tool, write_report)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONCURRENCY = 64
HANDOFF_PERIOD_SECONDS = 0.002  # aio-handoff: how often the other thread answers what is waiting
KINDS = ("aio", "aio-handoff", "sync")


def canned_response() -> bytes:
    """A PredictResponse shaped like tfprod serve's answer to one MNIST image (class id, 10 scores)."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from tfprod.serving import protocol

    response = predict_pb2.PredictResponse()
    response.model_spec.name = MODEL_NAME
    response.model_spec.version.value = 1
    response.model_spec.signature_name = SIGNATURE
    protocol.fill_tensor_proto(response.outputs["class_id"], np.array([7], np.int64))
    protocol.fill_tensor_proto(response.outputs["probabilities"], np.full([1, 10], 0.1, np.float32))
    return response.SerializeToString()


def serve(kind: str) -> None:
    """Runs the fixed-answer server until killed; prints its port on stdout first."""
    import concurrent.futures

    import grpc

    answer = canned_response()
    service, method = PREDICT_METHOD.strip("/").split("/")
    if kind in ("aio", "aio-handoff"):
        pending = []  # (loop, future) of the requests waiting for the hand-off thread
        lock = threading.Lock()

        async def predict(request, context):
            return answer

        async def predict_after_handoff(request, context):
            # What batching costs the event loop without a model: a future per request, resolved
            # with the others of its group by one call_soon_threadsafe from another thread.
            future = asyncio.get_running_loop().create_future()
            with lock:
                pending.append(future)
            return await future

        def resolve(futures):
            for future in futures:
                if not future.done():
                    future.set_result(answer)

        def hand_off(loop):
            while True:
                time.sleep(HANDOFF_PERIOD_SECONDS)
                with lock:
                    group = pending[:]
                    pending.clear()
                if group:
                    loop.call_soon_threadsafe(resolve, group)

        async def main():
            if kind == "aio-handoff":
                threading.Thread(target=hand_off, args=(asyncio.get_running_loop(),), daemon=True).start()
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(
                    predict if kind == "aio" else predict_after_handoff)}),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            print(port, flush=True)
            await server.wait_for_termination()

        asyncio.run(main())
    else:
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(lambda request, context: answer)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(port, flush=True)
        server.wait_for_termination()


def measure(kind: str, seconds: float, workdir: pathlib.Path) -> dict:
    """Loads one fixed-answer server with h2load; CPU figures cover h2load's measured window only."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    process = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor_bench", "--serve", kind],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        port = int(process.stdout.readline())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = SIGNATURE
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images(1)))
        request_path = workdir / "request.grpc"
        request_path.write_bytes(grpc_frame(request.SerializeToString()))
        cell_dir = workdir / kind
        cell_dir.mkdir()
        command = h2load_command(port, CONCURRENCY, seconds, request_path, cell_dir / "h2load.log")
        run = run_tool(command, cell_dir, timeout=seconds + WARM_UP_SECONDS + 120,
                       at_window_start=lambda: process_cpu_seconds(process.pid),
                       window_start_seconds=WARM_UP_SECONDS)
        server_cpu = process_cpu_seconds(process.pid) - run["window_start"]
        window = run["ended"] - run["window_began"]
        summary = parse_h2load_summary(run["stdout"])
        requests = sum(1 for _, status, _ in parse_h2load_log((cell_dir / "h2load.log").read_text())
                       if 200 <= status < 300)
        if requests == 0 or summary["failed"]:
            raise RuntimeError(f"{kind}: h2load answered {requests} requests, {summary['failed']} failed:\n"
                               + run["stdout"][-1500:])
        return {"server": kind, "requests": requests, "requests_per_second": requests / seconds,
                "server_cpu_cores": server_cpu / window, "server_cpu_ms_per_request": 1000 * server_cpu / requests,
                "h2load_cpu_ms_per_request": 1000 * run["cpu_seconds"] / requests,
                "h2load_counts": summary, "command": shlex.join(command)}
    finally:
        process.kill()
        process.wait(10)


def markdown(report: dict) -> str:
    cores = report["machine"]["cores"]
    lines = ["# Python gRPC's own cost per Predict (`bench/grpc_floor_bench.py`)", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']['cpu']}, {cores} cores, {report['machine']['platform']}, Python "
             f"{report['machine']['python']}; load average at the end "
             f"{' '.join(map(str, report['machine']['load_average_at_end']))}  ",
             f"A server answering Predict with a fixed PredictResponse (no decoding, no model), loaded by h2load "
             f"with serving_bench's single-image request at concurrency {report['concurrency']} (4 connections x "
             f"16 streams, closed loop) for {report['seconds']} s after a 1 s warm-up.", "",
             "| server | req/s | server CPU (cores) | server CPU ms/request | h2load CPU ms/request |",
             "|---|---|---|---|---|"]
    for result in report["results"]:
        lines.append(f"| {result['server']} | {result['requests_per_second']:,.0f} | {result['server_cpu_cores']:.2f} | "
                     f"{result['server_cpu_ms_per_request']:.3f} | {result['h2load_cpu_ms_per_request']:.3f} |")
    model_ms = report.get("model_cpu_ms_per_image")
    if model_ms:
        lines += ["", "## The floor under serving_bench's gRPC goal", "",
                  f"The model needs {model_ms:.3f} ms of CPU per image at batch 256 (in-process ceiling runs in "
                  f"docs/benchmarks/serving_bench.json, {report['ceiling']:,.0f} predictions/s). Added to each "
                  "server's and h2load's CPU per request, that bounds what any Python server built this way could "
                  f"serve on {cores} cores, before any decoding, validation or answer encoding, and with batches "
                  "as large as the ceiling's (smaller batches cost the model more per image):", "",
                  "| server | CPU per single-image request, model included (ms) | at most req/s | share of the ceiling |",
                  "|---|---|---|---|"]
        for result in report["results"]:
            total = result["server_cpu_ms_per_request"] + result["h2load_cpu_ms_per_request"] + model_ms
            bound = 1000 * cores / total
            lines.append(f"| {result['server']} | {total:.3f} | {bound:,.0f} | {bound / report['ceiling']:.0%} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "benchmarks" / "grpc_floor"))
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load is not on PATH: install the Debian package nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as workdir:
        results = [measure(kind, args.seconds, pathlib.Path(workdir)) for kind in KINDS]
    report = {"command": "python -m bench.grpc_floor_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": describe_machine(), "concurrency": CONCURRENCY, "seconds": args.seconds,
              "model_cpu_ms_per_image": None, "ceiling": None, "results": results}
    ceiling_file = REPO_ROOT / "docs" / "benchmarks" / "serving_bench.json"
    if ceiling_file.exists():
        serving = json.loads(ceiling_file.read_text())
        runs = serving["ceiling_runs"]
        report["model_cpu_ms_per_image"] = sum(run["cpu_ms_per_prediction"] for run in runs) / len(runs)
        report["ceiling"] = serving["ceiling_predictions_per_second"]
    write_report(args.output, report, markdown(report))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
