"""`tfprod kubeflow run-local` on small hand-made packages (fast; the compiled MNIST
pipeline runs in tests/e2e/test_kubeflow_run_local_e2e.py).

The two tasks here are plain `python -c` containers, so what is checked is the launcher's
part: dependency order, placeholders, output URIs, executor output metadata flowing to the
next task, parameters, and a failing task named with its log.
"""

import json

import pytest
import yaml

from tfprod import cli
from tfprod.kubeflow import local_run
from tfprod.kubeflow.errors import LocalRunError, ParameterError

# Writes its text parameter to the output artifact and reports metadata in the output file,
# as a TFX executor does.
PRODUCE = """
import json, os, sys
text, uri, executor_input = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
os.makedirs(uri, exist_ok=True)
open(os.path.join(uri, "data.txt"), "w").write(text)
artifact = dict(executor_input["outputs"]["artifacts"]["data"]["artifacts"][0])
artifact["metadata"] = {"length": len(text)}
with open(executor_input["outputs"]["outputFile"], "w") as handle:
    json.dump({"artifacts": {"data": {"artifacts": [artifact]}}}, handle)
"""
# Copies its input artifact and its metadata into a summary.
CONSUME = """
import json, os, sys
executor_input = json.loads(sys.argv[1])
source = executor_input["inputs"]["artifacts"]["data"]["artifacts"][0]
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
text = open(os.path.join(source["uri"], "data.txt")).read()
json.dump({"text": text, "metadata": source["metadata"], "cwd": os.getcwd(),
           "schema": executor_input["inputs"]["parameterValues"]["schema_file"]},
          open(os.path.join(out, "summary.json"), "w"))
if text == "fail":
    print("consume: refusing to summarize 'fail'")
    sys.exit(3)
"""
DATASET = {"artifactType": {"schemaTitle": "system.Dataset"}}


def tiny_spec():
    return {
        "pipelineInfo": {"name": "tiny"},
        "schemaVersion": "2.1.0",
        "defaultPipelineRoot": "/nonexistent/root",
        "root": {
            "inputDefinitions": {"parameters": {"greeting": {
                "parameterType": "STRING", "defaultValue": "hello", "isOptional": True}}},
            "dag": {"tasks": {
                # Named so that alphabetical order would be wrong.
                "a-consume": {"componentRef": {"name": "consume"},
                              "taskInfo": {"name": "a-consume"},
                              "dependentTasks": ["b-produce"],
                              "inputs": {
                                  "artifacts": {"data": {"taskOutputArtifact": {
                                      "producerTask": "b-produce",
                                      "outputArtifactKey": "data"}}},
                                  "parameters": {"schema_file": {"runtimeValue": {
                                      "constant": "/tfprod/configs/schema.pbtxt"}}}}},
                "b-produce": {"componentRef": {"name": "produce"},
                              "taskInfo": {"name": "b-produce"},
                              "inputs": {"parameters": {"text": {
                                  "componentInputParameter": "greeting"}}}},
            }},
        },
        "components": {
            "produce": {"executorLabel": "produce_executor",
                        "inputDefinitions": {"parameters": {"text": {
                            "parameterType": "STRING"}}},
                        "outputDefinitions": {"artifacts": {"data": DATASET}}},
            "consume": {"executorLabel": "consume_executor",
                        "inputDefinitions": {"artifacts": {"data": DATASET},
                                             "parameters": {"schema_file": {
                                                 "parameterType": "STRING"}}},
                        "outputDefinitions": {"artifacts": {"summary": DATASET}}},
        },
        "deploymentSpec": {"executors": {
            "produce_executor": {"container": {
                "image": "example/image:1", "command": ["python", "-c", PRODUCE],
                "args": ["{{$.inputs.parameters['text']}}",
                         "{{$.outputs.artifacts['data'].uri}}", "{{$}}"]}},
            "consume_executor": {"container": {
                "image": "example/image:1", "command": ["python", "-c", CONSUME],
                "args": ["{{$}}", "{{$.outputs.artifacts['summary'].path}}"]}},
        }},
    }


def write(spec, path):
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_tasks_run_in_dependency_order_with_the_placeholders_filled(tmp_path):
    package = write(tiny_spec(), tmp_path / "pipeline.yaml")
    lines = []
    (tmp_path / "project").mkdir()
    run = local_run.run_package(package, pipeline_root=str(tmp_path / "root"),
                                parameters={"greeting": "hi there"},
                                project_dir=str(tmp_path / "project"), run_id="r1",
                                log=lines.append)
    assert [task.name for task in run.tasks] == ["b-produce", "a-consume"]
    assert run.output_uri("b-produce", "data") == f"{tmp_path}/root/r1/b-produce/data"
    summary = json.loads((tmp_path / "root/r1/a-consume/summary/summary.json").read_text())
    # The parameter reached the producer; its metadata reached the consumer; /tfprod is
    # the project directory; the task ran there.
    assert summary == {"text": "hi there", "metadata": {"length": 8},
                       "cwd": str(tmp_path / "project"),
                       "schema": f"{tmp_path}/project/configs/schema.pbtxt"}
    assert lines[0].startswith("[b-produce] running") and lines[-1].startswith("[a-consume] done")


def test_defaults_and_unknown_parameters(tmp_path):
    spec = tiny_spec()
    assert local_run.pipeline_parameters(spec, {}) == {"greeting": "hello"}
    with pytest.raises(ParameterError, match="--param colour: not a parameter.*greeting"):
        local_run.pipeline_parameters(spec, {"colour": "red"})


def test_a_failing_task_is_named_with_its_log(tmp_path, capsys):
    package = write(tiny_spec(), tmp_path / "pipeline.yaml")
    code = cli.main(["kubeflow", "run-local", "--package", package, "--pipeline-root",
                     str(tmp_path / "root"), "--param", "greeting=fail", "--run-id", "r2",
                     "--project-dir", str(tmp_path)])
    assert code == 1
    error = capsys.readouterr().err
    assert "task a-consume" in error and "exited with 3" in error
    assert "refusing to summarize 'fail'" in error  # the log's tail
    assert f"{tmp_path}/root/r2/a-consume/log.txt" in error


def test_cycles_missing_tasks_and_unsupported_executors_are_refused(tmp_path):
    with pytest.raises(LocalRunError, match="cycle among: a, b"):
        local_run.task_order({"a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}})
    with pytest.raises(LocalRunError, match="task a: depends on c"):
        local_run.task_order({"a": {"dependentTasks": ["c"]}})
    spec = tiny_spec()
    spec["deploymentSpec"]["executors"]["produce_executor"] = {"resolver": {
        "outputArtifactQueries": {}}}
    package = write(spec, tmp_path / "pipeline.yaml")
    with pytest.raises(LocalRunError, match="b-produce: a resolver executor"):
        local_run.run_package(package, pipeline_root=str(tmp_path / "root"), log=lambda _: None)


def test_only_whole_image_paths_are_mapped():
    mapped = local_run.map_project_paths(
        {"a": "/tfprod/configs/x", "b": '{"schema_path": "/tfprod/configs/y"}',
         "c": "gs://bucket/tfprod/mnist", "d": "--config=/tfprod/configs/z", "e": "/tfprodx"},
        "/work/project")
    assert mapped == {"a": "/work/project/configs/x",
                      "b": '{"schema_path": "/work/project/configs/y"}',
                      "c": "gs://bucket/tfprod/mnist", "d": "--config=/work/project/configs/z",
                      "e": "/tfprodx"}
