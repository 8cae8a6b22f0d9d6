"""Benchmark (not a test): mobile.compression on the MNIST CNN, against issue 21's targets.

One pipeline run on a subset of the shared MNIST (12,000 training, 2,000 test images by
default; 2 epochs): its TFLiteConverter converts the blessed CNN (post-training float32
and int8), then fine-tunes and converts the QAT, pruned (80%), clustered (16 clusters)
and prune-preserving QAT variants, each verified on LiteRT and tflite-runtime on the test
images. The targets checked (issue 21):

  * QAT int8 drop <= PTQ int8 drop;
  * pruned (80%) + int8, gzipped <= 0.15 x the float32 file, drop <= 1 point;
  * clustered (16) + int8, gzipped <= 0.25 x the float32 file, drop <= 1 point;

and the fine-tune time each technique cost.

    python -m bench.compression_bench [--train-images 12000] [--set key=value ...]

Writes docs/benchmarks/compression_bench.json and .md.
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import tempfile

import tfprod  # noqa: F401  (sets the Keras 2 switch before TensorFlow is imported)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
MAX_DROP_POINTS = 1.0
MAX_PRUNED_GZIP_RATIO = 0.15
MAX_CLUSTERED_GZIP_RATIO = 0.25


def write_subset(source: str, destination: str, train: int, test: int) -> str:
    """The first `train` / `test` images of the IDX data set, as IDX files."""
    from tfprod.contract import idx

    os.makedirs(destination, exist_ok=True)
    for images, labels, count in ((idx.TRAIN_IMAGES, idx.TRAIN_LABELS, train),
                                  (idx.TEST_IMAGES, idx.TEST_LABELS, test)):
        pixels, classes = idx.read_image_label_pair(os.path.join(source, images),
                                                    os.path.join(source, labels))
        idx.write_idx(os.path.join(destination, images), pixels[:count])
        idx.write_idx(os.path.join(destination, labels), classes[:count])
    return destination


def worst_drop(runtimes: dict) -> float:
    return max(result["accuracy_drop_points"] for result in runtimes.values())


def check_targets(section: dict) -> list:
    """[(target, measured, passed)] for issue 21's targets."""
    baseline = {model["mode"]: model for model in section["baseline"]["models"]}
    variants = {variant["technique"]: variant["models"][0] for variant in section["variants"]
                if variant["models"]}
    rows = []
    ptq = worst_drop(baseline["int8"]["runtimes"])
    if "qat" in variants:
        qat = worst_drop(variants["qat"]["runtimes"])
        rows.append(("QAT int8 drop <= PTQ int8 drop",
                     f"QAT {qat:+.2f}, PTQ {ptq:+.2f} points", qat <= ptq))
    for technique, limit in (("prune", MAX_PRUNED_GZIP_RATIO),
                             ("cluster", MAX_CLUSTERED_GZIP_RATIO)):
        if technique not in variants:
            continue
        model = variants[technique]
        drop = worst_drop(model["runtimes"])
        rows.append((f"{technique} + int8 gzipped <= {limit} x float32",
                     f"{model['gzip_ratio_vs_float32']:.3f}",
                     model["gzip_ratio_vs_float32"] <= limit))
        rows.append((f"{technique} + int8 drop <= {MAX_DROP_POINTS} point",
                     f"{drop:+.2f} points", drop <= MAX_DROP_POINTS))
    return rows


def write_results(results: dict) -> None:
    from tfprod.mobile import compress

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "compression_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    section = results["compression"]
    machine = results["machine"]
    lines = ["# mobile.compression on the MNIST CNN (issue 21)", "",
             f"Command: `{results['command']}` ({results['date']}).",
             f"Machine: {machine['cpu']}, {machine['cores']} cores; load average at the end "
             f"{machine['load_average_at_end']}. Nothing else ran.",
             f"Data: the first {results['train_images']:,} training and "
             f"{results['test_images']:,} test images of the shared MNIST; the CNN trained "
             f"{results['trainer_epochs']} epochs (SavedModel test accuracy "
             f"{results['savedmodel_accuracy']:.4f}); each technique fine-tuned "
             f"{section['settings']['finetune_epochs']} epoch(s); pipeline "
             f"{results['pipeline_seconds']:.0f} s, TFLiteConverter step "
             f"{results['tflite_step_seconds']:.0f} s.", "",
             "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'yes' if passed else 'NO'} |"
              for target, measured, passed in results["targets"]]
    lines += compress.markdown_lines(section, "accuracy")
    (RESULTS_DIR / "compression_bench.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="default: a new temp dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from bench import machine
    from tfprod.pipeline import config as config_lib
    from tfprod.pipeline import local_runner

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="tfprod_compression_bench_")
    data_dir = write_subset(args.data_dir, os.path.join(output_dir, "data"), args.train_images,
                            args.test_images)
    experiment = config_lib.load_config(str(REPO_ROOT / "configs" / "mnist_cnn.yaml"), [
        f"data.data_dir={data_dir}", f"runtime.output_dir={output_dir}/run",
        f"trainer.epochs={args.epochs}", "infra.enabled=false",
        "mobile.modes=[float32, int8]", "mobile.latency_examples=200",
        "mobile.compression=[qat, prune, cluster, prune_qat]", "mobile.target_sparsity=0.8",
        "mobile.num_clusters=16", "mobile.finetune_epochs=1", *args.overrides])
    summary = local_runner.run_pipeline(experiment, progress=lambda line: print(line, flush=True))
    if not summary.tflite_report:
        raise SystemExit(f"the pipeline converted nothing (blessed: {summary.blessed})")
    report = json.loads(pathlib.Path(summary.tflite_report["json"]).read_text())
    results = {
        "command": "python -m bench.compression_bench "
                   + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "train_images": args.train_images, "test_images": args.test_images,
        "trainer_epochs": args.epochs, "savedmodel_accuracy": report["savedmodel_accuracy"],
        "pipeline_seconds": summary.total_seconds,
        "tflite_step_seconds": summary.component_seconds.get("TFLiteConverter"),
        "compression": report["compression"], "targets": check_targets(report["compression"]),
        "machine": machine.describe()}
    write_results(results)
    print((RESULTS_DIR / "compression_bench.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
