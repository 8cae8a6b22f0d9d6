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

import fnmatch
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

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
            input_base=data_dir,
            file_pattern=experiment.data.time_series.file or timeseries.ANY_CSV,
            spec=series_spec(experiment))

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """Reads and checks the CSV, and that each split holds a window
        (TimeSeriesFormatError naming the lines otherwise).

        When data.time_series.file matches nothing (or is null) and the directory holds
        one CSV, that CSV is the series (timeseries.find_csv warns): its name goes into
        data.time_series.file, so the ExampleGen reads it and config.yaml records it.
        """
        spec = series_spec(experiment)
        time_series = experiment.data.time_series
        path = timeseries.find_csv(experiment.data.data_dir, time_series.file)
        series = timeseries.read_series(path, spec)
        timeseries.split_bounds(len(series), spec)
        if time_series.file != os.path.basename(path) and not (
                time_series.file and fnmatch.fnmatch(os.path.basename(path), time_series.file)):
            time_series.file = os.path.basename(path)

    def baseline_metrics(self, experiment: config_lib.ExperimentConfig) -> Dict[str, float]:
        """{"mean_baseline_mae": the MAE of forecasting the train split's mean of the target
        for every step of every test window}. Reads the CSV."""
        from tfprod.pipeline.tasks import baselines

        spec = series_spec(experiment)
        try:
            path = timeseries.find_csv(experiment.data.data_dir, experiment.data.time_series.file)
        except timeseries.TimeSeriesFormatError as error:
            raise config_lib.ConfigError(
                f"eval.gate baseline reads the series before the run, and could not ({error}); "
                "use --set eval.gate=absolute with --set eval.mae_threshold=MAE") from None
        train, test_labels = timeseries.baseline_targets(timeseries.read_series(path, spec), spec)
        return {baselines.MEAN_BASELINE_MAE: baselines.mean_predictor_mae(train, test_labels)}

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

    def supports_mobile(self) -> bool:
        """TFLite: the raw window in, the forecast in raw units out (mobile.sequence)."""
        return True

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.pipeline.tasks.forecasting import signatures

        return signatures.forecasting_warmup_requests(experiment)

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        baseline = None
        if experiment.eval.gate == config_lib.Gate.BASELINE:
            from tfprod.pipeline.tasks import baselines

            baseline = self.baseline_metrics(experiment)[baselines.MEAN_BASELINE_MAE]
        return forecasting_eval_config(experiment.eval, baseline)


def allowed_mae(eval_config: config_lib.EvalConfig, mean_baseline_mae: Optional[float]) -> float:
    """The largest test MAE the gate blesses: eval.mae_threshold (absolute), or
    (1 - eval.baseline_margin) x the train mean's MAE (baseline)."""
    from tfprod.pipeline.tasks import baselines

    if eval_config.gate == config_lib.Gate.BASELINE:
        if mean_baseline_mae is None:
            raise ValueError("eval.gate baseline needs the mean predictor's MAE")
        return baselines.allowed_mae(mean_baseline_mae, eval_config.baseline_margin)
    return eval_config.mae_threshold


def forecasting_eval_config(eval_config: config_lib.EvalConfig,
                            mean_baseline_mae: Optional[float] = None):
    """TFMA config: MAE and RMSE of the forecast and of both baselines, on the same windows.

    Blessing gates on the forecast's MAE only: at most allowed_mae (eval.mae_threshold,
    or under eval.gate baseline (1 - eval.baseline_margin) x mean_baseline_mae), and at
    most eval.max_mae_increase above the last blessed model's.
    """
    import tensorflow_model_analysis as tfma

    from tfprod.pipeline.tasks import baselines

    mae_threshold = baselines.mae_threshold(allowed_mae(eval_config, mean_baseline_mae),
                                            eval_config.max_mae_increase)
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
