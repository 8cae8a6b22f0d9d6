"""The report's sections, each built from a RunData and keyed on what the run has.

Every builder returns an html.Section; one that has nothing to show for this run
returns a section that is not present and says why, and a task-specific one returns
None for runs of other tasks (the page leaves it out). SECTION_BUILDERS is the
order on the page. To add a section (e.g. a task's own plots), write a
``def my_section(run: RunData) -> Section``, add it to SECTION_BUILDERS, and list it in
the Task.report_sections of the tasks that show it (pipeline.tasks); the task-specific
sections ask the run's Task (_task) whether to show.
"""

import base64
import datetime
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from tfprod.contract import features
from tfprod.pipeline import tasks
from tfprod.pipeline.report import charts, readers
from tfprod.pipeline.report.html import (Section, badge, escape, figure, format_number,
                                         not_present, number, pre, table)
from tfprod.pipeline.report.run_data import RunData

SAMPLES_PER_CLASS = 8
MAX_FEATURE_CHARTS = 12


def _task(run: RunData) -> Optional[tasks.Task]:
    """The run's task: from its config's data section, else from its summary's metrics."""
    return run.cached("task", lambda: tasks.task_of_run(run.config,
                                                        run.summary.get("metrics")))


def _shows(run: RunData, section: str) -> Optional[bool]:
    """Whether the run's task shows a task-specific section (None: the task is unknown)."""
    task = _task(run)
    return None if task is None else section in task.report_sections


def _metric_names(history: Dict[str, List[float]]) -> List[str]:
    names = [name for name in history if not name.startswith("val_")]
    names += [name[len("val_"):] for name in history
              if name.startswith("val_") and name[len("val_"):] not in names]
    return names


# --- overview ---------------------------------------------------------------------------

def headline_metric(run: RunData) -> Optional[Tuple[str, str]]:
    """(metric name, value as shown) of the run's main metric: the first of its task's
    summary metrics in run_summary.json (accuracy, mae); None without one."""
    metrics = run.summary.get("metrics") or {}
    task = _task(run)
    names = list(task.summary_metrics) if task else []
    names += [name for name in ("accuracy", "mae", "rmse") if name not in names]
    for name in names:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, number(float(value))
    return None


def tensorboard_command(run: RunData) -> Optional[str]:
    """The command that opens the Trainer's TensorBoard logs of this run, or None."""
    log_dir = run.uri("model_run")
    if not log_dir:
        return None
    return f".venv/bin/tensorboard --logdir {log_dir} --port 6006"


def _gate_text(gate: Dict[str, object]) -> str:
    return ", ".join(f"{key} {number(value) if isinstance(value, (int, float)) else value}"
                     for key, value in gate.items())


def overview_section(run: RunData) -> Section:
    """The run, its status (blessed, pushed where), git commit, wall times and config."""
    summary = run.summary
    status = summary.get("status", "unknown")
    badges = [badge(f"run {status}", status == "succeeded")]
    headline = headline_metric(run)
    if status == "succeeded":
        badges.append(badge("blessed" if summary.get("blessed") else "not blessed",
                            bool(summary.get("blessed"))))
        badges.append(badge("pushed" if summary.get("pushed_model_dir") else "not pushed",
                            bool(summary.get("pushed_model_dir"))))
    if headline:
        badges.append(badge(f"{headline[0]} {headline[1]}", None))
    facts = [
        ("experiment", summary.get("experiment") or run.config.get("name")),
        ("model", run.config_value("model.name")),
        ("output directory", run.output_dir),
        ("ML Metadata run", run.run_id or "no metadata.sqlite"),
        ("git commit", summary.get("git_commit") or "not recorded"),
        ("pushed to", summary.get("pushed_model_dir") or "–"),
        ("total wall time (s)", summary.get("total_seconds")),
        ("report written", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
    ]
    infra = summary.get("infra") or {}
    if infra.get("line"):  # the InfraValidator's outcome (pipeline/infra_validator.py)
        facts.append(("infra validation", infra["line"].split(": ", 1)[-1]))
    gate = summary.get("gate") or {}
    if gate.get("kind"):
        # The gate, the bound it set and the trivial baseline it compared with (eval.gate).
        facts.append(("blessing gate (eval.gate)", _gate_text(gate)))
    if summary.get("training", {}).get("steady_examples_per_second"):
        facts.append(("training examples/s (after epoch 1)",
                      round(summary["training"]["steady_examples_per_second"], 1)))
    command = tensorboard_command(run)
    if command:
        facts.append(("TensorBoard", command))
    verdict = []
    if status == "succeeded":
        verdict.append(("blessed" if summary.get("blessed") else "not blessed")
                       + (f": {headline[0]} {headline[1]}" if headline else ""))
        if summary.get("blessed") and gate.get("kind"):
            verdict.append(f"gate {_gate_text(gate)}")
        elif summary.get("blessed") and summary.get("validation_failures") == []:
            verdict.append("every threshold met")
    parts = ['<p id="status">' + "".join(badges) + "</p>"]
    if verdict:
        parts.append(f'<p id="verdict"><b>{escape(verdict[0])}</b>'
                     + "".join(f"; {escape(item)}" for item in verdict[1:]) + ".</p>")
    parts.append(table(["", ""], facts, table_id="run-facts"))
    if status != "succeeded":
        failed_at = summary.get("failed_component") or "before the pipeline started"
        parts.append(f"<p>Failed at: <b>{escape(failed_at)}</b></p>")
        parts.append(pre(summary.get("error") or "", "run-error"))
    elif not summary.get("blessed"):
        parts.append("<p>The model was not blessed; it missed:</p><ul>" + "".join(
            f"<li>{escape(line)}</li>" for line in summary.get("validation_failures") or
            ["(unknown)"]) + "</ul>")
        if summary.get("bless_hints"):
            parts.append('<p>What would change that:</p><ul id="bless-hints">' + "".join(
                f"<li><code>{escape(line)}</code></li>" for line in summary["bless_hints"])
                + "</ul>")
    seconds = summary.get("component_seconds") or {}
    if seconds:
        parts.append("<h3>Component wall times</h3>")
        parts.append(table(["component", "seconds"], list(seconds.items()),
                           table_id="component-times"))
        parts.append(figure(charts.bar_chart(list(seconds), {"seconds": list(seconds.values())},
                                             "Wall time per component", "seconds",
                                             horizontal=True, value_format=".1f"),
                            "Wall time of each component in this run (cached components take "
                            "well under a second).", "chart-component-times"))
    if run.config_text:
        parts.append("<details><summary>The run's config (config.yaml)</summary>"
                     + pre(run.config_text, "config-yaml") + "</details>")
    return Section("overview", "Run", "".join(parts))


# --- data -------------------------------------------------------------------------------

def _label_keys() -> Tuple[str, ...]:
    """The features that are labels (a class id, a forecast's next values), not inputs."""
    from tfprod.pipeline.ingestion import timeseries

    return (features.LABEL_KEY, timeseries.LABEL_KEY)


def _is_identifier(name: str) -> bool:
    """A timestamp or an id: its mean and histogram say nothing (window_end_timestamp)."""
    lowered = name.lower()
    return any(lowered == word or lowered.endswith("_" + word)
               for word in ("timestamp", "time", "date", "id", "index"))


def _feature_rows(statistics, only: Optional[Tuple[str, ...]] = None,
                  skip: Tuple[str, ...] = ()) -> List[list]:
    rows = []
    for split, dataset in statistics.items():
        for feature in dataset.features:
            name = ".".join(feature.path.step) or feature.name
            if name in skip or (only is not None and name not in only):
                continue
            kind = feature.WhichOneof("stats")
            stats = getattr(feature, kind) if kind else None
            common = stats.common_stats if stats is not None and hasattr(stats, "common_stats") \
                else None
            present = common.num_non_missing if common else None
            row = [name, split, _type_name(feature.type), present,
                   common.avg_num_values if common else None]
            if kind == "num_stats" and _is_identifier(name):  # its range only
                row += [None, None, stats.min, stats.median, stats.max, None,
                        "a timestamp or id: no mean or histogram"]
            elif kind == "num_stats":
                total = common.tot_num_values if common else 0
                row += [stats.mean, stats.std_dev, stats.min, stats.median, stats.max,
                        (100.0 * stats.num_zeros / total) if total else None, "–"]
            elif kind == "string_stats":
                top = ", ".join(f"{value.value} ({int(value.frequency)})"
                                for value in stats.top_values[:3])
                row += [None, None, None, None, None, None,
                        f"{stats.unique} unique; top: {top}"]
            else:
                row += [None] * 6 + ["–"]
            rows.append(row)
    return sorted(rows, key=lambda row: (row[0], row[1] != "train", row[1] != "eval", row[1]))


def _type_name(value: int) -> str:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    return statistics_pb2.FeatureNameStatistics.Type.Name(value)


def _histograms(statistics, skip: Tuple[str, ...] = ()) -> Dict[str, Dict[str, list]]:
    """{feature: {split: [(low, high, count)]}} of the numeric features' standard histograms
    (not of the features in skip, nor of timestamps and ids)."""
    result: Dict[str, Dict[str, list]] = {}
    for split, dataset in statistics.items():
        for feature in dataset.features:
            name = ".".join(feature.path.step)
            if (feature.WhichOneof("stats") != "num_stats" or name in skip
                    or _is_identifier(name)):
                continue
            for histogram in feature.num_stats.histograms:
                if histogram.type == histogram.STANDARD and histogram.buckets:
                    result.setdefault(".".join(feature.path.step), {})[split] = [
                        (b.low_value, b.high_value, b.sample_count) for b in histogram.buckets]
    return result


def data_section(run: RunData) -> Section:
    """Example counts per split, feature statistics, class balance and anomalies."""
    statistics = run.cached("statistics", lambda: readers.read_statistics(run))
    anomalies = readers.read_anomalies(run)
    if statistics is None and anomalies is None:
        return Section("data", "Data", not_present(
            "the run has no statistics (StatisticsGen did not run)"), present=False)
    parts = []
    class_counts = run.cached("class_counts", lambda: readers.read_class_counts(run))
    labels = _label_keys()
    task = _task(run)
    classifier = task.is_classification if task else bool(class_counts)
    if task is not None and tasks.TABLE_COLUMNS_SECTION in task.report_sections:
        classifier = (run.summary.get("data") or {}).get("problem") != "regression"
    columns = ["feature", "split", "type", "examples with it", "values per example",
               "mean", "std", "min", "median", "max", "zeros %", "strings"]
    if statistics:
        parts.append("<h3>Examples per split</h3>")
        parts.append(table(["split", "examples"],
                           [(split, int(dataset.num_examples))
                            for split, dataset in statistics.items()], table_id="split-counts"))
        parts.append("<h3>Feature statistics</h3><p class=note>From TFDV (StatisticsGen). "
                     "For list features (e.g. an image's pixels) the value statistics are over "
                     "all values of all examples.</p>")
        parts.append(table(columns, _feature_rows(statistics, skip=labels),
                           table_id="feature-statistics"))
        label_rows = _feature_rows(statistics, only=labels)
        if label_rows and not classifier:  # a regression's or forecast's target values
            parts.append("<h3>Label</h3><p class=note>The values the model learns to predict "
                         "(not an input feature).</p>")
            parts.append(table(columns, label_rows, table_id="label-statistics"))
        for number_, (feature, per_split) in enumerate(
                list(_histograms(statistics, skip=labels).items())[:MAX_FEATURE_CHARTS]):
            parts.append(figure(charts.histogram_chart(per_split, f"'{feature}' values", feature),
                                f"Distribution of the values of '{feature}' per split (TFDV "
                                "histogram).", f"chart-histogram-{number_}"))
    else:
        parts.append(not_present("feature statistics (StatisticsGen did not run)"))
    if class_counts or classifier:
        parts.append("<h3>Class balance</h3>")
    if class_counts:
        classes = sorted({label for counts in class_counts.values() for label in counts})
        parts.append(figure(charts.bar_chart(
            [str(label) for label in classes],
            {split: [100.0 * counts.get(label, 0) / max(sum(counts.values()), 1)
                     for label in classes] for split, counts in class_counts.items()},
            "Class balance", "% of the split's examples"),
            "Share of each class per split, counted from ExampleGen's examples "
            f"(at most {readers.MAX_LABELS_COUNTED:,} per split).", "chart-class-balance"))
        parts.append(table(["class"] + list(class_counts),
                           [[str(label)] + [counts.get(label, 0)
                                            for counts in class_counts.values()]
                            for label in classes], table_id="class-counts"))
    elif classifier:
        parts.append(not_present("no examples were written"))
    parts.append("<h3>Anomalies</h3>")
    if anomalies is None:
        parts.append(not_present("ExampleValidator did not run"))
    elif not anomalies:
        parts.append('<p id="anomalies-none">ExampleValidator found no anomalies in any split '
                     "against the schema.</p>")
    else:
        parts.append(table(["split", "feature", "anomaly", "description"],
                           [(row["split"], row["feature"], row["short"], row["description"])
                            for row in anomalies], table_id="anomalies"))
    return Section("data", "Data", "".join(parts))


def samples_section(run: RunData) -> Optional[Section]:
    """For image data: the first SAMPLES_PER_CLASS train images of each class."""
    shows = _shows(run, tasks.SAMPLES_SECTION)
    if shows is False or (shows is None and readers.image_shape(run) is None):
        return None  # not an image task: no section at all
    if readers.image_shape(run) is None:
        return Section("samples", "Sample images", not_present(
            "the run's data are not images"), present=False)
    samples = readers.read_sample_images(run, SAMPLES_PER_CLASS)
    if not samples:
        return Section("samples", "Sample images", not_present(
            "no training examples were written"), present=False)
    names = readers.read_class_names(run)  # photo folders: the folder names
    classes = ", ".join(f"{label} {names[label]}" if label in names else str(label)
                        for label in sorted(samples))
    return Section("samples", "Sample images", figure(
        # Digits (28 px) are upscaled to be seen; photos are shown at the model's size.
        charts.image_grid(samples, scale=2 if max(readers.image_shape(run)) < 64 else 1),
        f"The first {SAMPLES_PER_CLASS} training images of each class, one row per class "
        f"({classes}, top to bottom), from the first {readers.SAMPLE_IMAGES_SCANNED:,} "
        "training examples.", "chart-samples", css_class="samples"))


# --- training ---------------------------------------------------------------------------

def training_section(run: RunData) -> Section:
    """Loss and metric curves per epoch, train and eval, from the Trainer's logs."""
    training = readers.read_training_history(run)
    if training is None:
        return Section("training", "Training", not_present(
            "the Trainer did not run (the run stopped before training)"), present=False)
    history = training["history"]
    parts = [f'<p class="note">Per-epoch values from {escape(training["source"])}; "eval" is the '
             "eval split the Trainer validates on.</p>"]
    for name in _metric_names(history):
        series = {}
        if name in history:
            series["train"] = history[name]
        if f"val_{name}" in history:
            series["eval"] = history[f"val_{name}"]
        parts.append(figure(charts.line_chart(series, name, "epoch", name),
                            f"{name} per epoch, train and eval.", f"chart-training-{name}"))
    epochs = training["stats"].get("epochs") or []
    names = list(history)
    rows = []
    for index in range(max(len(values) for values in history.values())):
        row = [index + 1] + [history[name][index] if index < len(history[name]) else None
                             for name in names]
        if index < len(epochs):
            row += [round(epochs[index]["seconds"], 2),
                    round(epochs[index]["examples_per_second"], 1)]
        elif epochs:
            row += [None, None]
        rows.append(row)
    headers = ["epoch"] + names + (["train seconds", "examples/s"] if epochs else [])
    parts.append(table(headers, rows, table_id="training-history"))
    stats = training["stats"]
    if stats:
        parts.append(f'<p class="note">{number(stats.get("train_examples"))} train and '
                     f'{number(stats.get("eval_examples"))} eval examples, batch size '
                     f'{number(stats.get("batch_size"))}, {number(stats.get("epochs_run"))} '
                     "epoch(s) run.</p>")
    command = tensorboard_command(run)
    if command:
        parts.append("<p>The Trainer's TensorBoard logs (per-epoch scalars of train and eval) "
                     "open with:</p>" + pre(command, "tensorboard-command"))
    return Section("training", "Training", "".join(parts))


# --- evaluation -------------------------------------------------------------------------

def _result_cell(passed: Optional[bool]) -> str:
    if passed is None:
        return "–"
    return '<span class="pass">pass</span>' if passed else '<span class="fail">fail</span>'


def evaluation_section(run: RunData) -> Section:
    """TFMA metrics overall and per slice, thresholds, pass/fail, and a confusion matrix."""
    evaluation = readers.read_evaluation(run)
    if evaluation is None:
        return Section("evaluation", "Evaluation", not_present(
            "the Evaluator did not run (the run stopped before evaluation)"), present=False)
    rows = evaluation["rows"]
    parts = []
    validation_ok = evaluation["validation_ok"]
    parts.append("<p>" + badge({True: "validation passed", False: "validation failed",
                                None: "no validation result"}[validation_ok], validation_ok)
                 + badge("blessed" if run.summary.get("blessed") else "not blessed",
                         bool(run.summary.get("blessed"))) + "</p>")
    if evaluation["has_baseline"]:
        parts.append(f"<p>Compared against the last blessed model: "
                     f"<code>{escape(run.baseline_model or 'baseline')}</code>.</p>")
    else:
        parts.append('<p id="no-baseline">No baseline: there was no earlier blessed model in '
                     "this output directory, so change thresholds were not applied.</p>")
    if evaluation["failures"]:
        parts.append("<p>Missed thresholds:</p><ul>" + "".join(
            f"<li>{escape(line)}</li>" for line in evaluation["failures"]) + "</ul>")
    overall = [row for row in rows if row.slice_name == "overall"]
    parts.append("<h3>Overall</h3>")
    parts.append(table(["metric", "new model", "baseline", "difference", "threshold", "result"],
                       [(row.metric, row.value, row.baseline, row.difference,
                         row.threshold or "–", _result_cell(row.passed)) for row in overall],
                       table_id="metrics-overall", raw_columns=(5,)))
    sliced = [row for row in rows if row.slice_name != "overall"]
    if sliced:
        slices = list(dict.fromkeys(row.slice_name for row in sliced))
        metrics = list(dict.fromkeys(row.metric for row in sliced))
        by_key = {(row.slice_name, row.metric): row for row in sliced}
        headers = ["slice"]
        for metric in metrics:
            headers += [metric] + ([f"{metric} (baseline)"] if evaluation["has_baseline"] else [])
        table_rows = []
        for slice_name in slices:
            row = [slice_name]
            for metric in metrics:
                item = by_key.get((slice_name, metric))
                row.append(item.value if item else None)
                if evaluation["has_baseline"]:
                    row.append(item.baseline if item else None)
            table_rows.append(row)
        parts.append("<h3>Per slice</h3>")
        chart_metric = next((metric for metric in metrics if metric != "example_count"), None)
        if chart_metric:
            series = {"new model": [by_key.get((s, chart_metric)).value
                                    if by_key.get((s, chart_metric)) else None for s in slices]}
            if evaluation["has_baseline"]:
                series["baseline"] = [by_key.get((s, chart_metric)).baseline
                                      if by_key.get((s, chart_metric)) else None for s in slices]
            parts.append(figure(charts.bar_chart(slices, series, f"{chart_metric} per slice",
                                                 chart_metric, value_format=".3g",
                                                 fit_range=True),
                                f"TFMA {chart_metric} per slice on the "
                                f"'{run.config_value('eval.split', 'test')}' split; the axis "
                                "spans the values' range (it does not start at 0).",
                                "chart-slice-metrics"))
        parts.append(table(headers, table_rows, table_id="metrics-per-slice"))
    confusion = _confusion_matrix_html(run)
    if confusion is not None:  # classifiers only
        parts.append("<h3>Confusion matrix</h3>" + confusion)
    return Section("evaluation", "Evaluation", "".join(parts))


def _confusion_matrix_html(run: RunData) -> Optional[str]:
    shows = _shows(run, tasks.CONFUSION_MATRIX_SECTION)
    if shows is False or (shows is None and not readers.is_classifier(run)):
        return None
    result = run.cached("confusion", lambda: readers.confusion_matrix(run))
    if result is None:
        return not_present("no model, or no examples of the evaluation split, to compute it from")
    matrix = result["matrix"]
    labels = [str(index) for index in range(matrix.shape[0])]
    accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))
    return (figure(charts.confusion_matrix_chart(matrix, labels, "Confusion matrix"),
                   f"Rows: true class; columns: predicted class. {result['examples']:,} examples "
                   f"of the '{result['split']}' split.", "chart-confusion-matrix")
            + f'<p class="note" id="confusion-note">Computed by the report from the model '
              f"(<code>{escape(result['model_dir'])}</code>, serving_default signature) on the "
              f"first {result['examples']:,} examples of the '{escape(result['split'])}' split "
              f"(at most {result['limit']:,}); TFMA's eval config has no confusion-matrix plot. "
              f"Accuracy from this matrix: {format_number(accuracy)}.</p>")


# --- forecasting (the hook) -------------------------------------------------------------

def forecast_section(run: RunData) -> Optional[Section]:
    """For forecasters: the error metrics beside the baselines, and predicted vs actual."""
    task = _task(run)
    if task is None or tasks.FORECAST_SECTION not in task.report_sections:
        return None  # not a forecaster: no section at all
    metrics = run.summary.get("metrics") or {}
    error_metrics = {name: value for name, value in metrics.items()
                     if isinstance(value, (int, float))
                     and any(metric in name for metric in task.summary_metrics)}
    if not error_metrics:
        return Section("forecast", "Forecast", not_present(
            f"no {'/'.join(task.summary_metrics)} metrics in the run summary (the run stopped "
            "before the Evaluator)"), present=False)
    parts = [table(["metric", "value"], sorted(error_metrics.items()), table_id="forecast-metrics")]
    parts.append(figure(charts.bar_chart(sorted(error_metrics), {"value": [
        error_metrics[name] for name in sorted(error_metrics)]}, "Model against baselines",
        "error", horizontal=True, value_format=".4g"),
        "The model's errors beside the baselines' (run_summary.json metrics).",
        "chart-forecast-metrics"))
    window = readers.forecast_window(run)
    if window is None:
        parts.append(not_present("predicted against actual on a test window (the run has no "
                                 "forecasting model with an evaluation signature)"))
    else:
        when = (datetime.datetime.fromtimestamp(window["window_end"], datetime.timezone.utc)
                .strftime("%Y-%m-%d %H:%M UTC") if window["window_end"] is not None else "?")
        parts.append(figure(charts.forecast_chart(window, f"{window['target']}: predicted "
                                                  "against actual"),
                            f"The first window of the {window['split']} split (last observed "
                            f"step {when}): the target's last {len(window['history'])} values, "
                            f"then the next {len(window['actual'])} actual values beside the "
                            "model's forecast and the persistence and seasonal-naive "
                            "baselines, in the target's units.", "chart-forecast"))
        parts.append(table(["step ahead", "actual", "forecast", "persistence", "seasonal naive"],
                           [[step + 1, a, f, p, n]
                            for step, (a, f, p, n) in enumerate(zip(
                                window["actual"], window["forecast"], window["persistence"],
                                window["seasonal_naive"]))],
                           table_id="forecast-window"))
    return Section("forecast", "Forecast", "".join(parts))


# --- tables -----------------------------------------------------------------------------

MAX_RESIDUAL_EXAMPLES = 5000


def _table_residuals(run: RunData) -> Optional[Dict[str, np.ndarray]]:
    """A regression model's predictions beside the labels of the evaluation split (at most
    MAX_RESIDUAL_EXAMPLES), from the serving_default signature; None without them."""
    model = readers.load_model(run)
    uri = run.uri("examples")
    if model is None or not uri:
        return None
    signature = model.signatures.get(features.SERVING_DEFAULT_SIGNATURE)
    records = readers._records(uri, run.config_value("eval.split", "test"), MAX_RESIDUAL_EXAMPLES)
    if signature is None or records is None:
        return None
    import tensorflow as tf

    from tfprod.pipeline.tasks.table import PREDICTION_OUTPUT

    spec = {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.float32)}
    actual, predicted = [], []
    for batch in records.batch(256):
        outputs = signature(examples=batch)
        if PREDICTION_OUTPUT not in outputs:
            return None
        predicted.append(outputs[PREDICTION_OUTPUT].numpy().reshape(-1))
        actual.append(tf.io.parse_example(batch, spec)[features.LABEL_KEY].numpy())
    if not actual:
        return None
    return {"actual": np.concatenate(actual), "predicted": np.concatenate(predicted)}


def _residual_chart(actual: np.ndarray, predicted: np.ndarray, title: str) -> str:
    pyplot = charts._pyplot()
    figure_, (left, right) = pyplot.subplots(1, 2, figsize=(9, 3.6))
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    left.scatter(actual, predicted, s=10, alpha=0.6)
    left.plot([low, high], [low, high], color="grey", linewidth=1)
    left.set_xlabel("actual")
    left.set_ylabel("predicted")
    left.set_title(title)
    right.hist(predicted - actual, bins=30)
    right.set_xlabel("residual (predicted - actual)")
    right.set_ylabel("examples")
    return charts.figure_to_uri(figure_)


def table_section(run: RunData) -> Optional[Section]:
    """For tables: the problem, each column's type (and why), missing rates, and for a
    regression the predicted values against the actual ones."""
    if _shows(run, tasks.TABLE_COLUMNS_SECTION) is not True:
        return None  # not a table: no section at all
    data = run.summary.get("data") or {}
    columns = data.get("columns") or []
    if not columns:
        return Section("table", "Table", not_present(
            "run_summary.json has no column types (the run stopped before they were read)"),
            present=False)
    parts = [f"<p>Label column <code>{escape(data.get('label_column'))}</code>: "
             f"<b>{escape(data.get('problem'))}</b> ({escape(data.get('problem_reason'))}); "
             f"{number(data.get('train_rows'))} rows in train.csv.</p>"]
    if data.get("classes"):
        parts.append(f"<p>Classes (class id order): {escape(', '.join(data['classes']))}.</p>")
    parts.append(table(["column", "type", "stored as", "why", "distinct values", "missing"],
                       [[c["name"], c["type"], c["kind"], c["reason"], c["distinct"],
                         f"{100 * c['missing_rate']:.1f}%"] for c in columns],
                       table_id="table-columns"))
    if data.get("dropped_columns"):
        parts.append(table(["dropped column", "why"], sorted(data["dropped_columns"].items()),
                           table_id="table-dropped"))
    parts.append(figure(charts.bar_chart([c["name"] for c in columns], {"missing (%)": [
        100 * c["missing_rate"] for c in columns]}, "Missing values in train.csv", "%",
        horizontal=True, value_format=".1f"),
        "Share of train.csv's rows with the cell missing (numeric columns are imputed with "
        "the train mean plus a missing flag; categorical ones get a missing id).",
        "chart-table-missing"))
    if data.get("problem") == "regression" and _shows(run, tasks.RESIDUALS_SECTION):
        residuals = run.cached("table_residuals", lambda: _table_residuals(run))
        if residuals is None:
            parts.append(not_present("predicted against actual (no model or evaluation split)"))
        else:
            errors = residuals["predicted"] - residuals["actual"]
            parts.append(figure(_residual_chart(residuals["actual"], residuals["predicted"],
                                                "Predicted against actual"),
                                f"{len(errors):,} examples of the "
                                f"'{run.config_value('eval.split', 'test')}' split; MAE "
                                f"{format_number(float(np.abs(errors).mean()))}, mean residual "
                                f"{format_number(float(errors.mean()))}.",
                                "chart-table-residuals"))
    return Section("table", "Table", "".join(parts))


# --- mobile -----------------------------------------------------------------------------

def mobile_section(run: RunData) -> Section:
    """The TFLite variants: size, accuracy, agreement, latency, and the metadata summary."""
    report = readers.read_tflite_report(run)
    if report is None:
        if run.summary.get("tflite_skipped"):  # the task has no TFLite models, and says why
            reason = run.summary["tflite_skipped"]
        elif not run.config_value("mobile.enabled", False):
            reason = "mobile.enabled is false in the config"
        elif not run.summary.get("blessed"):
            reason = "the model was not blessed, so no TFLite models were made"
        else:
            reason = "no TFLite report was found for this run"
        return Section("mobile", "Mobile (TFLite)", not_present(reason), present=False)
    if report.get("metric") == "mae":
        return _mobile_forecast_section(report)
    rows = []
    for model in report["models"]:
        for runtime, result in model["runtimes"].items():
            rows.append([model["mode"], model["io_type"], runtime,
                         round(model["size_bytes"] / 1024, 1),
                         model.get("size_ratio_vs_float32"), result["accuracy"],
                         round(result["accuracy_drop_points"], 2), result["top1_agreement"],
                         result["max_probability_difference"],
                         round(result["latency_ms_1_thread"], 3),
                         round(result["latency_ms_2_threads"], 3)])
    parts = [f'<p>Model {escape(report["model_name"])} version {escape(report["version"])}: '
             f'SavedModel test accuracy {format_number(report["savedmodel_accuracy"])} on '
             f'{report["test_examples"]:,} test examples; latency is the median of '
             f'{report["latency_examples"]} single-example invokes '
             f'({escape(report["latency_note"])}). Machine: {escape(report["machine"])}.</p>',
             table(["mode", "io", "runtime", "size (KB)", "x float32", "accuracy",
                    "drop (points)", "top-1 agreement", "max prob. diff",
                    "latency 1 thread (ms)", "latency 2 threads (ms)"], rows,
                   table_id="tflite-models")]
    if report.get("int8"):
        parts.append(_int8_attempts(report["int8"]))
    modes = [model["mode"] for model in report["models"]]
    parts.append(figure(charts.bar_chart(modes, {"size (KB)": [
        model["size_bytes"] / 1024 for model in report["models"]]}, "Model size", "KB",
        value_format=".0f"), "Size of each TFLite variant.", "chart-tflite-size"))
    runtimes = list(report["models"][0]["runtimes"]) if report["models"] else []
    parts.append(figure(charts.bar_chart(modes, {runtime: [
        model["runtimes"].get(runtime, {}).get("latency_ms_1_thread") for model in report["models"]]
        for runtime in runtimes}, "Latency, 1 thread", "ms"),
        "Median single-example latency per variant and runtime.", "chart-tflite-latency"))
    metadata = report.get("metadata") or {}
    scaling = report.get("input_scaling") or {}
    parts.append("<h3>Metadata</h3>" + table(["", ""], [
        ("name", metadata.get("name")), ("version", metadata.get("version")),
        ("associated files", ", ".join(metadata.get("associated_files") or []) or "–"),
        ("input scaling", json.dumps(scaling) if scaling else "–"),
        ("int8 calibration examples", report.get("calibration_examples")),
        ("report", report["_path"])], table_id="tflite-metadata"))
    parts.append(_failed_modes(report))
    return Section("mobile", "Mobile (TFLite)", "".join(parts))


def _failed_modes(report: Dict[str, Any]) -> str:
    """The modes the converter refused, each with the first line of its error."""
    failed = report.get("failed_modes") or {}
    if not failed:
        return ""
    return "<h3>Modes not converted</h3>" + table(["mode", "why"], [
        (mode, reason.splitlines()[0][:400]) for mode, reason in failed.items()],
        table_id="tflite-failed-modes")


def _mobile_forecast_section(report: Dict[str, Any]) -> Section:
    """A forecaster's TFLite variants: MAE against the future values and the largest
    difference from the SavedModel's forecast, instead of accuracy."""
    rows = []
    for model in report["models"]:
        for runtime, result in model["runtimes"].items():
            rows.append([model["mode"], model["io_type"], runtime,
                         round(model["size_bytes"] / 1024, 1),
                         model.get("size_ratio_vs_float32"), result["mae"],
                         result["mae_increase"], result["max_abs_difference"],
                         round(result["latency_ms_1_thread"], 3),
                         round(result["latency_ms_2_threads"], 3)])
    parts = [f'<p>Model {escape(report["model_name"])} version {escape(report["version"])}: '
             f'SavedModel test MAE {format_number(report["savedmodel_mae"])} on '
             f'{report["test_examples"]:,} test windows; latency is the median of '
             f'{report["latency_examples"]} single-window invokes '
             f'({escape(report["latency_note"])}). Machine: {escape(report["machine"])}.</p>',
             table(["mode", "io", "runtime", "size (KB)", "x float32", "MAE", "MAE increase",
                    "max abs. diff", "latency 1 thread (ms)", "latency 2 threads (ms)"], rows,
                   table_id="tflite-models"),
             _failed_modes(report)]
    return Section("mobile", "Mobile (TFLite)", "".join(parts))


def _int8_attempts(int8: Dict[str, Any]) -> str:
    """The int8 gates and each attempt of mobile.int8_strategy (mobile/int8_auto.py)."""
    gates = int8["gates"]
    rows = []
    for number, attempt in enumerate(int8["attempts"], start=1):
        for runtime, result in (attempt["runtimes"] or {"–": None}).items():
            rows.append([number, attempt["description"],
                         None if attempt["size_bytes"] is None
                         else round(attempt["size_bytes"] / 1024, 1), runtime,
                         None if result is None else round(result["accuracy_drop_points"], 2),
                         None if result is None else result["top1_agreement"],
                         "yes" if attempt["passed"] else "no", attempt["next"] or ""])
    return (f'<h3>int8: gates and attempts (mobile.int8_strategy {escape(int8["strategy"])})</h3>'
            f'<p>Gates on every runtime: accuracy drop at most '
            f'{format_number(gates["max_accuracy_drop_points"])} points, top-1 agreement at '
            f'least {format_number(gates["min_top1_agreement"])} (mobile.int8_gate '
            f'{escape(gates["on_failure"])}). {escape(int8["summary"])}.</p>'
            + table(["#", "tried", "size (KB)", "runtime", "drop (points)", "top-1 agreement",
                     "passed", "why the next was taken"], rows, table_id="tflite-int8-attempts"))


# --- serving ----------------------------------------------------------------------------

def _example_record(run: RunData):
    """One serialized test example without its label, and its image pixels if an image."""
    uri = run.uri("examples")
    if not uri:
        return None
    import tensorflow as tf

    split = run.config_value("eval.split", "test")
    files = sorted(tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*")))
    if not files:
        return None
    serialized = next(iter(tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(1)))
    example = tf.train.Example.FromString(serialized.numpy())
    if features.LABEL_KEY in example.features.feature:
        del example.features.feature[features.LABEL_KEY]
    return example


def _raw_instance(run: RunData, example, signature: Dict[str, list]):
    """One serving_raw instance (JSON) from a test tf.Example, for tasks whose raw inputs
    are the example's own features: text (a string), a table row (one value per column),
    a forecaster's window ([lookback, columns], columns in the model's order); else None."""
    from tfprod.pipeline.tasks import forecasting

    feature_map = example.features.feature
    inputs = signature["inputs"]

    def values(name: str) -> list:
        feature = feature_map[name]
        kind = feature.WhichOneof("kind")
        found = list(getattr(feature, kind).value) if kind else []
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else item
                for item in found]

    if len(inputs) == 1 and inputs[0]["name"] == forecasting.WINDOW_INPUT:
        columns = _forecast_columns(run)
        if not columns or any(column not in feature_map for column in columns):
            return None
        return [list(step) for step in zip(*(values(column) for column in columns))]
    if not all(tensor["name"] in feature_map for tensor in inputs):
        return None
    row = {tensor["name"]: (values(tensor["name"]) or [None])[0] for tensor in inputs}
    if any(value is None for value in row.values()):
        return None  # a missing cell: no JSON value says "missing" for every dtype
    return row[inputs[0]["name"]] if len(inputs) == 1 else row


def _forecast_columns(run: RunData) -> Optional[List[str]]:
    """A forecaster's window columns as feature names, in the model's order (feature_columns,
    then the target), from the run's config; the CSV's header when feature_columns is empty."""
    from tfprod.pipeline.ingestion import timeseries

    target = run.config_value("data.time_series.target_column")
    columns = list(run.config_value("data.time_series.feature_columns") or [])
    if not target:
        return None
    if not columns:
        try:
            path = timeseries.find_csv(run.config_value("data.data_dir"),
                                       run.config_value("data.time_series.file"))
            with open(path, encoding="utf-8") as handle:
                header = [name.strip() for name in handle.readline().split(",")]
        except Exception:  # the data moved since the run: no window request then
            return None
        stamp = run.config_value("data.time_series.timestamp_column")
        columns = [name for name in header if name and name != stamp]
    if target not in columns:
        columns.append(target)
    return [timeseries.feature_name(column) for column in columns]


def serving_section(run: RunData) -> Section:
    """The model's signatures and REST and gRPC requests to copy."""
    signatures = run.cached("signatures", lambda: readers.read_signatures(run))
    if signatures is None:
        return Section("serving", "Serving", not_present(
            "the run has no model (it stopped before training)"), present=False)
    model_name = run.config_value("export.model_name") or "model"
    pushed = run.summary.get("pushed_model_dir")
    parts = []
    if pushed:
        base_path = os.path.dirname(pushed)
        parts.append(f"<p>Pushed version <code>{escape(os.path.basename(pushed))}</code> under "
                     f"<code>{escape(base_path)}</code>. Serve it with:</p>")
        parts.append(pre(f".venv/bin/tfprod serve --model_name={model_name} "
                         f"--model_base_path={base_path} --port=8500 --rest_api_port=8501",
                         "serve-command"))
    else:
        parts.append("<p>This model was not pushed; the signatures below are the trained "
                     f"model's (<code>{escape(readers.model_dir(run))}</code>).</p>")
    rows = []
    for name, signature in signatures.items():
        for direction in ("inputs", "outputs"):
            for tensor in signature[direction]:
                rows.append([name, direction[:-1], tensor["name"], tensor["dtype"],
                             tensor["shape"]])
    parts.append(table(["signature", "input/output", "tensor", "dtype", "shape"], rows,
                       table_id="signatures"))
    example = _example_record(run)
    shape = readers.image_shape(run)
    # `in` first: indexing a protobuf map would add an empty feature to the example.
    photo = (example.features.feature[features.IMAGE_BYTES_KEY].bytes_list.value
             if example is not None and features.IMAGE_BYTES_KEY in example.features.feature
             else None)
    predict_url = f"http://127.0.0.1:8501/v1/models/{model_name}:predict"
    curl = f"curl -s -X POST -H 'Content-Type: application/json' -d @request.json {predict_url}"
    predict_rest = (f".venv/bin/tfprod predict --model_name {model_name} --request @request.json"
                    " --server 127.0.0.1:8501")
    raw_body = None
    if photo and features.SERVING_RAW_SIGNATURE in signatures:
        raw_body = {"signature_name": features.SERVING_RAW_SIGNATURE, "instances": [
            {"b64": base64.b64encode(photo[0]).decode("ascii")}]}
        parts.append("<h3>REST (JSON, a photo file)</h3><p>One test photo, as "
                     f"{features.SERVING_RAW_SIGNATURE} takes it: the JPEG or PNG file's bytes "
                     "in base64, any size (the model decodes, resizes and crops it). From a "
                     "file: <code>{\"instances\": [{\"b64\": \"$(base64 -w0 photo.jpg)\"}]}"
                     "</code>.</p>")
    elif example is not None and shape and features.SERVING_RAW_SIGNATURE in signatures:
        pixels = np.asarray(example.features.feature[features.IMAGE_KEY].int64_list.value)
        raw_body = {"signature_name": features.SERVING_RAW_SIGNATURE,
                    "instances": [pixels.reshape(shape).tolist()]}
        parts.append("<h3>REST (JSON, raw pixels)</h3><p>One test image, as "
                     f"{features.SERVING_RAW_SIGNATURE} takes it (float32 [N, {shape[0]}, "
                     f"{shape[1]}], pixel values 0..255):</p>")
    elif example is not None and features.SERVING_RAW_SIGNATURE in signatures:
        instance = _raw_instance(run, example, signatures[features.SERVING_RAW_SIGNATURE])
        if instance is not None:
            raw_body = {"signature_name": features.SERVING_RAW_SIGNATURE,
                        "instances": [instance]}
            names = ", ".join(t["name"] for t in
                              signatures[features.SERVING_RAW_SIGNATURE]["inputs"])
            parts.append(f"<h3>REST (JSON, raw values)</h3><p>One test example, as "
                         f"{features.SERVING_RAW_SIGNATURE} takes it (inputs: "
                         f"<code>{escape(names)}</code>; see the table above):</p>")
    if raw_body is not None:
        parts.append(pre(f"cat > request.json <<'JSON'\n"
                         f"{json.dumps(raw_body, separators=(',', ':'))}\nJSON\n"
                         f"{curl}\n{predict_rest}\n"
                         f"{predict_rest.replace(':8501', ':8500')} --protocol grpc",
                         "rest-request"))
        parts.append('<p class="note">The same request.json works over gRPC with '
                     "<code>tfprod predict --protocol grpc</code> (last line above): it sends "
                     "the same tensors as a PredictRequest.</p>")
    if example is not None and features.SERVING_DEFAULT_SIGNATURE in signatures:
        encoded = base64.b64encode(example.SerializeToString()).decode("ascii")
        body_text = json.dumps({"signature_name": features.SERVING_DEFAULT_SIGNATURE,
                                "instances": [{"b64": encoded}]}, separators=(",", ":"))
        parts.append("<h3>REST (serialized tf.Example)</h3>")
        parts.append(pre(f"curl -s -X POST -H 'Content-Type: application/json' -d '{body_text}' "
                         f"{predict_url}", "rest-request-examples"))
        outputs = [t["name"] for t in signatures[features.SERVING_DEFAULT_SIGNATURE]["outputs"]]
        parts.append("<h3>gRPC (port 8500)</h3><p>The same tf.Example as a PredictRequest; "
                     f"{features.SERVING_DEFAULT_SIGNATURE} answers "
                     f"<code>{escape(', '.join(outputs))}</code>.</p>")
        parts.append(pre(
            "import base64, grpc, tensorflow as tf\n"
            "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc\n\n"
            "channel = grpc.insecure_channel('127.0.0.1:8500')\n"
            "stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)\n"
            "request = predict_pb2.PredictRequest()\n"
            f"request.model_spec.name = '{model_name}'\n"
            f"request.model_spec.signature_name = '{features.SERVING_DEFAULT_SIGNATURE}'\n"
            f"example = base64.b64decode('{encoded}')\n"
            "request.inputs['examples'].CopyFrom(tf.make_tensor_proto([example], tf.string))\n"
            "response = stub.Predict(request, timeout=10.0)\n"
            f"for name in {outputs!r}:\n"
            "    print(name, tf.make_ndarray(response.outputs[name]).tolist())\n",
            "grpc-request"))
    return Section("serving", "Serving", "".join(parts))


# --- data drift -------------------------------------------------------------------------

def data_drift_section(run: RunData) -> Section:
    """The pipeline's drift check: this run's train split against the last blessed run's
    (pipeline/drift_check.py; run_summary.json's data_drift)."""
    drift = run.summary.get("data_drift") or {}
    if not drift:
        return Section("data-drift", "Data drift", not_present(
            "the drift check did not run (monitor.pipeline_drift: off, a Kubeflow run, or a "
            "run that stopped before it)"), present=False)
    mode = drift.get("mode")
    if drift.get("note"):
        return Section("data-drift", "Data drift", f"<p>{escape(drift['note'])} "
                       f"(monitor.pipeline_drift: {escape(mode)}).</p>")
    rows = [[f["feature"], f["comparator"], f["distance"], f["threshold"],
             "drift" if f["drifted"] else ("not measured" if f["distance"] is None else "ok")]
            for f in drift.get("features", [])]
    drifted = drift.get("drifted") or []
    parts = [f'<p>{badge("drift" if drifted else "no drift", not drifted)} The '
             f"'{escape(drift.get('split'))}' split of this run against the last blessed "
             "run's, with TFDV's drift comparators (L-infinity for categorical features, "
             "Jensen-Shannon divergence for numeric ones); monitor.pipeline_drift: "
             f"<code>{escape(mode)}</code>.</p>",
             table(["feature", "comparator", "distance", "threshold", "verdict"], rows,
                   table_id="data-drift"),
             f'<p class="note">Statistics: <code>{escape(drift.get("statistics"))}</code> '
             f'against <code>{escape(drift.get("previous_statistics"))}</code>.</p>']
    return Section("data-drift", "Data drift", "".join(parts))


SECTION_BUILDERS: List[Callable[[RunData], Section]] = [
    overview_section, data_section, samples_section, training_section, evaluation_section,
    forecast_section, table_section, mobile_section, serving_section,
]
# Appended (not inserted) so the other sections keep their place.
SECTION_BUILDERS.append(data_drift_section)
