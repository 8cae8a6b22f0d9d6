"""The checks of the training recipes against the task and the model, without TensorFlow.

pipeline.recipes builds optimizers, schedules and callbacks (it imports TensorFlow); what
it accepts is checked here, so pipeline.checks can refuse a bad combination before
TensorFlow loads. The dropout mappings are plain arithmetic on the model config and live
here too, since the check needs their names; pipeline.recipes re-exports all of it.
"""

import copy
from typing import Callable, Dict, List

from tfprod.pipeline import config as config_lib

ConfigError = config_lib.ConfigError



def monitorable_metrics(task_name: str) -> List[str]:
    """The names a callback can monitor for a task: loss and metrics, plain and val_."""
    from tfprod.pipeline import tasks

    return tasks.task_for(task_name).monitorable_metrics()


def validate_experiment(experiment: config_lib.ExperimentConfig, task_name: str) -> None:
    """Checks the combinations of recipe keys with the task (its Task's attributes) and the
    model."""
    from tfprod.pipeline import tasks

    task = tasks.task_for(task_name)
    task_name = str(task.name)
    trainer = experiment.trainer
    if trainer.label_smoothing > 0 and not task.is_classification:
        raise ConfigError(
            f"trainer.label_smoothing: label smoothing needs a classification head; task "
            f"{task_name} has a regression head (set trainer.label_smoothing: 0)",
            key="trainer.label_smoothing")
    augmentation = experiment.data.augmentation
    if augmentation.enabled and not task.takes_images:
        image_tasks = [str(name) for name, other in tasks.registered_tasks().items()
                       if other.takes_images]
        raise ConfigError(
            f"data.augmentation: image augmentation applies to image tasks "
            f"({', '.join(image_tasks)}), not {task_name}; remove the section",
            key="data.augmentation")
    if augmentation.mixes_labels and not task.is_classification:
        raise ConfigError(
            "data.augmentation.mixup_alpha/cutmix_alpha: mixup and cutmix mix class labels, "
            f"so they need a classification head; task {task_name} has none",
            key="data.augmentation.mixup_alpha/cutmix_alpha")
    allowed = task.monitorable_metrics()
    monitors = [("trainer.early_stopping_monitor", trainer.early_stopping_monitor)]
    if trainer.lr_schedule == config_lib.LrSchedule.PLATEAU:
        monitors.append(("trainer.schedule.plateau_monitor", trainer.schedule.plateau_monitor))
    for key, monitor in monitors:
        if monitor not in allowed:
            raise ConfigError(f"{key}: {monitor!r} is not a metric of task {task_name}; "
                              f"choose one of {', '.join(allowed)}", key=key)
    if experiment.model.dropout is not None and experiment.model.name not in DROPOUT_MAPPINGS:
        raise ConfigError(
            f"model.dropout: model '{experiment.model.name}' has no dropout mapping; set its "
            f"own rates instead (models with one: {', '.join(sorted(DROPOUT_MAPPINGS))})",
            key="model.dropout")


def _cnn_dropout(model_config: config_lib.ModelConfig, dropout: float) -> None:
    # The dense layer gets the rate; the conv blocks keep their configured ratio to it
    # (0.25 / 0.4 by default), since conv feature maps need less dropout than dense units.
    cnn = model_config.cnn
    ratio = cnn.conv_dropout / cnn.dense_dropout if cnn.dense_dropout > 0 else 0.625
    cnn.dense_dropout = dropout
    cnn.conv_dropout = min(dropout * ratio, 0.95)


#: model.name -> how model.dropout maps onto that family's dropout rates.
DROPOUT_MAPPINGS: Dict[str, Callable[[config_lib.ModelConfig, float], None]] = {
    "cnn": _cnn_dropout,
}


def effective_model_config(model_config: config_lib.ModelConfig) -> config_lib.ModelConfig:
    """model_config with model.dropout mapped onto the family's rates (a copy)."""
    if model_config.dropout is None:
        return model_config
    result = copy.deepcopy(model_config)
    DROPOUT_MAPPINGS[model_config.name](result, model_config.dropout)
    return result
