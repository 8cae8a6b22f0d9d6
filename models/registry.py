"""A registry of model builders, keyed by the name used in ``model.name``.

Builders register with ``@register("cnn", tasks=(TaskName.IMAGE_CLASSIFICATION,))``.
Each takes the experiment's ModelConfig and a ModelInputs description and returns an
uncompiled Keras model. ``tasks`` names the pipeline tasks (tfprod.contract.tasks.TaskName,
one Task each in pipeline.tasks) whose inputs and outputs the model fits.
"""

import dataclasses
from typing import Callable, Dict, List, Sequence, Tuple, Union

from tfprod import errors
from tfprod.contract.tasks import TaskName
from tfprod.models import catalog

_BUILDERS: Dict[str, Callable] = {}
_TASKS: Dict[str, Tuple[TaskName, ...]] = {}


class UnknownModelError(errors.ConfigError, KeyError):
    """model.name names no registered builder."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the model is fed (after Transform) and what it predicts."""

    feature_name: str
    feature_shape: Tuple[int, ...]
    num_classes: int
    image_shape: Tuple[int, int, int] = (28, 28, 1)
    # Forecasting: the input window (steps, columns), the steps to predict and the
    # target's column in the window.
    window_shape: Tuple[int, int] = (0, 0)
    horizon: int = 0
    target_index: int = 0
    # Text: the number of token ids (0 = padding, the vocabulary, the OOV buckets).
    vocab_size: int = 0
    # Tables: the width of the numeric input (values and missing flags), and the number of
    # ids of each categorical column (missing, vocabulary, OOV buckets). num_classes 0 is
    # a regression (one number out).
    numeric_width: int = 0
    categorical_cardinalities: Tuple[int, ...] = ()


def register(name: str, tasks: Sequence[Union[TaskName, str]] = ()) -> Callable:
    """Decorator that registers a builder under name; a second registration raises.

    Args:
      name: the value of model.name that selects the builder.
      tasks: the pipeline tasks the model fits (TaskName members; their string values,
        e.g. "image_classification", are accepted too).

    Raises:
      ValueError: the name is taken, a task is not a TaskName (the message lists them), or
        the name and tasks are not listed as such in tfprod.models.catalog.MODEL_TASKS (the
        table the config checks read before TensorFlow is imported).
    """
    try:
        task_names = tuple(TaskName(task) for task in tasks)
    except ValueError:
        raise ValueError(f"model '{name}': tasks {[str(task) for task in tasks]} must be "
                         f"TaskName members ({', '.join(task.value for task in TaskName)})"
                         ) from None

    def decorator(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"a model named '{name}' is already registered "
                             f"({_BUILDERS[name].__module__}.{_BUILDERS[name].__name__})")
        listed = catalog.MODEL_TASKS.get(name)
        if listed is None or set(listed) != set(task_names):
            raise ValueError(
                f"model '{name}' registers for tasks {[str(task) for task in task_names]}, but "
                f"tfprod.models.catalog.MODEL_TASKS lists "
                f"{[str(task) for task in listed] if listed is not None else 'no such model'}; "
                "list it there as registered (the config checks read that table before "
                "TensorFlow is imported)")
        _BUILDERS[name] = builder
        _TASKS[name] = task_names
        return builder

    return decorator


def _load_builtin_models() -> None:
    # Importing the modules runs their @register decorators.
    from tfprod.models import cnn, lstm, transformer  # noqa: F401
    from tfprod.models import forecasting  # noqa: F401
    from tfprod.models import tabular  # noqa: F401
    from tfprod.models import resnet  # noqa: F401


def registered_names() -> List[str]:
    _load_builtin_models()
    return sorted(_BUILDERS)


def registered_for_task(task: Union[TaskName, str]) -> List[str]:
    """The names of the models that fit a task (a TaskName or its value)."""
    _load_builtin_models()
    return sorted(name for name, tasks in _TASKS.items() if task in tasks)


def model_tasks(name: str) -> Tuple[TaskName, ...]:
    """The tasks a registered model fits."""
    get_builder(name)
    return _TASKS[name]


def get_builder(name: str) -> Callable:
    _load_builtin_models()
    if name not in _BUILDERS:
        raise UnknownModelError(
            f"unknown model '{name}'; registered models are: {', '.join(sorted(_BUILDERS))}"
        )
    return _BUILDERS[name]


def build_model(model_config, inputs: ModelInputs):
    """Builds the registered model named by model_config.name."""
    return get_builder(model_config.name)(model_config, inputs)
