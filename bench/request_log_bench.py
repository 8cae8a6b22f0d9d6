"""What request logging costs `tfprod serve`: throughput with logging off, at 10% and at 100% sampling.

Three servers run side by side on 127.0.0.1 (separate processes, the same model and flags):
one without --request_log_dir, one with --request_log_sampling_rate 0.1, one with 1.0. The
load goes to one at a time, in interleaved rounds (off, 10%, 100%, off, 10%, ... in a new
order each round), so a change in the machine's load falls on all three alike. Each window
runs --clients closed-loop clients (threads of this process: each sends its next request when
the last one is answered) for --seconds. The figures are ratios within a round: requests/s
with logging at 10% (100%) over requests/s with it off, their median over the rounds. The goal
is a cost under 5% at 10% sampling.

After the rounds each logging server's Prometheus counters say how many records it wrote
and dropped (by reason), and its log directory is read back (records, bytes).

    .venv/bin/python -m bench.request_log_bench --model-dir OUT/serving/mnist_cnn/<version>
    .venv/bin/python -m bench.request_log_bench --tiny-model --rounds 1 --seconds 1   # smoke run

--model-dir takes a pushed mnist_cnn version (its serving_raw signature, 28x28 images);
--tiny-model builds a small two-input model in a temporary directory instead (a smoke run:
its figures say nothing about a real model). Writes docs/benchmarks/request_log_bench.json
and .md (--output-dir elsewhere).
"""

import argparse
import glob
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import machine  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAME = "bench"
MODES = {"off": None, "10%": 0.1, "100%": 1.0}
GOAL_COST_AT_10_PERCENT = 0.05
MONITORING = 'prometheus_config { enable: true path: "/metrics" }\n'


def build_tiny_model(directory: pathlib.Path) -> tuple:
    """A small SavedModel: serving_default {"x": [N, 2] float} -> {"sum": [N]}; returns (dir, signature, input)."""
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"sum": tf.reduce_sum(x, axis=1)}

    module = Tiny()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return str(directory), "serving_default", "x"


def request_bytes(signature: str, input_name: str, tiny: bool, batch: int) -> bytes:
    """One PredictRequest, serialized once (every call sends these bytes)."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    import tensorflow as tf

    values = (np.random.RandomState(0).rand(batch, 2) if tiny else
              np.random.RandomState(0).randint(0, 256, size=(batch, 28, 28))).astype(np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = signature
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(values))
    return request.SerializeToString()


def start_server(model_base: str, workdir: pathlib.Path, mode: str, rate) -> dict:
    """`tfprod serve` in a process of its own on free ports; returns {process, grpc_port, rest_port, log_dir}."""
    monitoring = workdir / "monitoring.config"
    monitoring.write_text(MONITORING)
    command = [sys.executable, "-m", "tfprod.cli", "serve", "--port", "0", "--rest_api_port", "0",
               "--model_name", MODEL_NAME, "--model_base_path", model_base,
               "--monitoring_config_file", str(monitoring), "--file_system_poll_wait_seconds", "0"]
    log_dir = None
    if rate is not None:
        log_dir = workdir / f"logs-{mode.rstrip('%')}"
        command += ["--request_log_dir", str(log_dir), "--request_log_sampling_rate", str(rate)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(workdir / f"server-{mode.rstrip('%')}.log",
                                                                             "w"), text=True, cwd=REPO_ROOT)
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the {mode} server did not start: see {workdir}/server-{mode.rstrip('%')}.log")
    announced = json.loads(line)
    return {"process": process, "grpc_port": announced["grpc_port"], "rest_port": announced["rest_port"],
            "log_dir": log_dir}


def run_window(port: int, payload: bytes, clients: int, seconds: float) -> dict:
    """closed-loop gRPC clients for `seconds`; returns requests/s and errors."""
    import grpc

    method = "/tensorflow.serving.PredictionService/Predict"
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(clients)]
    calls = [channel.unary_unary(method, request_serializer=lambda data: data,
                                 response_deserializer=lambda data: data) for channel in channels]
    for call in calls:
        call(payload, timeout=30)  # connects; not timed
    counts, errors = [0] * clients, [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index):
        start.wait()
        call = calls[index]
        while time.perf_counter() < deadline[0]:
            try:
                call(payload, timeout=30)
                counts[index] += 1
            except grpc.RpcError:
                errors[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for channel in channels:
        channel.close()
    return {"requests_per_second": sum(counts) / elapsed, "requests": sum(counts), "errors": sum(errors)}


def log_counters(rest_port: int) -> dict:
    """The server's request-log counters from its Prometheus page."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/metrics", timeout=10).read().decode()
    written, drops = 0.0, {}
    for line in text.splitlines():
        if line.startswith("tfprod_serving_request_log_record_count"):
            written = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tfprod_serving_request_log_drop_count{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            drops[reason] = float(line.rsplit(" ", 1)[1])
    return {"records_written": written, "drops": drops}


def markdown(report: dict) -> str:
    lines = ["# Request logging's cost on serving throughput", "",
             f"`{report['command']}`", "",
             f"Model: {report['model']}; {report['clients']} closed-loop gRPC clients, {report['batch']} "
             f"example(s) per request, {report['rounds']} interleaved rounds of {report['seconds']} s per server.",
             "", "| sampling | median req/s | median ratio to off | cost |", "|---|---|---|---|"]
    for mode in MODES:
        summary = report["summary"][mode]
        ratio = summary.get("median_ratio_to_off")
        lines.append(f"| {mode} | {summary['median_requests_per_second']:.0f} | "
                     f"{'1' if ratio is None else f'{ratio:.3f}'} | "
                     f"{'-' if ratio is None else f'{100 * (1 - ratio):.1f}%'} |")
    goal = report["goal"]
    lines += ["", f"Goal: under {100 * goal['max_cost']:.0f}% at 10% sampling: "
                  f"{'met' if goal['met'] else 'NOT met'} (cost {100 * goal['cost']:.1f}%).", ""]
    for mode, logged in report["logged"].items():
        lines.append(f"- {mode}: {logged['records_written']:.0f} records written, drops {logged['drops']}, "
                     f"{logged['files']} files, {logged['bytes']} bytes on disk")
    lines += ["", f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average at the "
                  f"end {report['machine']['load_average_at_end']}.", ""]
    if report.get("smoke"):
        lines.insert(2, "**Smoke run (a tiny model, seconds of load): these figures are not measurements.**\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_log_bench", description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", help="a pushed mnist_cnn SavedModel version directory")
    model.add_argument("--tiny-model", action="store_true", help="a tiny model built here (smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="load window per server per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="examples per request")
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    args = parser.parse_args(argv)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="request_log_bench-"))
    base = workdir / "model"
    if args.tiny_model:
        _, signature, input_name = build_tiny_model(base / "1")
    else:
        base.mkdir()
        os.symlink(os.path.abspath(args.model_dir), base / "1")
        signature, input_name = "serving_raw", "image"
    payload = request_bytes(signature, input_name, args.tiny_model, args.batch)
    servers = {}
    try:
        for mode, rate in MODES.items():
            servers[mode] = start_server(str(base), workdir, mode, rate)
        rounds = []
        order = list(MODES)
        for index in range(args.rounds):
            random.Random(index).shuffle(order)
            figures = {mode: run_window(servers[mode]["grpc_port"], payload, args.clients, args.seconds)
                       for mode in order}
            rounds.append({"order": list(order), **figures})
            print(json.dumps({"round": index, **{mode: round(figures[mode]["requests_per_second"], 1)
                                                  for mode in MODES}}), flush=True)
        logged = {}
        for mode, server in servers.items():
            if server["log_dir"] is None:
                continue
            logged[mode] = log_counters(server["rest_port"])
        for server in servers.values():
            server["process"].terminate()
            server["process"].wait(60)
        for mode in logged:
            files = glob.glob(str(servers[mode]["log_dir"] / "*.tfrecord"))
            logged[mode].update({"files": len(files), "bytes": sum(os.path.getsize(path) for path in files)})
    finally:
        for server in servers.values():
            if server["process"].poll() is None:
                server["process"].kill()
    summary = {}
    for mode in MODES:
        rates = [entry[mode]["requests_per_second"] for entry in rounds]
        summary[mode] = {"median_requests_per_second": statistics.median(rates),
                         "errors": sum(entry[mode]["errors"] for entry in rounds)}
        if mode != "off":
            summary[mode]["median_ratio_to_off"] = statistics.median(
                entry[mode]["requests_per_second"] / entry["off"]["requests_per_second"] for entry in rounds)
    cost = 1 - summary["10%"]["median_ratio_to_off"]
    report = {"command": "python -m bench.request_log_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": "tiny (smoke)" if args.tiny_model else args.model_dir, "smoke": bool(args.tiny_model),
              "rounds": args.rounds, "seconds": args.seconds, "clients": args.clients, "batch": args.batch,
              "per_round": rounds, "summary": summary, "logged": logged,
              "goal": {"max_cost": GOAL_COST_AT_10_PERCENT, "cost": cost, "met": cost < GOAL_COST_AT_10_PERCENT},
              "machine": machine.describe()}
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "request_log_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "request_log_bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
