"""The table task's TFMA configs: the regression gate, and the binary classifier's extras.

Classification uses the shared classifier config (pipeline.tasks.classification: accuracy,
gated; per class slices), plus AUC, precision, recall and calibration of class 1 when there
are two classes. Regression scores the `evaluation` signature: the model's MAE and RMSE, and the
MAE of predicting the train split's mean (`mean_baseline_mae`) on the same examples. The
model is blessed when its MAE is at most the mean predictor's (so it beats the trivial
answer) and at most eval.mae_threshold when set; under eval.gate baseline, at most
(1 - eval.baseline_margin) x the mean predictor's.
"""

import math
from typing import Optional, Sequence

from tfprod.pipeline import config as config_lib
from tfprod.pipeline.tasks import baselines
from tfprod.pipeline.tasks.table import (BINARY_METRICS, EVALUATION_SIGNATURE,
                                         MAE_METRIC, MEAN_BASELINE_MAE_METRIC,
                                         MEAN_BASELINE_OUTPUT, PREDICTION_OUTPUT,
                                         RMSE_METRIC)
from tfprod.contract import features

# Calibration: the mean predicted probability of class 1 over its share of the labels
# (1.0 = calibrated; above 1 over-predicts it).
_BINARY_CLASSES = {"auc": "AUC", "precision": "Precision", "recall": "Recall",
                   "calibration": "Calibration"}


def allowed_mae(eval_config: config_lib.EvalConfig, mean_baseline_mae: float) -> float:
    """The largest test MAE the regression gate blesses."""
    if eval_config.gate == config_lib.Gate.BASELINE:
        return baselines.allowed_mae(mean_baseline_mae, eval_config.baseline_margin)
    bound = mean_baseline_mae
    if eval_config.mae_threshold is not None:
        bound = min(bound, eval_config.mae_threshold)
    return bound


def regression_eval_config(eval_config: config_lib.EvalConfig, mean_baseline_mae: float,
                           slice_keys: Sequence[str] = ()):
    """TFMA config: mae (gated), rmse and mean_baseline_mae on the evaluation signature,
    overall and per value of each eval.slices feature (slice_keys); with
    eval.max_slice_mae, every such slice's MAE is gated too."""
    import tensorflow_model_analysis as tfma

    bound = allowed_mae(eval_config, mean_baseline_mae)
    if not math.isfinite(bound):
        raise ValueError(f"the regression gate needs a finite MAE bound, got {bound}")
    sliced = [tfma.SlicingSpec(feature_keys=[key]) for key in slice_keys]
    thresholds = [tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec()],
        threshold=baselines.mae_threshold(bound, eval_config.max_mae_increase))]
    if eval_config.max_slice_mae is not None and sliced:
        thresholds.append(tfma.PerSliceMetricThreshold(
            slicing_specs=sliced,
            threshold=baselines.slice_mae_threshold(eval_config.max_slice_mae)))
    mae = tfma.MetricConfig(class_name="MeanAbsoluteError", config=f'{{"name": "{MAE_METRIC}"}}',
                            per_slice_thresholds=thresholds)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=EVALUATION_SIGNATURE,
            label_keys={PREDICTION_OUTPUT: features.LABEL_KEY,
                        MEAN_BASELINE_OUTPUT: features.LABEL_KEY})],
        slicing_specs=[tfma.SlicingSpec(), *sliced],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount")]),
            tfma.MetricsSpec(output_names=[PREDICTION_OUTPUT], metrics=[
                mae, tfma.MetricConfig(class_name="RootMeanSquaredError",
                                       config=f'{{"name": "{RMSE_METRIC}"}}')]),
            tfma.MetricsSpec(output_names=[MEAN_BASELINE_OUTPUT], metrics=[
                tfma.MetricConfig(class_name="MeanAbsoluteError",
                                  config=f'{{"name": "{MEAN_BASELINE_MAE_METRIC}"}}')]),
        ])


def add_binary_metrics(config, positive_class: Optional[int] = 1) -> None:
    """Adds AUC, precision, recall and calibration of class `positive_class` (reported, not
    gated)."""
    import tensorflow_model_analysis as tfma

    config.metrics_specs.append(tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name=_BINARY_CLASSES[name],
                                   config=f'{{"name": "{name}"}}') for name in BINARY_METRICS],
        binarize=tfma.BinarizationOptions(class_ids={"values": [positive_class]})))
