"""Benchmark (not a test): the whole pipeline on full MNIST.

Records each component's wall time, the test accuracy, and the Trainer's
throughput (examples/s, after the first epoch) beside the same model trained
with model.fit on in-memory NumPy arrays in the same process.

    python bench/pipeline_bench.py [--data-dir ../shared/data/mnist] [--set key=value ...]

Writes docs/benchmarks/pipeline_bench.json and docs/benchmarks/pipeline_bench.md.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"


def machine_description() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorflow as tf

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def in_memory_fit_throughput(experiment, data_dir: str, epochs: int) -> dict:
    """The same model and batch size, trained by model.fit on NumPy arrays."""
    import tensorflow as tf

    from pipeline import idx, preprocessing, trainer

    images, labels = idx.read_image_label_pair(os.path.join(data_dir, idx.TRAIN_IMAGES),
                                               os.path.join(data_dir, idx.TRAIN_LABELS))
    pixels = images.reshape(images.shape[0], -1).astype(np.float32) / preprocessing.PIXEL_SCALE
    # Same number of training examples as the pipeline's train split.
    count = int(round(len(pixels) * (1 - experiment.data.eval_fraction)))
    tf.keras.utils.set_random_seed(experiment.trainer.seed)
    model = trainer.build_and_compile(experiment)
    throughput = trainer.ThroughputCallback(experiment.trainer.batch_size)
    model.fit(pixels[:count], labels[:count].astype(np.int64),
              batch_size=experiment.trainer.batch_size, epochs=epochs, shuffle=True,
              callbacks=[throughput], verbose=2)
    return {"examples": count, "epochs": throughput.epochs,
            "steady_examples_per_second": throughput.steady_examples_per_second()}


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
    lines += [f"| **total** | {pipeline_run['total_seconds']:.1f} |", "",
              "## Trainer throughput (training examples/s, epochs after the first)", "",
              "| how | examples/s |", "|---|---|",
              f"| TFX Trainer (tf.data over Transform output) | {results['trainer_examples_per_second']:.0f} |",
              f"| model.fit on in-memory NumPy arrays, same process | {results['in_memory_examples_per_second']:.0f} |",
              f"| **ratio (Trainer / in-memory)** | **{results['throughput_ratio']:.3f}** |", ""]
    (RESULTS_DIR / "pipeline_bench.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--output-dir", default=None, help="default: a new temp dir")
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from pipeline import config as config_lib
    from pipeline import local_runner

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="tfprod_bench_")
    experiment = config_lib.load_config(
        str(REPO_ROOT / "configs" / "mnist_cnn.yaml"),
        [f"data.data_dir={args.data_dir}", f"runtime.output_dir={output_dir}",
         *args.overrides])
    summary = local_runner.run_pipeline(experiment, progress=lambda line: print(line, flush=True))
    baseline = in_memory_fit_throughput(experiment, args.data_dir, args.baseline_epochs)
    trainer_rate = summary.training["steady_examples_per_second"]
    results = {
        "command": "python bench/pipeline_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "config": config_lib.to_dict(experiment),
        "pipeline": summary.to_json(),
        "trainer_examples_per_second": trainer_rate,
        "in_memory": baseline,
        "in_memory_examples_per_second": baseline["steady_examples_per_second"],
        "throughput_ratio": trainer_rate / baseline["steady_examples_per_second"],
    }
    write_results(results)
    print(summary.format())
    print(f"Trainer {trainer_rate:.0f} ex/s vs in-memory {baseline['steady_examples_per_second']:.0f}"
          f" ex/s: ratio {results['throughput_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
