"""Benchmark (not a test): the same pipeline fed from IDX files and from TFDS.

Builds tfprod_mnist_sample (a TFDS dataset over the shipped MNIST sample) into a
temp data dir, writes the same images as IDX files, and runs the whole pipeline
on each source with identical settings, in fresh output dirs. Records each
run's test accuracy, example counts and component times.

    python -m bench.tfds_vs_idx_bench [--config small|full] [--set key=value ...]

Writes docs/benchmarks/tfds_vs_idx.json and docs/benchmarks/tfds_vs_idx.md.
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import tempfile

from bench.machine import describe as describe_machine

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
CONFIG = REPO_ROOT / "configs" / "mnist_cnn.yaml"




def write_idx_subset(directory: pathlib.Path, train_count: int, test_count: int) -> None:
    """The first train_count / test_count images of the shipped sample, as IDX files."""
    from tfprod.contract import idx

    directory.mkdir(parents=True, exist_ok=True)
    sample = mnist_sample_dir()
    for images_name, labels_name, count in ((idx.TRAIN_IMAGES, idx.TRAIN_LABELS, train_count),
                                            (idx.TEST_IMAGES, idx.TEST_LABELS, test_count)):
        images, labels = idx.read_image_label_pair(str(sample / images_name),
                                                   str(sample / labels_name))
        idx.write_idx(str(directory / images_name), images[:count])
        idx.write_idx(str(directory / labels_name), labels[:count])


def mnist_sample_dir() -> pathlib.Path:
    from tfprod.pipeline.ingestion.tfds import mnist_sample

    return mnist_sample.SHIPPED_SAMPLE_DIR


def run(overrides: list) -> dict:
    from tfprod.pipeline import config as config_lib, local_runner

    experiment = config_lib.load_config(str(CONFIG), overrides)
    summary = local_runner.run_pipeline(experiment, progress=lambda line: None)
    return {"blessed": summary.blessed, "metrics": summary.metrics,
            "component_seconds": summary.component_seconds,
            "total_seconds": round(summary.total_seconds, 1)}


def write_results(results: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "tfds_vs_idx.json").write_text(json.dumps(results, indent=2) + "\n")
    idx_run, tfds_run = results["runs"]["idx"], results["runs"]["tfds"]
    lines = [
        f"# The pipeline on IDX files vs. on TFDS (`{results['tfds_name']}`)",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}",
        f"- Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores (shared); "
        f"TensorFlow {results['machine']['tensorflow']}, TFDS "
        f"{results['machine']['tensorflow_datasets']}",
        f"- Settings for both runs: `{' '.join(results['overrides'])}`; the same "
        f"{results['train_images']} train / {results['test_images']} test images "
        "(eval held out of train by hash, on different keys in the two paths)",
        "",
        "| source | test accuracy | test examples | blessed | ExampleGen s | Trainer s | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name, run_result in (("IDX files", "IdxExampleGen", idx_run),
                                    ("TFDS", "TfdsExampleGen", tfds_run)):
        seconds = run_result["component_seconds"]
        lines.append(
            f"| {label} | {run_result['metrics'].get('accuracy', float('nan')):.4f} | "
            f"{run_result['metrics'].get('example_count')} | {run_result['blessed']} | "
            f"{seconds.get(name, 0):.1f} | {seconds.get('Trainer', 0):.1f} | "
            f"{run_result['total_seconds']:.1f} |")
    lines.append("")
    (RESULTS_DIR / "tfds_vs_idx.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tfds_vs_idx_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("small", "full"), default="small",
                        help="tfprod_mnist_sample config: small (2,000/500) or full (10,000/2,000)")
    parser.add_argument("--set", dest="overrides", action="append",
                        default=["trainer.epochs=2", "trainer.batch_size=32",
                                 "eval.accuracy_threshold=0.5"],
                        help="a config override for both runs (repeatable), applied after "
                             "the defaults trainer.epochs=2 trainer.batch_size=32 "
                             "eval.accuracy_threshold=0.5")
    args = parser.parse_args(argv)

    from tfprod.pipeline.ingestion.tfds import mnist_sample

    counts = {"small": (2000, 500), "full": (10000, 2000)}[args.config]
    with tempfile.TemporaryDirectory(prefix="tfds_vs_idx_") as work:
        work_dir = pathlib.Path(work)
        (tfds_name,) = mnist_sample.build(str(work_dir / "tfds"), configs=[args.config])
        write_idx_subset(work_dir / "idx", *counts)
        runs = {
            "idx": run(args.overrides + [f"data.data_dir={work_dir / 'idx'}",
                                         f"runtime.output_dir={work_dir / 'out_idx'}"]),
            "tfds": run(args.overrides + [
                "data.source=tfds", f"data.tfds_name={tfds_name}",
                f"data.tfds_data_dir={work_dir / 'tfds'}",
                f"runtime.output_dir={work_dir / 'out_tfds'}"]),
        }
    results = {
        "command": shlex.join(["python", "-m", "bench.tfds_vs_idx_bench"] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(), "tfds_name": tfds_name, "overrides": args.overrides,
        "train_images": counts[0], "test_images": counts[1], "runs": runs,
    }
    write_results(results)
    print(json.dumps({name: r["metrics"] for name, r in runs.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
