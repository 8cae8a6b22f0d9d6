"""Training recipes from config: optimizers, learning-rate schedules, losses and callbacks.

Everything here is built from `trainer.*` (and `model.dropout`) of the experiment
config, so a recipe is switched on from YAML or `--set`, never by editing model code:

- `build_optimizer`: sgd (momentum, nesterov), adam or adamw (decoupled weight decay),
  with gradient clipping by global norm (`trainer.clip_norm`) and weight EMA
  (`trainer.ema_decay`: Keras keeps the moving average in the optimizer and copies it
  into the model's weights when `fit` ends, so the exported SavedModel holds the EMA).
- `build_learning_rate`: the `trainer.lr_schedule` as a serializable
  LearningRateSchedule (plateau is a callback instead, see `build_callbacks`).
- `classification_loss` / `classification_accuracy`: cross-entropy with label smoothing
  that accepts integer labels (one-hot inside the loss) and soft labels (mixup, cutmix).
- `build_callbacks`: early stopping on `trainer.early_stopping_monitor` and
  reduce-on-plateau.
"""

import copy
import math
from typing import Any, Callable, Dict, List, Union

import tensorflow as tf

from tfprod.pipeline import config as config_lib

ConfigError = config_lib.ConfigError

# Metrics each task compiles, as they appear in Keras logs (validation ones get "val_").
CLASSIFICATION_TASKS = ("image_classification", "text_classification")
REGRESSION_TASKS = ("forecasting",)
TASK_METRICS: Dict[str, tuple] = {
    "image_classification": ("loss", "accuracy"),
    "text_classification": ("loss", "accuracy"),
    "forecasting": ("loss", "mae"),
}
# Tasks whose inputs are images (data.augmentation applies only to them).
IMAGE_TASKS = ("image_classification",)


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


def _check(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def validate_trainer(trainer: config_lib.TrainerConfig) -> None:
    """Checks each recipe key of the trainer section on its own."""
    _check(0.0 <= trainer.momentum < 1.0, "trainer.momentum", "a number in [0, 1)",
           trainer.momentum)
    _check(trainer.optimizer == config_lib.Optimizer.SGD or not trainer.nesterov,
           "trainer.nesterov", "false unless trainer.optimizer is sgd", trainer.nesterov)
    _check(0.0 <= trainer.weight_decay < 1.0, "trainer.weight_decay", "a number in [0, 1)",
           trainer.weight_decay)
    _check(trainer.optimizer != config_lib.Optimizer.ADAMW or trainer.weight_decay > 0,
           "trainer.weight_decay", "a positive number for adamw (adamw with 0 is adam)",
           trainer.weight_decay)
    _check(0.0 <= trainer.label_smoothing < 1.0, "trainer.label_smoothing",
           "a number in [0, 1)", trainer.label_smoothing)
    _check(trainer.clip_norm is None or trainer.clip_norm > 0, "trainer.clip_norm",
           "null or a positive number", trainer.clip_norm)
    _check(trainer.ema_decay is None or 0.0 < trainer.ema_decay < 1.0, "trainer.ema_decay",
           "null or a number in (0, 1), e.g. 0.999", trainer.ema_decay)
    schedule = trainer.schedule
    _check(schedule.warmup_steps is None or schedule.warmup_steps >= 1,
           "trainer.schedule.warmup_steps", "null or an integer >= 1", schedule.warmup_steps)
    _check(0.0 <= schedule.warmup_fraction < 1.0, "trainer.schedule.warmup_fraction",
           "a number in [0, 1)", schedule.warmup_fraction)
    _check(0.0 <= schedule.min_learning_rate < trainer.learning_rate,
           "trainer.schedule.min_learning_rate",
           f"a number in [0, trainer.learning_rate={trainer.learning_rate})",
           schedule.min_learning_rate)
    boundaries = schedule.step_boundaries
    _check(all(b >= 1 for b in boundaries) and boundaries == sorted(set(boundaries)),
           "trainer.schedule.step_boundaries", "strictly increasing step numbers >= 1",
           boundaries)
    _check(trainer.lr_schedule != config_lib.LrSchedule.STEP or len(boundaries) > 0,
           "trainer.schedule.step_boundaries", "at least one step for lr_schedule step",
           boundaries)
    _check(0.0 < schedule.step_factor < 1.0, "trainer.schedule.step_factor",
           "a number in (0, 1)", schedule.step_factor)
    _check(0.0 < schedule.one_cycle_peak_fraction < 1.0,
           "trainer.schedule.one_cycle_peak_fraction", "a number in (0, 1)",
           schedule.one_cycle_peak_fraction)
    _check(schedule.one_cycle_div_factor >= 1.0, "trainer.schedule.one_cycle_div_factor",
           "a number >= 1", schedule.one_cycle_div_factor)
    _check(0.0 < schedule.plateau_factor < 1.0, "trainer.schedule.plateau_factor",
           "a number in (0, 1)", schedule.plateau_factor)
    _check(schedule.plateau_patience >= 0, "trainer.schedule.plateau_patience",
           "an integer >= 0", schedule.plateau_patience)
    if trainer.max_steps is not None:
        check_schedule_fits(trainer, trainer.max_steps)


def monitorable_metrics(task_name: str) -> List[str]:
    """The names a callback can monitor for a task: loss and metrics, plain and val_."""
    names = TASK_METRICS.get(task_name, ("loss",))
    return [prefix + name for prefix in ("", "val_") for name in names]


def validate_experiment(experiment: config_lib.ExperimentConfig, task_name: str) -> None:
    """Checks the combinations of recipe keys with the task and the model."""
    trainer = experiment.trainer
    if trainer.label_smoothing > 0 and task_name not in CLASSIFICATION_TASKS:
        raise ConfigError(
            f"trainer.label_smoothing: label smoothing needs a classification head; task "
            f"{task_name} has a regression head (set trainer.label_smoothing: 0)")
    augmentation = experiment.data.augmentation
    if augmentation.enabled and task_name not in IMAGE_TASKS:
        raise ConfigError(
            f"data.augmentation: image augmentation applies to image tasks "
            f"({', '.join(IMAGE_TASKS)}), not {task_name}; remove the section")
    if augmentation.mixes_labels and task_name not in CLASSIFICATION_TASKS:
        raise ConfigError(
            "data.augmentation.mixup_alpha/cutmix_alpha: mixup and cutmix mix class labels, "
            f"so they need a classification head; task {task_name} has none")
    allowed = monitorable_metrics(task_name)
    monitors = [("trainer.early_stopping_monitor", trainer.early_stopping_monitor)]
    if trainer.lr_schedule == config_lib.LrSchedule.PLATEAU:
        monitors.append(("trainer.schedule.plateau_monitor", trainer.schedule.plateau_monitor))
    for key, monitor in monitors:
        if monitor not in allowed:
            raise ConfigError(f"{key}: {monitor!r} is not a metric of task {task_name}; "
                              f"choose one of {', '.join(allowed)}")
    if experiment.model.dropout is not None and experiment.model.name not in DROPOUT_MAPPINGS:
        raise ConfigError(
            f"model.dropout: model '{experiment.model.name}' has no dropout mapping; set its "
            f"own rates instead (models with one: {', '.join(sorted(DROPOUT_MAPPINGS))})")


def warmup_steps(trainer: config_lib.TrainerConfig, total_steps: int) -> int:
    """warmup_cosine's warmup: schedule.warmup_steps, else warmup_fraction of all steps."""
    schedule = trainer.schedule
    if schedule.warmup_steps is not None:
        return schedule.warmup_steps
    return int(round(schedule.warmup_fraction * total_steps))


def check_schedule_fits(trainer: config_lib.TrainerConfig, total_steps: int) -> None:
    """Raises ConfigError when the schedule's steps do not fit into total_steps of training."""
    if trainer.lr_schedule == config_lib.LrSchedule.WARMUP_COSINE:
        warmup = warmup_steps(trainer, total_steps)
        if warmup >= total_steps:
            raise ConfigError(
                f"trainer.schedule.warmup_steps: the warmup ({warmup} steps) is not shorter "
                f"than the training ({total_steps} steps); lower it or train longer")
    if trainer.lr_schedule == config_lib.LrSchedule.STEP:
        late = [b for b in trainer.schedule.step_boundaries if b >= total_steps]
        if late:
            raise ConfigError(
                f"trainer.schedule.step_boundaries: {late} lie at or after the end of "
                f"training ({total_steps} steps); the decay would never happen")


# --------------------------------------------------------------------------
# Learning-rate schedules (serializable: get_config / from_config).
# --------------------------------------------------------------------------


def _cosine(progress, peak, floor):
    """peak at progress 0, floor at progress 1 (progress clipped to [0, 1])."""
    progress = tf.clip_by_value(progress, 0.0, 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + tf.cos(math.pi * progress))


@tf.keras.utils.register_keras_serializable(package="tfprod")
class StepDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """learning_rate * factor**k, where k is how many boundaries the step has passed."""

    def __init__(self, learning_rate: float, boundaries: List[int], factor: float):
        super().__init__()
        self.learning_rate = float(learning_rate)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries, tf.float32),
                                       tf.float32))
        return self.learning_rate * tf.pow(self.factor, passed)

    def get_config(self) -> Dict[str, Any]:
        return {"learning_rate": self.learning_rate, "boundaries": self.boundaries,
                "factor": self.factor}


@tf.keras.utils.register_keras_serializable(package="tfprod")
class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear from 0 to the peak over warmup_steps, then cosine down to the floor at
    total_steps (and the floor after it). warmup_steps 0 is plain cosine decay."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0,
                 floor: float = 0.0):
        super().__init__()
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.floor = float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 0))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        cosine = _cosine((step - warmup) / decay_steps, self.peak, self.floor)
        if self.warmup_steps <= 0:
            return cosine
        return tf.where(step < warmup, self.peak * step / warmup, cosine)

    def get_config(self) -> Dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "floor": self.floor}


@tf.keras.utils.register_keras_serializable(package="tfprod")
class OneCycle(tf.keras.optimizers.schedules.LearningRateSchedule):
    """One cycle: from peak/div_factor up to the peak over peak_fraction of the steps
    (cosine-shaped), then cosine down to the floor at total_steps."""

    def __init__(self, peak: float, total_steps: int, peak_fraction: float = 0.3,
                 div_factor: float = 25.0, floor: float = 0.0):
        super().__init__()
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.peak_fraction = float(peak_fraction)
        self.div_factor = float(div_factor)
        self.floor = float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        up_steps = max(self.peak_fraction * self.total_steps, 1.0)
        down_steps = max(self.total_steps - up_steps, 1.0)
        start = self.peak / self.div_factor
        # _cosine goes from its 2nd to its 3rd argument; going up swaps them.
        rising = _cosine(1.0 - step / up_steps, self.peak, start)
        falling = _cosine((step - up_steps) / down_steps, self.peak, self.floor)
        return tf.where(step < up_steps, rising, falling)

    def get_config(self) -> Dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps,
                "peak_fraction": self.peak_fraction, "div_factor": self.div_factor,
                "floor": self.floor}


def build_learning_rate(trainer: config_lib.TrainerConfig, total_steps: int
                        ) -> Union[float, tf.keras.optimizers.schedules.LearningRateSchedule]:
    """trainer.lr_schedule over total_steps optimizer steps; a float for constant/plateau.

    Raises:
      ConfigError: when warmup or step boundaries do not fit into total_steps.
    """
    check_schedule_fits(trainer, total_steps)
    kind = trainer.lr_schedule
    schedule = trainer.schedule
    peak = trainer.learning_rate
    if kind in (config_lib.LrSchedule.CONSTANT, config_lib.LrSchedule.PLATEAU):
        return peak
    if kind == config_lib.LrSchedule.STEP:
        return StepDecay(peak, schedule.step_boundaries, schedule.step_factor)
    if kind == config_lib.LrSchedule.COSINE:
        return WarmupCosine(peak, total_steps, 0, schedule.min_learning_rate)
    if kind == config_lib.LrSchedule.WARMUP_COSINE:
        return WarmupCosine(peak, total_steps, warmup_steps(trainer, total_steps),
                            schedule.min_learning_rate)
    if kind == config_lib.LrSchedule.ONE_CYCLE:
        return OneCycle(peak, total_steps, schedule.one_cycle_peak_fraction,
                        schedule.one_cycle_div_factor, schedule.min_learning_rate)
    raise ConfigError(f"trainer.lr_schedule: no builder for {kind.value!r}")


# --------------------------------------------------------------------------
# Optimizers.
# --------------------------------------------------------------------------


def build_optimizer(trainer: config_lib.TrainerConfig,
                    total_steps: int) -> tf.keras.optimizers.Optimizer:
    """The trainer.optimizer with its schedule, weight decay, clipping and EMA."""
    common: Dict[str, Any] = {"learning_rate": build_learning_rate(trainer, total_steps)}
    if trainer.weight_decay > 0:
        common["weight_decay"] = trainer.weight_decay
    if trainer.clip_norm is not None:
        common["global_clipnorm"] = trainer.clip_norm
    if trainer.ema_decay is not None:
        common.update(use_ema=True, ema_momentum=trainer.ema_decay)
    if trainer.optimizer == config_lib.Optimizer.SGD:
        return tf.keras.optimizers.SGD(momentum=trainer.momentum, nesterov=trainer.nesterov,
                                       **common)
    if trainer.optimizer == config_lib.Optimizer.ADAMW:
        return tf.keras.optimizers.AdamW(**common)
    return tf.keras.optimizers.Adam(**common)


# --------------------------------------------------------------------------
# Classification loss and accuracy: integer or soft labels.
# --------------------------------------------------------------------------


def _as_distribution(labels, num_classes: int):
    """Integer class ids ([N] or [N, 1]) -> one-hot [N, C]; soft labels [N, C] unchanged.

    The choice is made on the static shape: labels whose last axis is num_classes wide
    are distributions already (num_classes >= 2, so [N, 1] is always integer ids).
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == num_classes:
        return tf.cast(labels, tf.float32)
    ids = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.one_hot(ids, num_classes, dtype=tf.float32)


@tf.keras.utils.register_keras_serializable(package="tfprod")
class SmoothedCrossEntropy(tf.keras.losses.Loss):
    """Categorical cross-entropy on probabilities with label smoothing.

    Keras 2's SparseCategoricalCrossentropy has no label_smoothing, so integer labels
    are one-hot encoded here, inside the loss (the data keeps its integer labels and
    the eval split and TFMA are unchanged). Soft labels from mixup or cutmix pass
    through as they are and are smoothed the same way.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0,
                 name: str = "smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        targets = _as_distribution(y_true, self.num_classes)
        return tf.keras.losses.categorical_crossentropy(
            targets, tf.cast(y_pred, tf.float32), label_smoothing=self.label_smoothing)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, label_smoothing=self.label_smoothing)
        return config


def classification_loss(trainer: config_lib.TrainerConfig, num_classes: int,
                        mixed_labels: bool = False) -> tf.keras.losses.Loss:
    """The loss every classifier compiles with.

    Plain SparseCategoricalCrossentropy (the foundation's loss) unless label smoothing or
    mixed labels (data.augmentation mixup/cutmix) need the one-hot form.
    """
    if trainer.label_smoothing > 0 or mixed_labels:
        return SmoothedCrossEntropy(num_classes, trainer.label_smoothing)
    return tf.keras.losses.SparseCategoricalCrossentropy()


def classification_accuracy(num_classes: int, mixed_labels: bool = False):
    """Accuracy named "accuracy" for integer labels, and for soft labels (their argmax)."""
    if not mixed_labels:
        return tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def accuracy(y_true, y_pred):
        targets = tf.argmax(_as_distribution(y_true, num_classes), axis=-1)
        return tf.cast(tf.equal(targets, tf.argmax(y_pred, axis=-1)), tf.float32)

    return tf.keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


# --------------------------------------------------------------------------
# Callbacks and model dropout.
# --------------------------------------------------------------------------


def build_callbacks(trainer: config_lib.TrainerConfig) -> List[tf.keras.callbacks.Callback]:
    """Early stopping (trainer.early_stopping_patience > 0) and reduce-on-plateau.

    With EMA on, early stopping keeps the weights it ends with: restoring the best
    epoch's raw weights would happen after Keras copies the EMA into the model (tf-keras
    2.16 restores in on_train_end, after fit's finalize_variable_values) and so would
    throw the EMA away.
    """
    callbacks: List[tf.keras.callbacks.Callback] = []
    if trainer.early_stopping_patience > 0:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=trainer.early_stopping_monitor, patience=trainer.early_stopping_patience,
            restore_best_weights=trainer.ema_decay is None))
    if trainer.lr_schedule == config_lib.LrSchedule.PLATEAU:
        callbacks.append(tf.keras.callbacks.ReduceLROnPlateau(
            monitor=trainer.schedule.plateau_monitor, factor=trainer.schedule.plateau_factor,
            patience=trainer.schedule.plateau_patience,
            min_lr=trainer.schedule.min_learning_rate))
    return callbacks


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
