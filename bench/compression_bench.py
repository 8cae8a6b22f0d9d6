"""Benchmark (not a test): mobile.compression on the MNIST CNN and the SST-2 Transformer,
against issue 21's targets.

One pipeline run: its TFLiteConverter converts the blessed model (post-training float32
and int8), then fine-tunes and converts the QAT, pruned (80%), clustered (16 clusters)
and prune-preserving QAT variants, each verified on LiteRT and tflite-runtime on the test
split. The models:

  * mnist_cnn (the default): a subset of the shared MNIST (12,000 training, 2,000 test
    images by default), 2 epochs;
  * sst2_transformer: configs/sst2_transformer.yaml on the shared SST-2 (6,920 training,
    1,821 test sentences), its own epochs and early stopping.

The targets checked (issue 21):

  * QAT int8 drop <= PTQ int8 drop;
  * pruned (80%) + int8, gzipped <= 0.15 x the float32 file, drop <= 1 point;
  * clustered (16) + int8, gzipped <= 0.25 x the float32 file, drop <= 1 point;

and the fine-tune time each technique cost.

    python -m bench.compression_bench [--train-images 12000] [--set key=value ...]
    python -m bench.compression_bench --model sst2_transformer

Writes docs/benchmarks/compression_bench.json and .md (sst2_transformer:
compression_bench_sst2_transformer.json and .md; --output-name NAME to choose).
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
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# --model: (config, default data, default output name, what the data is)
MODELS = {
    "mnist_cnn": ("mnist_cnn", SHARED_DATA / "mnist", "compression_bench", "MNIST"),
    "sst2_transformer": ("sst2_transformer", SHARED_DATA / "sst2",
                         "compression_bench_sst2_transformer", "SST-2"),
}
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


def write_results(results: dict, name: str) -> pathlib.Path:
    from tfprod.mobile import compress

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    section = results["compression"]
    machine = results["machine"]
    if results["model"] == "mnist_cnn":
        data = (f"the first {results['train_images']:,} training and "
                f"{results['test_images']:,} test images of the shared MNIST; the CNN trained "
                f"{results['trainer_epochs']} epochs")
    else:
        data = (f"the shared SST-2 ({results['data_dir']}); {results['model']} trained "
                f"{results['epochs_run']} epochs (at most {results['trainer_epochs']}, "
                "early stopping)")
    lines = [f"# mobile.compression on {results['model']} (issue 21)", "",
             f"Command: `{results['command']}` ({results['date']}).",
             f"Machine: {machine['cpu']}, {machine['cores']} cores; load average at the end "
             f"{machine['load_average_at_end']}. Nothing else ran.",
             f"Data: {data} (SavedModel test accuracy "
             f"{results['savedmodel_accuracy']:.4f}); each technique fine-tuned "
             f"{section['settings']['finetune_epochs']} epoch(s); pipeline "
             f"{results['pipeline_seconds']:.0f} s, TFLiteConverter step "
             f"{results['tflite_step_seconds']:.0f} s.", "",
             "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'yes' if passed else 'NO'} |"
              for target, measured, passed in results["targets"]]
    for variant in section["variants"]:
        if variant["left_alone"]:
            lines += ["", f"{variant['technique']}: compressed layers "
                          f"{', '.join(variant['compressed_layers'])}; left alone (the toolkit "
                          f"does not support them) {', '.join(variant['left_alone'])}."]
    lines += compress.markdown_lines(section, "accuracy")
    path = RESULTS_DIR / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mnist_cnn")
    parser.add_argument("--data-dir", default=None, help="default: the model's shared data")
    parser.add_argument("--train-images", type=int, default=12000, help="mnist_cnn only")
    parser.add_argument("--test-images", type=int, default=2000, help="mnist_cnn only")
    parser.add_argument("--epochs", type=int, default=None,
                        help="trainer.epochs (default: 2 for mnist_cnn, the config's otherwise)")
    parser.add_argument("--output-dir", default=None, help="default: a new temp dir")
    parser.add_argument("--output-name", default=None,
                        help="docs/benchmarks/NAME.json and .md (default: by --model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config_name, default_data, default_name, _ = MODELS[args.model]
    source = args.data_dir or str(default_data)

    from bench import machine
    from tfprod.pipeline import config as config_lib
    from tfprod.pipeline import local_runner

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="tfprod_compression_bench_")
    if args.model == "mnist_cnn":
        data_dir = write_subset(source, os.path.join(output_dir, "data"), args.train_images,
                                args.test_images)
        epochs = args.epochs or 2
    else:
        data_dir, epochs = source, args.epochs
    experiment = config_lib.load_config(str(REPO_ROOT / "configs" / f"{config_name}.yaml"), [
        f"data.data_dir={data_dir}", f"runtime.output_dir={output_dir}/run",
        *([f"trainer.epochs={epochs}"] if epochs else []), "infra.enabled=false",
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
        "model": args.model, "data_dir": source,
        "train_images": args.train_images if args.model == "mnist_cnn" else None,
        "test_images": args.test_images if args.model == "mnist_cnn" else None,
        "trainer_epochs": experiment.trainer.epochs,
        "epochs_run": summary.training.get("epochs_run") if summary.training else None,
        "savedmodel_accuracy": report["savedmodel_accuracy"],
        "pipeline_seconds": summary.total_seconds,
        "tflite_step_seconds": summary.component_seconds.get("TFLiteConverter"),
        "compression": report["compression"], "targets": check_targets(report["compression"]),
        "machine": machine.describe()}
    print(write_results(results, args.output_name or default_name).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
