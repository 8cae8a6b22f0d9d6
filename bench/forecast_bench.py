"""Benchmark (not a test): configs/etth1_lstm.yaml on the full ETTh1 through `tfprod run`.

Records the model's test MAE and RMSE beside the persistence and seasonal-naive
baselines (all three computed by TFMA on the same test windows), the training time
and each component's wall time.

    python -m bench.forecast_bench [--data-dir ../shared/data/time_series] [--set key=value ...]
        [--results-name forecast_bench]

Writes docs/benchmarks/<results-name>.json and .md (default forecast_bench).
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile

from bench.machine import describe as describe_machine

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "time_series"
CONFIG = REPO_ROOT / "configs" / "etth1_lstm.yaml"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
BASELINES = ("persistence", "seasonal_naive")




def run_pipeline(data_dir: str, output_dir: str, overrides) -> dict:
    """Runs `tfprod run` in a subprocess, as a user would; returns run_summary.json."""
    tfprod = os.path.join(os.path.dirname(sys.executable), "tfprod")
    command = [tfprod, "run", "--config", str(CONFIG), "--data-dir", data_dir,
               "--output-dir", output_dir]
    for override in overrides:
        command += ["--set", override]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    with open(os.path.join(output_dir, "run_summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def compare(metrics: dict) -> dict:
    """The model's MAE against each baseline's: the ratio and whether the model wins."""
    return {baseline: {"mae": metrics[f"{baseline}_mae"],
                       "model_mae_over_baseline_mae": metrics["mae"] / metrics[f"{baseline}_mae"],
                       "model_beats_baseline": metrics["mae"] < metrics[f"{baseline}_mae"]}
            for baseline in BASELINES}


def write_results(results: dict, name: str) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    metrics = results["summary"]["metrics"]
    machine = results["machine"]
    lines = [
        f"# Forecasting benchmark: full ETTh1, `configs/etth1_lstm.yaml`, model "
        f"`{results['model']}`",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores (shared with other jobs; load "
        f"average at the end {', '.join(f'{v:.1f}' for v in machine['load_average_at_end'])})",
        f"- Target OT (hourly), lookback {results['lookback']} h, horizon {results['horizon']} h; "
        "chronological splits 60% train / 20% eval / 20% test, windows inside each split; "
        f"{metrics.get('example_count')} test windows.",
        "",
        "## Test-period errors (degrees, all 24 steps of every test window)",
        "",
        "| forecast | MAE | RMSE |",
        "|---|---|---|",
        f"| **{results['model']}** | **{metrics['mae']:.4f}** | **{metrics['rmse']:.4f}** |",
    ]
    for baseline in BASELINES:
        lines.append(f"| {baseline.replace('_', '-')} baseline | {metrics[f'{baseline}_mae']:.4f} "
                     f"| {metrics[f'{baseline}_rmse']:.4f} |")
    lines += ["", "| baseline | model MAE / baseline MAE | model beats it |", "|---|---|---|"]
    for baseline, comparison in results["comparison"].items():
        lines.append(f"| {baseline.replace('_', '-')} | "
                     f"{comparison['model_mae_over_baseline_mae']:.3f} | "
                     f"{'yes' if comparison['model_beats_baseline'] else 'NO'} |")
    training = results["summary"].get("training", {})
    lines += ["", "## Time", "",
              f"- Trainer component: {results['summary']['component_seconds'].get('Trainer', 0):.0f} s "
              f"({training.get('epochs_run')} epochs of {training.get('train_examples')} "
              f"windows, early stopping on the eval loss)",
              f"- Whole pipeline: {results['summary']['total_seconds']:.0f} s", "",
              "| component | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |"
              for name, seconds in results["summary"]["component_seconds"].items()]
    lines += ["", f"Blessed: {results['summary']['blessed']} "
              f"(eval.mae_threshold {results['mae_threshold']})", ""]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forecast_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--output-dir", default=None,
                        help="where the run writes (default: a new temp dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results-name", default="forecast_bench",
                        help="file names under docs/benchmarks/ (e.g. for another model)")
    args = parser.parse_args(argv)

    from tfprod.pipeline import config as config_lib

    experiment = config_lib.load_config(str(CONFIG), [f"data.data_dir={args.data_dir}",
                                                      *args.overrides])
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="forecast_bench_")
    summary = run_pipeline(args.data_dir, output_dir, args.overrides)
    results = {
        "command": " ".join(shlex.quote(part) for part in ["python", "-m", "bench.forecast_bench",
                                                           *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "model": experiment.model.name,
        "lookback": experiment.data.time_series.lookback,
        "horizon": experiment.data.time_series.horizon,
        "mae_threshold": experiment.eval.mae_threshold,
        "output_dir": output_dir,
        "summary": summary,
        "comparison": compare(summary["metrics"]),
    }
    write_results(results, args.results_name)
    print((RESULTS_DIR / f"{args.results_name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
