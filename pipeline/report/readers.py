"""Readers of a run's artifacts into plain Python values for the report's sections.

Each reader takes the RunData and returns None (or an empty value) when the run
does not have what it reads; the sections turn None into "not present".
"""

import dataclasses
import glob
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tfprod.contract import features
from tfprod.contract import layout
from tfprod.pipeline.report.html import format_number
from tfprod.pipeline.report.run_data import RunData

# Bounds that keep the report quick on big runs; the report states them where they apply.
MAX_LABELS_COUNTED = 200_000       # per split, for the class balance
MAX_CONFUSION_EXAMPLES = 5_000      # test examples run through the model for the confusion matrix
SAMPLE_IMAGES_SCANNED = 2_000       # train examples scanned for the sample grid
BASELINE_MODEL_NAME = "baseline"    # TFMA's name for the last blessed model
SCHEMA_DIFF_FILE = "SchemaDiff.pb"  # ExampleValidator's file per split


# --- data -------------------------------------------------------------------------------

def split_names(uri: str) -> List[str]:
    """The splits of a split artifact (its Split-<name> folders), train/eval/test first."""
    names = [os.path.basename(path)[len("Split-"):]
             for path in glob.glob(os.path.join(uri, "Split-*"))]
    order = {"train": 0, "eval": 1, "test": 2}
    return sorted(names, key=lambda name: (order.get(name, 3), name))


def read_statistics(run: RunData):
    """{split: DatasetFeatureStatistics} from StatisticsGen, or None."""
    uri = run.uri("statistics")
    if not uri:
        return None
    import tensorflow_data_validation as tfdv

    result = {}
    for split in split_names(uri):
        path = os.path.join(uri, f"Split-{split}", "FeatureStats.pb")
        if os.path.isfile(path):
            result[split] = tfdv.load_stats_binary(path).datasets[0]
    return result or None


def read_schema(run: RunData):
    """The run's schema proto, or None."""
    uri = run.uri("schema")
    path = os.path.join(uri, "schema.pbtxt") if uri else None
    if not path or not os.path.isfile(path):
        return None
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(path)


def read_anomalies(run: RunData) -> Optional[List[Dict[str, str]]]:
    """One row per anomaly (split, feature, short and long description), or None without them.

    An empty list means ExampleValidator ran and found nothing.
    """
    uri = run.uri("anomalies")
    if not uri:
        return None
    # Read here rather than through pipeline.validation, whose import pulls in all of TFX.
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    rows = []
    for split in split_names(uri):
        anomalies = anomalies_pb2.Anomalies()
        with open(os.path.join(uri, f"Split-{split}", SCHEMA_DIFF_FILE), "rb") as handle:
            anomalies.ParseFromString(handle.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            for reason in info.reason or [info]:
                rows.append({"split": split, "feature": feature,
                             "short": reason.short_description, "description": reason.description})
        if anomalies.HasField("dataset_anomaly_info"):
            for reason in anomalies.dataset_anomaly_info.reason:
                rows.append({"split": split, "feature": "(whole dataset)",
                             "short": reason.short_description, "description": reason.description})
    return rows


def _record_files(examples_uri: str, split: str) -> List[str]:
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))


def _records(examples_uri: str, split: str, limit: int):
    """A dataset of up to limit serialized tf.Examples of one split of ExampleGen's output."""
    import tensorflow as tf

    files = _record_files(examples_uri, split)
    if not files:
        return None
    return tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)


def label_is_integer(run: RunData) -> bool:
    """Whether the schema's label feature is an integer (a class id), not a float target."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = run.cached("schema", lambda: read_schema(run))
    if schema is None:
        return False
    return any(feature.name == features.LABEL_KEY and feature.type == schema_pb2.INT
               for feature in schema.feature)


def read_class_counts(run: RunData) -> Optional[Dict[str, Dict[int, int]]]:
    """{split: {class id: count}} counted from ExampleGen's examples, or None.

    Counts at most MAX_LABELS_COUNTED examples per split.
    """
    uri = run.uri("examples")
    if not uri or not label_is_integer(run):
        return None
    import tensorflow as tf

    spec = {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    counts = {}
    for split in split_names(uri):
        records = _records(uri, split, MAX_LABELS_COUNTED)
        if records is None:
            continue
        labels = [batch[features.LABEL_KEY].numpy() for batch in records.batch(2048).map(
            lambda serialized: tf.io.parse_example(serialized, spec))]
        values, numbers = np.unique(np.concatenate(labels) if labels else np.array([], np.int64),
                                    return_counts=True)
        counts[split] = {int(value): int(number) for value, number in zip(values, numbers)}
    return counts or None


def _has_photos(schema) -> bool:
    """Whether the examples hold encoded photos (data.format image_folder)."""
    return any(feature.name == features.IMAGE_BYTES_KEY for feature in schema.feature)


def image_shape(run: RunData) -> Optional[Tuple[int, int]]:
    """(height, width) when the run's data are images (an `image` feature of height*width,
    or encoded photos, shown at the size the model sees them)."""
    schema = run.cached("schema", lambda: read_schema(run))
    height = run.config_value("data.image_height")
    width = run.config_value("data.image_width")
    if schema is None or not height or not width:
        return None
    if _has_photos(schema):
        return int(height), int(width)
    for feature in schema.feature:
        if feature.name == features.IMAGE_KEY:
            dims = [dim.size for dim in feature.shape.dim]
            if int(np.prod(dims or [0])) == height * width:
                return int(height), int(width)
    return None


def read_sample_images(run: RunData, per_class: int) -> Optional[Dict[int, np.ndarray]]:
    """{class id: uint8 [n, height, width]}: the first images of each class in the train split.

    Photos come as uint8 [n, height, width, 3] (or 1), decoded, resized and cropped as the
    model sees them (the task's preprocessing).
    """
    shape = image_shape(run)
    uri = run.uri("examples")
    if shape is None or not uri or not label_is_integer(run):
        return None
    if _has_photos(run.cached("schema", lambda: read_schema(run))):
        return _read_sample_photos(run, uri, shape, per_class)
    from tfprod.mobile import data as mobile_data

    images, labels = mobile_data.read_examples_split(uri, "train", *shape,
                                                     limit=SAMPLE_IMAGES_SCANNED)
    return {int(label): images[labels == label][:per_class].astype(np.uint8)
            for label in np.unique(labels)}


def _photo_records(run: RunData, uri: str):
    """Parsed (encoded photo, class id, class name) batches of the train split, or None."""
    import tensorflow as tf

    records = _records(uri, "train", SAMPLE_IMAGES_SCANNED)
    if records is None:
        return None
    spec = {features.IMAGE_BYTES_KEY: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            features.CLASS_NAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    return records.batch(256).map(lambda serialized: tf.io.parse_example(serialized, spec))


def _read_sample_photos(run: RunData, uri: str, shape: Tuple[int, int], per_class: int
                        ) -> Optional[Dict[int, np.ndarray]]:
    from tfprod.pipeline.tasks.image import preprocessing

    batches = _photo_records(run, uri)
    if batches is None:
        return None
    channels = int(run.config_value("data.image_channels") or 3)
    chosen: Dict[int, List[bytes]] = {}
    for batch in batches:
        for encoded, label in zip(batch[features.IMAGE_BYTES_KEY].numpy(),
                                  batch[features.LABEL_KEY].numpy()):
            if len(chosen.setdefault(int(label), [])) < per_class:
                chosen[int(label)].append(encoded)
    return {label: np.stack([preprocessing.decode_and_fit(encoded, *shape, channels).numpy()
                             for encoded in photos]).round().astype(np.uint8)
            for label, photos in chosen.items()}


def read_class_names(run: RunData) -> Dict[int, str]:
    """{class id: class name} where the examples carry names (photo folders), else {}."""
    uri = run.uri("examples")
    schema = run.cached("schema", lambda: read_schema(run))
    if not uri or schema is None or not _has_photos(schema):
        return {}
    batches = _photo_records(run, uri)
    names: Dict[int, str] = {}
    for batch in batches if batches is not None else ():
        for label, name in zip(batch[features.LABEL_KEY].numpy(),
                               batch[features.CLASS_NAME_KEY].numpy()):
            names.setdefault(int(label), name.decode("utf-8", "replace"))
    return names


# --- training ---------------------------------------------------------------------------

def read_training_history(run: RunData) -> Optional[Dict[str, Any]]:
    """{"history": {metric: [per epoch]}, "source": ..., "stats": training_stats or {}}.

    Reads training_stats.json (written by the Trainer's run_fn); without it, the
    epoch scalars of the Trainer's TensorBoard logs.
    """
    uri = run.uri("model_run")
    if not uri:
        return None
    stats_path = os.path.join(uri, layout.TRAINING_STATS_FILE)
    if os.path.isfile(stats_path):
        with open(stats_path, encoding="utf-8") as handle:
            stats = json.load(handle)
        if stats.get("history"):
            return {"history": stats["history"], "source": stats_path, "stats": stats}
    history = read_tensorboard_history(uri)
    if history:
        return {"history": history, "source": f"TensorBoard logs in {uri}", "stats": {}}
    return None


def read_tensorboard_history(log_dir: str) -> Dict[str, List[float]]:
    """Keras' per-epoch scalars from TensorBoard event files, in Keras' history names.

    train/epoch_loss -> loss, validation/epoch_accuracy -> val_accuracy.
    """
    import tensorflow as tf

    history: Dict[str, Dict[int, float]] = {}
    for subdir, prefix in (("train", ""), ("validation", "val_")):
        for path in sorted(glob.glob(os.path.join(log_dir, subdir, "events.out.tfevents.*"))):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if not value.tag.startswith("epoch_"):
                        continue
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    name = prefix + value.tag[len("epoch_"):]
                    history.setdefault(name, {})[int(event.step)] = number
    return {name: [values[step] for step in sorted(values)] for name, values in history.items()}


# --- evaluation -------------------------------------------------------------------------

def _slice_name(slice_key) -> str:
    from tfprod.pipeline import summary

    return summary.slice_name(slice_key)


@dataclasses.dataclass
class MetricRow:
    """One metric on one slice: the new model, the baseline and their difference."""

    slice_name: str
    metric: str
    value: Optional[float] = None
    baseline: Optional[float] = None
    difference: Optional[float] = None
    threshold: str = ""
    passed: Optional[bool] = None  # None: no threshold on this metric and slice


def _thresholds(eval_config) -> Dict[Tuple[str, str], List[Tuple[str, Any]]]:
    """{(slice name, metric): [("value"|"change", threshold proto)]} from the eval config."""
    result: Dict[Tuple[str, str], List[Tuple[str, Any]]] = {}
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            name = json.loads(metric.config).get("name") if metric.config else None
            name = name or metric.class_name
            for per_slice in metric.per_slice_thresholds:
                slices = [", ".join(spec.feature_keys) or "overall"
                          for spec in per_slice.slicing_specs] or ["overall"]
                for slice_name in slices:
                    entry = result.setdefault((slice_name, name), [])
                    if per_slice.threshold.HasField("value_threshold"):
                        entry.append(("value", per_slice.threshold.value_threshold))
                    if per_slice.threshold.HasField("change_threshold"):
                        entry.append(("change", per_slice.threshold.change_threshold))
            if metric.HasField("threshold"):
                entry = result.setdefault(("overall", name), [])
                if metric.threshold.HasField("value_threshold"):
                    entry.append(("value", metric.threshold.value_threshold))
                if metric.threshold.HasField("change_threshold"):
                    entry.append(("change", metric.threshold.change_threshold))
    return result


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + format_number(value)


def _describe_threshold(kind: str, threshold) -> str:
    if kind == "value":
        parts = []
        if threshold.HasField("lower_bound"):
            parts.append(f">= {format_number(threshold.lower_bound.value)}")
        if threshold.HasField("upper_bound"):
            parts.append(f"<= {format_number(threshold.upper_bound.value)}")
        return " and ".join(parts)
    parts = []
    if threshold.HasField("absolute"):
        parts.append(f"change vs baseline {'>=' if threshold.direction == 1 else '<='} "
                     f"{_signed(threshold.absolute.value)}")
    if threshold.HasField("relative"):
        parts.append(f"relative change {_signed(threshold.relative.value)}")
    return " and ".join(parts)


def read_evaluation(run: RunData) -> Optional[Dict[str, Any]]:
    """TFMA's results: rows per slice and metric with thresholds and pass/fail, or None.

    Returns {"rows": [MetricRow], "validation_ok": bool or None, "failures": [str],
    "has_baseline": bool, "eval_config": EvalConfig}.
    """
    uri = run.uri("evaluation")
    if not uri:
        return None
    import tensorflow_model_analysis as tfma
    from google.protobuf import json_format

    rows: Dict[Tuple[str, str], MetricRow] = {}
    has_baseline = False
    for metrics_for_slice in tfma.load_metrics(uri):
        slice_name = _slice_name(metrics_for_slice.slice_key)
        for item in metrics_for_slice.metric_keys_and_values:
            if not item.value.HasField("double_value"):
                continue
            value = item.value.double_value.value
            row = rows.setdefault((slice_name, item.key.name),
                                  MetricRow(slice_name=slice_name, metric=item.key.name))
            if item.key.is_diff:
                row.difference = value
            elif item.key.model_name == BASELINE_MODEL_NAME:
                row.baseline = value
                has_baseline = True
            else:
                row.value = value

    eval_config = tfma.EvalConfig()
    config_path = os.path.join(uri, "eval_config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as handle:
            json_format.ParseDict(json.load(handle)["evalConfig"], eval_config,
                                  ignore_unknown_fields=True)
    validation = tfma.load_validation_result(uri) if os.path.isfile(
        os.path.join(uri, "validations.tfrecord")) else None
    failed = set()
    failures = []
    if validation is not None:
        for per_slice in validation.metric_validations_per_slice:
            slice_name = _slice_name(per_slice.slice_key)
            for failure in per_slice.failures:
                failed.add((slice_name, failure.metric_key.name, failure.metric_key.is_diff))
    for failure in run.summary.get("validation_failures") or []:
        failures.append(failure)
    for (spec_name, metric), thresholds in _thresholds(eval_config).items():
        for row in _rows_of_spec(rows, spec_name, metric):
            _apply_thresholds(row, thresholds, has_baseline, validation, failed)
    ordered = sorted(rows.values(), key=lambda row: (row.slice_name != "overall",
                                                     _natural_key(row.slice_name), row.metric))
    return {"rows": ordered, "validation_ok": None if validation is None
            else bool(validation.validation_ok), "failures": failures,
            "has_baseline": has_baseline, "eval_config": eval_config}


def _rows_of_spec(rows: Dict[Tuple[str, str], MetricRow], spec_name: str,
                  metric: str) -> List[MetricRow]:
    """The rows a slicing spec's threshold applies to: "overall", or every slice of the
    spec's features ("label" -> label=0, label=1, ...)."""
    if spec_name == "overall":
        row = rows.get(("overall", metric))
        return [row] if row is not None else []
    columns = sorted(part.strip() for part in spec_name.split(","))
    return [row for (slice_name, name), row in rows.items()
            if name == metric and slice_name != "overall"
            and sorted(part.split("=", 1)[0] for part in slice_name.split(",")) == columns]


def _apply_thresholds(row: MetricRow, thresholds, has_baseline: bool, validation,
                      failed) -> None:
    """Sets a row's threshold text and, when TFMA validated the run, whether it passed."""
    applied = [(kind, threshold) for kind, threshold in thresholds
               if kind == "value" or has_baseline]
    row.threshold = "; ".join(_describe_threshold(kind, threshold) for kind, threshold in applied)
    if applied and validation is not None:
        row.passed = not any((row.slice_name, row.metric, kind == "change") in failed
                             for kind, _ in applied)


def _natural_key(text: str):
    """Sorts 'label=10' after 'label=9'."""
    head, _, tail = text.rpartition("=")
    return (head, int(tail)) if tail.lstrip("-").isdigit() else (text, 0)


# --- the model --------------------------------------------------------------------------

def model_dir(run: RunData) -> Optional[str]:
    """The SavedModel of this run: the pushed version, else the Trainer's Format-Serving."""
    pushed = run.summary.get("pushed_model_dir")
    if pushed and os.path.isfile(os.path.join(pushed, "saved_model.pb")):
        return pushed
    uri = run.uri("model")
    if uri:
        serving = os.path.join(uri, "Format-Serving")
        if os.path.isfile(os.path.join(serving, "saved_model.pb")):
            return serving
    return None


def load_model(run: RunData):
    """The run's SavedModel, loaded once per report (None when the run has none)."""
    def load():
        path = model_dir(run)
        if path is None:
            return None
        import tensorflow as tf

        return tf.saved_model.load(path)
    return run.cached("model", load)


def _spec_row(name: str, spec) -> Dict[str, str]:
    if spec.shape.rank is None:
        shape = "unknown"
    else:
        shape = "[" + ", ".join("N" if dim is None else str(dim)
                                for dim in spec.shape.as_list()) + "]"
    return {"name": name, "dtype": spec.dtype.name, "shape": shape}


def read_signatures(run: RunData) -> Optional[Dict[str, Dict[str, List[Dict[str, str]]]]]:
    """{signature: {"inputs": [{name, dtype, shape}], "outputs": [...]}} of the run's model."""
    model = load_model(run)
    if model is None:
        return None
    result = {}
    for name in sorted(model.signatures.keys()):
        function = model.signatures[name]
        _, keyword_inputs = function.structured_input_signature
        result[name] = {
            "inputs": [_spec_row(key, spec) for key, spec in sorted(keyword_inputs.items())],
            "outputs": [_spec_row(key, spec)
                        for key, spec in sorted(function.structured_outputs.items())],
        }
    return result


def is_classifier(run: RunData) -> bool:
    """A classifier: its metrics include accuracy, or its model outputs class probabilities."""
    if "accuracy" in (run.summary.get("metrics") or {}):
        return True
    signatures = run.cached("signatures", lambda: read_signatures(run))
    default = (signatures or {}).get(features.SERVING_DEFAULT_SIGNATURE, {})
    return any(output["name"] == features.PROBABILITIES_OUTPUT
               for output in default.get("outputs", []))


def confusion_matrix(run: RunData) -> Optional[Dict[str, Any]]:
    """The classifier's confusion matrix on the evaluation split, computed from the model.

    Runs the serving_default signature on at most MAX_CONFUSION_EXAMPLES serialized
    examples of the split the Evaluator used. Returns {"matrix": int [true, predicted],
    "split", "examples", "limit", "model_dir"}, or None when there is no model or split.
    """
    model = load_model(run)
    uri = run.uri("examples")
    split = run.config_value("eval.split", "test")
    if model is None or not uri or not label_is_integer(run):
        return None
    signature = model.signatures.get(features.SERVING_DEFAULT_SIGNATURE)
    if signature is None:
        return None
    _, keyword_inputs = signature.structured_input_signature
    string_inputs = [key for key, spec in keyword_inputs.items() if spec.dtype.name == "string"]
    if len(keyword_inputs) != 1 or not string_inputs:
        return None  # not a serialized-tf.Example signature
    import tensorflow as tf

    records = _records(uri, split, MAX_CONFUSION_EXAMPLES)
    if records is None:
        return None
    spec = {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    truths, predictions = [], []
    for batch in records.batch(256):
        outputs = signature(**{string_inputs[0]: batch})
        if features.CLASS_ID_OUTPUT in outputs:
            predicted = outputs[features.CLASS_ID_OUTPUT].numpy()
        elif features.PROBABILITIES_OUTPUT in outputs:
            predicted = outputs[features.PROBABILITIES_OUTPUT].numpy().argmax(axis=-1)
        else:
            return None
        predictions.append(predicted.reshape(-1))
        truths.append(tf.io.parse_example(batch, spec)[features.LABEL_KEY].numpy())
    truth = np.concatenate(truths)
    predicted = np.concatenate(predictions)
    num_classes = int(max(run.config_value("data.num_classes", 0) or 0,
                          truth.max() + 1, predicted.max() + 1))
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return {"matrix": matrix, "split": split, "examples": int(len(truth)),
            "limit": MAX_CONFUSION_EXAMPLES, "model_dir": model_dir(run)}


def forecast_window(run: RunData) -> Optional[Dict[str, Any]]:
    """A forecaster's predictions on one window of the evaluation split, beside the actuals.

    Runs the model's `evaluation` signature (forecast, persistence and seasonal-naive
    forecasts from the same window; pipeline.tasks.forecasting) on the first example of
    the split the Evaluator used. Returns {"target", "split", "window_end" (unix seconds),
    "history" (the target's lookback values), "actual", "forecast", "persistence",
    "seasonal_naive"} in the target's units, or None when the run has no forecaster.
    """
    from tfprod.pipeline.ingestion import timeseries
    from tfprod.pipeline.tasks import forecasting

    model = load_model(run)
    uri = run.uri("examples")
    target = run.config_value("data.time_series.target_column")
    split = run.config_value("eval.split", "test")
    if model is None or not uri or not target:
        return None
    signature = model.signatures.get(forecasting.EVALUATION_SIGNATURE)
    records = _records(uri, split, 1)
    if signature is None or records is None:
        return None
    import tensorflow as tf

    serialized = [record.numpy() for record in records]
    if not serialized:
        return None
    outputs = signature(examples=tf.constant(serialized))
    feature = tf.train.Example.FromString(serialized[0]).features.feature
    end = feature[timeseries.WINDOW_END_KEY].int64_list.value if (
        timeseries.WINDOW_END_KEY in feature) else []
    return {
        "target": target, "split": split, "window_end": int(end[0]) if end else None,
        "history": [float(v) for v in feature[target].float_list.value],
        "actual": [float(v) for v in feature[timeseries.LABEL_KEY].float_list.value],
        **{name: [float(v) for v in outputs[name].numpy()[0]] for name in (
            forecasting.FORECAST_OUTPUT, forecasting.PERSISTENCE_OUTPUT,
            forecasting.SEASONAL_NAIVE_OUTPUT)},
    }


# --- mobile -----------------------------------------------------------------------------

def read_tflite_report(run: RunData) -> Optional[Dict[str, Any]]:
    """The TFLite verification report (report.json) of the run's blessed model, or None."""
    report_path = (run.summary.get("tflite_report") or {}).get("json")
    if not report_path:
        uri = run.uri("tflite_models")
        files_path = os.path.join(uri, "files.json") if uri else None
        if files_path and os.path.isfile(files_path):
            with open(files_path, encoding="utf-8") as handle:
                report_path = json.load(handle).get("report", {}).get("json")
    if not report_path or not os.path.isfile(report_path):
        return None
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)
    report["_path"] = report_path
    return report
