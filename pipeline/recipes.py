"""Training recipes from config: optimizers, learning-rate schedules, losses and callbacks.

Everything here is built from `trainer.*` (and `model.dropout`) of the experiment
config, so a recipe is switched on from YAML or `--set`, never by editing model code:

- `build_optimizer`: sgd (momentum, nesterov), adam or adamw (decoupled weight decay;
  `trainer.weight_decay` null = 0.004 for adamw), with gradient clipping by global norm
  (`trainer.clip_norm`) and weight EMA (`trainer.ema_decay`: the moving average lives in
  the optimizer, its decay warmed up as min(decay, (1 + step) / (10 + step)) unless
  `trainer.ema_warmup` is false, and Keras copies it into the model's weights when `fit`
  ends; `keep_better_weights` then puts the raw weights back if they score better on
  the eval split).
- `build_learning_rate`: the `trainer.lr_schedule` as a serializable
  LearningRateSchedule (plateau is a callback instead, see `build_callbacks`).
- `classification_loss` / `classification_accuracy`: cross-entropy with label smoothing
  that accepts integer labels (one-hot inside the loss) and soft labels (mixup, cutmix).
- `build_callbacks`: early stopping on `trainer.early_stopping_monitor` and
  reduce-on-plateau.
"""

import math
from typing import Any, Dict, List, Optional, Union

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


class _RawWeights:
    """The raw trainable weights as fit left them, before Keras copied the EMA over them
    (a plain object, so the optimizer does not track it as checkpoint state)."""

    def __init__(self, variables):
        self.variables = list(variables)
        self.values = [variable.numpy() for variable in self.variables]


class _EmaWarmup:
    """Mixed in before a Keras optimizer class: the EMA's decay at step n (from 0) is
    min(ema_momentum, (1 + n) / (10 + n)) when ema_warmup is on, so early averages are not
    dominated by the initial weights (with a fixed 0.999 the initial weights still hold
    0.999**n of the average: 18% after 1,700 steps). Keeps the raw weights when fit ends
    (raw_weights_at_end) for keep_better_weights."""

    def __init__(self, *args, ema_warmup: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_warmup = bool(ema_warmup)
        self.raw_weights_at_end: Optional[_RawWeights] = None

    def ema_decay_at(self, step):
        """The decay applied at optimizer step `step` (0 = the first)."""
        decay = tf.constant(self.ema_momentum, tf.float32)
        if not self.ema_warmup:
            return decay
        step = tf.cast(step, tf.float32)
        return tf.minimum(decay, (1.0 + step) / (10.0 + step))

    def _update_model_variables_moving_average(self, var_list):
        # As tf-keras 2.16's distributed Optimizer does, with the warmed-up decay (called
        # before self.iterations counts the step).
        if not self.use_ema:
            return
        decay = self.ema_decay_at(self.iterations)

        def update_average(average, var):
            rate = tf.cast(decay, average.dtype)
            average.assign(rate * average + (1.0 - rate) * var)

        for var in var_list:
            average = self._model_variables_moving_average[
                self._index_dict[self._var_key(var)]]
            self._distribution_strategy.extended.update(
                average, update_average, args=(var,), group=False)

    def finalize_variable_values(self, var_list):
        if self.use_ema:  # fit calls this once, at its end: keep the raw weights first
            self.raw_weights_at_end = _RawWeights(var_list)
        super().finalize_variable_values(var_list)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config["ema_warmup"] = self.ema_warmup
        return config


@tf.keras.utils.register_keras_serializable(package="tfprod")
class EmaSGD(_EmaWarmup, tf.keras.optimizers.SGD):
    """SGD with trainer.ema_decay (see _EmaWarmup)."""


@tf.keras.utils.register_keras_serializable(package="tfprod")
class EmaAdam(_EmaWarmup, tf.keras.optimizers.Adam):
    """Adam with trainer.ema_decay (see _EmaWarmup)."""


@tf.keras.utils.register_keras_serializable(package="tfprod")
class EmaAdamW(_EmaWarmup, tf.keras.optimizers.AdamW):
    """AdamW with trainer.ema_decay (see _EmaWarmup)."""


def build_optimizer(trainer: config_lib.TrainerConfig,
                    total_steps: int) -> tf.keras.optimizers.Optimizer:
    """The trainer.optimizer with its schedule, weight decay, clipping and EMA."""
    common: Dict[str, Any] = {"learning_rate": build_learning_rate(trainer, total_steps)}
    if trainer.effective_weight_decay > 0:
        common["weight_decay"] = trainer.effective_weight_decay
    if trainer.clip_norm is not None:
        common["global_clipnorm"] = trainer.clip_norm
    ema = trainer.ema_decay is not None
    if ema:
        common.update(use_ema=True, ema_momentum=trainer.ema_decay,
                      ema_warmup=trainer.ema_warmup)
    if trainer.optimizer == config_lib.Optimizer.SGD:
        return (EmaSGD if ema else tf.keras.optimizers.SGD)(
            momentum=trainer.momentum, nesterov=trainer.nesterov, **common)
    if trainer.optimizer == config_lib.Optimizer.ADAMW:
        return (EmaAdamW if ema else tf.keras.optimizers.AdamW)(**common)
    return (EmaAdam if ema else tf.keras.optimizers.Adam)(**common)


# --------------------------------------------------------------------------
# The EMA at export: the better of the averaged and the raw weights.
# --------------------------------------------------------------------------


def _higher_is_better(metric: str) -> bool:
    return any(part in metric for part in ("acc", "auc", "precision", "recall"))


def keep_better_weights(model: tf.keras.Model, eval_data: Any,
                        trainer: config_lib.TrainerConfig) -> Optional[Dict[str, Any]]:
    """After fit with trainer.ema_decay: the model holds the EMA weights (Keras copied them
    in); this scores them and the raw weights fit ended with on eval_data and leaves the
    model holding the better, the EMA on a tie.

    The score is trainer.early_stopping_monitor without its `val_` prefix (the eval loss by
    default; accuracy, auc, precision and recall count higher as better, the rest lower),
    or the loss when evaluate does not report that metric.

    Returns:
      None without EMA; else {"kept": "ema" | "raw", "metric": name, "eval_metric_ema",
      "eval_metric_raw"} (what run_fn writes to training_stats.json and logs).
    """
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    raw: Optional[_RawWeights] = getattr(optimizer, "raw_weights_at_end", None)
    if trainer.ema_decay is None or raw is None:
        return None
    ema_scores = model.evaluate(eval_data, verbose=0, return_dict=True)
    metric = trainer.early_stopping_monitor
    metric = metric[len("val_"):] if metric.startswith("val_") else metric
    if metric not in ema_scores:
        metric = "loss"
    ema_values = [variable.numpy() for variable in raw.variables]
    for variable, value in zip(raw.variables, raw.values):
        variable.assign(value)
    raw_score = float(model.evaluate(eval_data, verbose=0, return_dict=True)[metric])
    ema_score = float(ema_scores[metric])
    if _higher_is_better(metric):
        keep_ema = ema_score >= raw_score
    else:
        keep_ema = ema_score <= raw_score
    if keep_ema:
        for variable, value in zip(raw.variables, ema_values):
            variable.assign(value)
    return {"kept": "ema" if keep_ema else "raw", "metric": metric,
            "eval_metric_ema": ema_score, "eval_metric_raw": raw_score}


def describe_choice(choice: Dict[str, Any]) -> str:
    """The log line of keep_better_weights' choice."""
    kept = choice["kept"]
    other = "raw" if kept == "ema" else "ema"
    return (f"EMA: exporting the {kept} weights (eval {choice['metric']}: {kept} "
            f"{choice['eval_metric_' + kept]:.4f}, {other} {choice['eval_metric_' + other]:.4f})")


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
