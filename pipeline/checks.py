"""The checks of an experiment that reach beyond its schema, run once where a run starts.

tfprod.pipeline.config validates the schema (each section, no TensorFlow). What needs
other packages is checked here, from above: that model.name is registered and fits the
task of the data (models.catalog: the registry's names without its TensorFlow), that the
recipes suit the task, and that the tuning space names tunable keys whose every candidate
gives a valid experiment.

check_experiment runs once per run, where it starts: preflight (`tfprod run`, before
TensorFlow is imported), kubeflow.compiler.compile_pipeline and the Kubeflow train worker.
The Trainer, the Tuner and the local multi-worker job get the checked config serialized and
only parse it.

Nothing here imports TensorFlow, TFX or Beam (tests/test_cli.py checks it through `tfprod
run`): a bad config, path or data layout is answered in a fraction of a second.
"""

from typing import Optional, Sequence

from tfprod import configlib
from tfprod.models import catalog
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import recipe_checks, tasks, tuning

ConfigError = config_lib.ConfigError


def check_model(experiment: config_lib.ExperimentConfig, task_name: str) -> None:
    """model.name is registered and fits the task.

    Raises:
      ConfigError: naming model.name, the models registered (for the task).
    """
    name = experiment.model.name
    if name not in catalog.MODEL_TASKS:
        raise ConfigError(f"model.name: unknown model '{name}'; registered models are "
                          f"{', '.join(catalog.registered_names())}", key="model.name")
    fits = catalog.model_tasks(name)
    if task_name not in fits:
        raise ConfigError(
            f"model.name: model '{name}' fits {', '.join(fits) or 'no task'}, not {task_name} "
            f"(the task of data.format {experiment.data.format.value!r}); models for "
            f"{task_name}: {', '.join(catalog.registered_for_task(task_name))}",
            key="model.name")


def _check_against_task(experiment: config_lib.ExperimentConfig, task_name: str) -> None:
    check_model(experiment, task_name)
    recipe_checks.validate_experiment(experiment, task_name)
    tasks.task_for(task_name).check_eval_slices(experiment)


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


def preflight(experiment: config_lib.ExperimentConfig) -> None:
    """Fails fast, before TFX (or TensorFlow) starts, on a bad config, a missing path or
    unreadable data.

    First, the checks of the experiment beyond its schema (check_experiment: the model
    fits the task, and so do the recipes and the tuning space); then that the config's
    paths exist and the output directory can be written in; then the task's own check of
    its input data (Task.preflight: e.g. unreadable IDX files, a bad TSV row, a CSV with
    gaps, or a TFDS dataset that is not prepared).

    Raises:
      tfprod.errors.ConfigError: a bad config or path.
      tfprod.errors.InputDataError: input files the run could not read.
    """
    check_experiment(experiment)
    check_inputs(experiment)


def check_inputs(experiment: config_lib.ExperimentConfig) -> None:
    """preflight's checks after check_experiment: the config's paths, the output directory
    and the task's check of its input data (no TensorFlow either).

    Raises:
      tfprod.errors.ConfigError, tfprod.errors.InputDataError: as preflight.
    """
    experiment.check_paths()
    config_lib.check_output_dir(experiment.runtime.output_dir)
    check_infra_server(experiment.infra)
    tasks.get_task(experiment).preflight(experiment)


TF_SERVING_BINARY = "tensorflow_model_server"


def check_infra_server(infra: config_lib.InfraConfig) -> None:
    """The model server infra.server names can start here (pipeline/infra_validator.py).

    Raises:
      ConfigError: infra.server is tensorflow_model_server and no such binary is on PATH.
    """
    import shutil

    if (infra.enabled and infra.server == config_lib.InfraServer.TF_SERVING
            and shutil.which(TF_SERVING_BINARY) is None):
        raise config_lib.ConfigError(
            f"infra.server: {TF_SERVING_BINARY} is selected but no {TF_SERVING_BINARY} binary is "
            "on PATH (TF Serving ships it in its Docker image and apt repository). Install it, or "
            "set infra.server: tfprod (the default) to validate with `tfprod serve`, or "
            "infra.enabled: false to skip the step", key="infra.server")
