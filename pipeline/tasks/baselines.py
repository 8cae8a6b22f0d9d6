"""The trivial predictors a model must beat under `eval.gate: baseline`, and their gates.

A shipped config's absolute thresholds (accuracy >= 0.97, MAE <= 2.2) are tuned to the
shipped data; on someone else's data they say little. The baseline gate asks instead
whether the model beats what needs no model at all, on the same test data:

- classification: the majority class. Always predicting the most frequent class of the
  TRAINING labels, scored on the TEST labels (what a model that learned only the class
  prior would score). Blessed when accuracy >= baseline accuracy + eval.baseline_margin
  (accuracy points; at most 1).
- regression (and forecasting): the training mean. Always predicting the mean of the
  training targets, scored by MAE on the test targets. Blessed when
  MAE <= (1 - eval.baseline_margin) x the mean predictor's MAE (margin 0.05: 5% lower).

In both, the change threshold against the last blessed model stays as in the absolute
gate (eval.max_accuracy_drop, eval.max_mae_increase).

The numbers are computed from the raw labels before the pipeline is built (the TFMA
config holds them), by the task's Task.baseline_metrics. Pure functions here; TFMA is
imported only by the threshold builders.
"""

import collections
from typing import Any, Hashable, Iterable, Mapping, Optional

import numpy as np

# run_summary.json metric names of the baselines (beside the model's own metrics).
BASELINE_ACCURACY = "baseline_accuracy"  # the majority class's test accuracy
MEAN_BASELINE_MAE = "mean_baseline_mae"  # the train mean's test MAE
# Keys of run_summary.json's `gate` block.
GATE_KIND = "kind"
GATE_MARGIN = "margin"
GATE_REQUIRED = "required"  # the bound the model's metric had to meet
GATE_METRIC = "metric"  # the model's metric the bound applies to


def count_labels(labels: Iterable[Hashable]) -> Mapping[Hashable, int]:
    """Label -> number of examples (a Counter)."""
    return collections.Counter(
        label.item() if isinstance(label, np.generic) else label for label in labels)


def majority_class(train_counts: Mapping[Hashable, int]) -> Hashable:
    """The most frequent training label; ties go to the smallest label (deterministic)."""
    if not train_counts or sum(train_counts.values()) == 0:
        raise ValueError("no training labels to find the majority class in")
    most = max(train_counts.values())
    return min(label for label, count in train_counts.items() if count == most)


def majority_class_accuracy(train_counts: Mapping[Hashable, int],
                            test_counts: Mapping[Hashable, int]) -> float:
    """The TEST accuracy of always predicting TRAIN's most frequent class.

    Args:
      train_counts: label -> count in the training data (the split the model learns from).
      test_counts: label -> count in the data the Evaluator scores (eval.split).

    Raises:
      ValueError: no training labels, or no test labels.
    """
    total = sum(test_counts.values())
    if total == 0:
        raise ValueError("no test labels to score the majority class on")
    return test_counts.get(majority_class(train_counts), 0) / total


def mean_predictor_mae(train_targets: Any, test_targets: Any) -> float:
    """The test MAE of always predicting the mean of the training targets.

    Args:
      train_targets: the training targets (any shape; every value counts once).
      test_targets: the targets the Evaluator scores (any shape: a forecaster's
        [windows, horizon] labels score every step, as TFMA's MAE does).
    """
    train = np.asarray(train_targets, np.float64).ravel()
    test = np.asarray(test_targets, np.float64).ravel()
    if train.size == 0 or test.size == 0:
        raise ValueError("the mean predictor needs training and test targets "
                         f"(got {train.size} and {test.size})")
    return float(np.mean(np.abs(test - train.mean())))


def required_accuracy(baseline_accuracy: float, margin: float) -> float:
    """The accuracy a classifier must reach: the baseline's plus the margin, at most 1."""
    return min(1.0, baseline_accuracy + margin)


def allowed_mae(baseline_mae: float, margin: float) -> float:
    """The largest MAE a regressor may have: (1 - margin) x the mean predictor's MAE."""
    return (1.0 - margin) * baseline_mae


def accuracy_threshold(lower_bound: float, max_drop: float):
    """TFMA threshold: accuracy >= lower_bound, and at most max_drop below the last
    blessed model (both gates end here; the absolute gate passes eval.accuracy_threshold)."""
    import tensorflow_model_analysis as tfma

    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": lower_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_drop}))


def mae_threshold(upper_bound: float, max_increase: float):
    """TFMA threshold: MAE <= upper_bound, and at most max_increase above the last
    blessed model's."""
    import tensorflow_model_analysis as tfma

    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(upper_bound={"value": upper_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.LOWER_IS_BETTER, absolute={"value": max_increase}))


def slice_accuracy_threshold(lower_bound: float):
    """TFMA threshold for the per-slice gate: accuracy >= lower_bound on the slice (no
    comparison with the last blessed model: slices can be small and noisy)."""
    import tensorflow_model_analysis as tfma

    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": lower_bound}))


def slice_mae_threshold(upper_bound: float):
    """TFMA threshold for the per-slice gate of regressors: MAE <= upper_bound."""
    import tensorflow_model_analysis as tfma

    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(upper_bound={"value": upper_bound}))


def gate_record(kind: str, metric: str, required: float, margin: Optional[float] = None
                ) -> dict:
    """run_summary.json's `gate` block: which gate, on which metric, what it required."""
    record = {GATE_KIND: kind, GATE_METRIC: metric, GATE_REQUIRED: round(float(required), 6)}
    if margin is not None:
        record[GATE_MARGIN] = margin
    return record
