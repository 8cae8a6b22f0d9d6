"""The blessing gates: the trivial baselines, the TFMA thresholds built from them, the
run summary's hints when a model is not blessed, and two real `tfprod run`s on MNIST
images where the baseline gate blesses what an impossible absolute threshold does not."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tfprod import errors
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import summary as summary_lib
from tfprod.pipeline import tasks
from tfprod.pipeline.tasks import baselines, classification
from tests.conftest import MNIST_CONFIG, REPO_ROOT, write_idx_dataset

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
RUN_TIMEOUT_SECONDS = 900


# ----- the baselines ---------------------------------------------------------------------

def test_majority_class_accuracy_scores_trains_majority_on_test():
    train = {0: 5, 1: 3, 2: 3}
    test = {0: 2, 1: 6, 2: 2}
    # TRAIN's majority (0) scored on TEST: 2 of 10, although 1 is test's majority.
    assert baselines.majority_class_accuracy(train, test) == pytest.approx(0.2)
    # A tie goes to the smallest label, so the baseline does not depend on dict order.
    assert baselines.majority_class({2: 4, 1: 4, 0: 1}) == 1
    assert baselines.majority_class_accuracy({"b": 2, "a": 2}, {"a": 3, "b": 1}) == 0.75
    # A class the test data lacks scores 0.
    assert baselines.majority_class_accuracy({7: 9}, {1: 4}) == 0.0
    assert dict(baselines.count_labels(np.array([3, 3, 1], np.uint8))) == {3: 2, 1: 1}
    with pytest.raises(ValueError, match="no training labels"):
        baselines.majority_class_accuracy({}, {0: 1})
    with pytest.raises(ValueError, match="no test labels"):
        baselines.majority_class_accuracy({0: 1}, {})


def test_mean_predictor_mae_predicts_the_training_mean_for_every_test_value():
    # Train mean 2.0; test |1-2|, |2-2|, |6-2| -> 5/3.
    assert baselines.mean_predictor_mae([1.0, 2.0, 3.0], [1.0, 2.0, 6.0]) == pytest.approx(5 / 3)
    # Forecast labels [windows, horizon]: every step counts once.
    assert baselines.mean_predictor_mae([0.0, 4.0], [[1.0, 3.0], [2.0, 2.0]]) == pytest.approx(
        0.5)
    with pytest.raises(ValueError, match="needs training and test targets"):
        baselines.mean_predictor_mae([], [1.0])


def test_required_bounds_add_the_margin_and_stay_reachable():
    assert baselines.required_accuracy(0.11, 0.05) == pytest.approx(0.16)
    assert baselines.required_accuracy(0.98, 0.05) == 1.0  # never above 1
    assert baselines.allowed_mae(2.0, 0.05) == pytest.approx(1.9)
    assert baselines.allowed_mae(2.0, 0.0) == 2.0


def _accuracy_threshold(eval_config):
    metric = next(metric for spec in eval_config.metrics_specs for metric in spec.metrics
                  if metric.class_name == "SparseCategoricalAccuracy")
    (per_slice,) = metric.per_slice_thresholds
    return per_slice.threshold


def test_the_classification_eval_config_gates_on_the_baseline_plus_the_margin():
    evaluation = config_lib.EvalConfig(gate=config_lib.Gate.BASELINE, baseline_margin=0.1,
                                       max_accuracy_drop=0.02, accuracy_threshold=0.97)
    threshold = _accuracy_threshold(classification.classification_eval_config(evaluation, 0.3))
    assert threshold.value_threshold.lower_bound.value == pytest.approx(0.4)
    # No regression against the last blessed model applies in both gates.
    assert threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    absolute = dataclasses.replace(evaluation, gate=config_lib.Gate.ABSOLUTE)
    threshold = _accuracy_threshold(classification.classification_eval_config(absolute, 0.3))
    assert threshold.value_threshold.lower_bound.value == pytest.approx(0.97)
    with pytest.raises(ValueError, match="needs the baseline accuracy"):
        classification.classification_eval_config(evaluation)


def test_idx_label_counts_give_the_majority_class_of_the_files(tiny_idx_dir, mnist_sample):
    experiment = config_lib.load_config(str(MNIST_CONFIG), [
        f"data.data_dir={tiny_idx_dir}", "eval.gate=baseline", "eval.baseline_margin=0.05"])
    task = tasks.get_task(experiment)
    train_labels, test_labels = mnist_sample[1][:500], mnist_sample[3][:100]
    majority = np.bincount(train_labels).argmax()
    expected = float(np.mean(test_labels == majority))
    assert task.baseline_metrics(experiment) == {
        "baseline_accuracy": pytest.approx(expected)}
    threshold = _accuracy_threshold(task.eval_config(experiment))
    assert threshold.value_threshold.lower_bound.value == pytest.approx(expected + 0.05)
    # Unreadable labels: a ConfigError that says which gate to use instead.
    experiment.data.data_dir = str(pathlib.Path(tiny_idx_dir) / "missing")
    with pytest.raises(config_lib.ConfigError, match=r"--set eval.gate=absolute"):
        task.eval_config(experiment)


def test_idx_preflight_takes_the_number_of_classes_from_the_labels(tiny_idx_dir, mnist_sample):
    """data.num_classes: null on IDX data: the training labels (class ids 0..K-1) set it."""
    experiment = config_lib.load_config(str(MNIST_CONFIG), [
        f"data.data_dir={tiny_idx_dir}", "data.num_classes=null"])
    tasks.get_task(experiment).preflight(experiment)
    assert experiment.data.num_classes == int(mnist_sample[1][:500].max()) + 1 == 10
    tfds = config_lib.load_config(str(MNIST_CONFIG), [
        "data.source=tfds", "data.tfds_name=mnist:3.0.1", f"data.tfds_data_dir={tiny_idx_dir}",
        "data.num_classes=null"])
    with pytest.raises(config_lib.ConfigError, match=r"--set data.num_classes=K"):
        tasks.get_task(tfds).preflight(tfds)


def test_the_gate_keys_are_checked_and_absolute_stays_the_default():
    experiment = config_lib.load_config(str(MNIST_CONFIG))
    assert experiment.eval.gate == config_lib.Gate.ABSOLUTE
    # Left out of the compact form at its default: compiled pipelines stay the same.
    assert "gate" not in config_lib.to_dict(experiment, compact=True)["eval"]
    with pytest.raises(config_lib.ConfigError, match=r"eval.gate"):
        config_lib.load_config(str(MNIST_CONFIG), ["eval.gate=majority"])
    with pytest.raises(config_lib.ConfigError, match=r"eval.baseline_margin"):
        config_lib.load_config(str(MNIST_CONFIG), ["eval.baseline_margin=1.5"])


def test_kubeflow_settles_the_gate_from_the_local_data_or_refuses(tmp_path, tiny_idx_dir,
                                                                 mnist_sample):
    """On Kubeflow the data directory is a run-time parameter: the compiler takes the
    baseline (and a null class count) from the local copy, as plain values, or stops."""
    from tfprod.kubeflow import compiler

    experiment = config_lib.load_config(str(MNIST_CONFIG), [
        f"data.data_dir={tiny_idx_dir}", "eval.gate=baseline", "eval.baseline_margin=0.1"])
    settled = compiler.settle_data_decisions(experiment)
    majority = np.bincount(mnist_sample[1][:500]).argmax()
    expected = float(np.mean(mnist_sample[3][:100] == majority)) + 0.1
    assert settled.eval.gate == config_lib.Gate.ABSOLUTE
    assert settled.eval.accuracy_threshold == pytest.approx(expected)
    assert experiment.eval.gate == config_lib.Gate.BASELINE  # the caller's config untouched
    # Nothing to settle: the same experiment (the golden MNIST spec does not change).
    plain = config_lib.load_config(str(MNIST_CONFIG))
    assert compiler.settle_data_decisions(plain) is plain
    # Text with data.num_classes null: counted from the local labels.
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    (text_dir / "train.tsv").write_text("sentence\tlabel\na\tx\nb\ty\nc\tz\n")
    (text_dir / "test.tsv").write_text("sentence\tlabel\nd\tx\n")
    text = config_lib.load_config(str(REPO_ROOT / "configs" / "sst2_lstm.yaml"),
                                  [f"data.data_dir={text_dir}"])
    assert compiler.settle_data_decisions(text).data.num_classes == 3
    # Unreadable local data: a ConfigError of tfprod.errors (exit 2) naming the --set.
    experiment.data.data_dir = str(tmp_path / "missing")
    with pytest.raises(errors.ConfigError, match=r"--set eval.gate=absolute"):
        compiler.compile_pipeline(experiment)
    text.data.data_dir = str(tmp_path / "missing")
    with pytest.raises(errors.ConfigError, match=r"--set data.num_classes=K"):
        compiler.compile_pipeline(text)


# ----- what the summary says when a model is not blessed ----------------------------------

def _missed(metric, value, bound, is_diff=False):
    return summary_lib.MissedThreshold(metric, "overall", value, is_diff, bound)


def test_an_absolute_miss_names_the_threshold_and_the_baseline_gate():
    experiment = config_lib.load_config(str(MNIST_CONFIG), ["eval.accuracy_threshold=0.97"])
    hints = summary_lib.bless_hints(experiment, [_missed("accuracy", 0.914, 0.97)],
                                    {"baseline_accuracy": 0.1})
    assert hints[0].startswith("--set eval.accuracy_threshold=0.91:")
    assert "scores 0.1000" in hints[0]
    assert hints[1].startswith("--set eval.gate=baseline:")
    # Below the baseline plus the margin, the baseline gate is not offered.
    hints = summary_lib.bless_hints(experiment, [_missed("accuracy", 0.12, 0.97)],
                                    {"baseline_accuracy": 0.1})
    assert not any("eval.gate=baseline" in hint for hint in hints)


def test_a_baseline_miss_offers_a_smaller_margin_only_when_the_model_beats_it():
    experiment = config_lib.load_config(str(MNIST_CONFIG), [
        "eval.gate=baseline", "eval.baseline_margin=0.2"])
    (hint,) = summary_lib.bless_hints(experiment, [_missed("accuracy", 0.375, 0.5)],
                                      {"baseline_accuracy": 0.3})
    assert hint.startswith("--set eval.baseline_margin=0.07:")
    (hint,) = summary_lib.bless_hints(experiment, [_missed("accuracy", 0.25, 0.5)],
                                      {"baseline_accuracy": 0.3})
    assert hint.startswith("none that is honest") and "0.3000" in hint
    (hint,) = summary_lib.bless_hints(experiment, [_missed("accuracy", -0.034, -0.01, True)], {})
    assert hint.startswith("--set eval.max_accuracy_drop=0.04:")


def test_forecaster_hints_use_the_mae_and_the_training_mean():
    experiment = config_lib.load_config(str(REPO_ROOT / "configs" / "etth1_lstm.yaml"))
    hints = summary_lib.bless_hints(experiment, [_missed("mae", 1.234, 1.0)],
                                    {"mean_baseline_mae": 3.0})
    assert hints[0].startswith("--set eval.mae_threshold=1.24:")
    assert hints[1].startswith("--set eval.gate=baseline:")
    experiment.eval.gate = config_lib.Gate.BASELINE
    experiment.eval.baseline_margin = 0.5
    (hint,) = summary_lib.bless_hints(experiment, [_missed("mae", 2.4, 1.5)],
                                      {"mean_baseline_mae": 3.0})
    assert hint.startswith("--set eval.baseline_margin=0.19:")  # 1 - 2.4/3 = 0.2, floored


def test_the_printed_summary_lists_the_hints():
    summary = summary_lib.RunSummary(
        experiment="e", output_dir="/tmp/e", blessed=False,
        validation_failures=["accuracy (overall) = 0.9140; required >= 0.9700"],
        bless_hints=["--set eval.gate=baseline: ..."])
    text = summary.format()
    assert "What would change that:\n  --set eval.gate=baseline" in text


# ----- end to end ------------------------------------------------------------------------

def _start(data_dir, output_dir, *overrides):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [TFPROD, "run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
               "--output-dir", str(output_dir), "--set", "trainer.epochs=2",
               "--set", "trainer.batch_size=32", "--set", "mobile.enabled=false",
               # The gates are under test here, not the InfraValidator (tests/e2e runs it for
               # every task): skipping it saves a server start per run.
               "--set", "infra.enabled=false"]
    for override in overrides:
        command += ["--set", override]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory, mnist_sample):
    """The same data and training twice, at once: an absolute threshold no model reaches,
    and the baseline gate. 1,200 train / 200 test MNIST images, 2 epochs (about 70 steps:
    fewer leave the CNN near the majority class), no TFLite."""
    train_images, train_labels, test_images, test_labels = mnist_sample
    root = tmp_path_factory.mktemp("gate_runs")
    data_dir = write_idx_dataset(root / "data", train_images[:1200], train_labels[:1200],
                                 test_images[:200], test_labels[:200])
    processes = {
        "absolute": _start(data_dir, root / "absolute", "eval.accuracy_threshold=0.999"),
        "baseline": _start(data_dir, root / "baseline", "eval.gate=baseline"),
    }
    runs = {}
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
        summary = json.loads((root / name / "run_summary.json").read_text())
        runs[name] = (summary, stdout)
    majority = np.bincount(train_labels[:1200]).argmax()
    return runs, float(np.mean(test_labels[:200] == majority))


@pytest.mark.e2e
def test_the_baseline_gate_blesses_what_an_impossible_threshold_does_not(gate_runs):
    runs, majority_accuracy = gate_runs
    absolute, absolute_stdout = runs["absolute"]
    baseline, baseline_stdout = runs["baseline"]
    # Both runs record the baseline the labels give, and the gate they used.
    for summary in (absolute, baseline):
        assert summary["metrics"]["baseline_accuracy"] == pytest.approx(majority_accuracy,
                                                                        abs=1e-6)
    assert absolute["gate"]["kind"] == "absolute" and absolute["gate"]["required"] == 0.999
    assert baseline["gate"] == {
        "kind": "baseline", "margin": 0.05, "metric": "accuracy",
        "required": pytest.approx(majority_accuracy + 0.05, abs=1e-6),
        "baseline_accuracy": pytest.approx(majority_accuracy, abs=1e-6)}
    # Two epochs on 1,200 images: far above the majority class (0.92 when tried outside the
    # pipeline), below 0.999.
    assert absolute["metrics"]["accuracy"] > majority_accuracy + 0.2
    assert absolute["blessed"] is False and absolute["pushed_model_dir"] is None
    assert baseline["blessed"] is True and baseline["pushed_model_dir"]
    # The not-blessed run says which --set would change that, and what the baseline scored.
    assert "Blessed: NO" in absolute_stdout
    assert "--set eval.gate=baseline" in absolute_stdout
    assert "--set eval.accuracy_threshold=" in absolute_stdout
    assert f"scores {majority_accuracy:.4f}" in absolute_stdout
    assert absolute["bless_hints"] and "Blessed: yes" in baseline_stdout
