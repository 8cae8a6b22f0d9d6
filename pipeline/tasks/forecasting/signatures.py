"""The forecaster's signatures (on the shared skeleton), baselines and warm-up requests.

  serving_default:    serialized tf.Examples -> forecast [N, horizon] (target units)
  serving_raw:        window [N, lookback, columns] float32 (raw units) -> forecast
  transform_features: serialized tf.Examples -> the transformed features
  evaluation:         serialized tf.Examples -> forecast, persistence, seasonal_naive:
                      TFMA scores the two baselines beside the model on the same windows.
"""

from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tfprod.contract import features
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.ingestion import timeseries
from tfprod.pipeline.tasks import signatures
from tfprod.pipeline.tasks.forecasting import (EVALUATION_SIGNATURE, FORECAST_OUTPUT,
                                               PERSISTENCE_OUTPUT, SEASONAL_NAIVE_OUTPUT,
                                               TARGET_MEAN_KEY, TARGET_STD_KEY, WINDOW_INPUT,
                                               WINDOW_TRANSFORMED_KEY, feature_names)


def baseline_forecasts(target_history, horizon: int, seasonal_period: int):
    """Persistence and seasonal-naive forecasts from the target's history [N, lookback].

    Persistence repeats the last value. Seasonal-naive forecasts step h (1..horizon)
    with the value seasonal_period steps before it, going back whole periods until
    the value was observed (t + h - k * period, k = ceil(h / period)).
    """
    lookback = target_history.shape[-1]
    persistence = tf.repeat(target_history[:, -1:], horizon, axis=1)
    indices = [lookback - 1 + step - seasonal_period * -(-step // seasonal_period)
               for step in range(1, horizon + 1)]
    seasonal_naive = tf.gather(target_history, indices, axis=1)
    return persistence, seasonal_naive


def make_forecasting_signatures(model, tf_transform_output,
                                experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
    """The concrete functions for tf.saved_model.save(model, ..., signatures=...)."""
    time_series = experiment.data.time_series
    names = feature_names(experiment)
    target_name = timeseries.feature_name(time_series.target_column)
    lookback, horizon = time_series.lookback, time_series.horizon

    def outputs(model, transformed):
        standardised = model(transformed[WINDOW_TRANSFORMED_KEY], training=False)
        # Back to the target's units with the train statistics Transform computed.
        return {FORECAST_OUTPUT: standardised * tf.expand_dims(transformed[TARGET_STD_KEY], 1)
                + tf.expand_dims(transformed[TARGET_MEAN_KEY], 1)}

    def evaluate(raw, predict):
        persistence, seasonal_naive = baseline_forecasts(
            raw[target_name], horizon, time_series.seasonal_period)
        return {FORECAST_OUTPUT: predict(raw)[FORECAST_OUTPUT],
                PERSISTENCE_OUTPUT: persistence, SEASONAL_NAIVE_OUTPUT: seasonal_naive}

    return signatures.make_signatures(
        model, tf_transform_output, outputs=outputs,
        raw_input=tf.TensorSpec([None, lookback, len(names)], tf.float32, name=WINDOW_INPUT),
        raw_to_features=lambda window: {name: window[:, :, position]
                                        for position, name in enumerate(names)},
        serving_features=names,
        extra={EVALUATION_SIGNATURE: evaluate})


def forecasting_warmup_requests(experiment: config_lib.ExperimentConfig,
                                batch_sizes=(1, 8)) -> List[Any]:
    """Requests for both prediction signatures: windows of zeros."""
    time_series = experiment.data.time_series
    names = feature_names(experiment)
    example = tf.train.Example()
    for name in names:
        example.features.feature[name].float_list.value.extend([0.0] * time_series.lookback)
    requests = []
    for batch_size in batch_sizes:
        raw = predict_pb2.PredictRequest()
        raw.model_spec.name = experiment.export.model_name
        raw.model_spec.signature_name = features.SERVING_RAW_SIGNATURE
        raw.inputs[WINDOW_INPUT].CopyFrom(tf.make_tensor_proto(
            np.zeros([batch_size, time_series.lookback, len(names)], np.float32)))
        requests.append(raw)
        serialized = predict_pb2.PredictRequest()
        serialized.model_spec.name = experiment.export.model_name
        serialized.model_spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
        serialized.inputs[signatures.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(
            np.array([example.SerializeToString()] * batch_size, dtype=object)))
        requests.append(serialized)
    return requests
