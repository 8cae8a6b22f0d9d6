"""kubeflow/manifests: the Kustomize base and overlays parse, render and validate offline.

Kubernetes kinds are checked against the schemas bundled in kubernetes-validate (strict),
the TFJob and InferenceService against the trimmed CRD schemas in kubeflow/schemas/.
No cluster exists here, so nothing is applied; `kubectl kustomize` (client side only)
cross-checks the renderer where kubectl is installed.
"""

import copy
import json
import shutil
import subprocess

import pytest
import yaml

from tfprod.kubeflow import manifests
from tfprod.kubeflow.errors import ManifestError
from tfprod import cli
from tfprod.pipeline import config as config_lib, distribute
from tests.conftest import MNIST_CONFIG, REPO_ROOT

OVERLAY_DIRS = ["base"] + [f"overlays/{name}" for name in manifests.OVERLAYS]


def rendered(relative):
    return manifests.render(manifests.MANIFESTS_DIR / relative)


@pytest.fixture(scope="module")
def experiment():
    return config_lib.load_config(str(MNIST_CONFIG))


def test_every_manifest_file_is_yaml_with_kind_and_name(tmp_path, experiment):
    files = manifests.write_tree(tmp_path, manifests.template_values(experiment, MNIST_CONFIG))
    assert len(files) >= 9
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            assert document["apiVersion"] and document["kind"], path


def test_no_bucket_is_hard_coded_in_the_templates():
    for path in manifests.MANIFESTS_DIR.rglob("*.yaml"):
        assert "gs://" not in path.read_text(), path


def test_manifests_command_renders_the_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["kubeflow", "manifests", "--config", str(MNIST_CONFIG), "--output", str(out),
                     "--set", "kubeflow.output_dir=gs://my-bucket/runs/mnist",
                     "--set", "kubeflow.image=registry.example/me/tfprod",
                     "--set", "kubeflow.image_tag=1.2.3", "--set", "kubeflow.namespace=ml",
                     "--set", "kubeflow.tfjob_workers=3",
                     "--set", "kubeflow.tfjob_examples=gs://my-bucket/t/transformed_examples",
                     "--set", "kubeflow.tfjob_transform_output=gs://my-bucket/t/transform_graph",
                     "--set", "export.model_name=digits"]) == 0
    assert "kubectl apply -k" in capsys.readouterr().out
    service = manifests.find(manifests.render(out / "overlays/kserve"), "InferenceService")
    assert service["metadata"] == {"name": "digits", "namespace": "ml",
                                   "labels": {"app.kubernetes.io/part-of": "tfprod"}}
    assert service["spec"]["predictor"]["tensorflow"]["storageUri"] == (
        "gs://my-bucket/runs/mnist/serving/digits")
    resources = manifests.render(out / "overlays/tf-serving")
    args = manifests.find(resources, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model_base_path=gs://my-bucket/runs/mnist/serving/digits" in args
    assert "--model_name=digits" in args
    tfjob = manifests.find(resources, "TFJob")
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3
    container = worker["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/me/tfprod:1.2.3"
    assert container["args"] == ["--config=/tfprod/configs/mnist_cnn.yaml",
                                 "--transform-output=gs://my-bucket/t/transform_graph",
                                 "--examples=gs://my-bucket/t/transformed_examples",
                                 "--output-dir=gs://my-bucket/runs/mnist/multiworker"]
    assert "gs://tfprod-artifacts" not in "".join(p.read_text() for p in out.rglob("*.yaml"))


def test_manifests_without_inputs_says_how_to_find_them(tmp_path, capsys):
    assert cli.main(["kubeflow", "manifests", "--config", str(MNIST_CONFIG), "--output",
                     str(tmp_path)]) == 0
    assert "--mlmd" in capsys.readouterr().out
    assert manifests.unset_inputs(manifests.render(tmp_path / "base"))


@pytest.mark.parametrize("key, value", [("kubeflow.namespace", "Not_A_Label"),
                                        ("kubeflow.tfjob_workers", "0"),
                                        ("kubeflow.tfjob_examples", "relative/path")])
def test_manifest_config_keys_are_validated(key, value):
    with pytest.raises(Exception, match=key):
        config_lib.load_config(str(MNIST_CONFIG), [f"{key}={value}"])


def test_validate_manifests_reports_every_mismatch_at_once(tmp_path, capsys):
    assert cli.main(["kubeflow", "manifests", "--config", str(MNIST_CONFIG), "--output",
                     str(tmp_path)]) == 0
    capsys.readouterr()
    code = cli.main(["kubeflow", "validate-manifests", "--manifests", str(tmp_path), "--config",
                     str(MNIST_CONFIG), "--set", "kubeflow.output_dir=gs://elsewhere/m",
                     "--set", "kubeflow.image_tag=9.9", "--set", "export.model_name=other"])
    assert code == 2
    err = capsys.readouterr().err
    for expected in ("storageUri", "--model_base_path", "--model_name", "image",
                     "--output-dir"):
        assert expected in err, expected
    # Base resources are reported once, not once per overlay.
    assert err.count("TFJob/tfprod-mnist-cnn: Worker image") == 1


def test_transform_outputs_from_mlmd(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    path = str(tmp_path / "metadata.sqlite")
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = path
    store = metadata_store.MetadataStore(config)
    artifact_type = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    execution_type = store.put_execution_type(pb.ExecutionType(name="Transform"))
    for run in ("1", "2"):
        ids = store.put_artifacts([
            pb.Artifact(type_id=artifact_type, uri=f"/runs/{run}/transformed_examples"),
            pb.Artifact(type_id=artifact_type, uri=f"/runs/{run}/transform_graph")])
        [execution] = store.put_executions([pb.Execution(type_id=execution_type)])
        events = []
        for artifact_id, key in zip(ids, ("transformed_examples", "transform_graph")):
            event = pb.Event(artifact_id=artifact_id, execution_id=execution,
                             type=pb.Event.OUTPUT)
            event.path.steps.add().key = key
            events.append(event)
        store.put_events(events)
    assert manifests.transform_outputs_from_mlmd(path) == {
        "examples": "/runs/2/transformed_examples", "transform_graph": "/runs/2/transform_graph"}
    with pytest.raises(ManifestError, match="no such file"):
        manifests.transform_outputs_from_mlmd(str(tmp_path / "missing.sqlite"))


@pytest.mark.parametrize("relative", OVERLAY_DIRS)
def test_rendered_resources_validate(relative):
    resources = rendered(relative)
    for resource in resources:
        manifests.validate_resource(resource)
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tfprod"
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "tfprod"


def test_overlays_hold_the_serving_kinds():
    kinds = {relative: sorted(r["kind"] for r in rendered(relative)) for relative in OVERLAY_DIRS}
    assert kinds["base"] == ["Namespace", "ServiceAccount", "TFJob"]
    assert kinds["overlays/kserve"] == ["InferenceService", "Namespace", "ServiceAccount", "TFJob"]
    assert kinds["overlays/tf-serving"] == ["Deployment", "Namespace", "NetworkPolicy", "Service",
                                            "ServiceAccount", "TFJob"]


@pytest.mark.parametrize("relative", manifests.OVERLAYS)
def test_manifests_point_at_the_configs_model_and_image(experiment, relative):
    from tfprod.kubeflow import compiler

    manifests.check_wiring(rendered(f"overlays/{relative}"), experiment.kubeflow.output_dir,
                           experiment.export.model_name,
                           compiler.image_reference(experiment.kubeflow))


def test_wiring_check_fails_on_a_wrong_storage_uri(experiment):
    resources = rendered("overlays/kserve")
    service = manifests.find(resources, "InferenceService")
    service["spec"]["predictor"]["tensorflow"]["storageUri"] = "gs://bucket/serving/other"
    with pytest.raises(ManifestError, match="serving/mnist_cnn"):
        manifests.check_wiring(resources, experiment.kubeflow.output_dir,
                               experiment.export.model_name, "ghcr.io/tfprod/tfprod:0.1.0")


def _broken(kind, mutate, overlay="overlays/tf-serving"):
    resources = rendered(overlay)
    resource = copy.deepcopy(manifests.find(resources, kind))
    mutate(resource)
    return resource


@pytest.mark.parametrize("kind, overlay, mutate, message", [
    ("Deployment", "overlays/tf-serving",
     lambda r: r["spec"]["template"]["spec"]["containers"][0].update(args="--port=8500"),
     "--port=8500"),
    ("Deployment", "overlays/tf-serving",
     lambda r: r["spec"].update(replica=2), "replica"),
    ("Service", "overlays/tf-serving",
     lambda r: r["spec"]["ports"][0].update(port="http"), "http"),
    ("TFJob", "base",
     lambda r: r["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
         name="trainer"), "tensorflow"),
    ("TFJob", "base",
     lambda r: r["spec"]["tfReplicaSpecs"].update(Workers=r["spec"]["tfReplicaSpecs"]["Worker"]),
     "Workers"),
    ("TFJob", "base",
     lambda r: r["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
         "resources"]["limits"].update(cpu=[4]), "cpu"),
    ("InferenceService", "overlays/kserve",
     lambda r: r["spec"]["predictor"]["tensorflow"].update(storageUri="/local/path"), "storageUri"),
    ("InferenceService", "overlays/kserve",
     lambda r: r["spec"]["predictor"].update(model={"modelFormat": {"name": "tensorflow"}}),
     "predictor"),
])
def test_broken_manifests_are_rejected(kind, overlay, mutate, message):
    resource = _broken(kind, mutate, overlay)
    with pytest.raises(ManifestError) as error:
        manifests.validate_resource(resource)
    assert kind in str(error.value) and message in str(error.value)


def test_validate_tree_rejects_a_broken_file(tmp_path):
    tree = tmp_path / "manifests"
    shutil.copytree(manifests.MANIFESTS_DIR, tree)
    deployment = tree / "overlays" / "tf-serving" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("containerPort: 8501",
                                                         "containerPort: \"8501\""))
    tfjob = tree / "base" / "tfjob.yaml"
    tfjob.write_text(tfjob.read_text().replace("containerPort: 2222", "containerPort: \"2222\""))
    with pytest.raises(ManifestError, match="(?s)containerPort.*containerPort"):
        manifests.validate_tree(tree)  # both broken files are reported
    assert cli.main(["kubeflow", "validate-manifests", "--manifests", str(tree)]) == 2


def test_cli_validate_manifests(capsys):
    assert cli.main(["kubeflow", "validate-manifests", "--config", str(MNIST_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "InferenceService/mnist-cnn" in out and "model directory" in out


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("relative", OVERLAY_DIRS)
def test_renderer_matches_kubectl_kustomize(relative, tmp_path, experiment):
    # kubectl reads the tree `tfprod kubeflow manifests` writes (the templates are Jinja2).
    manifests.write_tree(tmp_path, manifests.template_values(experiment, MNIST_CONFIG))
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path / relative)],
                            capture_output=True, text=True, timeout=60, check=True)
    expected = list(yaml.safe_load_all(result.stdout))
    key = lambda resource: (resource["kind"], resource["metadata"]["name"])
    assert sorted(manifests.render(tmp_path / relative), key=key) == sorted(expected, key=key)


# TF_CONFIG exactly as the training operator writes it for a 2-worker TFJob (worker 1).
OPERATOR_TF_CONFIG = {
    "cluster": {"worker": ["tfprod-mnist-cnn-worker-0.tfprod.svc:2222",
                           "tfprod-mnist-cnn-worker-1.tfprod.svc:2222"]},
    "task": {"type": "worker", "index": 1},
    "environment": "cloud",
}


def test_tf_config_of_the_operator_is_accepted_and_worker_0_is_chief():
    tf_config = distribute.read_tf_config({"TF_CONFIG": json.dumps(OPERATOR_TF_CONFIG)},
                                          allow_ps=False)
    assert not distribute.is_chief(tf_config)
    first = dict(OPERATOR_TF_CONFIG, task={"type": "worker", "index": 0})
    assert distribute.is_chief(first)
    with_chief = {"cluster": {"chief": ["c:2222"], "worker": ["w:2222"]},
                  "task": {"type": "worker", "index": 0}}
    assert not distribute.is_chief(with_chief)


@pytest.mark.parametrize("tf_config, message", [
    (None, "not set"),
    ({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}},
     "ParameterServerStrategy"),
    ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}, "not one of"),
])
def test_bad_tf_config_is_refused(tf_config, message):
    environ = {} if tf_config is None else {"TF_CONFIG": json.dumps(tf_config)}
    with pytest.raises(distribute.DistributeError, match=message):
        distribute.read_tf_config(environ, allow_ps=False)


def test_dockerfile_matches_the_stack_and_the_compiler():
    from tfprod.kubeflow import compiler

    dockerfile = (REPO_ROOT / "kubeflow" / "Dockerfile").read_text()
    pins = dict(line.split("==") for line in (REPO_ROOT / "constraints.txt").read_text().split()
                if "==" in line)
    assert f"FROM tensorflow/tfx:{pins['tfx']}" in dockerfile
    assert f"WORKDIR {compiler.PROJECT_DIR_IN_IMAGE}" in dockerfile
    assert "--constraint constraints.txt" in dockerfile
