"""Runs a compiled KFP v2 package on this machine, task by task, as the KFP v2 launcher would.

`tfprod kubeflow run-local` reads the package `tfprod kubeflow compile` wrote and, for each
task of the root DAG in dependency order, starts the executor's container ``command`` +
``args`` from ``deploymentSpec`` as a subprocess, with the placeholders filled the way the
launcher fills them:

- ``{{$}}``: the ExecutorInput JSON: input parameter values (constants, pipeline
  parameters, upstream output parameters), input artifacts (the upstream outputs with the
  metadata their executor wrote to its executor output file), output artifacts with URIs
  ``<pipeline root>/<run id>/<task>/<output key>`` (the launcher's layout) and the
  ``outputFile`` the executor writes its ExecutorOutput to;
- ``{{$.inputs.parameters['p']}}``, ``{{$.inputs.artifacts['a'].uri}}`` (``.path``),
  ``{{$.outputs.artifacts['a'].uri}}`` (``.path``), ``{{$.outputs.parameters['p'].output_file}}``,
  ``{{$.outputs.output_file}}``, ``{{$.pipeline_job_name}}``, ``{{$.pipeline_job_uuid}}``,
  ``{{$.pipeline_task_name}}``, ``{{$.pipeline_task_uuid}}``, ``{{$.pipeline_root}}``;
  anything else is refused by name.

A container's ``lifecycle.preCacheCheck`` hook (TFX's file-based ExampleGen driver, which
computes span, version and input fingerprint into the output file) runs first, with the
same executor input.

What the real launcher does that this does not: run each task in its own pod from the
image named in the spec (here: this machine's Python environment; the spec's ``python``
is replaced by the given interpreter, and paths under the image's project directory
``/tfprod`` by a local project directory); resolve inputs and record executions and
artifacts in ML Metadata (on MySQL, through the metadata gRPC service); the driver's
cache lookup (every task runs every time here); retries, resource limits, node selectors,
the Kubernetes PlatformSpec, conditions, loops, importer and resolver nodes (refused here);
upload of logs and artifact stores other than those tf.io.gfile opens.
"""

import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

from google.protobuf import json_format

from tfprod.kubeflow import compiler
from tfprod.kubeflow.errors import LocalRunError, ParameterError

PLACEHOLDER = re.compile(r"\{\{\$(?P<expression>[^}]*)\}\}")
# A /tfprod/ path as a whole word: at the start, or after whitespace, a quote or '='
# (so gs://bucket/tfprod/... is left alone).
IMAGE_PROJECT_PATH = re.compile(r"(?<![^\s\"'=])" + re.escape(compiler.PROJECT_DIR_IN_IMAGE)
                                + r"(?=/|$|[\s\"'])")
EXECUTOR_OUTPUT_FILE = "executor_output.json"
LOG_FILE = "log.txt"
LOG_TAIL_LINES = 30


@dataclasses.dataclass
class TaskResult:
    """One executed task: its output artifacts ({key: URI}), log file and duration."""

    name: str
    outputs: Dict[str, str]
    log_path: str
    seconds: float


@dataclasses.dataclass
class LocalRun:
    """A finished local run of a package."""

    run_id: str
    run_root: str
    tasks: List[TaskResult]

    def output_uri(self, task: str, key: str) -> str:
        return next(result.outputs[key] for result in self.tasks if result.name == task)


def load_spec(package_path: str) -> Dict[str, Any]:
    """The package's PipelineSpec as a dict (checked by parsing it into KFP's proto first)."""
    pipeline_spec, _ = compiler.read_package(package_path)  # CompileError: not a package
    return json_format.MessageToDict(pipeline_spec)


def map_project_paths(value: Any, project_dir: str) -> Any:
    """Every string in ``value`` with the image's project directory replaced by a local one."""
    if isinstance(value, str):
        return IMAGE_PROJECT_PATH.sub(project_dir.rstrip("/") or "/", value)
    if isinstance(value, list):
        return [map_project_paths(item, project_dir) for item in value]
    if isinstance(value, dict):
        return {key: map_project_paths(item, project_dir) for key, item in value.items()}
    return value


def task_order(tasks: Mapping[str, Dict[str, Any]]) -> List[str]:
    """Task names in dependency order (ties by name, so the order is stable).

    Upstream tasks are the ``dependentTasks`` and the producers of input artifacts and
    parameters.

    Raises:
      LocalRunError: a task depends on a task that does not exist, or the graph has a cycle.
    """
    upstream: Dict[str, set] = {}
    for name, task in tasks.items():
        parents = set(task.get("dependentTasks", []))
        inputs = task.get("inputs", {})
        for artifact in inputs.get("artifacts", {}).values():
            if "taskOutputArtifact" in artifact:
                parents.add(artifact["taskOutputArtifact"]["producerTask"])
        for parameter in inputs.get("parameters", {}).values():
            if "taskOutputParameter" in parameter:
                parents.add(parameter["taskOutputParameter"]["producerTask"])
        missing = sorted(parents - set(tasks))
        if missing:
            raise LocalRunError(f"task {name}: depends on {missing[0]}, which is not a task "
                                "of the pipeline")
        upstream[name] = parents
    order: List[str] = []
    done: set = set()
    while len(order) < len(tasks):
        ready = sorted(name for name, parents in upstream.items()
                       if name not in done and parents <= done)
        if not ready:
            raise LocalRunError("the task graph has a cycle among: "
                                + ", ".join(sorted(set(tasks) - done)))
        order.extend(ready)
        done.update(ready)
    return order


def pipeline_parameters(spec: Dict[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
    """The pipeline's input parameters: the given values over the spec's defaults.

    Raises:
      ParameterError: a given parameter is not an input of the pipeline, or a required one
        has neither a value nor a default.
    """
    definitions = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(given) - set(definitions))
    if unknown:
        raise ParameterError(f"--param {unknown[0]}: not a parameter of this pipeline; its "
                             f"parameters are: {', '.join(sorted(definitions)) or 'none'}")
    values = {}
    for name, definition in definitions.items():
        if name in given:
            values[name] = given[name]
        elif "defaultValue" in definition:
            values[name] = definition["defaultValue"]
        elif not definition.get("isOptional"):
            raise ParameterError(f"pipeline parameter {name} has no default: pass --param "
                                 f"{name}=VALUE")
    return values


class _Runner:
    """Executes one package; holds what upstream tasks produced."""

    def __init__(self, spec: Dict[str, Any], pipeline_root: str, parameters: Dict[str, Any],
                 python: str, cwd: str, run_id: str, log: Callable[[str], None]):
        self.spec = spec
        self.pipeline_root = pipeline_root.rstrip("/")
        self.parameters = parameters
        self.python = python
        self.cwd = cwd
        self.run_id = run_id
        self.run_root = f"{self.pipeline_root}/{run_id}"
        self.log = log
        self.job_name = f"{spec['pipelineInfo']['name']}-{run_id}"
        # {task: {output key: RuntimeArtifact dict}}, {task: {output parameter: value}}
        self.artifacts: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self.output_parameters: Dict[str, Dict[str, Any]] = {}

    def run(self) -> LocalRun:
        tasks = self.spec["root"]["dag"]["tasks"]
        results = [self.run_task(name, tasks[name]) for name in task_order(tasks)]
        return LocalRun(self.run_id, self.run_root, results)

    # -- one task --------------------------------------------------------------------------

    def run_task(self, name: str, task: Dict[str, Any]) -> TaskResult:
        for unsupported in ("triggerPolicy", "iteratorPolicy", "parameterIterator",
                            "artifactIterator"):
            if unsupported in task:
                raise LocalRunError(f"task {name}: {unsupported} is not supported by run-local")
        component_name = task["componentRef"]["name"]
        component = self.spec["components"][component_name]
        if "dag" in component:
            raise LocalRunError(f"task {name}: nested DAG components are not supported by "
                                "run-local")
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        if "container" not in executor:
            kind = next(iter(executor), "unknown")
            raise LocalRunError(
                f"task {name}: a {kind} executor; run-local runs container executors only "
                "(compile with kubeflow.baseline_resolver false, the default, for open-source "
                "KFP)")
        container = executor["container"]
        task_dir = f"{self.run_root}/{name}"
        task_uuid = str(uuid.uuid4())
        executor_input = self.executor_input(name, task, component, task_dir)
        context = {"task": name, "task_uuid": task_uuid, "executor_input": executor_input}
        _make_dirs(task_dir)
        # On gs:// (what the pods use) a file can be written below any URI; on a local
        # filesystem its directory must exist first, so each output artifact gets one.
        if "://" not in task_dir:
            for artifacts in executor_input["outputs"]["artifacts"].values():
                os.makedirs(artifacts["artifacts"][0]["uri"], exist_ok=True)
        log_path = os.path.join(task_dir, LOG_FILE) if "://" not in task_dir else None
        started = time.monotonic()
        self.log(f"[{name}] running {container['command'][-1]}")
        hook = container.get("lifecycle", {}).get("preCacheCheck")
        if hook:
            self.execute(name, hook["command"], hook.get("args", []), context, log_path)
        self.execute(name, container["command"], container.get("args", []), context, log_path)
        self.collect_outputs(name, component, executor_input)
        seconds = time.monotonic() - started
        self.log(f"[{name}] done in {seconds:.1f} s")
        outputs = {key: value["uri"] for key, value in self.artifacts[name].items()}
        return TaskResult(name, outputs, log_path or "", seconds)

    def executor_input(self, name: str, task: Dict[str, Any], component: Dict[str, Any],
                       task_dir: str) -> Dict[str, Any]:
        """The ExecutorInput message (as a dict) the launcher would pass as ``{{$}}``."""
        inputs = task.get("inputs", {})
        parameter_values = {}
        for key, source in inputs.get("parameters", {}).items():
            parameter_values[key] = self.parameter_value(name, key, source)
        input_artifacts = {}
        definitions = component.get("inputDefinitions", {}).get("artifacts", {})
        for key, source in inputs.get("artifacts", {}).items():
            if "taskOutputArtifact" not in source:
                raise LocalRunError(f"task {name}: input artifact {key} comes from "
                                    f"{next(iter(source), 'nowhere')}; run-local supports "
                                    "upstream task outputs only")
            producer = source["taskOutputArtifact"]["producerTask"]
            output_key = source["taskOutputArtifact"]["outputArtifactKey"]
            artifact = dict(self.artifacts[producer][output_key])
            if key in definitions:
                artifact["type"] = definitions[key]["artifactType"]
            input_artifacts[key] = {"artifacts": [artifact]}
        output_artifacts = {}
        for key, definition in component.get("outputDefinitions", {}).get("artifacts",
                                                                            {}).items():
            output_artifacts[key] = {"artifacts": [{
                "name": f"{self.run_id}/{name}/{key}",
                "type": definition["artifactType"],
                "uri": f"{task_dir}/{key}",
                "metadata": {}}]}
        output_parameters = {
            key: {"outputFile": f"{task_dir}/parameters/{key}"}
            for key in component.get("outputDefinitions", {}).get("parameters", {})}
        outputs: Dict[str, Any] = {"artifacts": output_artifacts,
                                   "outputFile": f"{task_dir}/{EXECUTOR_OUTPUT_FILE}"}
        if output_parameters:
            outputs["parameters"] = output_parameters
        return {"inputs": {"parameterValues": parameter_values, "artifacts": input_artifacts},
                "outputs": outputs}

    def parameter_value(self, task: str, key: str, source: Dict[str, Any]) -> Any:
        if "runtimeValue" in source:
            return source["runtimeValue"]["constant"]
        if "componentInputParameter" in source:
            parameter = source["componentInputParameter"]
            if parameter not in self.parameters:
                raise LocalRunError(f"task {task}: input {key} reads pipeline parameter "
                                    f"{parameter}, which has no value")
            return self.parameters[parameter]
        if "taskOutputParameter" in source:
            producer = source["taskOutputParameter"]["producerTask"]
            output_key = source["taskOutputParameter"]["outputParameterKey"]
            try:
                return self.output_parameters[producer][output_key]
            except KeyError:
                raise LocalRunError(f"task {task}: input {key} reads output parameter "
                                    f"{output_key} of {producer}, which did not write it"
                                    ) from None
        raise LocalRunError(f"task {task}: input parameter {key}: unsupported source "
                            f"{sorted(source)}")

    # -- placeholders and processes ----------------------------------------------------------

    def fill(self, text: str, context: Dict[str, Any]) -> str:
        """``text`` with every ``{{$...}}`` placeholder replaced, as the launcher does."""
        executor_input = context["executor_input"]

        def replace(match: "re.Match[str]") -> str:
            expression = match.group("expression")
            if expression == "":
                return json.dumps(executor_input, sort_keys=True)
            simple = {".pipeline_job_name": self.job_name,
                      ".pipeline_job_uuid": self.run_id,
                      ".pipeline_task_name": context["task"],
                      ".pipeline_task_uuid": context["task_uuid"],
                      ".pipeline_root": self.pipeline_root,
                      ".outputs.output_file": executor_input["outputs"]["outputFile"]}
            if expression in simple:
                return simple[expression]
            found = re.fullmatch(r"\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]"
                                 r"(\.uri|\.path|\.output_file)?", expression)
            if found:
                side, kind, key, field = found.groups()
                if kind == "parameters" and side == "inputs" and field is None:
                    value = executor_input["inputs"]["parameterValues"].get(key)
                    if value is None:
                        raise LocalRunError(f"task {context['task']}: {match.group(0)}: no "
                                            f"input parameter {key}")
                    return value if isinstance(value, str) else json.dumps(value)
                if kind == "parameters" and side == "outputs" and field == ".output_file":
                    return executor_input["outputs"]["parameters"][key]["outputFile"]
                if kind == "artifacts" and field in (".uri", ".path"):
                    # Local files: the path is the URI (the launcher mounts gs:// at /gcs/).
                    return executor_input[side]["artifacts"][key]["artifacts"][0]["uri"]
            raise LocalRunError(f"task {context['task']}: placeholder {match.group(0)} is not "
                                "supported by run-local")

        return PLACEHOLDER.sub(replace, text)

    def execute(self, task: str, command: List[str], args: List[str],
                context: Dict[str, Any], log_path: Optional[str]) -> None:
        argv = [self.fill(part, context) for part in list(command) + list(args)]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = self.python
        with open(log_path or os.devnull, "a", encoding="utf-8") as log_file:
            log_file.write(f"$ {' '.join(argv[:3])} ...\n")
            log_file.flush()
            try:
                process = subprocess.run(argv, cwd=self.cwd, stdout=log_file,
                                         stderr=subprocess.STDOUT, check=False)
            except OSError as error:
                raise LocalRunError(f"task {task}: cannot start {argv[0]}: {error}") from error
        if process.returncode != 0:
            raise LocalRunError(f"task {task}: {' '.join(argv[:3])} exited with "
                                f"{process.returncode}; its log: {log_path}\n"
                                + _tail(log_path))

    def collect_outputs(self, task: str, component: Dict[str, Any],
                        executor_input: Dict[str, Any]) -> None:
        """Reads the executor output file: artifact metadata and output parameters."""
        artifacts = {key: dict(value["artifacts"][0])
                     for key, value in executor_input["outputs"]["artifacts"].items()}
        parameters: Dict[str, Any] = {}
        output = _read_json(executor_input["outputs"]["outputFile"])
        for key, value in output.get("artifacts", {}).items():
            written = (value.get("artifacts") or [{}])[0]
            if key in artifacts:
                artifacts[key]["metadata"] = written.get("metadata", {})
                artifacts[key]["uri"] = written.get("uri") or artifacts[key]["uri"]
        parameters.update(output.get("parameterValues", {}))
        for key, spec in executor_input["outputs"].get("parameters", {}).items():
            if key not in parameters and _exists(spec["outputFile"]):
                parameters[key] = _read_text(spec["outputFile"])
        self.artifacts[task] = artifacts
        self.output_parameters[task] = parameters


def run_package(package_path: str, pipeline_root: Optional[str] = None,
                parameters: Optional[Mapping[str, Any]] = None,
                project_dir: Optional[str] = None, python: Optional[str] = None,
                run_id: Optional[str] = None,
                log: Callable[[str], None] = print) -> LocalRun:
    """Executes every task of a compiled package as a subprocess, in dependency order.

    Args:
      package_path: a package written by `tfprod kubeflow compile`.
      pipeline_root: where output artifacts go (default: the package's defaultPipelineRoot).
      parameters: pipeline parameters, e.g. {"data_dir": "data/mnist_sample"}.
      project_dir: stands in for the image's project directory (/tfprod, which holds
        configs/ and the curated schemas); default: the current directory.
      python: the interpreter that replaces the spec's ``python`` (default: this one).
      run_id: the run's directory name under the pipeline root (default: a UTC timestamp).
      log: receives one line as each task starts and ends.

    Returns:
      The run: its id, its directory and each task's output URIs.

    Raises:
      CompileError: the file is not a KFP v2 package.
      ParameterError: a parameter is unknown or missing, or project_dir is not a directory.
      LocalRunError: a task uses what run-local does not support, or a task failed (the
        message names it, its log file and the log's last lines).
    """
    project_dir = os.path.abspath(project_dir or os.getcwd())
    if not os.path.isdir(project_dir):
        raise ParameterError(f"--project-dir {project_dir}: not a directory; it stands in for "
                             f"the image's {compiler.PROJECT_DIR_IN_IMAGE} (the checkout)")
    spec = map_project_paths(load_spec(package_path), project_dir)
    root = pipeline_root or spec.get("defaultPipelineRoot")
    if not root:
        raise LocalRunError(f"{package_path}: no defaultPipelineRoot; pass --pipeline-root")
    if "://" not in root:
        root = os.path.abspath(root)
    values = pipeline_parameters(spec, dict(parameters or {}))
    run_id = run_id or datetime.datetime.now(datetime.timezone.utc).strftime(
        "run-%Y%m%d-%H%M%S")
    runner = _Runner(spec, root, values, python or sys.executable, project_dir, run_id, log)
    return runner.run()


def _make_dirs(path: str) -> None:
    if "://" in path:
        import tensorflow as tf  # gs:// and other tf.io.gfile schemes

        tf.io.gfile.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _read_text(path: str) -> str:
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path) as handle:
            return handle.read()
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _read_json(path: str) -> Dict[str, Any]:
    if not _exists(path):
        return {}
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise LocalRunError(f"{path}: the executor output is not JSON ({error})") from error


def _tail(log_path: Optional[str]) -> str:
    if not log_path or not os.path.exists(log_path):
        return ""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        return "".join(handle.readlines()[-LOG_TAIL_LINES:])
