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

import math
from typing import Any, Dict, List, Union

import tensorflow as tf

from tfprod.pipeline import config as config_lib
from tfprod.pipeline import recipe_checks

ConfigError = config_lib.ConfigError


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


# Each recipe key on its own is checked by the schema (config.TrainerConfig.validate); the
# combinations with the task and the model by recipe_checks.validate_experiment (no
# TensorFlow, so the checks run before it loads), from pipeline.checks.
monitorable_metrics = recipe_checks.monitorable_metrics
validate_experiment = recipe_checks.validate_experiment
DROPOUT_MAPPINGS = recipe_checks.DROPOUT_MAPPINGS
effective_model_config = recipe_checks.effective_model_config


# The schedule's step arithmetic is the schema's (it also checks trainer.max_steps).
warmup_steps = config_lib.warmup_steps
check_schedule_fits = config_lib.check_schedule_fits


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
