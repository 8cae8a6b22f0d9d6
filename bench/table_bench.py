"""Table benchmark: `tfprod run` of configs/penguins_mlp.yaml on the full penguins table.

The shared copy (../shared/data/penguins/penguins.csv, 344 penguins, CC0) is one file; the
benchmark splits it as data/penguins_sample is split (0-based row i goes to test when
i % 5 == 4: 276 train rows, 10% of them held out as eval by a content hash, and 68 test
rows), keeping the NA cells, into a temporary directory, then runs the whole pipeline on
it. It records the test accuracy (TFMA, Evaluator), whether the model was blessed, the
training time (Trainer epochs, without validation), the epochs run, the component wall
times, the command and the machine (with its load average: other work on a shared
machine slows every figure down). With --models it runs each table model (mlp,
wide_deep) in turn.

Results are merged into docs/benchmarks/table_bench.json (keyed by model and label) and
docs/benchmarks/table_bench.md is rewritten from it.

  python -m bench.table_bench
  python -m bench.table_bench --models mlp wide_deep
  python -m bench.table_bench --source ../shared/data/penguins/penguins.csv --set trainer.epochs=80
"""

import argparse
import csv
import json
import os
import pathlib
import sys
import tempfile

from bench import pipeline_run
from bench.machine import describe as describe_machine

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
CONFIG = "penguins_mlp"
MODELS = ("mlp", "wide_deep")
ACCURACY_GOAL = 0.97
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "penguins" / "penguins.csv"
TEST_EVERY = 5  # row i (0-based, after the header) is a test row when i % 5 == 4


def split_table(source: str, target_dir: str) -> dict:
    """Writes train.csv and test.csv of source into target_dir; returns the row counts."""
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, data = rows[0], rows[1:]
    parts = {"train.csv": [row for i, row in enumerate(data) if i % TEST_EVERY != TEST_EVERY - 1],
             "test.csv": [row for i, row in enumerate(data) if i % TEST_EVERY == TEST_EVERY - 1]}
    os.makedirs(target_dir, exist_ok=True)
    for name, part in parts.items():
        with open(os.path.join(target_dir, name), "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows([header] + part)
    return {name: len(part) for name, part in parts.items()}


def run_model(model: str, data_dir: str, output_root: str, overrides, label: str = "") -> dict:
    """Runs the config with model.name=model through `tfprod run`; returns its figures."""
    key = f"{model}_{label}" if label else model
    output_dir = os.path.join(output_root, key)
    run = pipeline_run.run_config(
        f"configs/{CONFIG}.yaml", data_dir, output_dir,
        [f"model.name={model}", f"export.model_name={CONFIG}_{model}", *overrides], model)
    summary, stats = run.summary, run.stats
    accuracy = summary["metrics"].get("accuracy")
    return {
        "config": f"configs/{CONFIG}.yaml",
        "model": model,
        "label": label,
        "overrides": list(overrides),
        "command": run.display_command({output_dir: "OUT/" + key, data_dir: "DATA"}),
        "exit_code": run.exit_code,
        "status": summary["status"],
        "started_utc": run.started.isoformat(timespec="seconds"),
        "test_accuracy": accuracy,
        "test_examples": summary["metrics"].get("example_count"),
        "meets_goal": (accuracy or 0) >= ACCURACY_GOAL,
        "blessed": summary["blessed"],
        "train_examples": stats.get("train_examples"),
        "eval_examples": stats.get("eval_examples"),
        "epochs_run": stats.get("epochs_run"),
        "fit_seconds": round(sum(epoch["seconds"] for epoch in stats.get("epochs", [])), 1),
        "trainer_component_seconds": summary["component_seconds"].get("Trainer"),
        "pipeline_seconds": summary["total_seconds"],
        "component_seconds": summary["component_seconds"],
        "load_average_before": run.load_before,
        "load_average_after": run.load_after,
    }


def write_results(results: dict, machine: dict, source: str, counts: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / "table_bench.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    runs = dict(previous.get("runs", {}), **results)
    payload = {"benchmark": "tables: species of the Palmer penguins (full table)",
               "goal": f"test accuracy >= {ACCURACY_GOAL}", "source": source,
               "split": counts, "machine": machine, "runs": runs}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Table benchmark (Palmer penguins, species)",
        "",
        f"Goal: test accuracy >= {ACCURACY_GOAL}. Data: the full penguins table "
        f"({sum(counts.values())} rows, NA cells kept), split like data/penguins_sample "
        f"(row i to test when i % {TEST_EVERY} == {TEST_EVERY - 1}): {counts.get('train.csv')} "
        f"train rows (10% held out as eval by a content hash), {counts.get('test.csv')} test "
        "rows. Accuracy is TFMA's on the test split (the Evaluator of the pipeline run); fit "
        "time is the Trainer's epochs without validation.",
        "",
        "| model | test accuracy | goal met | blessed | epochs run | fit (s) | Trainer (s) | "
        "pipeline (s) | load avg (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, run in sorted(runs.items()):
        label = f" ({run['label']})" if run.get("label") else ""
        accuracy = run["test_accuracy"]
        lines.append(
            f"| {run['model']}{label} | {'-' if accuracy is None else f'{accuracy:.4f}'} | "
            f"{'yes' if run['meets_goal'] else 'no'} | {'yes' if run['blessed'] else 'no'} | "
            f"{run['epochs_run']} | {run['fit_seconds']} | {run['trainer_component_seconds']} | "
            f"{run['pipeline_seconds']} | {run['load_average_before'][0]:.1f} / "
            f"{run['load_average_after'][0]:.1f} |")
    lines += ["", "Commands (run from the repository root; DATA is the split directory, OUT a "
              "temporary directory):", ""]
    lines += [f"- `{run['command']}` (started {run['started_utc']})"
              for _, run in sorted(runs.items())]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}, "
              f"Python {machine['python']}, TensorFlow {machine['tensorflow']}, "
              f"{len(machine['gpus'])} GPUs.", "",
              "Reproduce: `python -m bench.table_bench --models mlp wide_deep`", ""]
    (RESULTS_DIR / "table_bench.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE),
                        help="the penguins CSV (header row, NA for missing values)")
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=MODELS)
    parser.add_argument("--output-root", help="where the split and the runs go (default: a "
                                              "temp dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override passed to every run")
    parser.add_argument("--label", default="",
                        help="name for runs with overrides, kept beside the plain runs")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only (smoke runs: docs/benchmarks/ unchanged)")
    args = parser.parse_args(argv)
    source = os.path.abspath(args.source)
    output_root = args.output_root or tempfile.mkdtemp(prefix="table_bench")
    data_dir = os.path.join(output_root, "penguins")
    counts = split_table(source, data_dir)
    results = {}
    for model in args.models:
        print(f"running {model} on {data_dir} ({counts}) ...", flush=True)
        key = f"{model} ({args.label})" if args.label else model
        results[key] = run_model(model, data_dir, output_root, args.overrides, args.label)
        print(json.dumps(results[key], indent=2), flush=True)
    if not args.no_write:
        write_results(results, describe_machine(), source, counts)
    return 0 if all(run["exit_code"] == 0 for run in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
