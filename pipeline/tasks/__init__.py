"""Tasks: what differs between image classification, text classification and forecasting.

The pipeline (pipeline.pipeline), the Trainer (pipeline.trainer) and the run summary
are written once. Everything that depends on the kind of data and model goes through
a Task: which ExampleGen reads the raw data, which preprocessing_fn Transform runs,
what the model is fed and predicts, how it is compiled, which signatures it exports,
and which metrics and thresholds TFMA applies. `get_task(experiment)` picks the task
from the config's data section.
"""

import abc
from typing import Any, Dict, List, Optional, Tuple

from tfprod.pipeline import config as config_lib


class Task(abc.ABC):
    """One kind of ML problem, end to end. Subclasses are stateless."""

    #: The name models declare in `models.registry.register(..., tasks=...)`.
    name: str = ""
    #: Dotted path of the tf.Transform preprocessing_fn (Transform imports it by name).
    preprocessing_fn: str = ""

    @abc.abstractmethod
    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        """The ExampleGen component that writes the train, eval and test splits."""

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

    def supports_mobile(self) -> bool:
        """Whether the TFLiteConverter component can convert this task's models."""
        return False


def get_task(experiment: config_lib.ExperimentConfig) -> Task:
    """The task for the experiment's data (data.source and data.format)."""
    from tfprod.pipeline.tasks import image, text

    data = experiment.data
    if data.source == config_lib.DataSource.FILES and data.format == config_lib.DataFormat.TSV:
        return text.TextClassificationTask()
    if data.source == config_lib.DataSource.TFDS or data.format == config_lib.DataFormat.IDX:
        return image.ImageClassificationTask()
    if data.format == config_lib.DataFormat.CSV:
        from tfprod.pipeline.tasks import forecasting

        return forecasting.ForecastingTask()
    raise config_lib.ConfigError(f"data.format: no task handles {data.format.value!r}")


def task_name(experiment: config_lib.ExperimentConfig) -> Optional[str]:
    """The task's name, or None when no task handles the data section."""
    try:
        return get_task(experiment).name
    except config_lib.ConfigError:
        return None
