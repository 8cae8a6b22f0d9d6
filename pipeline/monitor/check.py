"""One monitoring check: a run's reference (training statistics, schema, the model's own
predictions on its test data) against the request logs, into one JSON-ready record."""

import dataclasses
import datetime
import os
from typing import Any, Dict, List, Optional

import numpy as np

from tfprod import errors
from tfprod.contract import features, layout
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.monitor import compare
from tfprod.pipeline.monitor import features as monitor_features
from tfprod.pipeline.monitor.reader import LogContents

REFERENCE_SPLIT = "train"  # the statistics the schema was inferred from (SchemaGen)
PREDICTION_KEY = "(prediction)"  # how the prediction distribution is named among features


@dataclasses.dataclass
class Reference:
    """What served data is compared with: the run's statistics, schema and model."""

    output_dir: str
    experiment: config_lib.ExperimentConfig
    statistics: Any  # DatasetFeatureStatisticsList of REFERENCE_SPLIT
    schema: Any
    statistics_path: str
    schema_path: str
    model_dir: Optional[str] = None
    examples_uri: Optional[str] = None


def reference_from_run(output_dir: str, overrides: List[str] = ()) -> Reference:
    """The reference of a finished `tfprod run` output directory: its config (with the
    overrides, e.g. monitor.* thresholds), the StatisticsGen statistics of the train split,
    the SchemaGen schema and the test examples of the run that trained the latest blessed
    model, found in its ML Metadata (else of the latest run, as the report reads it), and
    the model it serves (the highest version pushed under serving/<export.model_name>/,
    else that run's Trainer's).

    Raises:
      ConfigError: the directory is not a run's, or the run has no statistics or schema.
    """
    from tfprod.pipeline.report import readers
    from tfprod.pipeline.report.run_data import load_run

    output_dir = os.path.abspath(output_dir)
    config_path = os.path.join(output_dir, layout.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise errors.ConfigError(f"--run: {output_dir} has no {layout.CONFIG_FILE}; pass the "
                                 "--output-dir of a finished `tfprod run`")
    with errors.missing_file_is_config_error():
        experiment = config_lib.load_config(config_path, list(overrides))
    run = load_run(output_dir)
    statistics_uri, schema_uri = run.uri("statistics"), run.uri("schema")
    examples_uri, model_dir = run.uri("examples"), None
    blessed = _blessed_run_outputs(run.output_dir)
    if blessed:  # the run that trained the served model, not a later unblessed or failed one
        statistics_uri, schema_uri = blessed.get("statistics"), blessed.get("schema")
        examples_uri = blessed.get("examples")
        model_dir = (os.path.join(blessed["model"], "Format-Serving")
                     if blessed.get("model") else None)
    statistics_path = (os.path.join(statistics_uri, f"Split-{REFERENCE_SPLIT}", "FeatureStats.pb")
                       if statistics_uri else "")
    schema_path = os.path.join(schema_uri, "schema.pbtxt") if schema_uri else ""
    if not os.path.isfile(statistics_path) or not os.path.isfile(schema_path):
        raise errors.ConfigError(
            f"--run: {output_dir} has no StatisticsGen statistics of the '{REFERENCE_SPLIT}' "
            f"split or no schema in {layout.METADATA_FILE}; monitor a run that got past "
            "SchemaGen")
    import tensorflow_data_validation as tfdv

    return Reference(output_dir=output_dir, experiment=experiment,
                     statistics=tfdv.load_stats_binary(statistics_path),
                     schema=tfdv.load_schema_text(schema_path),
                     statistics_path=statistics_path, schema_path=schema_path,
                     model_dir=(served_model_dir(run, experiment) or model_dir
                                or readers.model_dir(run)),
                     examples_uri=examples_uri)


def _blessed_run_outputs(output_dir: str) -> Dict[str, str]:
    """{"statistics", "schema", "examples", "model": uri} of the run that trained the latest
    blessed model in the directory's ML Metadata; {} without one."""
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    from tfprod.pipeline import drift_check

    path = layout.PipelinePaths(output_dir).metadata_path
    if not os.path.isfile(path):
        return {}
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(path))
    run_id = drift_check.last_blessed_run(store)
    if run_id is None:
        return {}
    outputs = drift_check.run_outputs(store, run_id)
    return {key: outputs[key][-1].uri for key in ("statistics", "schema", "examples", "model")
            if outputs.get(key)}


def served_model_dir(run, experiment: config_lib.ExperimentConfig) -> Optional[str]:
    """The version `tfprod serve` serves from the run's output directory: the highest
    numbered version under serving/<export.model_name>/ (the last run may not have pushed);
    None when nothing was pushed."""
    base = layout.PipelinePaths(run.output_dir).serving_model_dir(experiment.export.model_name)
    versions = [name for name in (os.listdir(base) if os.path.isdir(base) else ())
                if name.isdigit() and os.path.isfile(os.path.join(base, name, "saved_model.pb"))]
    return os.path.join(base, max(versions, key=int)) if versions else None


def reference_predictions(reference: Reference, limit: int) -> Dict[str, Any]:
    """The model's own predictions on up to `limit` examples of the run's eval.split:
    {"values", "categorical", "examples", "split", "model_dir"}, or {"skipped": why}."""
    if reference.model_dir is None:
        return {"skipped": "the run has no trained model"}
    split = reference.experiment.eval.split
    import tensorflow as tf

    files = (sorted(tf.io.gfile.glob(os.path.join(reference.examples_uri, f"Split-{split}", "*")))
             if reference.examples_uri else [])
    if not files:
        return {"skipped": f"the run has no '{split}' examples"}
    model = tf.saved_model.load(reference.model_dir)
    signature = model.signatures.get(features.SERVING_DEFAULT_SIGNATURE)
    if signature is None:
        return {"skipped": f"the model has no {features.SERVING_DEFAULT_SIGNATURE} signature"}
    (input_name,) = signature.structured_input_signature[1].keys()
    values: list = []
    categorical = None
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)
    for batch in records.batch(256):
        outputs = {name: tensor.numpy()
                   for name, tensor in signature(**{input_name: batch}).items()}
        predicted, categorical = monitor_features.predictions_of(outputs)
        if predicted is None:
            return {"skipped": "the model's outputs hold no class id nor prediction value"}
        values.extend(predicted)
    return {"values": values, "categorical": categorical, "examples": len(values),
            "split": split, "model_dir": reference.model_dir}


def _numeric_summary(values: list) -> Dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"count": int(array.size), "mean": float(array.mean()), "std": float(array.std()),
            "p10": float(np.percentile(array, 10)), "p50": float(np.percentile(array, 50)),
            "p90": float(np.percentile(array, 90))} if array.size else {"count": 0}


def _prediction_record(mapped: monitor_features.MappedRequests, reference: Reference,
                       thresholds: config_lib.MonitorConfig) -> Dict[str, Any]:
    if not mapped.predictions:
        return {"skipped": "the logged responses carry no class id or prediction value"}
    expected = reference_predictions(reference, thresholds.reference_examples)
    if "skipped" in expected:
        return expected
    if expected["categorical"] != mapped.categorical_predictions:
        return {"skipped": "the logged predictions and the model's are not of the same kind"}
    distance = compare.prediction_distance(expected["values"], mapped.predictions,
                                           expected["categorical"],
                                           thresholds.prediction_threshold)
    summary = compare.distribution if expected["categorical"] else _numeric_summary
    return {"comparator": distance.comparator, "distance": distance.distance,
            "threshold": distance.threshold, "drifted": distance.drifted,
            "categorical": expected["categorical"],
            "reference": {"source": f"the model's predictions on {expected['examples']} "
                                    f"'{expected['split']}' examples of the run",
                          "model_dir": expected["model_dir"], "examples": expected["examples"],
                          "summary": summary(expected["values"])},
            "served": {"examples": len(mapped.predictions),
                       "summary": summary(mapped.predictions)}}


def run_check(logs: LogContents, reference: Reference) -> Dict[str, Any]:
    """Compares the logged requests with the reference; the monitor.json record.

    Raises:
      InputDataError: no logged request could be turned into features.
    """
    thresholds = reference.experiment.monitor
    missing_markers = reference.experiment.data.format == config_lib.DataFormat.TABLE
    mapped = monitor_features.map_calls(logs.calls, reference.schema, missing_markers)
    if not mapped.examples:
        why = "; ".join(f"{reason} ({count} calls)" for reason, count in mapped.unmapped.items())
        raise errors.InputDataError(
            f"{logs.directory}: no logged request could be turned into features "
            f"({len(logs.files)} log file(s), {len(logs.calls)} call(s)"
            + (f"; {why}" if why else "") + ")")
    current = compare.statistics_of_examples(mapped.examples)
    distances = compare.compare(reference.statistics, current, reference.schema, thresholds)
    prediction = _prediction_record(mapped, reference, thresholds)
    drifted = [d.feature for d in distances if d.drifted]
    if prediction.get("drifted"):
        drifted.append(PREDICTION_KEY)
    models: Dict[str, int] = {}
    for call in logs.calls:
        key = f"{call.model_name}:{call.model_version if call.model_version is not None else '?'}"
        models[key] = models.get(key, 0) + 1
    return {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "run": reference.output_dir,
        "experiment": reference.experiment.name,
        "model_name": reference.experiment.export.model_name,
        "request_logs": os.path.abspath(logs.directory),
        "log_files": len(logs.files),
        "unfinished_files_ignored": len(logs.unfinished_files),
        "calls": len(logs.calls),
        "examples": len(mapped.examples),
        "by_signature": mapped.by_signature,
        "unmapped": mapped.unmapped,
        "skipped_log_kinds": logs.skipped,
        "models": models,
        "reference": {"statistics": reference.statistics_path, "schema": reference.schema_path,
                      "split": REFERENCE_SPLIT,
                      "examples": int(reference.statistics.datasets[0].num_examples)},
        "thresholds": config_lib.to_dict(thresholds),
        "features": [dataclasses.asdict(d) for d in distances],
        "prediction": prediction,
        "anomalies": compare.serving_anomalies(current, reference.schema),
        "drifted": drifted,
        "drift_detected": bool(drifted),
    }


def drift_message(record: Dict[str, Any]) -> str:
    """What `error:` says when drift is detected: each feature, its distance and threshold."""
    parts = []
    for feature in record["features"]:
        if feature["drifted"]:
            parts.append(compare.FeatureDistance(**feature).describe())
    prediction = record["prediction"]
    if prediction.get("drifted"):
        parts.append(f"{PREDICTION_KEY} ({prediction['comparator']} "
                     f"{prediction['distance']:.4f} > {prediction['threshold']:g})")
    return (f"{len(parts)} past its threshold in {record['request_logs']} against "
            f"{record['run']}: " + "; ".join(parts))
