"""The `tuning:` section, the TFX Tuner in the pipeline, and a real tuned run end to end."""

import json
import os
import pathlib
import subprocess
import sys

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from tfprod.pipeline import config as config_lib
from tfprod.contract import features
from tfprod.pipeline import checks, trainer, tuning
from tests.conftest import REPO_ROOT, write_idx_dataset

TUNED_CONFIG = REPO_ROOT / "configs" / "mnist_cnn_tuned.yaml"
TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")


def load(*overrides, path=TUNED_CONFIG):
    """Loaded and checked as a run starts (the space is checked against the task)."""
    return checks.load_experiment(str(path) if path else None, list(overrides))


def test_the_demo_config_searches_three_keys():
    experiment = load()
    assert experiment.tuning.enabled
    assert [spec.name for spec in experiment.tuning.space] == [
        "trainer.learning_rate", "trainer.label_smoothing", "model.cnn.dense_units"]
    assert not config_lib.load_config(None).tuning.enabled  # off by default


@pytest.mark.parametrize("overrides, message", [
    (["tuning.space=[]"], r"tuning.space: expected at least one hyperparameter"),
    (["tuning.space=[{name: trainer.learnig_rate, kind: float, min: 0.1, max: 1}]"],
     r"unknown key 'trainer.learnig_rate'"),
    (["tuning.space=[{name: trainer.batch_size, kind: choice, values: [32, 64]}]"],
     r"'trainer.batch_size' cannot be tuned"),
    (["tuning.space=[{name: data.augmentation.translate, kind: float, min: 0, max: 0.2}]"],
     r"'data.augmentation.translate' cannot be tuned"),
    (["tuning.space=[{name: trainer.optimizer, kind: choice, values: [adam, rmsprop]}]"],
     r"tuning.space\[0\].values\[1\]: expected one of 'sgd', 'adam', 'adamw'"),
    (["tuning.space=[{name: trainer.learning_rate, kind: float, min: 0, max: 0.1, sampling: log}]"],
     r"log sampling needs min > 0"),
    (["tuning.space=[{name: trainer.learning_rate, kind: int, min: 1, max: 3}]"],
     r"trainer.learning_rate does not hold int values; use kind float"),
    (["tuning.space=[{name: trainer.learning_rate, kind: float, min: 0.1}]"],
     r"min and max with min < max are needed"),
    (["tuning.space=[{name: trainer.label_smoothing, kind: choice, values: [0.5, 1.5]}]"],
     r"tuning: the values .* give an invalid config: trainer.label_smoothing"),
    (["tuning.objective=val_auc"], r"tuning.objective: 'val_auc' is not a metric"),
    (["tuning.algorithm=hyperband"], r"tuning.trial_epochs: expected an integer >= 2 for hyperband"),
])
def test_invalid_tuning_sections_are_rejected(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        load(*overrides)


def test_candidates_are_checked_against_the_task():
    """A choice that gives a model of another task is refused when the run starts."""
    with pytest.raises(config_lib.ConfigError,
                       match=r"tuning: the values \{'model.name': 'lstm'\} give an invalid "
                             r"config: model.name: model 'lstm' fits text_classification"):
        load("tuning.space=[{name: model.name, kind: choice, values: [cnn, lstm]}]")


def test_the_tuners_values_go_through_the_config_path_setter():
    experiment = load()
    tuned = tuning.apply_hyperparameters(experiment, {"trainer.optimizer": "sgd",
                                                      "model.cnn.dense_units": 64})
    assert tuned.trainer.optimizer is config_lib.Optimizer.SGD
    assert tuned.model.cnn.dense_units == 64
    with pytest.raises(config_lib.ConfigError,
                       match=r"tuning: the values .* give an invalid config: "
                             r"model.cnn.dense_units: expected int, got 'many'"):
        tuning.apply_hyperparameters(experiment, {"model.cnn.dense_units": "many"})


def test_hyperparameters_declare_and_apply_to_the_config():
    experiment = load()
    space = keras_tuner.HyperParameters()
    tuning.declare(space, experiment.tuning)
    learning_rate = space._hps["trainer.learning_rate"][0]
    assert (learning_rate.min_value, learning_rate.max_value, learning_rate.sampling) == (
        0.0003, 0.003, "log")
    # The Tuner's output is a HyperParameters config; the Trainer reads it back.
    space.values.update({"trainer.learning_rate": 0.002, "trainer.label_smoothing": 0.0,
                         "model.cnn.dense_units": 64})
    values = tuning.hyperparameter_values(json.loads(json.dumps(space.get_config())))
    tuned = tuning.apply_hyperparameters(experiment, values)
    assert tuned.trainer.learning_rate == pytest.approx(0.002)
    assert tuned.trainer.label_smoothing == 0.0 and tuned.model.cnn.dense_units == 64
    assert experiment.model.cnn.dense_units == 128  # the original is unchanged
    assert tuning.apply_hyperparameters(experiment, {}) is experiment


@pytest.mark.parametrize("algorithm, oracle", [
    ("random", keras_tuner.oracles.RandomSearchOracle),
    ("hyperband", keras_tuner.oracles.HyperbandOracle),
    ("bayesian", keras_tuner.oracles.BayesianOptimizationOracle),
])
def test_each_algorithm_builds_its_oracle(tmp_path, algorithm, oracle):
    experiment = load(f"tuning.algorithm={algorithm}", "tuning.trial_epochs=3",
                      "tuning.objective=val_loss")
    tuner = tuning.make_tuner(experiment, str(tmp_path))
    assert isinstance(tuner.oracle, oracle)
    assert tuner.oracle.objective.name == "val_loss"
    assert tuner.oracle.objective.direction == "min"
    assert sorted(tuner.oracle.hyperparameters.values) == sorted(
        spec.name for spec in experiment.tuning.space)


def test_best_epoch_metrics_follow_the_objective_direction():
    history = {"loss": [3.0, 1.0, 2.0], "val_accuracy": [0.2, 0.5, 0.7]}
    assert tuning.best_epoch_metrics(history, keras_tuner.Objective("val_accuracy", "max")) == {
        "loss": 2.0, "val_accuracy": 0.7}
    assert tuning.best_epoch_metrics(history, keras_tuner.Objective("loss", "min")) == {
        "loss": 1.0, "val_accuracy": 0.5}


# --------------------------------------------------------------------------
# End to end: `tfprod run` with the Tuner on a small MNIST subset.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, mnist_sample):
    """1,000 train / 200 test images; 2 trials of 6 steps, then 1 epoch of training."""
    train_images, train_labels, test_images, test_labels = mnist_sample
    data_dir = write_idx_dataset(tmp_path_factory.mktemp("tuning_data"), train_images[:1000],
                                 train_labels[:1000], test_images[:200], test_labels[:200])
    output_dir = tmp_path_factory.mktemp("tuned_run")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [TFPROD, "run", "--config", str(TUNED_CONFIG), "--data-dir", str(data_dir),
         "--output-dir", str(output_dir), "--set", "trainer.epochs=1",
         "--set", "tuning.trial_steps_per_epoch=6", "--set", "tuning.max_trials=2",
         "--set", "mobile.enabled=false",
         "--set", "infra.enabled=false"],  # tested in tests/e2e, not here: a server start less
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, json.loads((output_dir / "run_summary.json").read_text())


def _only_file(directory: pathlib.Path, name: str) -> pathlib.Path:
    found = list(directory.rglob(name))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.e2e
def test_the_tuners_best_values_are_the_trainers_config(tuned_run):
    output_dir, summary = tuned_run
    assert summary["status"] == "succeeded"
    assert "Tuner" in summary["component_seconds"]
    pipeline_root = output_dir / "pipeline"
    best = json.loads(_only_file(pipeline_root / "Tuner", "best_hyperparameters.txt").read_text())
    best_values = keras_tuner.HyperParameters.from_config(best).values
    assert set(best_values) == {"trainer.learning_rate", "trainer.label_smoothing",
                                "model.cnn.dense_units"}
    trials = json.loads(_only_file(pipeline_root / "Tuner", "tuner_results.json").read_text())
    assert len(trials) == 2  # completed trials, best first
    assert {key: trials[0][key] for key in best_values} == best_values

    stats = json.loads(_only_file(pathlib.Path(summary["artifacts"]["model_run"]),
                                  trainer.TRAINING_STATS_FILE).read_text())
    assert stats["hyperparameters"] == best_values
    effective = stats["effective_config"]
    assert effective["trainer"]["learning_rate"] == pytest.approx(
        best_values["trainer.learning_rate"])
    assert effective["trainer"]["label_smoothing"] == best_values["trainer.label_smoothing"]
    assert effective["model"]["cnn"]["dense_units"] == best_values["model.cnn.dense_units"]
    saved = config_lib.load_config(
        str(pathlib.Path(summary["artifacts"]["model_run"]) / trainer.EFFECTIVE_CONFIG_FILE))
    assert saved.model.cnn.dense_units == best_values["model.cnn.dense_units"]


@pytest.mark.e2e
def test_augmentation_is_not_in_the_served_model(tuned_run, mnist_sample):
    """The run trained with translate + rotation; the exported model answers the same
    input identically on every call, and as the Keras model does without augmentation."""
    _, summary = tuned_run
    # The Trainer's export (a model this short a run trains may well not be blessed).
    model = tf.saved_model.load(os.path.join(summary["artifacts"]["model"], "Format-Serving"))
    serve = model.signatures[features.SERVING_RAW_SIGNATURE]
    images = tf.constant(mnist_sample[2][:16].astype(np.float32))
    first = serve(**{features.IMAGE_KEY: images})[features.PROBABILITIES_OUTPUT].numpy()
    for _ in range(3):
        again = serve(**{features.IMAGE_KEY: images})[features.PROBABILITIES_OUTPUT].numpy()
        np.testing.assert_array_equal(first, again)
    # A shifted copy of the images gives different outputs: the model does see its input.
    shifted = tf.roll(images, shift=3, axis=2)
    moved = serve(**{features.IMAGE_KEY: shifted})[features.PROBABILITIES_OUTPUT].numpy()
    assert np.max(np.abs(moved - first)) > 1e-3
