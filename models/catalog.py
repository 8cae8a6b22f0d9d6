"""The registered models' names and the tasks each fits, without importing TensorFlow.

The builders (tfprod.models.registry) import TensorFlow and Keras; the config checks run
before that (`tfprod run` answers a bad model.name in a fraction of a second), so they read
this table instead. registry.register refuses a builder whose name or tasks are not listed
here exactly, so the table cannot drift from the builders; tests/test_models.py checks the
two agree name for name.
"""

from typing import Dict, List, Tuple, Union

from tfprod.contract.tasks import TaskName

#: model.name -> the pipeline tasks the model fits (as its @registry.register declares).
MODEL_TASKS: Dict[str, Tuple[TaskName, ...]] = {
    "cnn": (TaskName.IMAGE_CLASSIFICATION,),
    "resnet": (TaskName.IMAGE_CLASSIFICATION,),
    "lstm": (TaskName.TEXT_CLASSIFICATION,),
    "transformer": (TaskName.TEXT_CLASSIFICATION,),
    "lstm_forecaster": (TaskName.FORECASTING,),
    "transformer_forecaster": (TaskName.FORECASTING,),
    "mlp": (TaskName.TABLE,),
    "wide_deep": (TaskName.TABLE,),
}


def registered_names() -> List[str]:
    """The values model.name may take, sorted."""
    return sorted(MODEL_TASKS)


def registered_for_task(task: Union[TaskName, str]) -> List[str]:
    """The names of the models that fit a task (a TaskName or its value), sorted."""
    return sorted(name for name, tasks in MODEL_TASKS.items() if task in tasks)


def model_tasks(name: str) -> Tuple[TaskName, ...]:
    """The tasks a model fits; () for a name that is not registered."""
    return MODEL_TASKS.get(name, ())
