"""Two real `tfprod run`s for the report's tests, shared by the session.

- ``good``: the session's shared MNIST run (tests/conftest.py's ``mnist_mobile_run``, also
  read by tests/test_mobile.py): 2,000 train / 300 test images, 2 epochs, blessed, pushed,
  TFLite made in every mode; its report.html is written by the run itself.
- ``bad_data``: 300 / 100 images with some labels out of the schema's range: the run stops
  at AnomaliesGate (exit 3) and still writes a report.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MNIST_CONFIG, REPO_ROOT, load_sample, write_idx_dataset

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
RUN_TIMEOUT_SECONDS = 900
BAD_LABEL = 12  # outside the curated schema's int_domain 0..9


@dataclasses.dataclass
class FinishedRun:
    data_dir: pathlib.Path
    output_dir: pathlib.Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self):
        return json.loads((self.output_dir / "run_summary.json").read_text())

    @property
    def report_path(self) -> pathlib.Path:
        return self.output_dir / "report.html"


def _start(data_dir, output_dir, *overrides):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [TFPROD, "run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
               "--output-dir", str(output_dir)]
    for override in overrides:
        command += ["--set", override]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory, mnist_mobile_run):
    """{"good": FinishedRun, "bad_data": FinishedRun}."""
    train_images, train_labels, test_images, test_labels = load_sample()
    root = tmp_path_factory.mktemp("report_runs")
    bad_labels = np.array(train_labels[:300])
    bad_labels[:5] = BAD_LABEL
    bad_data = write_idx_dataset(root / "bad_data", train_images[:300], bad_labels,
                                 test_images[:100], test_labels[:100])
    started = {"bad_data": (bad_data, root / "bad_out", _start(bad_data, root / "bad_out"))}
    runs = {}
    for name, (data_dir, output_dir, process) in started.items():
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        runs[name] = FinishedRun(data_dir, output_dir, process.returncode, stdout, stderr)
    runs["good"] = FinishedRun(mnist_mobile_run["data_dir"], mnist_mobile_run["output_dir"],
                               mnist_mobile_run["returncode"], mnist_mobile_run["stdout"],
                               mnist_mobile_run["stderr"])
    good = runs["good"]
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    return runs
