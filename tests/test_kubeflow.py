"""`tfprod kubeflow compile`: the pipeline compiled by TFX's KubeflowV2DagRunner.

Real TFX compilation of the real create_pipeline(config); the output is parsed into
KFP's PipelineSpec/PlatformSpec protos. No cluster runs it here (none exists on these
machines), so what is checked is the compiled spec itself.
"""

import json
import os

import pytest
import yaml
from google.protobuf import json_format

from tfprod.contract import layout
from tfprod.kubeflow import compiler
from tfprod.kubeflow.errors import CompileError
from tfprod import cli
from tfprod.pipeline import config as config_lib
from tests.conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
# The main job: the golden file and the single-config checks use it.
MAIN_CONFIG = REPO_ROOT / "configs" / "mnist_cnn.yaml"
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
RESOLVER_ID = "latest_blessed_model_resolver"
UPDATE_GOLDEN = os.environ.get("TFPROD_UPDATE_GOLDEN") == "1"


def load(config_path, *overrides):
    return config_lib.load_config(str(config_path), list(overrides))


def compile_to_file(experiment, path):
    compiled = compiler.compile_pipeline(experiment)
    compiler.write_package(compiled, str(path))
    return compiled


@pytest.fixture(scope="module")
def compiled_packages(tmp_path_factory):
    """Every config in configs/ compiled with its defaults: {config stem: package path}."""
    directory = tmp_path_factory.mktemp("kfp")
    packages = {}
    for config_path in CONFIGS:
        path = directory / f"{config_path.stem}.yaml"
        compile_to_file(load(config_path), path)
        packages[config_path.stem] = path
    return packages


@pytest.fixture(scope="module")
def gpu_package(tmp_path_factory):
    """The main config with Trainer resources, a node selector and the Flink runner."""
    path = tmp_path_factory.mktemp("kfp_gpu") / "pipeline.yaml"
    experiment = load(MAIN_CONFIG, "kubeflow.trainer_gpus=2", "kubeflow.trainer_cpu_limit=8",
                      "kubeflow.trainer_memory_limit_gb=30",
                      "kubeflow.trainer_node_selector=[cloud.google.com/gke-accelerator=nvidia-l4]",
                      "kubeflow.beam_runner=flink",
                      "kubeflow.beam_job_endpoint=beam-job-server.flink:8099")
    compile_to_file(experiment, path)
    return path


def executors_of(pipeline_spec):
    """The deployment spec's executors as plain dicts (it is a protobuf Struct)."""
    return json_format.MessageToDict(pipeline_spec.deployment_spec)["executors"]


def task_graph(pipeline_spec):
    """{task name: set of upstream task names} from dependentTasks and artifact producers."""
    graph = {}
    for name, task in pipeline_spec.root.dag.tasks.items():
        upstream = set(task.dependent_tasks)
        for artifact in task.inputs.artifacts.values():
            if artifact.HasField("task_output_artifact"):
                upstream.add(artifact.task_output_artifact.producer_task)
        graph[name] = upstream
    return graph


def local_graph(experiment, tmp_path):
    """{component id: set of upstream ids} of the pipeline the local runner runs."""
    from tfprod.pipeline import drift_check
    from tfprod.pipeline import pipeline as pipeline_lib

    tfx_pipeline = pipeline_lib.create_pipeline(
        experiment, layout.PipelinePaths(str(tmp_path / "local")))
    # The drift check (pipeline/drift_check.py) is local only: it needs the run's SQLite.
    local_only = {drift_check.RESOLVER_ID, drift_check.DRIFT_CHECK_ID}
    return {component.id: {node.id for node in component.upstream_nodes} - local_only
            for component in tfx_pipeline.components if component.id not in local_only}


@pytest.mark.parametrize("config_path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_config_compiles_to_a_pipeline_spec(compiled_packages, config_path):
    pipeline_spec, platform_spec = compiler.read_package(str(compiled_packages[config_path.stem]))
    experiment = load(config_path)
    assert pipeline_spec.schema_version == "2.1.0"
    assert pipeline_spec.pipeline_info.name == compiler.kfp_pipeline_name(experiment.name)
    assert platform_spec is None  # no node selector or GPU in the shipped configs
    executors = executors_of(pipeline_spec)
    images = {executor["container"]["image"] for executor in executors.values()}
    assert images == {compiler.image_reference(experiment.kubeflow)}
    # Every task's component exists and names an executor of the deployment spec.
    for task in pipeline_spec.root.dag.tasks.values():
        component = pipeline_spec.components[task.component_ref.name]
        assert component.executor_label in executors


def test_task_dag_equals_the_local_pipeline(compiled_packages, tmp_path):
    experiment = load(MAIN_CONFIG, f"runtime.output_dir={tmp_path}")
    pipeline_spec, _ = compiler.read_package(str(compiled_packages[MAIN_CONFIG.stem]))
    expected = local_graph(experiment, tmp_path)
    # KFP's open-source backend cannot run resolver nodes, so by default the Kubeflow
    # build leaves out the one resolver (kubeflow.baseline_resolver); nothing else differs.
    expected.pop(RESOLVER_ID)
    expected = {node: upstream - {RESOLVER_ID} for node, upstream in expected.items()}
    assert task_graph(pipeline_spec) == expected
    assert len(expected) == 11  # with the InfraValidator and TFLiteConverter steps


def test_with_the_resolver_the_dag_equals_the_local_pipeline_exactly(tmp_path):
    experiment = load(MAIN_CONFIG, "kubeflow.baseline_resolver=true",
                      f"runtime.output_dir={tmp_path}")
    compile_to_file(experiment, tmp_path / "pipeline.yaml")
    pipeline_spec, _ = compiler.read_package(str(tmp_path / "pipeline.yaml"))
    # TFX compiles the LatestBlessedModel resolver into two KFP resolver tasks.
    collapse = lambda name: RESOLVER_ID if name.startswith(RESOLVER_ID + "-") else name
    collapsed = {}
    for name, upstream in task_graph(pipeline_spec).items():
        collapsed.setdefault(collapse(name), set()).update(
            collapse(parent) for parent in upstream if collapse(parent) != collapse(name))
    assert collapsed == local_graph(experiment, tmp_path)


def test_runtime_parameters_data_dir_and_pipeline_root(compiled_packages):
    experiment = load(MAIN_CONFIG)
    pipeline_spec, _ = compiler.read_package(str(compiled_packages[MAIN_CONFIG.stem]))
    parameter = pipeline_spec.root.input_definitions.parameters[compiler.DATA_DIR_PARAMETER]
    assert json_format.MessageToDict(parameter)["parameterType"] == "STRING"
    assert parameter.default_value.string_value == experiment.kubeflow.data_dir
    example_gen_input = pipeline_spec.root.dag.tasks["IdxExampleGen"].inputs.parameters[
        "input_base"]
    assert example_gen_input.component_input_parameter == compiler.DATA_DIR_PARAMETER
    assert pipeline_spec.default_pipeline_root == f"{experiment.kubeflow.output_dir}/pipeline"
    # The pushed model goes where the serving manifests read it.
    push = json.loads(pipeline_spec.root.dag.tasks["Pusher"].inputs.parameters[
        "push_destination"].runtime_value.constant.string_value)
    assert push["filesystem"]["base_directory"] == (
        f"{experiment.kubeflow.output_dir}/serving/{experiment.export.model_name}")
    # No path of this machine leaks into the spec: the schema is the image's copy.
    text = compiled_packages[MAIN_CONFIG.stem].read_text()
    assert str(REPO_ROOT) not in text
    assert f"{compiler.PROJECT_DIR_IN_IMAGE}/configs/schemas/" in text


def test_trainer_resources_node_selector_and_beam_runner(gpu_package):
    pipeline_spec, platform_spec = compiler.read_package(str(gpu_package))
    executors = executors_of(pipeline_spec)
    trainer_label = pipeline_spec.components["Trainer"].executor_label
    resources = executors[trainer_label]["container"]["resources"]
    assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}
    assert resources["cpuLimit"] == 8 and resources["memoryLimit"] == 30
    others = [label for label in executors if label != trainer_label]
    assert all("resources" not in executors[label].get("container", {}) for label in others)
    kubernetes = json_format.MessageToDict(
        platform_spec.platforms["kubernetes"].deployment_spec.executors[trainer_label])
    assert kubernetes["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert kubernetes["tolerations"][0]["key"] == "nvidia.com/gpu"
    # Every Beam component gets the portable runner's arguments.
    example_gen_args = executors["IdxExampleGen_executor"]["container"]["args"]
    assert "--runner=PortableRunner" in example_gen_args
    assert "--job_endpoint=beam-job-server.flink:8099" in example_gen_args
    assert "--runner=DirectRunner" not in example_gen_args


@pytest.mark.parametrize("runner, overrides, expected", [
    ("direct", [], ["--runner=DirectRunner", "--direct_running_mode=multi_processing"]),
    ("dataflow", ["kubeflow.beam_args=[--project=p, --region=europe-west4]"],
     ["--runner=DataflowRunner", "--temp_location=gs://tfprod-artifacts/mnist_cnn/beam-temp",
      "--sdk_container_image=ghcr.io/tfprod/tfprod:0.1.0", "--project=p"]),
    ("spark", ["kubeflow.beam_job_endpoint=spark-job-server:8099"],
     ["--runner=PortableRunner", "--job_endpoint=spark-job-server:8099",
      "--environment_type=EXTERNAL"]),
])
def test_beam_args_follow_the_configured_runner(runner, overrides, expected):
    args = compiler.beam_args(load(MAIN_CONFIG, f"kubeflow.beam_runner={runner}", *overrides))
    for arg in expected:
        assert arg in args


@pytest.mark.parametrize("overrides, key", [
    (["kubeflow.beam_runner=flink"], "kubeflow.beam_job_endpoint"),
    (["kubeflow.beam_runner=dataflow"], "kubeflow.beam_args"),
    (["kubeflow.trainer_node_selector=[gpu]"], "kubeflow.trainer_node_selector"),
    (["kubeflow.image=repo/tfprod:latest"], "kubeflow.image"),
])
def test_bad_kubeflow_config_names_the_key(overrides, key):
    with pytest.raises(config_lib.ConfigError, match=key):
        load(MAIN_CONFIG, *overrides)


def test_schema_outside_the_project_is_refused(tmp_path):
    schema = tmp_path / "schema.pbtxt"
    schema.write_text((REPO_ROOT / "configs/schemas/image_28x28_10class.pbtxt").read_text())
    experiment = load(MAIN_CONFIG, f"data.schema_path={schema}")
    with pytest.raises(CompileError, match="configs/schemas"):
        compiler.compile_pipeline(experiment)


def normalize(package_text):
    """The package without what changes from release to release: versions and image tags."""
    documents = list(yaml.safe_load_all(package_text))
    spec = documents[0]
    spec.pop("sdkVersion")
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor.get("container")
        if container:
            container["image"] = container["image"].rsplit(":", 1)[0] + ":TAG"
    return yaml.safe_dump_all(documents, sort_keys=True)


def test_compiled_package_matches_the_golden_file(compiled_packages):
    golden = GOLDEN_DIR / f"{MAIN_CONFIG.stem}_pipeline.yaml"
    actual = normalize(compiled_packages[MAIN_CONFIG.stem].read_text())
    assert "tfx-1." not in actual
    if UPDATE_GOLDEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual)
    assert golden.is_file(), "run with TFPROD_UPDATE_GOLDEN=1 once to create the golden file"
    assert actual == golden.read_text(), (
        f"the compiled pipeline changed; if intended, regenerate {golden} with "
        "TFPROD_UPDATE_GOLDEN=1 and review the diff")


def test_cli_compile_writes_a_package(tmp_path, capsys):
    output = tmp_path / "out" / "pipeline.yaml"
    code = cli.main(["kubeflow", "compile", "--config", str(MAIN_CONFIG), "--output",
                     str(output), "--set", "kubeflow.image_tag=1.2.3"])
    assert code == 0, capsys.readouterr().err
    pipeline_spec, _ = compiler.read_package(str(output))
    assert executors_of(pipeline_spec)["Trainer_executor"]["container"][
        "image"] == "ghcr.io/tfprod/tfprod:1.2.3"
    assert "11 tasks" in capsys.readouterr().out  # with the InfraValidator


def test_cli_compile_bad_override_exits_2(tmp_path, capsys):
    code = cli.main(["kubeflow", "compile", "--config", str(MAIN_CONFIG), "--output",
                     str(tmp_path / "p.yaml"), "--set", "kubeflow.trainer_gpus=-1"])
    assert code == 2
    assert "kubeflow.trainer_gpus" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_read_package_rejects_a_broken_spec(compiled_packages, tmp_path):
    documents = list(yaml.safe_load_all(compiled_packages[MAIN_CONFIG.stem].read_text()))
    documents[0]["root"]["dag"]["tasks"]["Trainer"]["dependentTask"] = ["Transform"]  # typo
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(documents))
    with pytest.raises(CompileError, match="dependentTask"):
        compiler.read_package(str(broken))
