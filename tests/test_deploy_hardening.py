"""Deployment files are hardened, and the offline validation fails when they are not.

Every workload (the TFJob, the KServe predictor, the tf-serving overlay's Deployment and
serving/deploy/kubernetes.yaml's) runs as a numeric non-root user with seccomp RuntimeDefault
and no service account token; every container without privilege escalation or capabilities,
on a read-only root filesystem with an emptyDir at /tmp, with CPU and memory requests and
limits; each serving Deployment has a NetworkPolicy admitting only its ports; the compose
services and the Dockerfiles run unprivileged. Each test removes or breaks one field of a good
file and expects a ManifestError that names the field and the object.
"""

import copy
import shutil

import pytest
import yaml

from tfprod import cli
from tfprod.kubeflow import manifests
from tfprod.kubeflow.errors import ManifestError
from tests.conftest import REPO_ROOT

DEPLOY_DIR = REPO_ROOT / "serving" / "deploy"

# (label, how to get the good resource set, kind of the workload)
WORKLOADS = {
    "tfjob": (lambda: manifests.render(manifests.MANIFESTS_DIR / "base"), "TFJob"),
    "kserve": (lambda: manifests.render(manifests.MANIFESTS_DIR / "overlays/kserve"),
               "InferenceService"),
    "tf-serving": (lambda: manifests.render(manifests.MANIFESTS_DIR / "overlays/tf-serving"),
                   "Deployment"),
    "serving/deploy": (lambda: yaml.safe_load_all((DEPLOY_DIR / "kubernetes.yaml").read_text()),
                       "Deployment"),
}


def _workload(label):
    load, kind = WORKLOADS[label]
    resources = [copy.deepcopy(resource) for resource in load() if resource]
    return resources, manifests.find(resources, kind)


def _pod_and_container(resource):
    """The (first) pod-level dict and its first container of a workload."""
    (path, pod, _, containers), *_ = manifests._pods(resource)
    if resource["kind"] == "InferenceService":
        return resource["spec"]["predictor"], resource["spec"]["predictor"]["tensorflow"]
    return pod, containers[0][1]


def _delete(mapping, dotted):
    *parents, last = dotted.split(".")
    for key in parents:
        mapping = mapping[key]
    del mapping[last]


POD_FIELDS = ["securityContext.runAsNonRoot", "securityContext.runAsUser",
              "securityContext.runAsGroup", "securityContext.seccompProfile",
              "automountServiceAccountToken"]
CONTAINER_FIELDS = ["securityContext.allowPrivilegeEscalation",
                    "securityContext.capabilities", "securityContext.readOnlyRootFilesystem",
                    "resources.requests.cpu", "resources.requests.memory",
                    "resources.limits.cpu", "resources.limits.memory"]


@pytest.mark.parametrize("label", WORKLOADS)
def test_shipped_workloads_are_hardened(label):
    resources, workload = _workload(label)
    manifests.validate_resource(workload)
    manifests.check_network_policies(resources)
    pod, container = _pod_and_container(workload)
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("field", POD_FIELDS)
@pytest.mark.parametrize("label", WORKLOADS)
def test_a_missing_pod_field_is_named(label, field):
    _, workload = _workload(label)
    pod, _ = _pod_and_container(workload)
    _delete(pod, field)
    with pytest.raises(ManifestError) as error:
        manifests.validate_resource(workload)
    message = str(error.value)
    assert f"{workload['kind']}/{workload['metadata']['name']}" in message
    assert field in message and "missing" in message


@pytest.mark.parametrize("field", CONTAINER_FIELDS)
@pytest.mark.parametrize("label", WORKLOADS)
def test_a_missing_container_field_is_named(label, field):
    _, workload = _workload(label)
    _, container = _pod_and_container(workload)
    _delete(container, field)
    with pytest.raises(ManifestError) as error:
        manifests.validate_resource(workload)
    message = str(error.value)
    assert f"{workload['kind']}/{workload['metadata']['name']}" in message
    assert field in message and "missing" in message


@pytest.mark.parametrize("label", WORKLOADS)
def test_a_read_only_root_needs_an_empty_dir_at_tmp(label):
    _, workload = _workload(label)
    _, container = _pod_and_container(workload)
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp"]
    with pytest.raises(ManifestError, match=r"volumeMounts has no emptyDir at /tmp"):
        manifests.validate_resource(workload)


@pytest.mark.parametrize("where, field, value, message", [
    ("pod", "securityContext.runAsUser", 0, "runAsUser is 0"),
    ("pod", "securityContext.runAsUser", "10001", "runAsUser: '10001' is not of type"),  # schema
    ("pod", "securityContext.runAsNonRoot", False, "runAsNonRoot is False"),
    ("pod", "securityContext.seccompProfile", {"type": "Unconfined"}, "seccompProfile.type is "
     "'Unconfined'"),
    ("pod", "automountServiceAccountToken", True, "automountServiceAccountToken is True"),
    ("container", "securityContext.allowPrivilegeEscalation", True, "allowPrivilegeEscalation"),
    ("container", "securityContext.capabilities", {"drop": ["NET_RAW"]}, "capabilities.drop"),
    ("container", "securityContext.capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]},
     "capabilities.add"),
    ("container", "securityContext.privileged", True, "privileged"),
    ("container", "securityContext.runAsUser", 0, "run as root"),
    ("container", "securityContext.readOnlyRootFilesystem", False, "readOnlyRootFilesystem"),
])
def test_a_wrong_value_is_rejected(where, field, value, message):
    _, workload = _workload("tf-serving")
    pod, container = _pod_and_container(workload)
    target = pod if where == "pod" else container
    *parents, last = field.split(".")
    for key in parents:
        target = target[key]
    target[last] = value
    with pytest.raises(ManifestError, match="Deployment/tf-serving-mnist-cnn") as error:
        manifests.validate_resource(workload)
    assert message in str(error.value)


def test_a_pod_that_needs_the_api_says_why():
    _, workload = _workload("tfjob")
    pod = workload["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    pod["spec"]["automountServiceAccountToken"] = True
    with pytest.raises(ManifestError, match=manifests.API_TOKEN_ANNOTATION):
        manifests.validate_resource(workload)
    pod.setdefault("metadata", {})["annotations"] = {
        manifests.API_TOKEN_ANNOTATION: "lists the job's pods"}
    manifests.validate_resource(workload)


def test_the_old_serving_manifest_without_a_cpu_limit_fails():
    _, workload = _workload("serving/deploy")
    workload["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {"memory": "4Gi"}
    with pytest.raises(ManifestError, match=r"Deployment/mnist-serving: .*containers\[serving\]"
                                            r"\.resources\.limits\.cpu is missing"):
        manifests.validate_resource(workload)


# ----- NetworkPolicy -----------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["tf-serving", "serving/deploy"])
def test_a_serving_deployment_needs_a_network_policy(label):
    resources, _ = _workload(label)
    without = [r for r in resources if r["kind"] != "NetworkPolicy"]
    with pytest.raises(ManifestError, match="Deployment/.*no NetworkPolicy selects its pods"):
        manifests.check_network_policies(without)


@pytest.mark.parametrize("mutate, message", [
    (lambda spec: spec["ingress"][0].pop("ports"), r"ingress\[0\]\.ports is missing"),
    (lambda spec: spec["ingress"][0]["ports"].append({"port": 22}), "admits port 22"),
    (lambda spec: spec.update(policyTypes=["Egress"]), "policyTypes must include Ingress"),
    (lambda spec: spec["podSelector"].update(matchLabels={"app": "other"}), "no NetworkPolicy"),
])
def test_a_network_policy_admits_only_the_serving_ports(mutate, message):
    resources, _ = _workload("serving/deploy")
    mutate(manifests.find(resources, "NetworkPolicy")["spec"])
    with pytest.raises(ManifestError, match=message):
        manifests.check_network_policies(resources)


def test_validate_tree_and_the_cli_fail_without_the_network_policy(tmp_path):
    tree = tmp_path / "manifests"
    shutil.copytree(manifests.MANIFESTS_DIR, tree)
    kustomization = tree / "overlays" / "tf-serving" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - networkpolicy.yaml\n", ""))
    with pytest.raises(ManifestError, match="Deployment/tf-serving-mnist-cnn: no NetworkPolicy"):
        manifests.validate_tree(tree)
    assert cli.main(["kubeflow", "validate-manifests", "--manifests", str(tree)]) == 2


def test_validate_tree_fails_on_a_file_without_security_context(tmp_path):
    tree = tmp_path / "manifests"
    shutil.copytree(manifests.MANIFESTS_DIR, tree)
    tfjob = tree / "base" / "tfjob.yaml"
    text = tfjob.read_text()
    assert text.count(" readOnlyRootFilesystem: true\n") == 1
    tfjob.write_text("".join(line for line in text.splitlines(keepends=True)
                             if "readOnlyRootFilesystem" not in line))
    with pytest.raises(ManifestError, match=r"TFJob/tfprod-mnist-cnn: spec\.tfReplicaSpecs\.Worker"
                                            r"\.template\.spec\.containers\[tensorflow\]"
                                            r"\.securityContext\.readOnlyRootFilesystem is missing"):
        manifests.validate_tree(tree)


# ----- docker-compose and Dockerfiles ----------------------------------------------------------
@pytest.mark.parametrize("field", ["user", "read_only", "cap_drop", "security_opt", "tmpfs"])
def test_compose_services_are_hardened(tmp_path, field):
    compose = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())
    assert manifests.check_compose(DEPLOY_DIR / "docker-compose.yml") == ["tfserving", "tfprod"]
    del compose["services"]["tfprod"][field]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose))
    with pytest.raises(ManifestError, match=rf"services\.tfprod\.{field}"):
        manifests.check_compose(path)


@pytest.mark.parametrize("user", ['"0:0"', "root", '"10001"'])
def test_compose_user_must_be_numeric_non_root(tmp_path, user):
    text = (DEPLOY_DIR / "docker-compose.yml").read_text().replace('"10001:10001"', user)
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    if user == '"10001"':
        assert manifests.check_compose(path)  # a uid alone is fine
        return
    with pytest.raises(ManifestError, match=r"services\.tfserving\.user"):
        manifests.check_compose(path)


def test_the_dockerfiles_run_as_a_numeric_non_root_user():
    found = manifests.dockerfiles()
    assert REPO_ROOT / "kubeflow" / "Dockerfile" in found
    assert REPO_ROOT / "serving" / "deploy" / "Dockerfile" in found
    for path in found:
        assert manifests.check_dockerfile(path) > 0


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("USER 10001:10001\n", ""), "no USER instruction"),
    (lambda text: text.replace("USER 10001:10001", "USER tfprod"), "not numeric"),
    (lambda text: text.replace("USER 10001:10001", "USER 0"), "is root"),
    (lambda text: text + "USER root\n", "not numeric"),
    (lambda text: text.replace("useradd --uid 10001", "useradd --uid 10002"), "not created"),
    # A USER in an earlier stage does not carry into the final one.
    (lambda text: text + "FROM python:3.10-slim\nCOPY --from=0 /tfprod /tfprod\n",
     "no USER instruction"),
])
def test_a_dockerfile_running_as_root_is_rejected(tmp_path, edit, message):
    path = tmp_path / "Dockerfile"
    path.write_text(edit((REPO_ROOT / "kubeflow" / "Dockerfile").read_text()))
    with pytest.raises(ManifestError, match=message) as error:
        manifests.check_dockerfile(path)
    assert str(path) in str(error.value)


def test_validate_deploy_files_covers_serving_deploy_and_the_dockerfiles(tmp_path):
    checked = manifests.validate_deploy_files()
    assert set(checked) == {"serving/deploy/kubernetes.yaml", "serving/deploy/docker-compose.yml",
                            "kubeflow/Dockerfile", "serving/deploy/Dockerfile"}
    assert "NetworkPolicy/mnist-serving" in checked["serving/deploy/kubernetes.yaml"]
    # A copy of the project whose serving manifest lost its CPU limit fails.
    root = tmp_path / "project"
    shutil.copytree(DEPLOY_DIR, root / "serving" / "deploy")
    shutil.copytree(REPO_ROOT / "kubeflow", root / "kubeflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    manifest = root / "serving" / "deploy" / "kubernetes.yaml"
    manifest.write_text(manifest.read_text().replace('limits: {cpu: "4", memory: 4Gi}',
                                                     "limits: {memory: 4Gi}"))
    with pytest.raises(ManifestError, match="resources.limits.cpu is missing"):
        manifests.validate_deploy_files(root)
