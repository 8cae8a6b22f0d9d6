"""The forecasting preprocessing_fn: every column standardised with train statistics."""

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.pipeline.ingestion import timeseries
from tfprod.pipeline.tasks.forecasting import (LABEL_TRANSFORMED_KEY, TARGET_MEAN_KEY,
                                               TARGET_STD_KEY, WINDOW_TRANSFORMED_KEY)

# A column whose train values are (nearly) constant is only centred, not scaled.
_MIN_STD = 1e-6


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    """Standardises each column with its train-split mean and variance (tft.mean, tft.var).

    Args:
      inputs: raw features: one float [N, lookback] per column, optionally the label
        `forecast_label` (float [N, horizon]).
      custom_config: `columns` (feature names in model order), `target` (the target's
        feature name), `lookback`.

    Returns:
      window_xf (float [N, lookback * columns]), target_mean and target_std (float [N]),
      and, when the label is given, forecast_label_xf (float [N, horizon]).
    """
    standardised = []
    target_mean = target_std = None
    for name in custom_config["columns"]:
        values = tf.cast(inputs[name], tf.float32)
        mean = tft.mean(values)
        std = tf.sqrt(tft.var(values))
        std = tf.where(std < _MIN_STD, tf.ones_like(std), std)
        standardised.append((values - mean) / std)
        if name == custom_config["target"]:
            target_mean, target_std = mean, std
    window = tf.stack(standardised, axis=2)  # [N, lookback, columns]
    batch = tf.shape(window)[0]
    outputs = {
        WINDOW_TRANSFORMED_KEY: tf.reshape(
            window, [-1, custom_config["lookback"] * len(custom_config["columns"])]),
        TARGET_MEAN_KEY: tf.fill([batch], target_mean),
        TARGET_STD_KEY: tf.fill([batch], target_std),
    }
    if timeseries.LABEL_KEY in inputs:
        outputs[LABEL_TRANSFORMED_KEY] = (
            tf.cast(inputs[timeseries.LABEL_KEY], tf.float32) - target_mean) / target_std
    return outputs
