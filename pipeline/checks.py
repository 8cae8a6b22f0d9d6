"""The checks of an experiment that reach beyond its schema, run once where a run starts.

tfprod.pipeline.config validates the schema (each section, no TensorFlow). What needs
other packages is checked here, from above: that model.name is registered and fits the
task of the data (the registry imports TensorFlow), that the recipes suit the task, and
that the tuning space names tunable keys whose every candidate gives a valid experiment.

check_experiment runs once per run, where it starts: local_runner.preflight_check (`tfprod
run`), kubeflow.compiler.compile_pipeline and the Kubeflow train worker. The Trainer, the
Tuner and the local multi-worker job get the checked config serialized and only parse it.
"""

from typing import Optional, Sequence

from tfprod import configlib
from tfprod.models import registry
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import recipes, tasks, tuning

ConfigError = config_lib.ConfigError


def check_model(experiment: config_lib.ExperimentConfig, task_name: str) -> None:
    """model.name is registered and fits the task.

    Raises:
      ConfigError: naming model.name, the models registered (for the task).
    """
    name = experiment.model.name
    if name not in registry.registered_names():
        raise ConfigError(f"model.name: unknown model '{name}'; registered models are "
                          f"{', '.join(registry.registered_names())}", key="model.name")
    fits = registry.model_tasks(name)
    if task_name not in fits:
        raise ConfigError(
            f"model.name: model '{name}' fits {', '.join(fits) or 'no task'}, not {task_name} "
            f"(the task of data.format {experiment.data.format.value!r}); models for "
            f"{task_name}: {', '.join(registry.registered_for_task(task_name))}",
            key="model.name")


def _check_against_task(experiment: config_lib.ExperimentConfig, task_name: str) -> None:
    check_model(experiment, task_name)
    recipes.validate_experiment(experiment, task_name)


def check_experiment(experiment: config_lib.ExperimentConfig) -> None:
    """The checks across packages, on a schema-valid experiment (config.load_config's).

    Raises:
      ConfigError: the model, a recipe or the tuning section does not fit the task.
    """
    task_name = tasks.get_task(experiment).name
    try:
        _check_against_task(experiment, task_name)
        # Each choice, and each end of each range, must suit the task on its own too.
        tuning.validate_tuning(experiment, task_name,
                               check_candidate=lambda candidate: _check_against_task(
                                   candidate, task_name))
    except ConfigError as error:
        # Name the file or the --set override the offending value came from.
        raise configlib.with_source(error, experiment) from None


def load_experiment(path: Optional[str] = None,
                    overrides: Sequence[str] = ()) -> config_lib.ExperimentConfig:
    """config.load_config, then check_experiment: an experiment ready to run.

    Raises:
      ConfigError, FileNotFoundError: as config.load_config and check_experiment.
    """
    experiment = config_lib.load_config(path, overrides)
    check_experiment(experiment)
    return experiment
