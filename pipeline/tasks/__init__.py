"""Tasks: what differs between image classification, text classification and forecasting.

The pipeline (pipeline.pipeline), the Trainer (pipeline.trainer), the config checks, the
local runner's preflight and the run report are written once. Everything that depends on
the kind of data and model goes through a Task: which data formats it reads and which
ExampleGen reads them, which preprocessing_fn Transform runs, what the model is fed and
predicts, how it is compiled and with which metrics, which signatures and warm-up requests
it exports, which metrics and thresholds TFMA applies, what is checked before a run, and
which task-specific sections the report shows.

Each task is one folder (image/, text/, forecasting/) holding its Task subclass, its
preprocessing_fn and its signatures, registered here under a
tfprod.contract.tasks.TaskName. Adding a task means adding a TaskName member, a folder
with a Task subclass decorated with @register, and its import in _load_builtin_tasks.

Nothing here or in the tasks' __init__ modules imports TensorFlow at import time: the
config checks pick the task before anything heavy loads.
"""

import abc
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple, Type

from tfprod.contract.tasks import TaskName
from tfprod.pipeline import config as config_lib

# The task-specific sections of the run report (pipeline.report.sections); a Task lists
# the ones it shows in Task.report_sections.
SAMPLES_SECTION = "samples"  # sample images per class
CONFUSION_MATRIX_SECTION = "confusion_matrix"  # in the evaluation section
FORECAST_SECTION = "forecast"  # errors beside the baselines, predicted against actual
TABLE_COLUMNS_SECTION = "table_columns"  # each column's type (and why) and missing rate
RESIDUALS_SECTION = "residuals"  # regression: predicted against actual on the test split


def dotted_name(function: Callable) -> str:
    """"package.module.function": how TFX components (e.g. Transform) import a function."""
    return f"{function.__module__}.{function.__qualname__}"


class Task(abc.ABC):
    """One kind of ML problem, end to end. Subclasses are stateless."""

    #: The name models declare in `models.registry.register(..., tasks=...)`.
    name: TaskName
    #: The data.format values this task reads when data.source is files.
    data_formats: Tuple[str, ...] = ()
    #: The other data.source values this task reads (whatever data.format says).
    data_sources: Tuple[str, ...] = ()
    #: A classification head: label smoothing, mixup and cutmix apply.
    is_classification: bool = False
    #: Its inputs are images: data.augmentation applies.
    takes_images: bool = False
    #: What the compiled model logs in Keras (validation ones get "val_").
    metrics: Tuple[str, ...] = ("loss",)
    #: The metric names its eval config writes into run_summary.json (baselines' prefixed).
    summary_metrics: Tuple[str, ...] = ()
    #: The task-specific report sections it shows (SAMPLES_SECTION, ...).
    report_sections: FrozenSet[str] = frozenset()
    #: Its examples carry features worth slicing the evaluation by (eval.slices).
    sliceable: bool = False

    @property
    def preprocessing_fn(self) -> str:
        """Dotted path of the tf.Transform preprocessing_fn (Transform imports it by name)."""
        return dotted_name(self.preprocessing_function())

    @abc.abstractmethod
    def preprocessing_function(self) -> Callable:
        """The preprocessing_fn itself (imported here, since its module imports TensorFlow)."""

    @abc.abstractmethod
    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        """The ExampleGen component (pipeline.ingestion) that writes train, eval and test."""

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """Reads the input data as the ExampleGen will, before TFX starts; raises on bad data.

        The local runner calls it after checking the config's paths exist, before it saves
        config.yaml and builds the pipeline. A task may fill here the values the config
        leaves to the data (data.num_classes null: from the training labels), so the
        saved config, the ExampleGen, Transform and the Trainer all get them.
        """
        del experiment

    def check_eval_slices(self, experiment: config_lib.ExperimentConfig,
                          classifier: Optional[bool] = None) -> None:
        """eval.slices and the per-slice gates fit this task (no data read, no TensorFlow).

        Args:
          classifier: whether the model is a classifier, when the data decides it (tables);
            None: this task's is_classification, or unknown yet when the data decides.

        Raises:
          ConfigError: naming the key, and what to set instead.
        """
        evaluation = experiment.eval
        if evaluation.slices and not self.sliceable:
            raise config_lib.ConfigError(
                f"eval.slices: the {self.name.value} task's examples carry no feature to slice "
                f"by besides the label{' (per-class metrics are reported already)' if self.is_classification else ''}; "
                f"remove eval.slices {evaluation.slices}", key="eval.slices")
        if classifier is None and not self.sliceable:
            classifier = self.is_classification
        if classifier is True and evaluation.max_slice_mae is not None:
            raise config_lib.ConfigError(
                "eval.max_slice_mae: gates regressors; this model is a classifier (use "
                "eval.min_slice_accuracy)", key="eval.max_slice_mae")
        if classifier is False and evaluation.min_slice_accuracy is not None:
            raise config_lib.ConfigError(
                "eval.min_slice_accuracy: gates classifiers; this model predicts a number "
                "(use eval.max_slice_mae)", key="eval.min_slice_accuracy")
        if classifier is False and evaluation.max_slice_mae is not None and not evaluation.slices:
            raise config_lib.ConfigError(
                "eval.max_slice_mae: gates the slices of eval.slices, and there are none; set "
                "eval.slices (e.g. [island]) or remove eval.max_slice_mae",
                key="eval.max_slice_mae")

    def slice_feature_keys(self, experiment: config_lib.ExperimentConfig) -> List[str]:
        """The raw feature keys of eval.slices, as the Evaluator's examples carry them
        (tasks with `sliceable` map column names to keys)."""
        self.check_eval_slices(experiment)
        return []

    def schema_rewrite(self, schema_gen) -> Any:
        """A component that rewrites SchemaGen's inferred schema (its output "schema" then
        replaces SchemaGen's for every reader), or None to keep the inferred one."""
        del schema_gen
        return None

    def mobile_skip_reason(self) -> Optional[str]:
        """Why this task's models get no TFLite file (the run summary and report say it),
        or None when it says nothing."""
        return None

    def run_summary_extras(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        """What run_summary.json's `data` block records about the data (e.g. a table's
        problem and column types); {} for none."""
        del experiment
        return {}

    def transform_custom_config(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        """Passed to preprocessing_fn(inputs, custom_config) (e.g. vocabulary size)."""
        del experiment
        return {}

    @abc.abstractmethod
    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        """The models.registry.ModelInputs the registered model is built for."""

    @abc.abstractmethod
    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        """Splits a batch of parsed transformed features into (model input, label)."""

    def augment_dataset(self, dataset, experiment: config_lib.ExperimentConfig):
        """The training batches, augmented as data.augmentation says (only image tasks do)."""
        del experiment
        return dataset

    @abc.abstractmethod
    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        """model.compile with this task's loss and metrics."""

    @abc.abstractmethod
    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        """Concrete functions for tf.saved_model.save(..., signatures=...)."""

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        """PredictRequests written to assets.extra/tf_serving_warmup_requests."""
        del experiment
        return []

    @abc.abstractmethod
    def eval_config(self, experiment: config_lib.ExperimentConfig):
        """The tfma.EvalConfig the Evaluator blesses the model with."""

    def baseline_metrics(self, experiment: config_lib.ExperimentConfig) -> Dict[str, float]:
        """The trivial predictor's scores on this data, from the raw data before the run.

        What `eval.gate: baseline` gates on (pipeline/tasks/baselines.py): e.g.
        {"baseline_accuracy": 0.11} for a classifier (the majority class),
        {"mean_baseline_mae": 1.9} for a regressor (the training mean). Called when the
        eval config is built and again by the run summary. Reads labels only.

        Raises:
          ConfigError: the task has no baseline, or its data cannot be read now (e.g. a
            Kubeflow data directory known only at run time); the message says to use
            --set eval.gate=absolute.
        """
        raise config_lib.ConfigError(
            f"eval.gate: the {self.name.value} task has no trivial baseline to gate on; "
            "use --set eval.gate=absolute")

    def gate_bound(self, experiment: config_lib.ExperimentConfig,
                   baseline: Dict[str, float]) -> Optional[Tuple[str, float]]:
        """(metric, the bound its eval config gates on) for run_summary.json's `gate`.

        The default covers classifiers (the accuracy they must reach) and forecasters (the
        MAE they may not exceed); a task whose eval config bounds its metric otherwise says
        so here. None when the baseline is unknown.
        """
        from tfprod.pipeline.tasks import baselines

        if baselines.BASELINE_ACCURACY in baseline:
            from tfprod.pipeline.tasks import classification

            return classification.ACCURACY_METRIC, classification.required_accuracy(
                experiment.eval, baseline[baselines.BASELINE_ACCURACY])
        if baselines.MEAN_BASELINE_MAE in baseline:
            from tfprod.pipeline.tasks import forecasting

            return forecasting.MAE_METRIC, forecasting.allowed_mae(
                experiment.eval, baseline[baselines.MEAN_BASELINE_MAE])
        return None

    def supports_mobile(self) -> bool:
        """Whether the TFLiteConverter component can convert this task's models."""
        return False

    def monitorable_metrics(self) -> List[str]:
        """What a callback (early stopping, plateau) or the tuner can monitor: loss and
        metrics, plain and val_."""
        return [prefix + name for prefix in ("", "val_") for name in self.metrics]


# --------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------

_TASKS: Dict[TaskName, Task] = {}


def register(task_class: Type[Task]) -> Type[Task]:
    """Class decorator: registers a Task subclass under its `name` (a TaskName)."""
    name = TaskName(task_class.name)
    if name in _TASKS:
        raise ValueError(f"task {name} is already registered "
                         f"({type(_TASKS[name]).__module__}.{type(_TASKS[name]).__name__})")
    _TASKS[name] = task_class()
    return task_class


def _load_builtin_tasks() -> None:
    # Importing the task packages runs their @register decorators.
    from tfprod.pipeline.tasks import forecasting, image, table, text  # noqa: F401


def registered_tasks() -> Mapping[TaskName, Task]:
    """Every registered task, by name."""
    _load_builtin_tasks()
    return dict(_TASKS)


def task_for(name: str) -> Task:
    """The task registered under name (a TaskName or its value).

    Raises:
      ConfigError: no task has that name.
    """
    tasks = registered_tasks()
    try:
        return tasks[TaskName(name)]
    except (ValueError, KeyError):
        raise config_lib.ConfigError(
            f"unknown task {str(name)!r}; tasks are {', '.join(sorted(map(str, tasks)))}"
        ) from None


def task_name_for_data(source: str, data_format: str) -> TaskName:
    """The task that reads data.source / data.format (their string values): the one choice.

    A source other than files (e.g. tfds) decides on its own; files go by data.format.

    Raises:
      ConfigError: no task reads that source or format.
    """
    tasks = registered_tasks().values()
    source, data_format = str(source), str(data_format)
    if source != config_lib.DataSource.FILES.value:
        for task in tasks:
            if source in task.data_sources:
                return task.name
        raise config_lib.ConfigError(f"data.source: no task handles {source!r}")
    for task in tasks:
        if data_format in task.data_formats:
            return task.name
    raise config_lib.ConfigError(f"data.format: no task handles {data_format!r}")


def get_task(experiment: config_lib.ExperimentConfig) -> Task:
    """The task for the experiment's data (data.source and data.format)."""
    data = experiment.data
    return task_for(task_name_for_data(data.source.value, data.format.value))


def task_of_run(config: Mapping[str, Any], metrics: Optional[Mapping[str, Any]] = None
                ) -> Optional[Task]:
    """The task of a finished run, for the report: from its config, else its metrics.

    Args:
      config: the run's config.yaml as a dict (may be empty).
      metrics: run_summary.json's metrics; used when the config has no data section, to
        find the task whose eval config writes those metric names.

    Returns:
      The task, or None when neither tells.
    """
    data = config.get("data") if isinstance(config, Mapping) else None
    if isinstance(data, Mapping) and data:
        try:
            return task_for(task_name_for_data(
                data.get("source", config_lib.DataSource.FILES.value),
                data.get("format", config_lib.DataFormat.IDX.value)))
        except config_lib.ConfigError:
            return None
    names = list(metrics or {})
    for task in registered_tasks().values():
        if any(metric in name for metric in task.summary_metrics for name in names):
            return task
    return None
