"""The pipeline's drift check: this run's data against the last blessed run's.

TFX's DistributionValidator idea, in two nodes added to local runs when
``monitor.pipeline_drift`` is not ``off``:

- a Resolver (LastBlessedRunStatisticsStrategy) that finds, in ML Metadata, the run that
  trained the latest blessed model and that run's StatisticsGen statistics;
- DataDriftCheck, after StatisticsGen and SchemaGen: it compares the train split's
  statistics of this run with that run's, with TFDV's drift comparators (L-infinity for
  categorical features, Jensen-Shannon divergence for numeric ones; the thresholds of the
  config's monitor section, pipeline/monitor/compare.py) and writes ``drift.json`` into its
  output. The run summary reads it into run_summary.json's ``data_drift`` and the report
  shows it (its "Data drift" section).

``warn`` (the default) records and goes on. ``fail`` puts the check before Transform and
stops the run there, like the AnomaliesGate: a DataDriftError (bad input data, exit 3)
naming each feature, its distance and its threshold. The first run of an output directory
has no blessed run to compare with: the check records that and passes.

It is added where the pipeline keeps its ML Metadata in the run's SQLite file (local runs:
create_pipeline without a metadata connection config). Compiled Kubeflow pipelines have
none: the open-source backend cannot run Resolver nodes, and Vertex's resolver runs only
TFX's own strategies.
"""

import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx import v1 as tfx
from tfx.dsl.components.common import resolver
from tfx.types import standard_artifacts

from tfprod import configlib, errors
from tfprod.pipeline import config as config_lib

DRIFT_CHECK_ID = "DataDriftCheck"
RESOLVER_ID = "blessed_statistics_resolver"
DRIFT_FILE = "drift.json"
COMPARED_SPLIT = "train"
_BLESSED = "blessed"
_CURRENT_MODEL_ID = "current_model_id"


class DataDriftError(errors.InputDataError, RuntimeError):
    """monitor.pipeline_drift: fail, and a feature drifted past its threshold."""


class LastBlessedRunStatisticsStrategy(resolver.ResolverStrategy):
    """Resolves the StatisticsGen statistics of the run that trained the latest blessed model.

    Inputs (channels by type): statistics (ExampleStatistics), model_blessing
    (ModelBlessing). Output: statistics, one artifact or none (no blessed model yet).
    """

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        statistics = {artifact.id: artifact for artifact in input_dict.get("statistics", [])}
        blessed_models = [
            blessing.get_int_custom_property(_CURRENT_MODEL_ID)
            for blessing in input_dict.get("model_blessing", [])
            if blessing.get_int_custom_property(_BLESSED) == 1]
        result: Dict[str, List[types.Artifact]] = {"statistics": [], "model_blessing": []}
        run_id = producing_run(store, max(blessed_models)) if blessed_models else None
        if run_id is None:
            return result
        produced = run_outputs(store, run_id)
        found = [statistics[a.id] for a in produced.get("statistics", []) if a.id in statistics]
        result["statistics"] = found[-1:]
        return result


def producing_run(store, artifact_id: int) -> Optional[int]:
    """The id of the pipeline_run context of the execution that output an artifact."""
    from ml_metadata.proto import metadata_store_pb2

    producers = [event.execution_id for event in store.get_events_by_artifact_ids([artifact_id])
                 if event.type == metadata_store_pb2.Event.OUTPUT]
    if not producers:
        return None
    run_type = store.get_context_type("pipeline_run")
    runs = [context.id for context in store.get_contexts_by_execution(producers[0])
            if context.type_id == run_type.id]
    return runs[0] if runs else None


def run_outputs(store, run_id: int) -> Dict[str, List[Any]]:
    """{output key: [MLMD artifacts, oldest first]} of the executions of one run context."""
    from ml_metadata.proto import metadata_store_pb2

    executions = [execution.id for execution in store.get_executions_by_context(run_id)]
    events = [event for event in store.get_events_by_execution_ids(executions)
              if event.type == metadata_store_pb2.Event.OUTPUT and event.path.steps]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    result: Dict[str, List[Any]] = {}
    for event in sorted(events, key=lambda e: e.artifact_id):
        result.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
    return result


def last_blessed_run(store) -> Optional[int]:
    """The pipeline_run context id of the run that trained the latest blessed model."""
    blessed = [artifact.custom_properties[_CURRENT_MODEL_ID].int_value
               for artifact in store.get_artifacts_by_type("ModelBlessing")
               if _BLESSED in artifact.custom_properties
               and artifact.custom_properties[_BLESSED].int_value == 1]
    return producing_run(store, max(blessed)) if blessed else None


def _split_statistics(uri: str, split: str):
    import tensorflow_data_validation as tfdv

    path = os.path.join(uri, f"Split-{split}", "FeatureStats.pb")
    return tfdv.load_stats_binary(path) if os.path.isfile(path) else None


def check_drift(statistics_uri: str, schema_uri: str, previous_uri: Optional[str],
                monitor: config_lib.MonitorConfig) -> Dict[str, Any]:
    """The drift record (what drift.json holds): this run's statistics of COMPARED_SPLIT
    against previous_uri's (None: no blessed run yet), each schema feature's distance."""
    import tensorflow_data_validation as tfdv

    from tfprod.pipeline.monitor import compare

    record: Dict[str, Any] = {"mode": monitor.pipeline_drift.value, "split": COMPARED_SPLIT,
                              "statistics": statistics_uri, "previous_statistics": previous_uri,
                              "features": [], "drifted": []}
    if previous_uri is None:
        record["note"] = "No earlier blessed run in this output directory to compare with"
        return record
    current = _split_statistics(statistics_uri, COMPARED_SPLIT)
    previous = _split_statistics(previous_uri, COMPARED_SPLIT)
    if current is None or previous is None:
        record["note"] = f"No '{COMPARED_SPLIT}' statistics in one of the two runs"
        return record
    schema = tfdv.load_schema_text(os.path.join(schema_uri, "schema.pbtxt"))
    distances = compare.compare(previous, current, schema, monitor, mode=compare.DRIFT,
                                exclude=())
    record["features"] = [distance.__dict__ for distance in distances]
    record["drifted"] = [distance.describe() for distance in distances if distance.drifted]
    return record


@tfx.dsl.components.component
def DataDriftCheck(
        statistics: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleStatistics],
        schema: tfx.dsl.components.InputArtifact[standard_artifacts.Schema],
        drift: tfx.dsl.components.OutputArtifact[standard_artifacts.ExampleAnomalies],
        monitor_config: tfx.dsl.components.Parameter[str],
        previous_statistics: tfx.dsl.components.InputArtifact[
            standard_artifacts.ExampleStatistics] = None) -> None:
    """Compares this run's data with the last blessed run's; drift.json in `drift`."""
    monitor = configlib.from_dict(config_lib.MonitorConfig, json.loads(monitor_config))
    record = check_drift(statistics.uri, schema.uri,
                         previous_statistics.uri if previous_statistics else None, monitor)
    os.makedirs(drift.uri, exist_ok=True)
    with open(os.path.join(drift.uri, DRIFT_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    if record["drifted"] and monitor.pipeline_drift == config_lib.PipelineDrift.FAIL:
        raise DataDriftError(
            f"the '{COMPARED_SPLIT}' split drifted from the last blessed run's "
            f"(monitor.pipeline_drift: fail); the run stops before training: "
            + "; ".join(record["drifted"])
            + ". If the change is expected, --set monitor.pipeline_drift=warn (or raise the "
              "feature's threshold in monitor.features) and run again.")


def nodes(experiment: config_lib.ExperimentConfig, statistics_gen, schema_source, transform,
          enabled: bool = True) -> List[Any]:
    """The Resolver and the DataDriftCheck for create_pipeline (none when
    monitor.pipeline_drift is off, or enabled is False: Kubeflow builds).
    With fail, Transform waits for the check."""
    if not enabled or experiment.monitor.pipeline_drift == config_lib.PipelineDrift.OFF:
        return []
    previous = tfx.dsl.Resolver(
        strategy_class=LastBlessedRunStatisticsStrategy,
        statistics=tfx.dsl.Channel(type=standard_artifacts.ExampleStatistics),
        model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER_ID)
    check = DataDriftCheck(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_source.outputs["schema"],
        previous_statistics=previous.outputs["statistics"],
        monitor_config=json.dumps(config_lib.to_dict(experiment.monitor)),
    ).with_id(DRIFT_CHECK_ID)
    if experiment.monitor.pipeline_drift == config_lib.PipelineDrift.FAIL:
        transform.add_upstream_node(check)
    return [previous, check]


def read_drift(output_uri: str) -> Optional[Dict[str, Any]]:
    """drift.json of a DataDriftCheck output, or None."""
    path = os.path.join(output_uri, DRIFT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


