"""The run summary: metrics, blessing and pushed path read back from ML Metadata.

Written to <output-dir>/run_summary.json and printed at the end of a run.
"""

import dataclasses
import json
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
    # The tfprod source's git commit, and the HTML run report (pipeline/report/).
    git_commit: Optional[str] = None
    report_path: Optional[str] = None

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
        if self.status == "succeeded":
            if self.blessed:
                lines.append(f"Blessed: yes. Pushed to {self.pushed_model_dir}")
                if self.tflite_report:
                    lines.append(f"TFLite: {', '.join(self.tflite_models)}; report "
                                 f"{self.tflite_report.get('markdown')}")
            else:
                lines.append("Blessed: NO - the model was not pushed; it missed:")
                lines += [f"  {failure}" for failure in self.validation_failures or ["(unknown)"]]
        else:
            lines.append(f"Failed at: {self.failed_component or 'before the pipeline started'}")
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
        slice_parts = [f"{part.column}={getattr(part, part.WhichOneof('kind'))}"
                       for part in metrics_for_slice.slice_key.single_slice_keys]
        if slice_parts:
            per_slice[",".join(slice_parts)] = values
        else:
            overall = values
    return overall, dict(sorted(per_slice.items()))


def read_validation_failures(evaluation_uri: str) -> List[str]:
    """The thresholds a model missed, from TFMA's validation result."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        slice_name = ",".join(
            f"{part.column}={getattr(part, part.WhichOneof('kind'))}"
            for part in per_slice.slice_key.single_slice_keys) or "overall"
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value
            if failure.metric_key.is_diff:
                change = failure.metric_threshold.change_threshold
                # Lower-is-better metrics (e.g. MAE) may rise by at most the allowance.
                relation = ("<=" if change.direction == tfma.MetricDirection.LOWER_IS_BETTER
                            else ">=")
                failures.append(f"{failure.metric_key.name} ({slice_name}) changed by "
                                f"{value:+.4f} against the last blessed model; allowed "
                                f"change {relation} {change.absolute.value:+.4f}")
            else:
                bound = failure.metric_threshold.value_threshold
                required = (f"<= {bound.upper_bound.value:.4f}" if bound.HasField("upper_bound")
                            else f">= {bound.lower_bound.value:.4f}")
                failures.append(f"{failure.metric_key.name} ({slice_name}) = {value:.4f}; "
                                f"required {required}")
    return failures


def collect(experiment: config_lib.ExperimentConfig, paths, component_seconds: Dict[str, float],
            total_seconds: float, succeeded: bool) -> RunSummary:
    """Builds the RunSummary for the run that just finished in paths.output_dir."""
    result = RunSummary(experiment=experiment.name, output_dir=paths.output_dir,
                        component_seconds=dict(component_seconds),
                        total_seconds=round(total_seconds, 2))
    if not succeeded or not os.path.exists(paths.metadata_path):
        return result
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(paths.metadata_path))
    run_contexts = store.get_contexts_by_type("pipeline_run")
    run_context_id = max(run_contexts, key=lambda c: c.id).id if run_contexts else None

    evaluator = _latest_execution_outputs(store, experiment.name, layout.EVALUATOR_ID, run_context_id)
    if evaluator.get("evaluation"):
        result.metrics, result.slice_metrics = read_eval_metrics(evaluator["evaluation"][0].uri)
        result.artifacts["evaluation"] = evaluator["evaluation"][0].uri
    if "example_count" in result.metrics:
        result.metrics["example_count"] = int(result.metrics["example_count"])
    if evaluator.get("blessing"):
        result.blessed = _custom_int(evaluator["blessing"][0], "blessed") == 1
        if not result.blessed and evaluator.get("evaluation"):
            result.validation_failures = read_validation_failures(
                evaluator["evaluation"][0].uri)

    pusher = _latest_execution_outputs(store, experiment.name, layout.PUSHER_ID, run_context_id)
    if pusher.get("pushed_model"):
        pushed = pusher["pushed_model"][0]
        if _custom_int(pushed, "pushed") == 1:
            result.pushed_model_dir = _custom_str(pushed, "pushed_destination")

    tflite = _latest_execution_outputs(store, experiment.name, layout.TFLITE_CONVERTER_ID, run_context_id)
    if tflite.get("tflite_models") and _custom_int(tflite["tflite_models"][0], "converted") == 1:
        files_path = os.path.join(tflite["tflite_models"][0].uri, "files.json")
        if os.path.isfile(files_path):
            with open(files_path, encoding="utf-8") as handle:
                files = json.load(handle)
            result.tflite_models, result.tflite_report = files["models"], files["report"]

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
                "train_examples", "eval_examples", "epochs_run", "steady_examples_per_second")
                if key in stats}
    return result
