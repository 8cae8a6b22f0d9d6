"""Forecasting: a timestamped numeric CSV -> (lookback -> horizon) windows -> a forecaster.

Raw examples (pipeline.ingestion.timeseries): one float list [lookback] per column, the
label `forecast_label` (the target's next horizon values, in its units) and the window's
last timestamp. Transform standardises every column with the mean and standard
deviation of the train split (preprocessing.py); the model sees the standardised window
(flat, [lookback * columns], time-major) and predicts the standardised future target.

Exported signatures (signatures.py):
  serving_default:    serialized tf.Examples -> forecast [N, horizon] (target units)
  serving_raw:        window [N, lookback, columns] float32 (raw units) -> forecast
  transform_features: serialized tf.Examples -> the transformed features
  evaluation:         serialized tf.Examples -> forecast, persistence, seasonal_naive:
                      TFMA scores the two baselines beside the model on the same windows.
"""

from typing import Any, Callable, Dict, List, Tuple

from tfprod.contract.tasks import TaskName
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.ingestion import timeseries
from tfprod.pipeline.tasks import FORECAST_SECTION, Task, register

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

# Metric names in run_summary.json: the model's, then each baseline's (prefixed).
MAE_METRIC = "mae"
RMSE_METRIC = "rmse"
_OUTPUT_PREFIXES = {FORECAST_OUTPUT: "", PERSISTENCE_OUTPUT: "persistence_",
                    SEASONAL_NAIVE_OUTPUT: "seasonal_naive_"}


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

        path = timeseries.find_csv(experiment.data.data_dir, time_series.file)
        with tf.io.gfile.GFile(path, "r") as handle:
            header = pd.read_csv(handle, nrows=0, skipinitialspace=True).columns
        columns = [str(c).strip() for c in header if str(c).strip() != time_series.timestamp_column]
    if time_series.target_column not in columns:
        columns.append(time_series.target_column)
    return columns


def feature_names(experiment: config_lib.ExperimentConfig) -> List[str]:
    return [timeseries.feature_name(column) for column in column_names(experiment)]


@register
class ForecastingTask(Task):
    """Multi-step forecasting of data.time_series.target_column from a window of columns."""

    name = TaskName.FORECASTING
    data_formats = (config_lib.DataFormat.CSV.value,)
    metrics = ("loss", MAE_METRIC)
    summary_metrics = (MAE_METRIC, RMSE_METRIC)
    report_sections = frozenset({FORECAST_SECTION})

    def preprocessing_function(self) -> Callable:
        from tfprod.pipeline.tasks.forecasting import preprocessing

        return preprocessing.preprocessing_fn

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        from tfprod.pipeline.ingestion import timeseries_example_gen

        return timeseries_example_gen.TimeSeriesExampleGen(
            input_base=data_dir, file_pattern=experiment.data.time_series.file,
            spec=series_spec(experiment))

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """Reads and checks the CSV, and that each split holds a window
        (TimeSeriesFormatError naming the lines otherwise)."""
        spec = series_spec(experiment)
        path = timeseries.find_csv(experiment.data.data_dir, experiment.data.time_series.file)
        series = timeseries.read_series(path, spec)
        timeseries.split_bounds(len(series), spec)

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
                      metrics=[tf.keras.metrics.RootMeanSquaredError(name=RMSE_METRIC)])

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        from tfprod.pipeline.tasks.forecasting import signatures

        return signatures.make_forecasting_signatures(model, tf_transform_output, experiment)

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.pipeline.tasks.forecasting import signatures

        return signatures.forecasting_warmup_requests(experiment)

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        return forecasting_eval_config(experiment.eval)


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
