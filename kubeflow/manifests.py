"""Renders the Kustomize base and overlays in kubeflow/manifests and validates them offline.

Rendering supports the Kustomize subset these manifests use (resources, namespace,
labels without selectors, images); tests compare it with `kubectl kustomize` where
kubectl is installed. Validation needs no network:

- Kubernetes kinds (Namespace, ServiceAccount, Deployment, Service) against the
  Kubernetes OpenAPI schemas bundled in the `kubernetes-validate` package, strict
  (unknown fields are errors);
- TFJob and InferenceService against the trimmed CRD schemas in kubeflow/schemas/
  (see kubeflow/schemas/README.md for their sources), whose pod templates and
  resource requirements refer to the same bundled Kubernetes definitions.
"""

import copy
import importlib.resources
import json
import os
import pathlib
import posixpath
from typing import Any, Dict, List, Optional

import yaml

from tfprod.kubeflow.errors import ManifestError

MANIFESTS_DIR = pathlib.Path(__file__).resolve().parent / "manifests"
SCHEMAS_DIR = pathlib.Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("kserve", "tf-serving")
# The Kubernetes version whose schemas are used (KServe 0.13+ and the training operator
# v1.8 support it).
KUBERNETES_VERSION = "1.30.0"
# Custom resources -> trimmed CRD schema files in kubeflow/schemas/.
CUSTOM_SCHEMAS = {
    ("kubeflow.org/v1", "TFJob"): "tfjob-kubeflow-v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-kserve-v1beta1.json",
}
_KUBERNETES_DEFINITIONS_URI = "/api/_definitions.json"


def _load_yaml_documents(path: pathlib.Path) -> List[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML ({error})") from error


def render(directory: os.PathLike) -> List[Dict[str, Any]]:
    """Builds a Kustomization directory into its list of resources (a Kustomize subset).

    Raises:
      ManifestError: a missing file, bad YAML or a Kustomize field this renderer lacks.
    """
    directory = pathlib.Path(directory)
    kustomization_path = directory / "kustomization.yaml"
    if not kustomization_path.is_file():
        raise ManifestError(f"{directory}: no kustomization.yaml")
    (kustomization,) = _load_yaml_documents(kustomization_path)
    supported = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}
    unsupported = sorted(set(kustomization) - supported)
    if unsupported:
        raise ManifestError(f"{kustomization_path}: field '{unsupported[0]}' is not supported by "
                            f"this renderer (supported: {', '.join(sorted(supported))})")
    resources: List[Dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path))
        elif path.is_file():
            resources.extend(_load_yaml_documents(path))
        else:
            raise ManifestError(f"{kustomization_path}: resource {entry} not found")
    resources = [copy.deepcopy(resource) for resource in resources]
    for resource in resources:
        _apply_transformers(resource, kustomization)
    return resources


def _apply_transformers(resource: Dict[str, Any], kustomization: Dict[str, Any]) -> None:
    metadata = resource.setdefault("metadata", {})
    namespace = kustomization.get("namespace")
    if namespace and resource.get("kind") != "Namespace":
        metadata["namespace"] = namespace
    for label_set in kustomization.get("labels", []):
        if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
            raise ManifestError("labels with includeSelectors/includeTemplates are not supported")
        metadata.setdefault("labels", {}).update(label_set.get("pairs", {}))
    for image in kustomization.get("images", []):
        for container in _containers(resource):
            if container.get("image", "").split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                tag = image.get("newTag", container["image"].partition(":")[2])
                container["image"] = f"{name}:{tag}" if tag else name


def _containers(resource: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every container of a Deployment, TFJob or InferenceService."""
    spec = resource.get("spec", {})
    templates = []
    if "template" in spec:
        templates.append(spec["template"])
    for replica in spec.get("tfReplicaSpecs", {}).values():
        templates.append(replica.get("template", {}))
    containers = [c for t in templates for c in t.get("spec", {}).get("containers", [])]
    return containers + spec.get("predictor", {}).get("containers", [])


def _kubernetes_schema_dir() -> Any:
    version = f"v{KUBERNETES_VERSION}-local-strict"
    return importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / version


def _custom_validator(schema_file: str):
    import jsonschema
    from referencing import Registry, Resource

    with open(SCHEMAS_DIR / schema_file, encoding="utf-8") as handle:
        schema = json.load(handle)
    definitions = json.loads((_kubernetes_schema_dir() / "_definitions.json").read_text())
    registry = Registry().with_resource(_KUBERNETES_DEFINITIONS_URI,
                                        Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_resource(resource: Dict[str, Any]) -> None:
    """Validates one resource against its Kubernetes or CRD schema.

    Raises:
      ManifestError: naming the resource, the field path and what is wrong.
    """
    import jsonschema
    import kubernetes_validate

    kind = resource.get("kind")
    api_version = resource.get("apiVersion")
    name = resource.get("metadata", {}).get("name", "?")
    where = f"{kind}/{name}"
    if not kind or not api_version:
        raise ManifestError(f"{where}: a resource needs apiVersion and kind")
    schema_file = CUSTOM_SCHEMAS.get((api_version, kind))
    if schema_file is not None:
        errors = sorted(_custom_validator(schema_file).iter_errors(resource),
                        key=lambda error: list(error.absolute_path))
        if errors:
            error = jsonschema.exceptions.best_match(errors)
            path = ".".join(str(part) for part in error.absolute_path) or "(top level)"
            # The trimmed schemas describe the rules that come from operators' webhooks.
            rule = error.schema.get("description") if isinstance(error.schema, dict) else None
            raise ManifestError(f"{where}: {path}: {error.message}"
                                + (f" (rule: {rule})" if rule else ""))
        return
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        # kubernetes-validate's error carries the jsonschema error's fields.
        path = ".".join(str(part) for part in error.path) or "(top level)"
        raise ManifestError(f"{where}: {path}: {error.message}") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise ManifestError(f"{where}: no schema for {api_version} {kind} in Kubernetes "
                            f"{KUBERNETES_VERSION} or kubeflow/schemas/") from None


def validate_tree(manifests_dir: Optional[os.PathLike] = None) -> Dict[str, List[str]]:
    """Renders base and every overlay and validates each resource.

    Returns:
      {"base": [kinds...], "overlays/kserve": [...], ...}.
    """
    root = pathlib.Path(manifests_dir) if manifests_dir else MANIFESTS_DIR
    checked = {}
    for relative in ["base"] + [posixpath.join("overlays", name) for name in OVERLAYS]:
        resources = render(root / relative)
        for resource in resources:
            validate_resource(resource)
        checked[relative] = [f"{r['kind']}/{r['metadata']['name']}" for r in resources]
    return checked


def find(resources: List[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    """The one resource of a kind, or ManifestError."""
    matches = [resource for resource in resources if resource.get("kind") == kind]
    if len(matches) != 1:
        raise ManifestError(f"expected one {kind}, found {len(matches)}")
    return matches[0]


def serving_base_path(output_dir: str, model_name: str) -> str:
    """<output_dir>/serving/<model_name>: where the Pusher writes versions, what serving reads."""
    return f"{output_dir.rstrip('/')}/serving/{model_name}"


def check_wiring(resources: List[Dict[str, Any]], output_dir: str, model_name: str,
                 image: str) -> None:
    """Checks the rendered manifests point at the config's model, image and TF_CONFIG port.

    Raises:
      ManifestError: naming the field that disagrees and the expected value.
    """
    expected_base = serving_base_path(output_dir, model_name)
    kinds = {resource["kind"] for resource in resources}
    if "InferenceService" in kinds:
        predictor = find(resources, "InferenceService")["spec"]["predictor"]
        if "tensorflow" not in predictor:
            raise ManifestError("InferenceService: spec.predictor must use the tensorflow "
                                "predictor (KServe's TF Serving runtime)")
        storage_uri = predictor["tensorflow"].get("storageUri")
        if storage_uri != expected_base:
            raise ManifestError(f"InferenceService: storageUri is {storage_uri}; the pushed "
                                f"model's base directory is {expected_base}")
    if "Deployment" in kinds:
        args = find(resources, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        if f"--model_base_path={expected_base}" not in args:
            raise ManifestError(f"Deployment: --model_base_path must be {expected_base}")
        if f"--model_name={model_name}" not in args:
            raise ManifestError(f"Deployment: --model_name must be {model_name}")
    tfjob = find(resources, "TFJob")
    replica_types = set(tfjob["spec"]["tfReplicaSpecs"])
    if not replica_types <= {"Chief", "Worker"} or "Worker" not in replica_types:
        raise ManifestError(f"TFJob: MultiWorkerMirroredStrategy needs Worker replicas (and at "
                            f"most a Chief), not {sorted(replica_types)}")
    for replica_type, replica in tfjob["spec"]["tfReplicaSpecs"].items():
        containers = replica["template"]["spec"]["containers"]
        tensorflow = [c for c in containers if c["name"] == "tensorflow"]
        if not tensorflow:
            raise ManifestError(f"TFJob: {replica_type} needs a container named tensorflow (the "
                                "training operator sets TF_CONFIG there)")
        ports = {port.get("name"): port for port in tensorflow[0].get("ports", [])}
        if "tfjob-port" not in ports:
            raise ManifestError(f"TFJob: {replica_type}'s tensorflow container needs a port named "
                                "tfjob-port (the port the operator puts in TF_CONFIG)")
        if tensorflow[0]["image"] != image:
            raise ManifestError(f"TFJob: {replica_type} runs {tensorflow[0]['image']}, "
                                f"expected the pipeline image {image}")
