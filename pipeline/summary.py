"""The run summary: metrics, blessing and pushed path read back from ML Metadata.

Written to <output-dir>/run_summary.json and printed at the end of a run.
"""

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional

from tfprod.contract import layout
from tfprod.pipeline import config as config_lib
# TFMA's name for the last blessed model when the Evaluator compares against it.
BASELINE_MODEL_NAME = "baseline"


@dataclasses.dataclass
class RunSummary:
    experiment: str
    output_dir: str
    status: str = "succeeded"
    error: Optional[str] = None
    failed_component: Optional[str] = None
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    slice_metrics: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    blessed: bool = False
    # Why the model was not blessed: one line per failed threshold.
    validation_failures: List[str] = dataclasses.field(default_factory=list)
    pushed_model_dir: Optional[str] = None
    component_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    total_seconds: float = 0.0
    training: Dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: Dict[str, str] = dataclasses.field(default_factory=dict)
    # The TFLite models of the blessed model (mode -> path) and their report (json, markdown).
    tflite_models: Dict[str, str] = dataclasses.field(default_factory=dict)
    tflite_report: Dict[str, str] = dataclasses.field(default_factory=dict)
    # mobile.compression's models: technique -> mode -> path (and technique -> why it failed).
    tflite_compressed: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
    tflite_compression_failed: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Why the run made no TFLite model, when its task has none (Task.mobile_skip_reason).
    tflite_skipped: Optional[str] = None
    # What the task records about the data (Task.run_summary_extras), e.g. a table's
    # problem (classification or regression), label column and column types.
    data: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # The tfprod source's git commit, and the HTML run report (pipeline/report/).
    git_commit: Optional[str] = None
    report_path: Optional[str] = None
    # Input files the ExampleGen left out (data.bad_images: skip), as it listed them
    # ({"count": n, "files": [{"file", "reason"}]}); empty when none were.
    skipped_inputs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # The blessing gate (eval.gate): kind, metric, the bound it required, the margin, and
    # the trivial baseline's score on this data (also in metrics, e.g. baseline_accuracy).
    gate: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # Not blessed: the --set overrides that would change that, each with why.
    bless_hints: List[str] = dataclasses.field(default_factory=list)
    # What an earlier run killed in this output directory left, cleared before this run
    # (pipeline.recovery.recover): {"unfinished_run", "abandoned_executions",
    # "removed_partial_pushes"}; empty when there was nothing.
    recovered: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # The pipeline's drift check (pipeline/drift_check.py, monitor.pipeline_drift): this
    # run's train split against the last blessed run's, as its drift.json says; empty when
    # the check did not run.
    data_drift: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # The InfraValidator (pipeline/infra_validator.py): {"blessed", "skipped", "server",
    # "failures", "p50_ms", "p99_ms", "requests", "errors", "seconds", "line"}; empty when
    # the step did not run (infra.enabled false, or the run stopped before it).
    infra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """A short, human-readable summary for the end of `tfprod run`."""
        lines = [f"Run {self.status}: {self.experiment}"]
        if self.component_seconds:
            lines.append("Component wall times:")
            lines += [f"  {name:<32} {seconds:8.1f}s"
                      for name, seconds in self.component_seconds.items()]
            lines.append(f"  {'total':<32} {self.total_seconds:8.1f}s")
        if self.metrics:
            lines.append("Evaluation (" + ", ".join(
                f"{name}={value:.4f}" if isinstance(value, float) else f"{name}={value}"
                for name, value in sorted(self.metrics.items())) + ")")
        if self.infra.get("line"):
            lines.append(self.infra["line"])
        if self.status == "succeeded":
            if self.blessed and self.infra and not self.infra.get("blessed"):
                lines.append("Blessed by the Evaluator, but the InfraValidator did not bless it: "
                             "the model was not pushed")
            elif self.blessed:
                lines.append(f"Blessed: yes. Pushed to {self.pushed_model_dir}")
                if self.tflite_skipped:
                    lines.append(f"TFLite: none ({self.tflite_skipped})")
                if self.tflite_report:
                    lines.append(f"TFLite: {', '.join(self.tflite_models)}; report "
                                 f"{self.tflite_report.get('markdown')}")
                if self.tflite_compressed or self.tflite_compression_failed:
                    lines.append("TFLite compressed: " + ", ".join(
                        [f"{name} ({', '.join(modes)})"
                         for name, modes in self.tflite_compressed.items()]
                        + [f"{name} FAILED" for name in self.tflite_compression_failed]))
            else:
                lines.append("Blessed: NO - the model was not pushed; it missed:")
                lines += [f"  {failure}" for failure in self.validation_failures or ["(unknown)"]]
                if self.bless_hints:
                    lines.append("What would change that:")
                    lines += [f"  {hint}" for hint in self.bless_hints]
        else:
            lines.append(f"Failed at: {self.failed_component or 'before the pipeline started'}")
        if self.skipped_inputs.get("count"):
            lines.append(f"Skipped {self.skipped_inputs['count']} input file(s) "
                         "(data.bad_images: skip):")
            listed = self.skipped_inputs.get("files", [])
            lines += [f"  {entry['file']}: {entry['reason']}" for entry in listed[:20]]
            if len(listed) > 20:
                lines.append(f"  ... and {len(listed) - 20} more in run_summary.json")
        if self.recovered:
            lines.append(f"Before this run: {self.recovered['abandoned_executions']} "
                         "execution(s) of an unfinished run marked CANCELED in ML Metadata, "
                         f"{len(self.recovered['removed_partial_pushes'])} partial push(es) "
                         "removed")
        if self.data_drift.get("drifted"):
            lines.append("Data drift against the last blessed run (monitor.pipeline_drift: "
                         f"{self.data_drift.get('mode')}):")
            lines += [f"  {line}" for line in self.data_drift["drifted"]]
        lines.append(f"Summary: {os.path.join(self.output_dir, layout.SUMMARY_FILE)}")
        if self.report_path:
            lines.append(f"Report: {self.report_path}")
        return "\n".join(lines)


def _latest_execution_outputs(store, pipeline_name: str, node_id: str,
                              run_context_id: Optional[int]) -> Dict[str, List[Any]]:
    """Output artifacts (by output key) of the node's latest execution in this run."""
    from ml_metadata.proto import metadata_store_pb2

    node_context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if node_context is None:
        return {}
    executions = store.get_executions_by_context(node_context.id)
    if run_context_id is not None:
        in_run = {e.id for e in store.get_executions_by_context(run_context_id)}
        executions = [e for e in executions if e.id in in_run]
    if not executions:
        return {}
    execution = max(executions, key=lambda e: e.id)
    events = [e for e in store.get_events_by_execution_ids([execution.id])
              if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    outputs: Dict[str, List[Any]] = {}
    for event in events:
        key = event.path.steps[0].key if event.path.steps else ""
        outputs.setdefault(key, []).append(artifacts[event.artifact_id])
    return outputs


def _custom_int(artifact, name: str) -> Optional[int]:
    if name in artifact.custom_properties:
        return artifact.custom_properties[name].int_value
    return None


def _custom_str(artifact, name: str) -> Optional[str]:
    if name in artifact.custom_properties:
        return artifact.custom_properties[name].string_value
    return None


OVERALL_SLICE = "overall"


def slice_name(slice_key) -> str:
    """A TFMA slice key as run_summary.json and the report name it: "overall", "label=3",
    "island=Biscoe" (string values decoded, not b'Biscoe')."""
    parts = []
    for part in slice_key.single_slice_keys:
        value = getattr(part, part.WhichOneof("kind"))
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        parts.append(f"{part.column}={value}")
    return ",".join(parts) or OVERALL_SLICE


def read_eval_metrics(evaluation_uri: str):
    """(overall metrics, per-slice metrics) from a TFMA evaluation artifact."""
    import tensorflow_model_analysis as tfma

    overall: Dict[str, float] = {}
    per_slice: Dict[str, Dict[str, float]] = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        values = {}
        for item in metrics_for_slice.metric_keys_and_values:
            # Only the new model's values: not the baseline's, nor the differences.
            if item.key.is_diff or item.key.model_name == BASELINE_MODEL_NAME:
                continue
            if item.value.HasField("double_value"):
                values[item.key.name] = item.value.double_value.value
        name = slice_name(metrics_for_slice.slice_key)
        if name != OVERALL_SLICE:
            per_slice[name] = values
        else:
            overall = values
    return overall, dict(sorted(per_slice.items()))


@dataclasses.dataclass(frozen=True)
class MissedThreshold:
    """One threshold the model missed (from TFMA's validation result)."""

    metric: str
    slice_name: str
    value: float  # the metric, or its change against the last blessed model (is_diff)
    is_diff: bool
    bound: float  # the bound it missed: lower or upper, or the allowed change


def read_missed_thresholds(evaluation_uri: str) -> List[MissedThreshold]:
    """The thresholds a model missed, as records (read_validation_failures words them)."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    missed = []
    for per_slice in result.metric_validations_per_slice:
        where = slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            if failure.metric_key.is_diff:
                bound = failure.metric_threshold.change_threshold.absolute.value
            else:
                value_bound = failure.metric_threshold.value_threshold
                bound = (value_bound.upper_bound.value if value_bound.HasField("upper_bound")
                         else value_bound.lower_bound.value)
            missed.append(MissedThreshold(failure.metric_key.name, where,
                                          failure.metric_value.double_value.value,
                                          failure.metric_key.is_diff, bound))
    return missed


def read_validation_failures(evaluation_uri: str) -> List[str]:
    """The thresholds a model missed, from TFMA's validation result."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        where = slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value
            if failure.metric_key.is_diff:
                change = failure.metric_threshold.change_threshold
                # Lower-is-better metrics (e.g. MAE) may rise by at most the allowance.
                relation = ("<=" if change.direction == tfma.MetricDirection.LOWER_IS_BETTER
                            else ">=")
                failures.append(f"{failure.metric_key.name} ({where}) changed by "
                                f"{value:+.4f} against the last blessed model; allowed "
                                f"change {relation} {change.absolute.value:+.4f}")
            else:
                bound = failure.metric_threshold.value_threshold
                required = (f"<= {bound.upper_bound.value:.4f}" if bound.HasField("upper_bound")
                            else f">= {bound.lower_bound.value:.4f}")
                failures.append(f"{failure.metric_key.name} ({where}) = {value:.4f}; "
                                f"required {required}")
    return failures


# A hint's bound is rounded away from the model's value, past float noise, so the model
# clears it in TFMA's comparison (0.2 computed as 0.20000000000000007 floors to 0.19).
_ROUNDING_SLACK = 1e-9


def _floor(value: float, digits: int = 2) -> float:
    return math.floor((value - _ROUNDING_SLACK) * 10 ** digits) / 10 ** digits


def _ceil(value: float, digits: int = 2) -> float:
    return math.ceil((value + _ROUNDING_SLACK) * 10 ** digits) / 10 ** digits


def gate_record(experiment: config_lib.ExperimentConfig,
                baseline: Dict[str, float]) -> Dict[str, Any]:
    """run_summary.json's `gate`: the gate, its metric, the bound, the margin, the baseline.

    Args:
      experiment: the run's config.
      baseline: Task.baseline_metrics' answer ({} when the task has none).
    """
    from tfprod.pipeline.tasks import baselines

    evaluation = experiment.eval
    record: Dict[str, Any] = {baselines.GATE_KIND: evaluation.gate.value}
    if evaluation.gate == config_lib.Gate.BASELINE:
        record[baselines.GATE_MARGIN] = evaluation.baseline_margin
    from tfprod.pipeline import tasks

    bound = tasks.get_task(experiment).gate_bound(experiment, baseline)
    if bound is not None:
        record[baselines.GATE_METRIC], record[baselines.GATE_REQUIRED] = bound
    record.update(baseline)
    return record


def bless_hints(experiment: config_lib.ExperimentConfig, missed: List[MissedThreshold],
                baseline: Dict[str, float]) -> List[str]:
    """The --set overrides that would have blessed this model, one line each with why.

    Only for the overall slice's accuracy (classifiers) and MAE (forecasters): a value
    threshold it missed (a threshold it meets; or the other gate, when the model clears
    it), and the change against the last blessed model (the drop it would allow).
    """
    from tfprod.pipeline.tasks import baselines

    evaluation = experiment.eval
    margin = evaluation.baseline_margin
    gate_is_baseline = evaluation.gate == config_lib.Gate.BASELINE
    hints = []
    for item in missed:
        if item.slice_name != "overall":
            continue
        if item.metric == "accuracy" and item.is_diff:
            hints.append(f"--set eval.max_accuracy_drop={_ceil(-item.value):.2f}: accuracy fell "
                         f"{-item.value:.4f} below the last blessed model (allowed "
                         f"{evaluation.max_accuracy_drop:.4f}); the served model stays until then")
        elif item.metric == "mae" and item.is_diff:
            hints.append(f"--set eval.max_mae_increase={_ceil(item.value):.2f}: MAE rose "
                         f"{item.value:.4f} above the last blessed model's (allowed "
                         f"{evaluation.max_mae_increase:.4f})")
        elif item.metric == "accuracy":
            majority = baseline.get(baselines.BASELINE_ACCURACY)
            said = ("" if majority is None else
                    f"; always answering the most frequent training class scores {majority:.4f}")
            if not gate_is_baseline:
                hints.append(f"--set eval.accuracy_threshold={_floor(item.value):.2f}: the "
                             f"model's accuracy is {item.value:.4f}, the threshold "
                             f"{item.bound:.4f} (tuned to the shipped data){said}")
                if majority is not None and item.value >= baselines.required_accuracy(
                        majority, margin):
                    hints.append(f"--set eval.gate=baseline: bless models that beat the "
                                 f"majority class ({majority:.4f}) by eval.baseline_margin "
                                 f"({margin}); this one beats it by {item.value - majority:.4f}")
            elif majority is not None and item.value > majority:
                hints.append(f"--set eval.baseline_margin={_floor(item.value - majority):.2f}: "
                             f"the model ({item.value:.4f}) beats the majority class "
                             f"({majority:.4f}) by {item.value - majority:.4f}, less than the "
                             f"margin {margin}")
            elif majority is not None:
                hints.append(f"none that is honest: the model ({item.value:.4f}) does not beat "
                             f"always answering the most frequent training class "
                             f"({majority:.4f}); train longer or check the labels")
        elif item.metric == "mae":
            mean_mae = baseline.get(baselines.MEAN_BASELINE_MAE)
            said = ("" if mean_mae is None else
                    f"; always forecasting the training mean scores MAE {mean_mae:.4f}")
            if not gate_is_baseline:
                hints.append(f"--set eval.mae_threshold={_ceil(item.value):.2f}: the model's "
                             f"MAE is {item.value:.4f}, the threshold {item.bound:.4f}{said}")
                if mean_mae is not None and item.value <= baselines.allowed_mae(mean_mae, margin):
                    hints.append(f"--set eval.gate=baseline: bless models whose MAE is at least "
                                 f"eval.baseline_margin ({margin}) below the training mean's "
                                 f"({mean_mae:.4f}); this one's is {item.value:.4f}")
            elif mean_mae is not None and item.value < mean_mae:
                hints.append(f"--set eval.baseline_margin={_floor(1 - item.value / mean_mae):.2f}"
                             f": the model's MAE ({item.value:.4f}) is "
                             f"{1 - item.value / mean_mae:.1%} below the training mean's "
                             f"({mean_mae:.4f}), less than the margin {margin}")
            elif mean_mae is not None:
                hints.append(f"none that is honest: the model's MAE ({item.value:.4f}) is no "
                             f"better than always forecasting the training mean "
                             f"({mean_mae:.4f}); train longer or check the data")
    return hints


def _baseline_metrics(experiment: config_lib.ExperimentConfig) -> Dict[str, float]:
    """The task's trivial baselines on this run's data; {} when it has none or cannot
    read them (the summary then leaves them out)."""
    from tfprod import errors
    from tfprod.pipeline import tasks

    try:
        return {name: round(value, 6) for name, value in
                tasks.get_task(experiment).baseline_metrics(experiment).items()}
    except (errors.TfprodError, OSError, ValueError):
        return {}


def collect(experiment: config_lib.ExperimentConfig, paths, component_seconds: Dict[str, float],
            total_seconds: float, succeeded: bool) -> RunSummary:
    """Builds the RunSummary for the run that just finished in paths.output_dir."""
    result = RunSummary(experiment=experiment.name, output_dir=paths.output_dir,
                        component_seconds=dict(component_seconds),
                        total_seconds=round(total_seconds, 2))
    _task_records(experiment, result)
    if not succeeded or not os.path.exists(paths.metadata_path):
        return result
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(paths.metadata_path))
    run_contexts = store.get_contexts_by_type("pipeline_run")
    run_context_id = max(run_contexts, key=lambda c: c.id).id if run_contexts else None

    # The ExampleGen's node id is its class name (IdxExampleGen, ImageFolderExampleGen, ...).
    example_gen_ids = [context.name.split(".", 1)[1]
                       for context in store.get_contexts_by_type("node")
                       if context.name.startswith(f"{experiment.name}.")
                       and context.name.endswith(layout.EXAMPLE_GEN_ID)]
    example_gen = _latest_execution_outputs(store, experiment.name, example_gen_ids[0],
                                            run_context_id) if example_gen_ids else {}
    if example_gen.get("examples"):
        skipped_path = os.path.join(example_gen["examples"][0].uri, layout.SKIPPED_INPUTS_FILE)
        if os.path.isfile(skipped_path):
            with open(skipped_path, encoding="utf-8") as handle:
                skipped = json.load(handle)
            if skipped.get("count"):
                result.skipped_inputs = skipped

    _read_data_drift(store, experiment.name, run_context_id, result)
    evaluator = _latest_execution_outputs(store, experiment.name, layout.EVALUATOR_ID, run_context_id)
    if evaluator.get("evaluation"):
        result.metrics, result.slice_metrics = read_eval_metrics(evaluator["evaluation"][0].uri)
        result.artifacts["evaluation"] = evaluator["evaluation"][0].uri
    if "example_count" in result.metrics:
        result.metrics["example_count"] = int(result.metrics["example_count"])
    if evaluator.get("evaluation"):
        baseline = _baseline_metrics(experiment)
        result.metrics.update(baseline)
        result.gate = gate_record(experiment, baseline)
    if evaluator.get("blessing"):
        result.blessed = _custom_int(evaluator["blessing"][0], "blessed") == 1
        if not result.blessed and evaluator.get("evaluation"):
            result.validation_failures = read_validation_failures(
                evaluator["evaluation"][0].uri)
            result.bless_hints = bless_hints(
                experiment, read_missed_thresholds(evaluator["evaluation"][0].uri), baseline)

    pusher = _latest_execution_outputs(store, experiment.name, layout.PUSHER_ID, run_context_id)
    if pusher.get("pushed_model"):
        pushed = pusher["pushed_model"][0]
        if _custom_int(pushed, "pushed") == 1:
            result.pushed_model_dir = _custom_str(pushed, "pushed_destination")

    result.infra = _infra_record(store, experiment.name, run_context_id)

    tflite = _latest_execution_outputs(store, experiment.name, layout.TFLITE_CONVERTER_ID, run_context_id)
    if tflite.get("tflite_models") and _custom_int(tflite["tflite_models"][0], "converted") == 1:
        files_path = os.path.join(tflite["tflite_models"][0].uri, "files.json")
        if os.path.isfile(files_path):
            with open(files_path, encoding="utf-8") as handle:
                files = json.load(handle)
            result.tflite_models, result.tflite_report = files["models"], files["report"]
            result.tflite_compressed = files.get("compressed_models", {})
            result.tflite_compression_failed = files.get("compression_failed", {})

    trainer_outputs = _latest_execution_outputs(store, experiment.name, layout.TRAINER_ID, run_context_id)
    if trainer_outputs.get("model"):
        result.artifacts["model"] = trainer_outputs["model"][0].uri
    if trainer_outputs.get("model_run"):
        model_run_uri = trainer_outputs["model_run"][0].uri
        result.artifacts["model_run"] = model_run_uri
        stats_path = os.path.join(model_run_uri, layout.TRAINING_STATS_FILE)
        if os.path.isfile(stats_path):
            with open(stats_path, encoding="utf-8") as handle:
                stats = json.load(handle)
            result.training = {key: stats[key] for key in (
                "train_examples", "eval_examples", "epochs_run", "steady_examples_per_second",
                "ema")
                if key in stats}
    return result


def _task_records(experiment: config_lib.ExperimentConfig, result: RunSummary) -> None:
    """The task's own records: what it says about the data, and why it has no TFLite."""
    from tfprod.pipeline import tasks

    try:
        task = tasks.get_task(experiment)
        result.data = dict(task.run_summary_extras(experiment))
    except Exception as error:  # noqa: BLE001 - a summary of a failed run must still be written
        result.data = {"error": f"{type(error).__name__}: {error}"}
        return
    if not task.supports_mobile():
        result.tflite_skipped = task.mobile_skip_reason()


def _read_data_drift(store, pipeline_name: str, run_context_id: Optional[int],
                     result: RunSummary) -> None:
    """run_summary.json's data_drift: the DataDriftCheck's drift.json of this run."""
    from tfprod.pipeline import drift_check

    outputs = _latest_execution_outputs(store, pipeline_name, drift_check.DRIFT_CHECK_ID,
                                        run_context_id)
    if outputs.get("drift"):
        result.data_drift = drift_check.read_drift(outputs["drift"][0].uri) or {}


def _infra_record(store, pipeline_name: str, run_context_id: Optional[int]) -> Dict[str, Any]:
    """run_summary.json's `infra` block, from the InfraValidator's InfraBlessing artifact."""
    from tfprod.pipeline import infra_validator

    outputs = _latest_execution_outputs(store, pipeline_name, infra_validator.COMPONENT_ID,
                                        run_context_id)
    if not outputs.get("blessing"):
        return {}
    artifact = outputs["blessing"][0]
    record: Dict[str, Any] = {"blessed": _custom_int(artifact, infra_validator.BLESSED_KEY) == 1,
                              "artifact": artifact.uri}
    result = infra_validator.read_result(artifact.uri)
    if result:
        latency = result.get("latency") or {}
        record.update(
            skipped=result.get("skipped"), server=result.get("server"),
            failures=result.get("failures", []), checks=len(result.get("checks", {})),
            requests=latency.get("requests"), errors=latency.get("errors"),
            p50_ms=latency.get("p50_ms"), p99_ms=latency.get("p99_ms"),
            seconds=result.get("seconds", {}),
            line=infra_validator.InfraResult(**result).line())
    return record
