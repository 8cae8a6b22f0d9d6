"""Hyperparameter search with the TFX Tuner (KerasTuner), driven by the `tuning:` section.

Each entry of `tuning.space` names a config key (e.g. `trainer.learning_rate`) and its
range. A trial applies the drawn values to the experiment config, builds and compiles
the model exactly as the Trainer does (pipeline.trainer.build_and_compile) and fits it
for the per-trial budget. The Tuner writes the best values (a KerasTuner
HyperParameters config); the Trainer gets them as fn_args.hyperparameters
(Trainer(hyperparameters=tuner.outputs["best_hyperparameters"])) and applies them to
its config with `apply_hyperparameters`, which sets each value with the config's one
path setter (config.set_value, as `--set` does).
"""

import copy
import dataclasses
from typing import Any, Callable, Dict, Optional

from tfprod import configlib
from tfprod.pipeline import config as config_lib

ConfigError = config_lib.ConfigError
TUNER_FN = "tfprod.pipeline.tuning.tuner_fn"
# Keys a trial cannot change: the input pipeline is built once for all trials, and the
# budget and the search itself come from the tuning section.
FIXED_KEYS = ("trainer.batch_size", "trainer.epochs", "trainer.max_steps",
              "trainer.shuffle_buffer", "trainer.seed")
TUNABLE_SECTIONS = ("trainer.", "model.")
# Monitored values that get better as they fall.
LOWER_IS_BETTER = ("loss", "mae", "mse")


def _scalar_type(key: str) -> Any:
    scalar = configlib.scalar_type(config_lib.field_type(key))  # ConfigError: unknown key
    if scalar is None:
        raise ConfigError(f"tuning.space: {key} is not a number, flag or name, so it cannot "
                          "be searched", key="tuning.space")
    return scalar


def validate_tuning(experiment: config_lib.ExperimentConfig, task_name: str,
                    check_candidate: Optional[Callable[[config_lib.ExperimentConfig], None]]
                    = None) -> None:
    """Checks the tuning section against the experiment and its task.

    The section's own numbers are the schema's (config.TuningConfig.validate). Here: the
    objective is a metric of the task (only when tuning is enabled: the default,
    val_accuracy, suits classifiers, and a forecaster's config need not name one it never
    uses), and each search key is tunable and each choice, and each end of each range,
    gives a valid experiment on its own (the schema's checks, then check_candidate).

    Args:
      experiment: the schema-valid experiment.
      task_name: the task of its data.
      check_candidate: further checks of each candidate experiment (e.g. the model and
        recipes against the task, tfprod.pipeline.checks).
    """
    from tfprod.pipeline import recipe_checks

    tuning = experiment.tuning
    allowed = recipe_checks.monitorable_metrics(task_name)
    if tuning.enabled and tuning.objective not in allowed:
        raise ConfigError(f"tuning.objective: {tuning.objective!r} is not a metric of task "
                          f"{task_name}; choose one of {', '.join(allowed)}",
                          key="tuning.objective")
    names = [spec.name for spec in tuning.space]
    configlib.check(len(names) == len(set(names)), "tuning.space", "each key at most once",
                    names)
    for index, spec in enumerate(tuning.space):
        _validate_spec(spec, f"tuning.space[{index}]")
    # Checked without the tuning section, which would check itself again.
    untuned = dataclasses.replace(experiment, tuning=config_lib.TuningConfig())
    for spec in tuning.space:
        for value in _candidate_values(spec):
            candidate = apply_hyperparameters(untuned, {spec.name: value})
            if check_candidate is not None:
                try:
                    check_candidate(candidate)
                except ConfigError as error:
                    raise _invalid({spec.name: value}, error) from None


def _candidate_values(spec: config_lib.SearchSpace) -> list:
    if spec.kind == config_lib.SearchKind.CHOICE:
        return list(spec.values)
    numeric = int if spec.kind == config_lib.SearchKind.INT else float
    return [numeric(spec.min), numeric(spec.max)]


def _validate_spec(spec: config_lib.SearchSpace, where: str) -> None:
    if not spec.name.startswith(TUNABLE_SECTIONS) or spec.name in FIXED_KEYS:
        raise ConfigError(
            f"{where}.name: {spec.name!r} cannot be tuned; search keys under "
            f"{' or '.join(TUNABLE_SECTIONS)} other than {', '.join(FIXED_KEYS)}",
            key="tuning.space")
    field_type = _scalar_type(spec.name)
    if spec.kind == config_lib.SearchKind.CHOICE:
        if not spec.values:
            raise ConfigError(f"{where}.values: a choice needs a non-empty list of values",
                              key="tuning.space")
        for position, value in enumerate(spec.values):
            configlib.coerce(value, field_type, f"{where}.values[{position}]")
        return
    numeric = int if spec.kind == config_lib.SearchKind.INT else float
    if field_type is not numeric:
        suggestion = field_type.__name__ if field_type in (int, float) else "choice"
        raise ConfigError(f"{where}.kind: {spec.name} does not hold {numeric.__name__} "
                          f"values; use kind {suggestion}", key="tuning.space")
    if spec.min is None or spec.max is None or not spec.min < spec.max:
        raise ConfigError(f"{where}: min and max with min < max are needed for kind "
                          f"{spec.kind.value}, got min={spec.min!r} max={spec.max!r}",
                          key="tuning.space")
    if spec.sampling not in ("linear", "log"):
        raise ConfigError(f"{where}.sampling: expected linear or log, got {spec.sampling!r}",
                          key="tuning.space")
    if spec.sampling == "log" and spec.min <= 0:
        raise ConfigError(f"{where}.sampling: log sampling needs min > 0, got {spec.min!r}",
                          key="tuning.space")
    if spec.step is not None and spec.step <= 0:
        raise ConfigError(f"{where}.step: expected a positive number, got {spec.step!r}",
                          key="tuning.space")


def declare(hyperparameters, tuning: config_lib.TuningConfig) -> None:
    """Declares tuning.space on a keras_tuner.HyperParameters object."""
    for spec in tuning.space:
        if spec.kind == config_lib.SearchKind.CHOICE:
            hyperparameters.Choice(spec.name, list(spec.values))
        elif spec.kind == config_lib.SearchKind.INT:
            hyperparameters.Int(spec.name, int(spec.min), int(spec.max),
                                step=int(spec.step) if spec.step else None,
                                sampling=spec.sampling)
        else:
            hyperparameters.Float(spec.name, float(spec.min), float(spec.max), step=spec.step,
                                  sampling=spec.sampling)


def hyperparameter_values(hyperparameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """{config key: value} from fn_args.hyperparameters (a HyperParameters config) or None."""
    if not hyperparameters:
        return {}
    import keras_tuner

    return dict(keras_tuner.HyperParameters.from_config(hyperparameters).values)


def _invalid(values: Dict[str, Any], error: ConfigError) -> ConfigError:
    return ConfigError(f"tuning: the values {values} give an invalid config: {error}",
                       key="tuning.space")


def apply_hyperparameters(experiment: config_lib.ExperimentConfig,
                          values: Dict[str, Any]) -> config_lib.ExperimentConfig:
    """A new experiment config with each dotted key set to its value, schema-validated.

    Each value goes through the config's path setter (config.set_value), as `--set` does;
    the original experiment is unchanged.

    Raises:
      ConfigError: an unknown key or a value the schema refuses, with the values named.
    """
    if not values:
        return experiment
    tuned = copy.deepcopy(experiment)
    try:
        for key, value in values.items():
            config_lib.set_value(tuned, key, value)
        tuned.validate()
    except ConfigError as error:
        raise _invalid(values, error) from None
    return tuned


def objective(tuning: config_lib.TuningConfig):
    """The keras_tuner.Objective for tuning.objective, with its direction."""
    import keras_tuner

    name = tuning.objective
    direction = "min" if name.split("val_")[-1] in LOWER_IS_BETTER else "max"
    return keras_tuner.Objective(name, direction=direction)


def best_epoch_metrics(history: Dict[str, list], objective) -> Dict[str, float]:
    """The metrics of the epoch that is best by the objective (a keras_tuner.Objective)."""
    scores = history[objective.name]
    pick = min if objective.direction == "min" else max
    best = pick(range(len(scores)), key=lambda epoch: scores[epoch])
    return {name: float(values[best]) for name, values in history.items()}


class _TfKerasTrials:
    """Runs each trial with a tf-keras model.

    KerasTuner 1.4.8 imports Keras 3 (`import keras`) whenever it is installed, whatever
    TF_USE_LEGACY_KERAS says, and its default run_trial checks the built model and the
    fit History against Keras 3 classes, so it rejects the pipeline's tf-keras models.
    Here a trial builds the model, fits it and reports the best epoch's metrics as a
    dict, which KerasTuner's oracles take as they are. Hyperband's per-trial epochs
    (`tuner/epochs`) are honoured; its trials train from scratch (no warm start from an
    earlier bracket's checkpoint).
    """

    def run_trial(self, trial, *fit_args, **fit_kwargs):
        import tensorflow as tf

        hyperparameters = trial.hyperparameters
        if "tuner/epochs" in hyperparameters.values:
            fit_kwargs["epochs"] = hyperparameters.values["tuner/epochs"]
        tf.keras.backend.clear_session()
        model = self.hypermodel.build(hyperparameters)
        history = model.fit(*fit_args, **fit_kwargs)
        return best_epoch_metrics(history.history, self.oracle.objective)


def _tuner_classes():
    import keras_tuner

    class RandomSearch(_TfKerasTrials, keras_tuner.RandomSearch):
        """Random search over tf-keras trials."""

    class Hyperband(_TfKerasTrials, keras_tuner.Hyperband):
        """Hyperband over tf-keras trials."""

    class BayesianOptimization(_TfKerasTrials, keras_tuner.BayesianOptimization):
        """Bayesian optimization over tf-keras trials."""

    return {config_lib.TuningAlgorithm.RANDOM: RandomSearch,
            config_lib.TuningAlgorithm.HYPERBAND: Hyperband,
            config_lib.TuningAlgorithm.BAYESIAN: BayesianOptimization}


def make_tuner(experiment: config_lib.ExperimentConfig, directory: str,
               project_name: str = "tfprod_tuning"):
    """The KerasTuner tuner for tuning.algorithm, over tuning.space."""
    import keras_tuner

    from tfprod.pipeline import trainer

    tuning = experiment.tuning
    total_steps = tuning.trial_epochs * tuning.trial_steps_per_epoch

    def build(hyperparameters):
        trial_experiment = apply_hyperparameters(experiment, dict(hyperparameters.values))
        return trainer.build_and_compile(trial_experiment, total_steps)

    space = keras_tuner.HyperParameters()
    declare(space, tuning)
    common = dict(hypermodel=build, objective=objective(tuning), hyperparameters=space,
                  tune_new_entries=False, directory=directory, project_name=project_name,
                  seed=experiment.trainer.seed, overwrite=True)
    tuner_class = _tuner_classes()[tuning.algorithm]
    if tuning.algorithm == config_lib.TuningAlgorithm.HYPERBAND:
        return tuner_class(max_epochs=tuning.trial_epochs, factor=3, **common)
    return tuner_class(max_trials=tuning.max_trials, **common)


def fit_budget(tuning: config_lib.TuningConfig) -> Dict[str, Any]:
    """The per-trial fit arguments (without the data)."""
    budget: Dict[str, Any] = {"epochs": tuning.trial_epochs,
                              "steps_per_epoch": tuning.trial_steps_per_epoch, "verbose": 2}
    if tuning.trial_eval_steps is not None:
        budget["validation_steps"] = tuning.trial_eval_steps
    return budget


def tuner_fn(fn_args: Any):
    """TFX Tuner entry point: the tuner and the fit arguments of each trial."""
    import tensorflow_transform as tft
    from tfx import v1 as tfx

    from tfprod.pipeline import tasks, trainer

    experiment = trainer.experiment_from_custom_config(fn_args.custom_config)
    task = tasks.get_task(experiment)
    settings = experiment.trainer
    transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    train_dataset = trainer.make_dataset(
        fn_args.train_files, transform_output, settings.batch_size, shuffle=True,
        seed=settings.seed, shuffle_buffer=settings.shuffle_buffer, repeat=True, task=task)
    train_dataset = task.augment_dataset(train_dataset, experiment)
    eval_dataset = trainer.make_dataset(
        fn_args.eval_files, transform_output, settings.batch_size, shuffle=False,
        seed=settings.seed, shuffle_buffer=settings.shuffle_buffer, repeat=False, task=task)
    tuner = make_tuner(experiment, fn_args.working_dir)
    return tfx.components.TunerFnResult(
        tuner=tuner,
        fit_kwargs={"x": train_dataset, "validation_data": eval_dataset,
                    **fit_budget(experiment.tuning)})


def tuner_component(experiment: config_lib.ExperimentConfig, transform, schema_gen,
                    custom_config: Dict[str, Any]):
    """The TFX Tuner on the transformed examples (train split), scored on eval."""
    from tfx import v1 as tfx

    from tfprod.pipeline import ingestion

    tuning = experiment.tuning
    return tfx.components.Tuner(
        tuner_fn=TUNER_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(
            splits=[ingestion.TRAIN_SPLIT],
            num_steps=tuning.trial_epochs * tuning.trial_steps_per_epoch),
        eval_args=tfx.proto.EvalArgs(splits=[ingestion.EVAL_SPLIT],
                                     num_steps=tuning.trial_eval_steps),
        custom_config=custom_config)
