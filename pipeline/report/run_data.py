"""A finished run, read back: its summary, config, ML Metadata artifacts and files.

RunData is what the report's sections read. Everything is optional: a run that
stopped at validation has statistics and anomalies but no model, a first run
has no baseline, a model that was not blessed has no TFLite files. Readers
return None (or empty) for what the run does not have, and each section says
"not present" for it.
"""

import dataclasses
import json
import os
import subprocess
from typing import Any, Dict, List, Optional

import yaml

from tfprod import errors
from tfprod.contract import layout


class ReportError(errors.ConfigError, RuntimeError):
    """The report cannot be built; the message says what is missing and what to do."""


@dataclasses.dataclass
class ArtifactRef:
    """One output artifact of the run: who wrote it, under which key, where, and its properties."""

    node_id: str
    key: str
    uri: str
    type_name: str
    properties: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunData:
    """Everything the report shows about one run of the pipeline.

    Attributes:
      output_dir: the run's output directory.
      summary: run_summary.json (or the in-memory summary of the run that just ended).
      config: config.yaml as a dict; config_text is the file itself.
      run_id: the ML Metadata pipeline_run context of the run (None without metadata).
      artifacts: output artifacts by role ("examples", "statistics", "schema", "anomalies",
        "model", "model_run", "evaluation", "blessing", "pushed_model", "tflite_models").
      baseline_model: the uri of the model the Evaluator compared against, if any.
    """

    output_dir: str
    summary: Dict[str, Any]
    config: Dict[str, Any]
    config_text: str
    run_id: Optional[str] = None
    artifacts: Dict[str, ArtifactRef] = dataclasses.field(default_factory=dict)
    baseline_model: Optional[str] = None
    _cache: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def uri(self, role: str) -> Optional[str]:
        artifact = self.artifacts.get(role)
        return artifact.uri if artifact else None

    def config_value(self, dotted_key: str, default: Any = None) -> Any:
        """A config value by dotted key ('data.image_height'), or default when absent."""
        value: Any = self.config
        for part in dotted_key.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def cached(self, name: str, compute):
        """compute() once per run (models and example reads are shared between sections)."""
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _property_values(artifact) -> Dict[str, Any]:
    values = {}
    for name, value in list(artifact.properties.items()) + list(artifact.custom_properties.items()):
        kind = value.WhichOneof("value")
        if kind in ("int_value", "double_value", "string_value", "bool_value"):
            values[name] = getattr(value, kind)
    return values


def _role_for(node_id: str, key: str, keys_of_node: List[str]) -> Optional[str]:
    """The report's role for an output, or None for outputs it does not show."""
    if key == "examples":
        return None if node_id == layout.TRANSFORM_ID else "examples"
    if key == "model":
        # The Resolver also outputs a "model" (the last blessed one); the Trainer's has model_run.
        return "model" if "model_run" in keys_of_node or node_id == layout.TRAINER_ID else None
    if key in ("statistics", "schema", "anomalies", "model_run", "evaluation", "blessing",
               "pushed_model", "tflite_models"):
        return key
    return None


def read_metadata(metadata_path: str):
    """(run_id, artifacts by role, baseline model uri) of the latest run in an MLMD SQLite file."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(metadata_path))
    # One pipeline per output directory: its latest run is the latest run context.
    run_contexts = store.get_contexts_by_type("pipeline_run")
    if not run_contexts:
        return None, {}, None
    run_context = max(run_contexts, key=lambda context: context.id)
    executions = sorted(store.get_executions_by_context(run_context.id), key=lambda e: e.id)
    output_kinds = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    artifacts: Dict[str, ArtifactRef] = {}
    baseline_model = None
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    for execution in executions:
        node_contexts = [c for c in store.get_contexts_by_execution(execution.id)
                         if store.get_context_types_by_id([c.type_id])[0].name == "node"]
        node_id = node_contexts[0].name.split(".")[-1] if node_contexts else str(execution.id)
        events = store.get_events_by_execution_ids([execution.id])
        by_id = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        keys_of_node = [e.path.steps[0].key for e in events if e.path.steps]
        for event in events:
            key = event.path.steps[0].key if event.path.steps else ""
            artifact = by_id.get(event.artifact_id)
            if artifact is None:
                continue
            if (key == "model" and "model_run" not in keys_of_node
                    and event.type in output_kinds + (metadata_store_pb2.Event.INTERNAL_OUTPUT,)):
                # The Resolver's output: the last blessed model, the Evaluator's baseline.
                baseline_model = artifact.uri
                continue
            if event.type not in output_kinds:
                continue
            role = _role_for(node_id, key, keys_of_node)
            if role is not None:
                # Later executions (higher ids) replace earlier ones of the same role.
                artifacts[role] = ArtifactRef(node_id=node_id, key=key, uri=artifact.uri,
                                              type_name=type_names.get(artifact.type_id, ""),
                                              properties=_property_values(artifact))
    return run_context.name, artifacts, baseline_model


def source_commit(directory: Optional[str] = None) -> Optional[str]:
    """The git commit of the tfprod source tree ('<sha>', '+ local changes' when dirty), or None.

    Args:
      directory: a directory inside the checkout; defaults to this package's.
    """
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", directory, "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git here (e.g. in the Kubeflow image): the report says "not recorded"
    commit = head.stdout.strip()
    if status.returncode == 0 and status.stdout.strip():
        commit += " + local changes"
    return commit


def load_run(output_dir: str, summary: Optional[Dict[str, Any]] = None,
             config_path: Optional[str] = None) -> RunData:
    """Reads a finished run from its output directory.

    Args:
      output_dir: the run's output directory (runtime.output_dir).
      summary: the run summary as a dict; read from run_summary.json when None.
      config_path: the run's config; <output_dir>/config.yaml when None.

    Raises:
      ReportError: the directory holds no run (no run_summary.json, config.yaml or metadata).
    """
    output_dir = os.path.abspath(output_dir)
    if not os.path.isdir(output_dir):
        raise ReportError(f"{output_dir} is not a directory: pass the --output-dir of a "
                          "finished `tfprod run`")
    if summary is None:
        summary = _read_json(os.path.join(output_dir, layout.SUMMARY_FILE))
    config_path = config_path or os.path.join(output_dir, layout.CONFIG_FILE)
    if summary is None and not os.path.isfile(config_path):
        raise ReportError(f"{output_dir} has neither {layout.SUMMARY_FILE} nor {layout.CONFIG_FILE}: is it the "
                          "output directory of a `tfprod run`?")
    config_text = ""
    config: Dict[str, Any] = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as handle:
            config_text = handle.read()
        config = yaml.safe_load(config_text) or {}
    run = RunData(output_dir=output_dir, summary=summary or {}, config=config,
                  config_text=config_text)
    metadata_path = os.path.join(output_dir, layout.METADATA_FILE)
    if os.path.isfile(metadata_path):
        run.run_id, run.artifacts, run.baseline_model = read_metadata(metadata_path)
    return run
