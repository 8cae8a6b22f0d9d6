"""TFDV's comparators between two sets of statistics, with the thresholds of the config.

Skew (`tfdv.validate_statistics(..., serving_statistics=...)`): the training statistics
against the served requests' (`tfprod monitor`). Drift (`previous_statistics=`): a new
run's data against the last blessed run's (pipeline/drift_check.py). Both use TFDV's
FeatureComparator: L-infinity distance for categorical features (strings, or integers the
schema marks categorical) and approximate Jensen-Shannon divergence for numeric ones. TFDV
reports every measured distance in the Anomalies' drift_skew_info; a feature is past its
threshold when its distance is greater than the threshold.
"""

import copy
import dataclasses
from typing import Dict, Iterable, List, Optional

from tfprod.contract import features
from tfprod.pipeline import config as config_lib

SKEW = "skew"
DRIFT = "drift"
L_INFINITY = "L-infinity"
JENSEN_SHANNON = "Jensen-Shannon divergence"
SERVING_ENVIRONMENT = "SERVING"
TRAINING_ENVIRONMENT = "TRAINING"


@dataclasses.dataclass
class FeatureDistance:
    """One feature's distance from the reference, and its verdict."""

    feature: str
    comparator: str  # L_INFINITY or JENSEN_SHANNON
    distance: Optional[float]  # None: TFDV measured none (e.g. the feature is absent)
    threshold: float
    drifted: bool

    def describe(self) -> str:
        shown = "not measured" if self.distance is None else f"{self.distance:.4f}"
        return f"{self.feature} ({self.comparator} {shown} > {self.threshold:g})"


def is_categorical(schema_feature) -> bool:
    """Whether TFDV treats the feature as categorical (L-infinity) rather than numeric."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    if schema_feature.type == schema_pb2.BYTES:
        return True
    if schema_feature.type == schema_pb2.INT:
        return (schema_feature.HasField("int_domain")
                and schema_feature.int_domain.is_categorical) or schema_feature.HasField("domain")
    return False


def as_list(statistics):
    """A DatasetFeatureStatisticsList from one DatasetFeatureStatistics (or the list)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    if isinstance(statistics, statistics_pb2.DatasetFeatureStatisticsList):
        return statistics
    result = statistics_pb2.DatasetFeatureStatisticsList()
    result.datasets.add().CopyFrom(statistics)
    return result


def statistics_of_examples(serialized: List[bytes]):
    """TFDV statistics (DatasetFeatureStatisticsList) of serialized tf.Examples, in memory,
    with TFDV's default options (those StatisticsGen uses)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    # One batch: the decoder's columns are the features present, so batches of different
    # requests could not be joined.
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(serialized)
    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())


def _comparator_schema(schema, names: Iterable[str], thresholds: config_lib.MonitorConfig,
                       mode: str, threshold_override: Optional[float] = None):
    """A copy of the schema with a skew (or drift) comparator on each named feature."""
    configured = copy.deepcopy(schema)
    for feature in configured.feature:
        if feature.name not in names:
            continue
        categorical = is_categorical(feature)
        threshold = (threshold_override if threshold_override is not None
                     else thresholds.threshold_for(feature.name, categorical))
        comparator = feature.skew_comparator if mode == SKEW else feature.drift_comparator
        if categorical:
            comparator.infinity_norm.threshold = threshold
        else:
            comparator.jensen_shannon_divergence.threshold = threshold
    return configured


def _measured(anomalies, mode: str) -> Dict[str, float]:
    """feature -> the distance TFDV measured (the larger one if it measured two)."""
    result = {}
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        measurements = info.skew_measurements if mode == SKEW else info.drift_measurements
        for measurement in measurements:
            result[name] = max(result.get(name, 0.0), float(measurement.value))
    return result


def compare(reference, current, schema, thresholds: config_lib.MonitorConfig, mode: str = SKEW,
            exclude: Iterable[str] = (features.LABEL_KEY,),
            threshold_override: Optional[float] = None) -> List[FeatureDistance]:
    """Each schema feature's distance between reference and current statistics.

    Args:
      reference: the training statistics (skew) or the previous run's (drift).
      current: the served requests' statistics (skew) or this run's (drift).
      schema: the run's schema; its features are the ones compared, but those in exclude.
      thresholds: the config's monitor section (per-feature, else per-kind defaults).
      mode: SKEW or DRIFT (which TFDV comparator is set and read).
      threshold_override: one threshold for every feature (the prediction distribution's).
    """
    import tensorflow_data_validation as tfdv

    names = [feature.name for feature in schema.feature if feature.name not in set(exclude)]
    configured = _comparator_schema(schema, names, thresholds, mode, threshold_override)
    if mode == SKEW:
        anomalies = tfdv.validate_statistics(as_list(reference), configured,
                                             serving_statistics=as_list(current))
    else:
        anomalies = tfdv.validate_statistics(as_list(current), configured,
                                             previous_statistics=as_list(reference))
    measured = _measured(anomalies, mode)
    result = []
    for feature in configured.feature:
        if feature.name not in names:
            continue
        comparator = feature.skew_comparator if mode == SKEW else feature.drift_comparator
        categorical = comparator.HasField("infinity_norm")
        threshold = (comparator.infinity_norm.threshold if categorical
                     else comparator.jensen_shannon_divergence.threshold)
        distance = measured.get(feature.name)
        result.append(FeatureDistance(
            feature=feature.name, comparator=L_INFINITY if categorical else JENSEN_SHANNON,
            distance=distance, threshold=threshold,
            drifted=distance is not None and distance > threshold))
    return result


def serving_anomalies(current, schema, exclude: Iterable[str] = (features.LABEL_KEY,)
                      ) -> List[Dict[str, str]]:
    """The served data's anomalies against the schema (TFDV's SERVING environment: the
    excluded features, the label, are not expected), one row per anomaly."""
    import tensorflow_data_validation as tfdv

    serving_schema = copy.deepcopy(schema)
    for environment in (TRAINING_ENVIRONMENT, SERVING_ENVIRONMENT):
        if environment not in serving_schema.default_environment:
            serving_schema.default_environment.append(environment)
    for feature in serving_schema.feature:
        if feature.name in set(exclude):
            feature.not_in_environment.append(SERVING_ENVIRONMENT)
    anomalies = tfdv.validate_statistics(as_list(current), serving_schema,
                                         environment=SERVING_ENVIRONMENT)
    rows = []
    for name, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason or [info]:
            rows.append({"feature": name, "short": reason.short_description,
                         "description": reason.description})
    return rows


def prediction_distance(reference: list, current: list, categorical: bool,
                        threshold: float) -> FeatureDistance:
    """The distance between two prediction distributions (class ids: L-infinity; values:
    Jensen-Shannon), with TFDV's comparator on a one-feature schema."""
    import tensorflow_data_validation as tfdv

    from tfprod.pipeline.monitor import features as monitor_features

    reference_stats = statistics_of_examples(
        monitor_features.prediction_examples(reference, categorical))
    current_stats = statistics_of_examples(
        monitor_features.prediction_examples(current, categorical))
    schema = tfdv.infer_schema(reference_stats)
    (distance,) = compare(reference_stats, current_stats, schema, config_lib.MonitorConfig(),
                          SKEW, exclude=(), threshold_override=threshold)
    return distance


def distribution(values: list) -> Dict[str, float]:
    """{value: share} of categorical predictions, sorted by value (numbers first)."""
    counts: Dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    total = max(len(values), 1)

    def order(key: str):
        return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)

    return {key: counts[key] / total for key in sorted(counts, key=order)}
