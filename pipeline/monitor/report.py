"""monitor.json, monitor.html (the run report's page style, offline: inline CSS and charts,
no scripts, nothing fetched) and the Prometheus textfile of one monitoring check."""

import json
import os
from typing import Any, Dict, List

from tfprod.pipeline.report import charts
from tfprod.pipeline.report.html import (Section, badge, escape, figure, not_present, page,
                                         table)

JSON_FILE = "monitor.json"
HTML_FILE = "monitor.html"
METRIC_PREFIX = "tfprod_monitor"


def _write(path: str, text: str) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_json(record: Dict[str, Any], output_dir: str) -> str:
    path = os.path.join(output_dir, JSON_FILE)
    _write(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def _overview(record: Dict[str, Any]) -> Section:
    drifted = record["drifted"]
    badges = [badge("drift detected" if drifted else "no drift", not drifted),
              badge(f"{record['examples']:,} examples", None)]
    facts = [("run", record["run"]), ("experiment", record["experiment"]),
             ("request logs", record["request_logs"]),
             ("log files read", record["log_files"]),
             ("unfinished (.tmp) files ignored", record["unfinished_files_ignored"]),
             ("logged calls", record["calls"]), ("examples compared", record["examples"]),
             ("models in the logs", ", ".join(f"{k} ({v})" for k, v in record["models"].items())),
             ("reference statistics", f"{record['reference']['statistics']} "
                                      f"({record['reference']['examples']:,} examples)"),
             ("schema", record["reference"]["schema"]), ("checked", record["created"])]
    body = '<p id="status">' + "".join(badges) + "</p>"
    if drifted:
        body += ('<p id="verdict"><b>Past the threshold:</b> '
                 + escape(", ".join(drifted)) + "</p>")
    return Section("overview", "Overview", body + table(["", ""], facts, table_id="monitor-facts"))


def _features(record: Dict[str, Any]) -> Section:
    rows = [[f["feature"], f["comparator"], f["distance"], f["threshold"],
             "drift" if f["drifted"] else ("not measured" if f["distance"] is None else "ok")]
            for f in record["features"]]
    parts = ["<p>Each feature of the run's schema (but the label): the served requests' "
             "statistics against the training statistics, with TFDV's skew comparator "
             "(L-infinity for categorical features, Jensen-Shannon divergence for numeric "
             "ones). A distance greater than its threshold is drift.</p>",
             table(["feature", "comparator", "distance", "threshold", "verdict"], rows,
                   table_id="feature-distances")]
    measured = [f for f in record["features"] if f["distance"] is not None]
    if measured:
        parts.append(figure(charts.bar_chart(
            [f["feature"] for f in measured],
            {"distance": [f["distance"] for f in measured],
             "threshold": [f["threshold"] for f in measured]},
            "Distance from the training data", "distance", horizontal=True, value_format=".3f"),
            "Each feature's distance and its threshold.", "chart-feature-distances"))
    return Section("features", "Features", "".join(parts))


def _prediction(record: Dict[str, Any]) -> Section:
    prediction = record["prediction"]
    if "skipped" in prediction:
        return Section("prediction", "Predictions", not_present(prediction["skipped"]),
                       present=False)
    verdict = "drift" if prediction["drifted"] else "ok"
    measured = ("not measured" if prediction["distance"] is None
                else format(prediction["distance"], ".4f"))
    parts = [f"<p>Served predictions against {escape(prediction['reference']['source'])} "
             f"(<code>{escape(prediction['reference']['model_dir'])}</code>): "
             f"{escape(prediction['comparator'])} {measured}, threshold "
             f"{prediction['threshold']:g}: <b>{verdict}</b>.</p>"]
    reference, served = prediction["reference"]["summary"], prediction["served"]["summary"]
    if prediction["categorical"]:
        classes = sorted(set(reference) | set(served),
                         key=lambda k: (0, int(k), "") if k.lstrip("-").isdigit() else (1, 0, k))
        parts.append(table(["class", "model on the run's data", "served"],
                           [[name, reference.get(name, 0.0), served.get(name, 0.0)]
                            for name in classes], table_id="prediction-distribution"))
        parts.append(figure(charts.bar_chart(
            classes, {"model on the run's data": [reference.get(c, 0.0) for c in classes],
                      "served": [served.get(c, 0.0) for c in classes]},
            "Predicted class shares", "share"), "Share of each predicted class.",
            "chart-prediction-distribution"))
    else:
        keys = [k for k in reference if k != "count"]
        parts.append(table(["", "model on the run's data", "served"],
                           [[k, reference.get(k), served.get(k)] for k in ["count"] + keys],
                           table_id="prediction-distribution"))
    return Section("prediction", "Predictions", "".join(parts))


def _requests(record: Dict[str, Any]) -> Section:
    parts = [table(["call kind:signature", "examples"], list(record["by_signature"].items()),
                   table_id="signatures")]
    if record["unmapped"]:
        parts.append("<p>Calls not turned into features:</p>" + table(
            ["signature: reason", "calls"], list(record["unmapped"].items()),
            table_id="unmapped"))
    if record["skipped_log_kinds"]:
        parts.append("<p>Log records of other kinds, skipped:</p>" + table(
            ["kind", "records"], list(record["skipped_log_kinds"].items()),
            table_id="skipped-kinds"))
    return Section("requests", "Requests", "".join(parts))


def _anomalies(record: Dict[str, Any]) -> Section:
    rows: List[Dict[str, str]] = record["anomalies"]
    if not rows:
        return Section("anomalies", "Schema anomalies",
                       "<p>The served data match the run's schema (TFDV, SERVING environment: "
                       "the label is not expected).</p>")
    return Section("anomalies", "Schema anomalies",
                   "<p>The served data against the run's schema (reported, not a verdict: "
                   "the exit code follows the distances).</p>"
                   + table(["feature", "anomaly", "description"],
                           [[r["feature"], r["short"], r["description"]] for r in rows],
                           table_id="serving-anomalies"))


def write_html(record: Dict[str, Any], output_dir: str) -> str:
    sections = [_overview(record), _features(record), _prediction(record), _requests(record),
                _anomalies(record)]
    verdict = "drift detected" if record["drifted"] else "no drift"
    html_text = page(f"tfprod monitor: {record['experiment']}",
                     f"{record['request_logs']} against {record['run']} · {verdict}", sections)
    path = os.path.join(output_dir, HTML_FILE)
    _write(path, html_text)
    return path


def write_prometheus(record: Dict[str, Any], path: str) -> str:
    """The distances as Prometheus gauges in node-exporter's textfile format (written
    atomically by prometheus_client.write_to_textfile)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    model = record["model_name"]
    distance = Gauge(f"{METRIC_PREFIX}_feature_distance",
                     "TFDV distance of a feature: served requests against the training data",
                     ["model", "feature", "comparator"], registry=registry)
    threshold = Gauge(f"{METRIC_PREFIX}_feature_threshold", "The feature's drift threshold",
                      ["model", "feature", "comparator"], registry=registry)
    drifted = Gauge(f"{METRIC_PREFIX}_feature_drifted",
                    "1 when the feature's distance is past its threshold",
                    ["model", "feature"], registry=registry)
    for feature in record["features"]:
        labels = (model, feature["feature"], feature["comparator"])
        if feature["distance"] is not None:
            distance.labels(*labels).set(feature["distance"])
        threshold.labels(*labels).set(feature["threshold"])
        drifted.labels(model, feature["feature"]).set(1 if feature["drifted"] else 0)
    prediction = record["prediction"]
    if "skipped" not in prediction and prediction["distance"] is not None:
        gauge = Gauge(f"{METRIC_PREFIX}_prediction_distance",
                      "TFDV distance of the served predictions from the model's own on the "
                      "run's data", ["model", "comparator"], registry=registry)
        gauge.labels(model, prediction["comparator"]).set(prediction["distance"])
    Gauge(f"{METRIC_PREFIX}_drift_detected", "1 when any distance is past its threshold",
          ["model"], registry=registry).labels(model).set(1 if record["drifted"] else 0)
    Gauge(f"{METRIC_PREFIX}_examples", "Examples compared in the last check", ["model"],
          registry=registry).labels(model).set(record["examples"])
    Gauge(f"{METRIC_PREFIX}_last_check_timestamp_seconds", "When the last check ran",
          ["model"], registry=registry).labels(model).set_to_current_time()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    write_to_textfile(path, registry)
    return path
