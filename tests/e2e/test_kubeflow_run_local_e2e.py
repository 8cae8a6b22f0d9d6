"""The compiled Kubeflow package, executed: `tfprod kubeflow run-local` to a pushed model.

The MNIST sample config is compiled by TFX's KubeflowV2DagRunner (the package a cluster
would get, with the pipeline root and data in temp dirs and the smallest settings), and
`run-local` runs each task's container command and arguments from the spec as a
subprocess, with the placeholders filled as the KFP v2 launcher fills them: the executor
input JSON (parameters, upstream artifacts with their metadata, output URIs under the
pipeline root), runtime parameters, the ExampleGen driver hook.

What the real launcher does that this does not: each task runs in its own pod from the
image (here: this .venv's Python, with /tfprod mapped to the checkout); the driver looks
up the cache and records executions and artifacts in ML Metadata on MySQL (here nothing
is cached or recorded: the artifacts flow from task to task through the executor output
files); retries, resource limits and the Kubernetes PlatformSpec; gs:// artifact stores
with the pods' credentials.
"""

import json
import pathlib

import pytest
import tensorflow as tf

from tfprod import cli
from tfprod.kubeflow import compiler
from tfprod.pipeline import config as config_lib
from tests.conftest import MNIST_CONFIG, REPO_ROOT, SAMPLE_DIR

pytestmark = pytest.mark.e2e

# The smallest run that still blesses and pushes: one short epoch, an accuracy floor of 0,
# one TFLite mode on one runtime, one Beam worker per component.
SMALL_RUN = ["trainer.epochs=1", "trainer.max_steps=20", "eval.accuracy_threshold=0.0",
             "mobile.modes=[float32]", "mobile.runtimes=[litert]",
             "mobile.latency_examples=5", "kubeflow.beam_direct_workers=1"]


def test_run_local_executes_the_compiled_package_to_a_pushed_model(tmp_path, monkeypatch):
    output_dir = tmp_path / "bucket"
    experiment = config_lib.load_config(str(MNIST_CONFIG), SMALL_RUN + [
        f"kubeflow.output_dir={output_dir}", f"kubeflow.data_dir={SAMPLE_DIR}"])
    package = tmp_path / "pipeline.yaml"
    compiled = compiler.compile_pipeline(experiment)
    compiler.write_package(compiled, str(package))

    monkeypatch.chdir(REPO_ROOT)  # the project directory stands in for the image's /tfprod
    pipeline_root = tmp_path / "root"
    code = cli.main(["kubeflow", "run-local", "--package", str(package),
                     "--pipeline-root", str(pipeline_root), "--run-id", "e2e"])
    assert code == 0

    run_dir = pipeline_root / "e2e"
    tasks = compiled.pipeline_spec["root"]["dag"]["tasks"]
    # Every task ran and wrote its executor output (the launcher's output metadata file).
    for task in tasks:
        assert (run_dir / task / "executor_output.json").is_file(), task
    evaluator_output = json.loads((run_dir / "Evaluator" / "executor_output.json").read_text())
    blessing = evaluator_output["artifacts"]["blessing"]["artifacts"][0]
    assert blessing["metadata"]["blessed"] == 1
    assert (pathlib.Path(blessing["uri"]) / "BLESSED").is_file()

    # The Pusher wrote the model where the compiled spec says (kubeflow.output_dir).
    versions = sorted((output_dir / "serving" / experiment.export.model_name).iterdir())
    assert len(versions) == 1
    assert (versions[0] / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(versions[0]))
    assert {"serving_default", "serving_raw"} <= set(loaded.signatures)

    # The custom component ran too: its artifact type is rebuilt from the spec's title.
    converter_output = json.loads(
        (run_dir / "TFLiteConverter" / "executor_output.json").read_text())
    tflite_uri = converter_output["artifacts"]["tflite_models"]["artifacts"][0]["uri"]
    assert list(pathlib.Path(tflite_uri).rglob("*.tflite")) or list(
        (output_dir / "tflite").rglob("*.tflite"))
