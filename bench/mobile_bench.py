"""Benchmark (not a test): the CNN's TFLite models on full MNIST, and the quality gates.

Runs the pipeline on full MNIST (its TFLiteConverter step converts the blessed
CNN in all four modes and verifies each on LiteRT and tflite-runtime 2.14 on
the 10,000 test images), or, with --model-dir, converts an already pushed
model with the same library. Then checks the gates of issue 6:

  * int8 size <= 0.27 x float32;
  * int8 accuracy drop <= 0.5 points against the SavedModel, on both runtimes;
  * int8 top-1 agreement with the SavedModel >= 99%, on both runtimes;

and compares int8 with float32 latency on the same runtime.

    python -m bench.mobile_bench [--data-dir ../shared/data/mnist] [--set key=value ...]
    python -m bench.mobile_bench --model-dir OUT/serving/mnist_cnn/VERSION

Writes docs/benchmarks/mobile_bench.json and docs/benchmarks/mobile_bench.md.
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

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
MAX_INT8_SIZE_RATIO = 0.27
MAX_ACCURACY_DROP_POINTS = 0.5
MIN_TOP1_AGREEMENT = 0.99


def check_gates(report: dict) -> list:
    """One row per gate and runtime: (gate, runtime, value, limit, passed)."""
    models = {model["mode"]: model for model in report["models"]}
    int8 = models["int8"]
    rows = [("int8 size / float32 size", "-", int8["size_ratio_vs_float32"],
             f"<= {MAX_INT8_SIZE_RATIO}", int8["size_ratio_vs_float32"] <= MAX_INT8_SIZE_RATIO)]
    for runtime, result in int8["runtimes"].items():
        rows.append(("int8 accuracy drop vs SavedModel (points)", runtime,
                     result["accuracy_drop_points"], f"<= {MAX_ACCURACY_DROP_POINTS}",
                     result["accuracy_drop_points"] <= MAX_ACCURACY_DROP_POINTS))
        rows.append(("int8 top-1 agreement with SavedModel", runtime, result["top1_agreement"],
                     f">= {MIN_TOP1_AGREEMENT}", result["top1_agreement"] >= MIN_TOP1_AGREEMENT))
    return rows


def latency_ratios(report: dict) -> list:
    """int8 / float32 median latency per runtime and thread count (< 1: int8 is faster)."""
    models = {model["mode"]: model for model in report["models"]}
    rows = []
    for runtime in models["int8"]["runtimes"]:
        for key in ("latency_ms_1_thread", "latency_ms_2_threads"):
            float_ms = models["float32"]["runtimes"][runtime][key]
            int8_ms = models["int8"]["runtimes"][runtime][key]
            rows.append((runtime, key.replace("latency_ms_", "").replace("_", " "), float_ms,
                         int8_ms, int8_ms / float_ms))
    return rows


def write_results(results: dict) -> None:
    from tfprod.mobile import verify

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "mobile_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Mobile benchmark: the CNN's TFLite models on full MNIST",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}",
        f"- Machine: {results['machine']}",
    ]
    if results.get("pipeline_seconds"):
        lines.append(f"- Pipeline run (training included): {results['pipeline_seconds']:.0f} s; "
                     f"TFLiteConverter step: {results['tflite_step_seconds']:.0f} s")
    lines += ["", "## Quality gates (issue 6)", "",
              "| gate | runtime | value | limit | passed |", "|---|---|---:|---|---|"]
    lines += [f"| {gate} | {runtime} | {value:.4f} | {limit} | {'yes' if passed else 'NO'} |"
              for gate, runtime, value, limit, passed in results["gates"]]
    lines += ["", "## int8 against float32 latency (median per example, batch 1, XNNPACK)", "",
              "| runtime | threads | float32 (ms) | int8 (ms) | int8 / float32 |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {runtime} | {threads} | {float_ms:.3f} | {int8_ms:.3f} | {ratio:.2f} |"
              for runtime, threads, float_ms, int8_ms, ratio in results["latency_ratios"]]
    lines += ["", "## Every mode", "",
              verify.format_markdown(results["report"]).split("\n", 2)[2]]
    (RESULTS_DIR / "mobile_bench.md").write_text("\n".join(lines))


def run_pipeline(data_dir: str, output_dir: str, overrides: list) -> tuple:
    from tfprod.pipeline import config as config_lib
    from tfprod.pipeline import local_runner

    experiment = config_lib.load_config(
        str(REPO_ROOT / "configs" / "mnist_cnn.yaml"),
        [f"data.data_dir={data_dir}", f"runtime.output_dir={output_dir}",
         "mobile.latency_examples=500", *overrides])
    summary = local_runner.run_pipeline(experiment, progress=lambda line: print(line, flush=True))
    if not summary.tflite_report:
        raise SystemExit(f"the pipeline converted nothing (blessed: {summary.blessed}); "
                         f"see {output_dir}/run.log")
    with open(summary.tflite_report["json"], encoding="utf-8") as handle:
        report = json.load(handle)
    return report, summary


def convert_pushed_model(model_dir: str, data_dir: str, output_dir: str) -> dict:
    from tfprod.mobile import cli, data, export

    model_name, version, _ = cli.default_names(model_dir)
    train_images, _ = data.read_idx_split(data_dir, "train")
    test_images, test_labels = data.read_idx_split(data_dir, "test")
    result = export.export_tflite(
        model_dir, output_dir, model_name, version, data.calibration_sample(train_images, 200),
        test_images, test_labels, export.ExportOptions(latency_examples=500),
        progress=lambda line: print(line, flush=True))
    return result.report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mobile_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--model-dir", help="convert this pushed model instead of training one")
    parser.add_argument("--output-dir", default=None, help="default: a new temp dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="tfprod_mobile_bench_")
    results = {
        "command": "python -m bench.mobile_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.model_dir:
        report = convert_pushed_model(args.model_dir, args.data_dir, output_dir)
    else:
        report, summary = run_pipeline(args.data_dir, output_dir, args.overrides)
        results["pipeline_seconds"] = summary.total_seconds
        results["tflite_step_seconds"] = summary.component_seconds.get("TFLiteConverter")
        results["pipeline_metrics"] = summary.metrics
    results.update({"machine": report["machine"], "report": report,
                    "gates": check_gates(report), "latency_ratios": latency_ratios(report)})
    results["all_gates_passed"] = all(row[4] for row in results["gates"])
    write_results(results)
    print((RESULTS_DIR / "mobile_bench.md").read_text())
    return 0 if results["all_gates_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
