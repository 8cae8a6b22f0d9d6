"""Benchmark (not a test): the whole pipeline on full MNIST.

Records each component's wall time and the test accuracy, then compares the
Trainer's throughput (examples/s) with the same model trained by model.fit on
in-memory NumPy arrays in the same process, alternating epochs of the two.

    python -m bench.pipeline_bench [--data-dir ../shared/data/mnist] [--set key=value ...]

Writes docs/benchmarks/pipeline_bench.json and docs/benchmarks/pipeline_bench.md.
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import tempfile

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.machine import describe as describe_machine

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"




def _latest_transformed_train_files(output_dir: str):
    base = pathlib.Path(output_dir) / "pipeline" / "Transform"
    latest = max((base / "transformed_examples").iterdir(), key=lambda p: int(p.name))
    graph = max((base / "transform_graph").iterdir(), key=lambda p: int(p.name))
    return [str(latest / "Split-train" / "*")], str(graph)


def interleaved_throughput(experiment, data_dir: str, output_dir: str, rounds: int) -> dict:
    """Alternates one epoch of each: the Trainer's input path vs. in-memory NumPy arrays.

    Both train the same model (separate instances) at the same batch size. The
    Trainer's path is trainer.make_dataset over the Transform output, exactly as
    run_fn builds it. Alternating epochs keeps machine noise from favouring one
    side; the first round (tracing, cache filling) is left out.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    from tfprod.contract import idx

    from tfprod.pipeline import trainer
    from tfprod.pipeline.tasks.image import preprocessing

    files, transform_graph = _latest_transformed_train_files(output_dir)
    tf_transform_output = tft.TFTransformOutput(transform_graph)
    count = trainer.count_records(files)
    batch_size = experiment.trainer.batch_size
    steps = count // batch_size

    images, labels = idx.read_image_label_pair(os.path.join(data_dir, idx.TRAIN_IMAGES),
                                               os.path.join(data_dir, idx.TRAIN_LABELS))
    pixels = images.reshape(images.shape[0], -1).astype(np.float32) / preprocessing.PIXEL_SCALE
    pixels, labels = pixels[:steps * batch_size], labels[:steps * batch_size].astype(np.int64)

    tf.keras.utils.set_random_seed(experiment.trainer.seed)
    pipeline_model = trainer.build_and_compile(experiment)
    memory_model = trainer.build_and_compile(experiment)
    dataset = trainer.make_dataset(files, tf_transform_output, batch_size, shuffle=True,
                                   seed=experiment.trainer.seed,
                                   shuffle_buffer=experiment.trainer.shuffle_buffer, repeat=True)
    pipeline_rates, memory_rates = [], []
    for round_index in range(rounds):
        callback = trainer.ThroughputCallback(batch_size)
        pipeline_model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[callback],
                           verbose=0)
        pipeline_rate = callback.epochs[-1]["examples_per_second"]
        callback = trainer.ThroughputCallback(batch_size)
        memory_model.fit(pixels, labels, batch_size=batch_size, epochs=1, shuffle=True,
                         callbacks=[callback], verbose=0)
        memory_rate = callback.epochs[-1]["examples_per_second"]
        print(f"round {round_index}: trainer input path {pipeline_rate:.0f} ex/s, "
              f"in-memory {memory_rate:.0f} ex/s", flush=True)
        if round_index > 0:
            pipeline_rates.append(pipeline_rate)
            memory_rates.append(memory_rate)
    return {"examples_per_epoch": steps * batch_size, "rounds_counted": len(pipeline_rates),
            "trainer_input_path_examples_per_second": float(np.mean(pipeline_rates)),
            "in_memory_examples_per_second": float(np.mean(memory_rates)),
            "per_round": {"trainer_input_path": pipeline_rates, "in_memory": memory_rates}}


def write_results(results: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "pipeline_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    pipeline_run = results["pipeline"]
    lines = [
        "# Pipeline benchmark: full MNIST, default config (`configs/mnist_cnn.yaml`)",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}",
        f"- Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['gpus']} GPU(s); TensorFlow {results['machine']['tensorflow']}, "
        f"Python {results['machine']['python']}",
        "",
        *(["- The quality and component figures come from an earlier run of this script in the "
            "same output directory (`--reuse-run`), which was timed on a busier machine; the "
            "throughput figures below were measured in this invocation.", ""]
          if results.get("reused_run") else []),
        "## Quality",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test accuracy (TFMA, 10,000 t10k images) | {pipeline_run['metrics'].get('accuracy', float('nan')):.4f} |",
        f"| blessed | {pipeline_run['blessed']} |",
        "",
        "## Component wall times",
        "",
        "| component | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in pipeline_run["component_seconds"].items()]
    ab = results["interleaved"]
    lines += [f"| **total** | {pipeline_run['total_seconds']:.1f} |", "",
              "## Trainer throughput (training examples/s)", "",
              f"Interleaved A/B in one process after the run: one epoch of each in turn, "
              f"{ab['rounds_counted']} rounds counted after a warm-up round, "
              f"{ab['examples_per_epoch']} examples per epoch, same model and batch size.", "",
              "| how | examples/s |", "|---|---|",
              f"| Trainer input path (`trainer.make_dataset` over the Transform output) | "
              f"{ab['trainer_input_path_examples_per_second']:.0f} |",
              f"| `model.fit` on in-memory NumPy arrays | {ab['in_memory_examples_per_second']:.0f} |",
              f"| **ratio (Trainer path / in-memory)** | **{results['throughput_ratio']:.3f}** |",
              f"| the TFX Trainer during the pipeline run (epochs after the first; not interleaved, "
              f"so more exposed to machine noise) | {results['trainer_examples_per_second']:.0f} |",
              ""]
    (RESULTS_DIR / "pipeline_bench.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--output-dir", default=None, help="default: a new temp dir")
    parser.add_argument("--rounds", type=int, default=4,
                        help="A/B rounds of one epoch each (the first is a warm-up)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--reuse-run", action="store_true",
                        help="skip the pipeline run and reuse the finished run in --output-dir "
                             "(its run_summary.json and Transform output); measure throughput only")
    args = parser.parse_args()

    from tfprod.pipeline import config as config_lib
    from tfprod.pipeline import local_runner

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="tfprod_bench_")
    experiment = config_lib.load_config(
        str(REPO_ROOT / "configs" / "mnist_cnn.yaml"),
        [f"data.data_dir={args.data_dir}", f"runtime.output_dir={output_dir}",
         *args.overrides])
    if args.reuse_run:
        from tfprod.pipeline import summary as summary_lib

        with open(os.path.join(output_dir, "run_summary.json"), encoding="utf-8") as handle:
            summary = summary_lib.RunSummary(**json.load(handle))
    else:
        summary = local_runner.run_pipeline(
            experiment, progress=lambda line: print(line, flush=True))
    interleaved = interleaved_throughput(experiment, args.data_dir, output_dir, args.rounds)
    trainer_rate = summary.training["steady_examples_per_second"]
    results = {
        "command": "python -m bench.pipeline_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "config": config_lib.to_dict(experiment),
        "pipeline": summary.to_json(),
        "trainer_examples_per_second": trainer_rate,
        "interleaved": interleaved,
        "reused_run": bool(args.reuse_run),
        "throughput_ratio": (interleaved["trainer_input_path_examples_per_second"]
                             / interleaved["in_memory_examples_per_second"]),
    }
    write_results(results)
    print(summary.format())
    print(f"Trainer input path / in-memory model.fit throughput: {results['throughput_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
