"""Compiles create_pipeline(config) for Kubeflow Pipelines v2 with TFX's KubeflowV2DagRunner.

The same pipeline definition as the local runner, with cluster-side paths:

- the raw data directory is a pipeline input parameter (``data_dir``, a TFX
  RuntimeParameter), its default taken from ``kubeflow.data_dir``;
- the pipeline root is KFP's own run-time setting (``RuntimeConfig.pipeline_root``
  of a run, see submit.py); the compiled spec carries ``<kubeflow.output_dir>/pipeline``
  as its ``defaultPipelineRoot``;
- the Beam runner and its arguments come from the ``kubeflow`` config section;
- the Trainer gets CPU/memory limits and GPUs through TFX's platform config (the
  executor's container ``resources``), and a node selector plus a GPU toleration
  through a KFP Kubernetes ``PlatformSpec`` (the second YAML document of the package),
  which TFX's runner cannot express.

The output is a YAML package: the PipelineSpec (schema 2.1.0, the schema the
open-source KFP v2 backend reads) and, when needed, the PlatformSpec.
"""

import copy
import dataclasses
import os
import pathlib
import re
from typing import Any, Dict, List, Optional

import yaml
from google.protobuf import json_format

from tfprod import errors
from tfprod.contract import layout
from tfprod.kubeflow.errors import CompileError
from tfprod.pipeline import checks
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import pipeline as pipeline_lib
from tfprod.pipeline import tasks

# Where kubeflow/Dockerfile puts the project inside the image.
PROJECT_DIR_IN_IMAGE = "/tfprod"
# The checkout this module lives in (setup.py beside the package folders). Installed from
# the wheel there is no checkout: the project is the current directory (in the image, the
# WORKDIR /tfprod that holds configs/), see find_project_root().
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

DATA_DIR_PARAMETER = "data_dir"
KUBERNETES_PLATFORM = "kubernetes"


@dataclasses.dataclass
class CompiledPipeline:
    """A compiled KFP v2 package: the PipelineSpec and an optional Kubernetes PlatformSpec."""

    pipeline_spec: Dict[str, Any]
    platform_spec: Optional[Dict[str, Any]] = None

    @property
    def name(self) -> str:
        return self.pipeline_spec["pipelineInfo"]["name"]

    def documents(self) -> List[Dict[str, Any]]:
        return [self.pipeline_spec] + ([self.platform_spec] if self.platform_spec else [])


def image_reference(kubeflow: config_lib.KubeflowConfig) -> str:
    """The pipeline's default image, ``image:tag``."""
    return f"{kubeflow.image}:{kubeflow.image_tag}"


def kfp_pipeline_name(name: str) -> str:
    """KFP v2 pipeline names match [a-z0-9][a-z0-9-]{0,127}; experiment names may use '_'."""
    converted = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:128]
    if not converted or not converted[0].isalnum():
        raise CompileError(f"name: cannot make a Kubeflow pipeline name from {name!r}; use "
                           "lower-case letters, digits, '-' or '_'")
    return converted


def beam_args(experiment: config_lib.ExperimentConfig) -> List[str]:
    """The Beam arguments of every Beam-powered component, chosen by kubeflow.beam_runner."""
    kubeflow = experiment.kubeflow
    runner = kubeflow.beam_runner
    if runner == config_lib.BeamRunner.DIRECT:
        args = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={kubeflow.beam_direct_workers}"]
    elif runner == config_lib.BeamRunner.DATAFLOW:
        # The workers run this project's image, so IdxExampleGen and preprocessing_fn import.
        args = ["--runner=DataflowRunner",
                f"--temp_location={kubeflow.output_dir.rstrip('/')}/beam-temp",
                f"--sdk_container_image={image_reference(kubeflow)}"]
    else:  # Flink or Spark behind a Beam job server: the portable runner.
        args = ["--runner=PortableRunner", f"--job_endpoint={kubeflow.beam_job_endpoint}",
                f"--environment_type={kubeflow.beam_environment_type}",
                f"--environment_config={kubeflow.beam_environment_config}"]
    return args + list(kubeflow.beam_args)


def find_project_root() -> pathlib.Path:
    """The project directory: the checkout, or the current directory for an installed wheel."""
    if (PROJECT_ROOT / "setup.py").is_file():
        return PROJECT_ROOT
    return pathlib.Path.cwd().resolve()


def path_in_image(local_path: str, project_root: Optional[pathlib.Path] = None) -> str:
    """Maps a file of this project (e.g. the curated schema) to its path in the image."""
    project_root = project_root or find_project_root()
    resolved = pathlib.Path(local_path).resolve()
    try:
        relative = resolved.relative_to(project_root)
    except ValueError:
        raise CompileError(
            f"data.schema_path: {local_path} is outside the project ({project_root}), so the "
            "image does not carry it; put the schema under configs/schemas/") from None
    return f"{PROJECT_DIR_IN_IMAGE}/{relative.as_posix()}"


def cluster_experiment(experiment: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
    """A copy of the experiment with the paths the pods see (the Trainer reads this copy)."""
    cluster = copy.deepcopy(experiment)
    cluster.data.data_dir = experiment.kubeflow.data_dir
    cluster.runtime.output_dir = experiment.kubeflow.output_dir
    if experiment.data.schema_path:
        cluster.data.schema_path = path_in_image(experiment.data.schema_path)
    return cluster


def trainer_resources(kubeflow: config_lib.KubeflowConfig):
    """The Trainer's ResourceSpec (TFX platform config), or None when nothing is set."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    resource_spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    resources = resource_spec()
    if kubeflow.trainer_cpu_limit:
        resources.cpu_limit = kubeflow.trainer_cpu_limit
    if kubeflow.trainer_memory_limit_gb:
        resources.memory_limit = kubeflow.trainer_memory_limit_gb
    if kubeflow.trainer_gpus:
        resources.accelerator.type = kubeflow.trainer_gpu_type
        resources.accelerator.count = kubeflow.trainer_gpus
    return resources if resources.ByteSize() else None


def trainer_platform_spec(kubeflow: config_lib.KubeflowConfig,
                          executor_label: str) -> Optional[Dict[str, Any]]:
    """The KFP Kubernetes PlatformSpec for the Trainer: node selector and GPU toleration."""
    executor: Dict[str, Any] = {}
    if kubeflow.trainer_node_selector:
        labels = dict(entry.split("=", 1) for entry in kubeflow.trainer_node_selector)
        executor["nodeSelector"] = {"labels": labels}
    if kubeflow.trainer_gpus:
        # GPU node pools are usually tainted so that only pods asking for GPUs land there.
        executor["tolerations"] = [{"key": kubeflow.trainer_gpu_type, "operator": "Exists",
                                    "effect": "NoSchedule"}]
    if not executor:
        return None
    return {"platforms": {KUBERNETES_PLATFORM: {
        "deploymentSpec": {"executors": {executor_label: executor}}}}}


def build_pipeline(experiment: config_lib.ExperimentConfig):
    """create_pipeline(config) with the cluster's paths, data parameter and Beam runner."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx import v1 as tfx

    cluster = cluster_experiment(experiment)
    data_dir = tfx.dsl.experimental.RuntimeParameter(
        name=DATA_DIR_PARAMETER, ptype=str, default=cluster.data.data_dir)
    tfx_pipeline = pipeline_lib.create_pipeline(
        cluster, layout.PipelinePaths(cluster.runtime.output_dir),
        # KFP keeps its own metadata; an empty connection config avoids a local SQLite file.
        metadata_connection_config=metadata_store_pb2.ConnectionConfig(),
        data_dir=data_dir, beam_args=beam_args(cluster),
        pipeline_name=kfp_pipeline_name(cluster.name),
        baseline_resolver=cluster.kubeflow.baseline_resolver)
    resources = trainer_resources(cluster.kubeflow)
    if resources is not None:
        trainer = next(c for c in tfx_pipeline.components if c.id == layout.TRAINER_ID)
        trainer.with_platform_config(resources)
    return tfx_pipeline


def settle_data_decisions(experiment: config_lib.ExperimentConfig
                          ) -> config_lib.ExperimentConfig:
    """The experiment with what a local run reads from the data before building, fixed now.

    On Kubeflow the data directory is a run-time parameter, so nothing can be read from it
    when the pipeline is compiled. Two settings need the data at build time: a null
    data.num_classes (counted from the training labels) and eval.gate baseline (its bound
    comes from the labels). Both are taken from the local copy of the data
    (data.data_dir) and written into the compiled config as plain values: the class count
    (the ExampleGen checks it against the cluster's data at run time), and the baseline's
    bound as an absolute eval.accuracy_threshold (eval.mae_threshold for a forecaster),
    so the compiled spec shows the number it gates on.

    Returns:
      The experiment itself when nothing needs the data, else a settled copy.

    Raises:
      CompileError: the local data cannot be read; the message names the --set that
        compiles without it.
    """
    from tfprod.pipeline.tasks import baselines

    task = tasks.get_task(experiment)
    needs_classes = experiment.data.num_classes is None and task.is_classification
    needs_baseline = experiment.eval.gate == config_lib.Gate.BASELINE
    if not (needs_classes or needs_baseline):
        return experiment
    fixes = []
    if needs_baseline:
        fixes.append("--set eval.gate=absolute with --set eval.accuracy_threshold=A "
                     "(forecasters: --set eval.mae_threshold=MAE)")
    if needs_classes:
        fixes.append("--set data.num_classes=K")
    settled = copy.deepcopy(experiment)
    try:
        settled.check_paths()
        task.preflight(settled)  # fills data.num_classes from the labels
        baseline = task.baseline_metrics(settled) if needs_baseline else {}
    except errors.TfprodError as error:
        raise CompileError(
            f"{'eval.gate baseline' if needs_baseline else 'data.num_classes null'} is "
            f"settled from the data when the pipeline is built, and on Kubeflow the data is "
            f"read only at run time; the local copy (data.data_dir {experiment.data.data_dir}) "
            f"could not be read ({error}). Compile with {' and '.join(fixes)}") from None
    if needs_baseline:
        evaluation = settled.eval
        if baselines.BASELINE_ACCURACY in baseline:
            evaluation.accuracy_threshold = baselines.required_accuracy(
                baseline[baselines.BASELINE_ACCURACY], evaluation.baseline_margin)
        elif baselines.MEAN_BASELINE_MAE in baseline:
            evaluation.mae_threshold = baselines.allowed_mae(
                baseline[baselines.MEAN_BASELINE_MAE], evaluation.baseline_margin)
        else:
            raise CompileError(f"eval.gate baseline: no bound for the baselines {baseline}; "
                               f"compile with {fixes[0]}")
        evaluation.gate = config_lib.Gate.ABSOLUTE
    return settled


def compile_pipeline(experiment: config_lib.ExperimentConfig) -> CompiledPipeline:
    """Compiles the experiment's pipeline into a KFP v2 PipelineSpec (and PlatformSpec).

    Raises:
      CompileError: the experiment cannot run on Kubeflow as configured.
      ConfigError: the model, recipes or tuning space do not fit the task
        (pipeline.checks.check_experiment, run once here).
    """
    from tfx import v1 as tfx

    checks.check_experiment(experiment)
    experiment = settle_data_decisions(experiment)
    tfx_pipeline = build_pipeline(experiment)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image_reference(experiment.kubeflow), use_pipeline_spec_2_1=True))
    try:
        pipeline_job = runner.run(tfx_pipeline, write_out=False)
    except ValueError as error:
        raise CompileError(f"KubeflowV2DagRunner could not compile {experiment.name}: "
                           f"{error}") from error
    spec = pipeline_job["pipelineSpec"]
    spec["defaultPipelineRoot"] = tfx_pipeline.pipeline_info.pipeline_root
    # TFX leaves the runtime parameter without its default; KFP needs one to run without
    # an explicit argument.
    parameter = spec["root"]["inputDefinitions"]["parameters"][DATA_DIR_PARAMETER]
    parameter["defaultValue"] = experiment.kubeflow.data_dir
    parameter["isOptional"] = True
    executor_label = spec["components"][layout.TRAINER_ID]["executorLabel"]
    return CompiledPipeline(spec, trainer_platform_spec(experiment.kubeflow, executor_label))


def write_package(compiled: CompiledPipeline, path: str) -> None:
    """Writes the package as YAML: the PipelineSpec, then the PlatformSpec if any."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"# Kubeflow Pipelines v2 package of pipeline {compiled.name}, compiled "
                     "by `tfprod kubeflow compile` (TFX KubeflowV2DagRunner).\n")
        yaml.safe_dump_all(compiled.documents(), handle, sort_keys=True)


def read_package(path: str):
    """Parses a package into (PipelineSpec proto, PlatformSpec proto or None).

    Unknown or mistyped fields are errors, so this also checks the spec's shape.

    Raises:
      CompileError: the file is not a KFP v2 package.
    """
    from kfp.pipeline_spec import pipeline_spec_pb2

    with open(path, encoding="utf-8") as handle:
        try:
            documents = [document for document in yaml.safe_load_all(handle) if document]
        except yaml.YAMLError as error:
            raise CompileError(f"{path}: not valid YAML ({error})") from error
    if not 1 <= len(documents) <= 2:
        raise CompileError(f"{path}: expected a PipelineSpec and at most one PlatformSpec, "
                           f"found {len(documents)} YAML documents")
    try:
        pipeline_spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
        platform_spec = (json_format.ParseDict(documents[1], pipeline_spec_pb2.PlatformSpec())
                         if len(documents) == 2 else None)
    except json_format.ParseError as error:
        raise CompileError(f"{path}: not a KFP v2 PipelineSpec/PlatformSpec ({error})") from error
    return pipeline_spec, platform_spec
