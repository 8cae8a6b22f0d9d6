"""One `tfprod run` of a config, as the benchmarks time it: the command, its result, the run
summary and the Trainer's training_stats.json, and the load average around it."""

import dataclasses
import datetime
import glob
import json
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Sequence, Tuple

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class PipelineRun:
    command: List[str]
    exit_code: int
    summary: Dict[str, Any]
    stats: Dict[str, Any]
    started: datetime.datetime
    load_before: Tuple[float, float, float]
    load_after: Tuple[float, float, float]

    def display_command(self, replacements: Dict[str, str]) -> str:
        """The command as a user would type it, with machine paths replaced (e.g. OUT/x)."""
        text = " ".join(shlex.quote(part) for part in ["tfprod"] + self.command[1:])
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text


def run_config(config: str, data_dir: str, output_dir: str, overrides: Sequence[str],
               name: str) -> PipelineRun:
    """Runs `tfprod run --config config` on data_dir into output_dir, with --set overrides.

    Raises:
      RuntimeError: the run wrote no run_summary.json (its output tail is in the message).
    """
    command = [os.path.join(os.path.dirname(sys.executable), "tfprod"), "run", "--config",
               config, "--data-dir", data_dir, "--output-dir", output_dir]
    for override in overrides:
        command += ["--set", override]
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    load_after = os.getloadavg()
    summary_path = os.path.join(output_dir, "run_summary.json")
    if not os.path.exists(summary_path):
        raise RuntimeError(f"{name}: no run summary; exit {result.returncode}\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    with open(summary_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    stats_files = glob.glob(os.path.join(summary.get("artifacts", {}).get("model_run", ""),
                                         "training_stats.json"))
    stats = {}
    if stats_files:
        with open(stats_files[0], encoding="utf-8") as handle:
            stats = json.load(handle)
    return PipelineRun(command, result.returncode, summary, stats, started, load_before,
                       load_after)
