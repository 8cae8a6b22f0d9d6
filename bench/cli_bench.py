"""Benchmark (not a test): how fast `tfprod` answers, as a user meets it.

Each measurement starts the installed `tfprod` console script in a fresh process (so the
Python start-up and every import count) and times it from the start:

- a config error (`--set trainer.epochz=1`), an unknown model (`--set model.name=nope`) and
  a missing data dir: the time to the error and the exit code;
- a real `tfprod run` of the MNIST sample: the time to its first line (what it is about to
  do), to "checks passed", and to TensorFlow and TFX being loaded; the run is then stopped
  (its output goes to a temporary directory).

Each figure is the median of --repeats runs (min and max beside it). Run it alone on the
machine: the figures are wall times.

    python -m bench.cli_bench [--repeats 5] [--no-write] [--output-dir DIR] [--skip-import]

Writes docs/benchmarks/cli_bench.json and cli_bench.md (or into --output-dir).
"""

import argparse
import datetime
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

# bench.machine imports TensorFlow in this process at the end; the runs timed set it alike.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
CONFIG = "configs/mnist_cnn.yaml"
SAMPLE = str(REPO_ROOT / "data" / "mnist_sample")

# name -> (extra arguments of `tfprod run --config CONFIG`, the text the error must hold)
ERRORS = {
    "bad key (--set trainer.epochz=1)": (["--set", "trainer.epochz=1"], "unknown key"),
    "unknown model (--set model.name=nope)": (["--set", "model.name=nope"], "unknown model"),
    "missing data dir": (["--data-dir", "/nonexistent/tfprod-bench"], "directory not found"),
}
# The lines of a starting run, in order: name -> how the line starts.
RUN_LINES = {
    "first line": "tfprod run: ",
    "checks passed": "  checks passed",
    "TensorFlow and TFX loaded": "  loaded in ",
}


def time_error(extra: Sequence[str], expected: str, output_dir: str) -> Dict[str, Any]:
    """Seconds from start to exit of a `tfprod run` that must fail, and its exit code."""
    started = time.perf_counter()
    result = subprocess.run([TFPROD, "run", "--config", CONFIG, "--output-dir", output_dir,
                             *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    seconds = time.perf_counter() - started
    if expected not in result.stderr:
        raise RuntimeError(f"tfprod run {' '.join(extra)}: expected {expected!r} in stderr, got "
                           f"exit {result.returncode}: {result.stderr[-2000:]}")
    return {"seconds": seconds, "exit_code": result.returncode}


def time_run_lines(output_dir: str, until: Sequence[str]) -> Dict[str, float]:
    """Seconds from start to each line of RUN_LINES named in until, then stops the run."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [TFPROD, "run", "--config", CONFIG, "--data-dir", SAMPLE, "--output-dir", output_dir,
         "--set", "trainer.epochs=1"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    seen: Dict[str, float] = {}
    try:
        for line in process.stdout:
            for name in until:
                if name not in seen and line.startswith(RUN_LINES[name]):
                    seen[name] = time.perf_counter() - started
            if len(seen) == len(until):
                break
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the session it leads: the run and its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    missing = [name for name in until if name not in seen]
    if missing:
        raise RuntimeError(f"tfprod run ended before printing {missing}")
    return seen


def summarize(values: List[float]) -> Dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "runs": len(values)}


def run_benchmark(repeats: int, with_import: bool) -> Dict[str, Any]:
    samples: Dict[str, List[float]] = {}
    exit_codes: Dict[str, int] = {}
    until = list(RUN_LINES) if with_import else ["first line", "checks passed"]
    with tempfile.TemporaryDirectory(prefix="cli_bench_") as scratch:
        for repeat in range(repeats):
            for name, (extra, expected) in ERRORS.items():
                measured = time_error(extra, expected, os.path.join(scratch, f"err{repeat}"))
                samples.setdefault(name, []).append(measured["seconds"])
                exit_codes[name] = measured["exit_code"]
            lines = time_run_lines(os.path.join(scratch, f"run{repeat}"), until)
            for name, seconds in lines.items():
                samples.setdefault(f"run: {name}", []).append(seconds)
            print(f"repeat {repeat + 1}/{repeats}: "
                  + ", ".join(f"{name} {values[-1]:.2f}s" for name, values in samples.items()),
                  flush=True)
    figures = {name: summarize(values) for name, values in samples.items()}
    for name, code in exit_codes.items():
        figures[name]["exit_code"] = code
    return figures


def write_results(figures: Dict[str, Any], machine: Dict[str, Any], repeats: int,
                  directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "cli_bench", "date": datetime.date.today().isoformat(),
               "command": f"python -m bench.cli_bench --repeats {repeats}",
               "config": CONFIG, "machine": machine, "figures": figures}
    (directory / "cli_bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# How fast `tfprod` answers",
        "",
        f"`python -m bench.cli_bench --repeats {repeats}` on {machine['cpu']} "
        f"({machine['cores']} cores), {payload['date']}; load average at the end "
        f"{machine['load_average_at_end']}. Each figure is a fresh `tfprod` process timed "
        "from its start (Python start-up and imports included); median of the runs, min and "
        "max beside it.",
        "",
        "| what | median | min | max | exit code |",
        "|---|---|---|---|---|",
    ]
    for name, figure in figures.items():
        lines.append(f"| {name} | {figure['median_s']:.2f} s | {figure['min_s']:.2f} s | "
                     f"{figure['max_s']:.2f} s | {figure.get('exit_code', '')} |")
    lines += ["", "Errors in the config, the paths and the data layout are answered before "
              "TensorFlow, TFX or Beam is imported; the run's first line comes before them too. "
              "The last run line is the cost of those imports, which every real run pays.", ""]
    (directory / "cli_bench.md").write_text("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--skip-import", action="store_true",
                        help="stop each run after 'checks passed' (not timing TF's import)")
    parser.add_argument("--output-dir", help=f"where the results go (default {RESULTS_DIR})")
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args(argv)
    if not os.path.exists(TFPROD):
        parser.error(f"{TFPROD} not found: run `make setup` and use .venv/bin/python")
    figures = run_benchmark(max(1, args.repeats), not args.skip_import)
    print(json.dumps(figures, indent=2))
    if not args.no_write:
        from bench.machine import describe as describe_machine

        write_results(figures, describe_machine(), args.repeats,
                      pathlib.Path(args.output_dir) if args.output_dir else RESULTS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
