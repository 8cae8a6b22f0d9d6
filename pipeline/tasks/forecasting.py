"""Forecasting: a timestamped numeric CSV -> (lookback -> horizon) windows -> a forecaster.

Raw examples (pipeline.timeseries): one float list [lookback] per column, the label
`forecast_label` (the target's next horizon values, in its units) and the window's
last timestamp. Transform standardises every column with the mean and standard
deviation of the train split; the model sees the standardised window (flat,
[lookback * columns], time-major) and predicts the standardised future target.

Exported signatures:
  serving_default:    serialized tf.Examples -> forecast [N, horizon] (target units)
  serving_raw:        window [N, lookback, columns] float32 (raw units) -> forecast
  transform_features: serialized tf.Examples -> the transformed features
  evaluation:         serialized tf.Examples -> forecast, persistence, seasonal_naive:
                      TFMA scores the two baselines beside the model on the same windows.
"""

from typing import Any, Dict, List, Tuple

from tfprod.pipeline import config as config_lib
from tfprod.contract import features
from tfprod.pipeline import timeseries
from tfprod.pipeline.tasks import Task

FORECASTING = "forecasting"

# Transformed features.
WINDOW_TRANSFORMED_KEY = "window_xf"  # float [lookback * columns], standardised, time-major
LABEL_TRANSFORMED_KEY = "forecast_label_xf"  # float [horizon], standardised like the target
TARGET_MEAN_KEY = "target_mean"  # float [] per example: the train mean of the target
TARGET_STD_KEY = "target_std"  # float [] per example: the train standard deviation

# Inputs and outputs of the exported signatures.
WINDOW_INPUT = "window"  # serving_raw: [N, lookback, columns], columns in config order
FORECAST_OUTPUT = "forecast"
PERSISTENCE_OUTPUT = "persistence"
SEASONAL_NAIVE_OUTPUT = "seasonal_naive"
EVALUATION_SIGNATURE = "evaluation"

# A column whose train values are (nearly) constant is only centred, not scaled.
_MIN_STD = 1e-6


def series_spec(experiment: config_lib.ExperimentConfig) -> timeseries.SeriesSpec:
    return timeseries.SeriesSpec.from_config(experiment.data.time_series)


def column_names(experiment: config_lib.ExperimentConfig) -> List[str]:
    """The CSV columns the model reads, in order (feature_columns, then the target if absent).

    With no feature_columns configured the columns come from the CSV's header, so this
    reads the header of data.time_series.file in data.data_dir.
    """
    time_series = experiment.data.time_series
    columns = list(time_series.feature_columns)
    if not columns:
        import pandas as pd
        import tensorflow as tf

        from tfprod.pipeline import timeseries_ingestion

        path = timeseries_ingestion.find_csv(experiment.data.data_dir, time_series.file)
        with tf.io.gfile.GFile(path, "r") as handle:
            header = pd.read_csv(handle, nrows=0, skipinitialspace=True).columns
        columns = [str(c).strip() for c in header if str(c).strip() != time_series.timestamp_column]
    if time_series.target_column not in columns:
        columns.append(time_series.target_column)
    return columns


def feature_names(experiment: config_lib.ExperimentConfig) -> List[str]:
    return [timeseries.feature_name(column) for column in column_names(experiment)]


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
    import tensorflow as tf
    import tensorflow_transform as tft

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


def baseline_forecasts(target_history, horizon: int, seasonal_period: int):
    """Persistence and seasonal-naive forecasts from the target's history [N, lookback].

    Persistence repeats the last value. Seasonal-naive forecasts step h (1..horizon)
    with the value seasonal_period steps before it, going back whole periods until
    the value was observed (t + h - k * period, k = ceil(h / period)).
    """
    import tensorflow as tf

    lookback = target_history.shape[-1]
    persistence = tf.repeat(target_history[:, -1:], horizon, axis=1)
    indices = [lookback - 1 + step - seasonal_period * -(-step // seasonal_period)
               for step in range(1, horizon + 1)]
    seasonal_naive = tf.gather(target_history, indices, axis=1)
    return persistence, seasonal_naive


class ForecastingTask(Task):
    """Multi-step forecasting of data.time_series.target_column from a window of columns."""

    name = FORECASTING
    preprocessing_fn = "tfprod.pipeline.tasks.forecasting.preprocessing_fn"

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        from tfprod.pipeline import timeseries_ingestion

        return timeseries_ingestion.TimeSeriesExampleGen(
            input_base=data_dir, file_pattern=experiment.data.time_series.file,
            spec=series_spec(experiment))

    def transform_custom_config(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        time_series = experiment.data.time_series
        return {"columns": feature_names(experiment),
                "target": timeseries.feature_name(time_series.target_column),
                "lookback": time_series.lookback}

    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        from tfprod.models import registry

        time_series = experiment.data.time_series
        columns = column_names(experiment)
        return registry.ModelInputs(
            feature_name=WINDOW_TRANSFORMED_KEY,
            feature_shape=(time_series.lookback * len(columns),),
            num_classes=0,
            window_shape=(time_series.lookback, len(columns)),
            horizon=time_series.horizon,
            target_index=columns.index(time_series.target_column))

    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        return transformed[WINDOW_TRANSFORMED_KEY], transformed[LABEL_TRANSFORMED_KEY]

    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        import tensorflow as tf

        del experiment
        # MAE in standardised units: the loss ranks models as the blessing metric does.
        model.compile(optimizer=optimizer, loss=tf.keras.losses.MeanAbsoluteError(),
                      metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        return make_forecasting_signatures(model, tf_transform_output, experiment)

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        return forecasting_warmup_requests(experiment)

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        return forecasting_eval_config(experiment.eval)


def make_forecasting_signatures(model, tf_transform_output,
                                experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
    """The concrete functions for tf.saved_model.save(model, ..., signatures=...)."""
    import tensorflow as tf

    time_series = experiment.data.time_series
    names = feature_names(experiment)
    target_name = timeseries.feature_name(time_series.target_column)
    lookback, horizon = time_series.lookback, time_series.horizon
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    input_spec = {name: raw_feature_spec[name] for name in names}

    def forecast(raw_features):
        transformed = model.tft_layer(raw_features)
        standardised = model(transformed[WINDOW_TRANSFORMED_KEY], training=False)
        # Back to the target's units with the train statistics Transform computed.
        return (standardised * tf.expand_dims(transformed[TARGET_STD_KEY], 1)
                + tf.expand_dims(transformed[TARGET_MEAN_KEY], 1))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized_examples):
        return {FORECAST_OUTPUT: forecast(tf.io.parse_example(serialized_examples, input_spec))}

    @tf.function(input_signature=[
        tf.TensorSpec([None, lookback, len(names)], tf.float32, name=WINDOW_INPUT)])
    def serve_raw(window):
        return {FORECAST_OUTPUT: forecast(
            {name: window[:, :, position] for position, name in enumerate(names)})}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized_examples):
        return model.tft_layer(tf.io.parse_example(serialized_examples, raw_feature_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def evaluate(serialized_examples):
        raw = tf.io.parse_example(serialized_examples, input_spec)
        persistence, seasonal_naive = baseline_forecasts(
            raw[target_name], horizon, time_series.seasonal_period)
        return {FORECAST_OUTPUT: forecast(raw), PERSISTENCE_OUTPUT: persistence,
                SEASONAL_NAIVE_OUTPUT: seasonal_naive}

    return {
        features.SERVING_DEFAULT_SIGNATURE: serve_examples.get_concrete_function(),
        features.SERVING_RAW_SIGNATURE: serve_raw.get_concrete_function(),
        features.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
        EVALUATION_SIGNATURE: evaluate.get_concrete_function(),
    }


def forecasting_warmup_requests(experiment: config_lib.ExperimentConfig,
                                batch_sizes=(1, 8)) -> List[Any]:
    """Requests for both prediction signatures: windows of zeros."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

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
        serialized.inputs["examples"].CopyFrom(tf.make_tensor_proto(
            np.array([example.SerializeToString()] * batch_size, dtype=object)))
        requests.append(serialized)
    return requests


# Metric names in run_summary.json: the model's, then each baseline's (prefixed).
MAE_METRIC = "mae"
RMSE_METRIC = "rmse"
_OUTPUT_PREFIXES = {FORECAST_OUTPUT: "", PERSISTENCE_OUTPUT: "persistence_",
                    SEASONAL_NAIVE_OUTPUT: "seasonal_naive_"}


def forecasting_eval_config(eval_config: config_lib.EvalConfig):
    """TFMA config: MAE and RMSE of the forecast and of both baselines, on the same windows.

    Blessing gates on the forecast's MAE only: at most eval.mae_threshold, and at most
    eval.max_mae_increase above the last blessed model's.
    """
    import tensorflow_model_analysis as tfma

    mae_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(
            upper_bound={"value": eval_config.mae_threshold}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.LOWER_IS_BETTER,
            absolute={"value": eval_config.max_mae_increase}))
    metrics_specs = [tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount")])]
    for output, prefix in _OUTPUT_PREFIXES.items():
        mae = tfma.MetricConfig(class_name="MeanAbsoluteError",
                                config=f'{{"name": "{prefix}{MAE_METRIC}"}}')
        if output == FORECAST_OUTPUT:
            mae.threshold.CopyFrom(mae_threshold)
        metrics_specs.append(tfma.MetricsSpec(output_names=[output], metrics=[
            mae,
            tfma.MetricConfig(class_name="RootMeanSquaredError",
                              config=f'{{"name": "{prefix}{RMSE_METRIC}"}}'),
        ]))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=EVALUATION_SIGNATURE,
            label_keys={output: timeseries.LABEL_KEY for output in _OUTPUT_PREFIXES})],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=metrics_specs)
