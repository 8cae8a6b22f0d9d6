"""Multi-process distributed training on 127.0.0.1 (real gRPC collectives, real TFX).

- `tfprod run --set runtime.strategy=multi_worker_mirrored --set runtime.num_workers=2` on
  2,000 MNIST images: two worker processes train, the chief exports, the pipeline
  evaluates and pushes; the pushed model loads and serves the usual signatures.
- Kill-and-resume: a 2-worker job on that run's Transform output; worker 1 is SIGKILLed
  after epoch 0's backup, the launcher restarts the whole job, which resumes at epoch > 0.
- Equivalence: mirrored over 2 logical CPU devices vs one device (tests/equivalence_run.py).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tfprod.pipeline import config as config_lib
from tfprod.contract import features
from tfprod.pipeline import distribute, multiworker
from tests.conftest import MNIST_CONFIG, REPO_ROOT, write_idx_dataset

pytestmark = pytest.mark.e2e

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
RUN_TIMEOUT_SECONDS = 900
# One epoch of 57 steps: no dropout, so the small CNN passes the 0.5 accuracy gate.
SMALL_MODEL = ["model.cnn.filters=[8,16]", "model.cnn.convs_per_block=1",
               "model.cnn.dense_units=32", "model.cnn.conv_dropout=0",
               "model.cnn.dense_dropout=0"]


def subprocess_environ():
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def multiworker_run(tmp_path_factory, mnist_sample):
    """One `tfprod run` with 2 local workers on 2,000 train / 500 test images, 1 epoch."""
    train_images, train_labels, test_images, test_labels = mnist_sample
    data_dir = write_idx_dataset(tmp_path_factory.mktemp("mnist_2000"), train_images[:2000],
                                 train_labels[:2000], test_images[:500], test_labels[:500])
    output_dir = tmp_path_factory.mktemp("multiworker_run")
    overrides = ["runtime.strategy=multi_worker_mirrored", "runtime.num_workers=2",
                 "runtime.worker_timeout_seconds=600", "trainer.epochs=1",
                 "trainer.batch_size=16", "trainer.learning_rate=0.003",
                 "eval.accuracy_threshold=0.5", "mobile.enabled=false",
                 "infra.enabled=false",  # the InfraValidator is tested in tests/e2e
                 *SMALL_MODEL]
    args = [TFPROD, "run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
            "--output-dir", str(output_dir)]
    for override in overrides:
        args += ["--set", override]
    result = subprocess.run(args, cwd=REPO_ROOT, env=subprocess_environ(), capture_output=True,
                            text=True, timeout=RUN_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return output_dir, result


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def test_local_multi_worker_run_trains_evaluates_and_pushes(multiworker_run, mnist_sample):
    import tensorflow as tf

    output_dir, result = multiworker_run
    summary = json.loads((output_dir / "run_summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["blessed"], result.stdout[-2000:]
    # Both workers ran and streamed their output through the Trainer.
    assert "[worker 0]" in result.stdout and "[worker 1]" in result.stdout
    model_run = only(pathlib.Path(output_dir).rglob("training_stats.json")).parent
    stats = json.loads((model_run / "training_stats.json").read_text())
    assert stats["workers"] == 2 and stats["replicas"] == 2
    assert stats["strategy"] == "CollectiveAllReduceStrategy"
    # trainer.batch_size is per replica: global batch 32, linear rule doubles the rate.
    assert stats["batch_size"] == 32 and stats["learning_rate"] == pytest.approx(6e-3)
    assert stats["steps_per_epoch"] == -(-stats["train_examples"] // 32)
    progress = distribute.read_progress(str(model_run))
    assert sorted(progress) == ["worker-0", "worker-1"]
    for record in progress.values():
        assert [start["initial_epoch"] for start in record["starts"]] == [0]
        assert [epoch["epoch"] for epoch in record["epochs_done"]] == [0]
    # Only the chief (worker 0) wrote TensorBoard logs: event files carry the writer's pid.
    events = [p.name for p in model_run.rglob("events.out.tfevents.*")]
    chief_pid = str(progress["worker-0"]["starts"][0]["pid"])
    assert events and all(name.split(".")[-3] == chief_pid for name in events), events
    logs = sorted(p.name for p in (model_run / multiworker.JOB_SUBDIR).glob("*.log"))
    assert logs == ["attempt-0-worker-0.log", "attempt-0-worker-1.log"]
    # The transformed train split is a single file: DATA sharding made it work on 2 workers.
    train_files = list(pathlib.Path(output_dir).rglob("transformed_examples/*/Split-train/*"))
    assert len(train_files) == 1, train_files

    model = tf.saved_model.load(summary["pushed_model_dir"])
    assert {features.SERVING_DEFAULT_SIGNATURE, features.SERVING_RAW_SIGNATURE,
            features.TRANSFORM_SIGNATURE} <= set(model.signatures)
    signature = model.signatures[features.SERVING_RAW_SIGNATURE]
    (input_name,) = signature.structured_input_signature[1]
    images, labels = mnist_sample[2][:200], mnist_sample[3][:200]
    outputs = signature(**{input_name: tf.constant(images, tf.float32)})
    probabilities = outputs[features.PROBABILITIES_OUTPUT].numpy()
    assert probabilities.shape == (200, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    assert accuracy > 0.5, accuracy  # the Evaluator blessed it at >= 0.5 too


class KillAfterEpoch:
    """Watches the progress files of attempt 0 and SIGKILLs worker 1 once every worker has
    finished (and backed up) `epoch`."""

    def __init__(self, model_run_dir, epoch, runtime):
        self.model_run_dir, self.epoch, self.runtime = model_run_dir, epoch, runtime
        self.killed_after = None

    def __call__(self, attempt, workers):
        if attempt == 0:
            threading.Thread(target=self.watch, args=(workers,), daemon=True).start()

    def watch(self, workers):
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and workers[1].process.poll() is None:
            progress = distribute.read_progress(self.model_run_dir, self.runtime)
            done = [max((e["epoch"] for e in progress.get(f"worker-{i}", {}).get(
                "epochs_done", [])), default=-1) for i in range(len(workers))]
            if min(done) >= self.epoch:
                workers[1].process.send_signal(signal.SIGKILL)
                self.killed_after = done
                return
            time.sleep(0.05)


def test_killed_worker_job_restarts_and_resumes_from_the_backup(multiworker_run, tmp_path):
    output_dir, _ = multiworker_run
    transformed = only(pathlib.Path(output_dir).rglob("transformed_examples/*/Split-train")).parent
    graph = only(p for p in pathlib.Path(output_dir).rglob("transform_graph/*")
                 if (p / "transform_fn").is_dir())
    experiment = config_lib.load_config(str(MNIST_CONFIG), [
        "runtime.strategy=multi_worker_mirrored", "runtime.num_workers=2",
        "runtime.worker_restarts=1", "runtime.worker_timeout_seconds=600",
        "trainer.epochs=4", "trainer.batch_size=64", "trainer.early_stopping_patience=0",
        "model.cnn.filters=[4]", "model.cnn.convs_per_block=1", "model.cnn.dense_units=8"])
    fn_args = multiworker.JobFnArgs(
        train_files=[str(transformed / "Split-train" / "*")],
        eval_files=[str(transformed / "Split-eval" / "*")],
        transform_output=str(graph), serving_model_dir=str(tmp_path / "serving_model"),
        model_run_dir=str(tmp_path / "model_run"),
        custom_config={"experiment": config_lib.to_dict(experiment)})
    killer = KillAfterEpoch(fn_args.model_run_dir, 0, experiment.runtime)
    result = multiworker.run_local_job(fn_args, experiment, on_attempt=killer, sink=None)

    assert killer.killed_after is not None, "worker 1 finished before it could be killed"
    assert result.attempts == 2
    assert result.exit_codes[0][1] == -signal.SIGKILL and result.exit_codes[1] == [0, 0]
    stats = json.loads((tmp_path / "model_run" / "training_stats.json").read_text())
    steps_per_epoch = stats["steps_per_epoch"]
    progress = distribute.read_progress(fn_args.model_run_dir, experiment.runtime)
    for task in ("worker-0", "worker-1"):
        first, second = progress[task]["starts"]
        assert (first["initial_epoch"], first["initial_step"]) == (0, 0)
        # Resumed from the backup of the last finished epoch, not from step 0.
        resumed_epoch = second["initial_epoch"]
        assert resumed_epoch >= 1 and resumed_epoch == min(killer.killed_after) + 1
        assert second["initial_step"] == resumed_epoch * steps_per_epoch
        epochs = [epoch["epoch"] for epoch in progress[task]["epochs_done"]]
        assert epochs[-1] == 3 and epochs.count(resumed_epoch) == 1
    print(f"resumed at epoch {resumed_epoch}, step {second['initial_step']}")
    # The restarted job's chief exported the model; BackupAndRestore removed its backup.
    assert (tmp_path / "serving_model" / "saved_model.pb").is_file()
    backup = tmp_path / "model_run" / distribute.BACKUP_SUBDIR
    assert not [path for path in backup.rglob("*") if path.is_file()]
    assert stats["epochs_run"] == 4 - resumed_epoch


def test_mirrored_on_two_cpus_matches_one_device(tmp_path):
    """Same seed, data and global batch (32): per-step losses within 1e-4 and final weights
    within 1e-5 (observed: 3e-6 and 3e-8; float32 sums in a different order)."""
    output = tmp_path / "equivalence.json"
    result = subprocess.run([sys.executable, "-m", "tests.equivalence_run", str(output)],
                            cwd=REPO_ROOT, env=subprocess_environ(), capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["replicas"] == 2
    one, mirrored = report["one_device_losses"], report["mirrored_losses"]
    assert len(one) == len(mirrored) == report["steps"]
    np.testing.assert_allclose(mirrored, one, atol=1e-4)
    assert one[-1] < one[0]  # it trained
    assert report["max_weight_difference"] < 1e-5 < report["max_weight"]
