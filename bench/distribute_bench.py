"""Benchmark (not a test): step time and examples/s under tf.distribute strategies.

Trains the config's CNN on MNIST (in memory, a fixed number of steps, per-replica batch
fixed) under:

- one_device: one CPU (or the first GPU);
- mirrored: MirroredStrategy over the visible GPUs, or over 2 logical CPU devices when
  there is no GPU (the two devices share the same physical cores);
- multi_worker: MultiWorkerMirroredStrategy, 2 worker processes on 127.0.0.1.

Each configuration runs in fresh processes (logical devices and multi-worker strategies
must be set before TensorFlow initialises). Scaling efficiency =
examples/s of the configuration / (replicas x examples/s of one_device).

    python -m bench.distribute_bench [--data-dir ../shared/data/mnist] [--steps 60]

Writes docs/benchmarks/distribute_bench.json and docs/benchmarks/distribute_bench.md.
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from bench.machine import describe as describe_machine

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared from the main checkout; ../../shared from a worktree under wt/.
DEFAULT_DATA = next((root / "shared" / "data" / "mnist" for root in REPO_ROOT.parents[:2]
                     if (root / "shared" / "data" / "mnist").is_dir()),
                    REPO_ROOT.parent / "shared" / "data" / "mnist")
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
MODES = ("one_device", "mirrored", "multi_worker")
NUM_WORKERS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.distribute_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="MNIST IDX files")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "mnist_cnn.yaml"))
    parser.add_argument("--steps", type=int, default=60, help="timed steps per configuration")
    parser.add_argument("--warmup-steps", type=int, default=10,
                        help="steps run before timing (tracing, caches)")
    parser.add_argument("--per-replica-batch", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--note", action="append", default=[],
                        help="a line added to the report's notes (repeatable)")
    # Internal: one configuration in this process (set by the driver).
    parser.add_argument("--run-one", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser




# ---------------------------------------------------------------- one configuration


def run_one(args: argparse.Namespace) -> None:
    """Trains under one strategy in this (fresh) process; writes its timings to --result."""
    import tensorflow as tf

    if args.run_one == "mirrored" and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if args.run_one == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.run_one == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.OneDeviceStrategy(
            "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0")

    import numpy as np

    from tfprod.models import registry
    from tfprod.pipeline import config as config_lib
    from tfprod.contract import idx
    from tfprod.pipeline import distribute

    experiment = config_lib.load_config(args.config)
    images, labels = idx.read_image_label_pair(os.path.join(args.data_dir, idx.TRAIN_IMAGES),
                                               os.path.join(args.data_dir, idx.TRAIN_LABELS))
    replicas = strategy.num_replicas_in_sync
    global_batch = distribute.global_batch_size(args.per_replica_batch, replicas)
    total_steps = args.steps + args.warmup_steps
    count = min(len(images), global_batch * total_steps)
    features = (images[:count].reshape(count, -1) / 255.0).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels[:count].astype(np.int64)))
    dataset = dataset.repeat().batch(global_batch).with_options(
        distribute.shard_options(1, distribute.num_workers_of(strategy)))
    task_inputs = registry.ModelInputs("image_xf", (784,), 10)
    tf.keras.utils.set_random_seed(experiment.trainer.seed)
    with strategy.scope():
        model = registry.build_model(experiment.model, task_inputs)
        model.compile(optimizer=tf.keras.optimizers.Adam(distribute.scaled_learning_rate(
            experiment.trainer.learning_rate, replicas, config_lib.LearningRateScaling.LINEAR)),
            loss="sparse_categorical_crossentropy")

    ends = []

    class StepTimes(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=total_steps, callbacks=[StepTimes()],
              verbose=0)
    timed = ends[args.warmup_steps - 1:]
    step_seconds = [b - a for a, b in zip(timed, timed[1:])]
    result = {"mode": args.run_one, "strategy": type(strategy).__name__, "replicas": replicas,
              "workers": distribute.num_workers_of(strategy),
              "devices": list(strategy.extended.worker_devices),
              "global_batch": global_batch, "timed_steps": len(step_seconds),
              "median_step_seconds": statistics.median(step_seconds),
              "mean_step_seconds": statistics.fmean(step_seconds),
              "examples_per_second": global_batch * len(step_seconds) / sum(step_seconds),
              "first_steps_seconds": ends[args.warmup_steps - 1] - start}
    task = distribute.strategy_task(strategy)
    if task["chief"]:
        with open(args.result, "w", encoding="utf-8") as handle:
            json.dump(result, handle)


# ---------------------------------------------------------------- driver


def run_mode(mode: str, args: argparse.Namespace, workdir: str) -> dict:
    from tfprod.pipeline import distribute, multiworker

    result_path = os.path.join(workdir, f"{mode}.json")
    command = [sys.executable, "-m", "bench.distribute_bench", "--run-one", mode, "--result",
               result_path, "--data-dir", os.path.abspath(args.data_dir),
               "--config", os.path.abspath(args.config),
               "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
               "--per-replica-batch", str(args.per_replica_batch)]
    processes = []
    workers = NUM_WORKERS if mode == "multi_worker" else 1
    ports = multiworker.free_ports(workers)
    for index in range(workers):
        environ = dict(os.environ)
        if mode == "multi_worker":
            environ["TF_CONFIG"] = json.dumps(distribute.local_tf_config(ports, index))
        processes.append(subprocess.Popen(command, env=environ, cwd=REPO_ROOT))
    codes = [process.wait(timeout=1800) for process in processes]
    if any(codes):
        raise RuntimeError(f"{mode}: worker exit codes {codes}")
    with open(result_path, encoding="utf-8") as handle:
        return json.load(handle)


def write_markdown(report: dict, path: pathlib.Path) -> None:
    machine = report["machine"]
    lines = [
        "# Distributed training benchmark (tf.distribute)",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, GPUs: "
        f"{', '.join(machine['gpus']) or 'none'}; TensorFlow {machine['tensorflow']}, "
        f"Python {machine['python']}",
        f"- Load average (1, 5, 15 min) before: {report['load_average_before']}, after: "
        f"{report['load_average_after']}",
        f"- Model: the config's CNN; per-replica batch {report['per_replica_batch']}; "
        f"{report['steps']} timed steps after {report['warmup_steps']} warm-up steps; "
        "in-memory MNIST (no input bottleneck).",
        "",
        "| configuration | strategy | replicas | global batch | median step (ms) | "
        "examples/s | scaling efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['mode']} | {row['strategy']} | {row['replicas']} | {row['global_batch']} | "
            f"{row['median_step_seconds'] * 1000:.1f} | {row['examples_per_second']:.0f} | "
            f"{row['scaling_efficiency']:.2f} |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_one:
        run_one(args)
        return 0
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="distribute-bench-") as workdir:
        for mode in args.modes:
            print(f"running {mode} ...", flush=True)
            results.append(run_mode(mode, args, workdir))
    baseline = next((r for r in results if r["mode"] == "one_device"), None)
    for row in results:
        row["scaling_efficiency"] = (
            row["examples_per_second"] / (row["replicas"] * baseline["examples_per_second"])
            if baseline else float("nan"))
    machine = describe_machine()
    notes = [
        "Scaling efficiency = examples/s / (replicas x one_device examples/s); 1.0 is perfect "
        "weak scaling (per-replica batch fixed, global batch grows with the replicas).",
    ]
    if not machine["gpus"]:
        notes += [
            "No GPU was lent in this session: every figure is CPU-only. The 2 logical CPU "
            "devices and the 2 local workers share the same physical cores as one_device, so "
            "these rows show the strategies' overhead and how well two replicas fill the "
            "cores, not real scaling (one_device does not keep both cores busy with a "
            "64-example batch, so mirrored can exceed 0.5).",
            f"The machine has {machine['cores']} cores shared with other jobs (see the load "
            "averages above), so absolute figures are noisy; compare rows of the same run.",
        ]
    notes += args.note
    report = {"command": "python -m bench.distribute_bench " + " ".join(
                  shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "per_replica_batch": args.per_replica_batch, "steps": args.steps,
              "warmup_steps": args.warmup_steps, "results": results, "notes": notes}
    results_dir = pathlib.Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "distribute_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, results_dir / "distribute_bench.md")
    print((results_dir / "distribute_bench.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
