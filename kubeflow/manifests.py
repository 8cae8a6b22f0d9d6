"""Renders the Kustomize base and overlays in kubeflow/manifests and validates them offline.

Rendering supports the Kustomize subset these manifests use (resources, namespace,
labels without selectors, images); tests compare it with `kubectl kustomize` where
kubectl is installed. Validation needs no network:

- Kubernetes kinds (Namespace, ServiceAccount, Deployment, Service) against the
  Kubernetes OpenAPI schemas bundled in the `kubernetes-validate` package, strict
  (unknown fields are errors);
- TFJob and InferenceService against the trimmed CRD schemas in kubeflow/schemas/
  (see kubeflow/schemas/README.md for their sources), whose pod templates and
  resource requirements refer to the same bundled Kubernetes definitions;
- hardening, on top of the schemas (check_hardening, check_network_policies): every pod
  runs as a numeric non-root user with seccomp RuntimeDefault and no service account
  token, every container without privilege escalation or capabilities, on a read-only
  root filesystem (an emptyDir at /tmp) and with CPU and memory requests and limits, and
  every Deployment that exposes ports has a NetworkPolicy admitting only those ports;
- outside the Kustomize tree (validate_deploy_files): serving/deploy/kubernetes.yaml the
  same way, serving/deploy/docker-compose.yml's services (user, read_only, cap_drop,
  no-new-privileges, tmpfs /tmp) and every Dockerfile's final numeric non-root USER.
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


# ----- templates: the tree in kubeflow/manifests is Jinja2, filled from an experiment config -----
# Where the TFJob finds the config inside the image (compiler.PROJECT_DIR_IN_IMAGE; not imported
# from there because importing the compiler loads TFX, which takes tens of seconds).
PROJECT_DIR_IN_IMAGE = "/tfprod"
# What the TFJob's inputs are set to while unknown; the TFJob refuses to start on it
# (train_worker cannot open the path) and validate-manifests warns about it.
UNSET_INPUT = "UNSET-set-kubeflow.{key}-or-pass---mlmd"
TEMPLATE_KEYS = ("namespace", "image", "image_tag", "image_reference", "model_name",
                 "resource_name", "serving_base_path", "pipeline_root", "config_in_image",
                 "tfjob_workers", "tfjob_examples", "tfjob_transform_output", "tfjob_output_dir")


def template_values(experiment: Any, config_path: Optional[str] = None,
                    transform_outputs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The values the manifest templates are filled with, from an ExperimentConfig.

    Args:
      experiment: a pipeline.config.ExperimentConfig (its kubeflow and export sections).
      config_path: the config file; the TFJob reads it at <PROJECT_DIR_IN_IMAGE>/<its path in the
        project> (configs/<name> when it lies outside the project).
      transform_outputs: {"examples": uri, "transform_graph": uri} of a finished run (e.g.
        transform_outputs_from_mlmd); the config's tfjob_* keys win over them.
    """
    kubeflow = experiment.kubeflow
    model_name = experiment.export.model_name
    transform_outputs = transform_outputs or {}
    relative = "configs/mnist_cnn.yaml"
    if config_path:
        absolute = pathlib.Path(config_path).resolve()
        try:
            relative = absolute.relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            relative = f"configs/{absolute.name}"
    examples = kubeflow.tfjob_examples or transform_outputs.get("examples")
    transform_graph = kubeflow.tfjob_transform_output or transform_outputs.get("transform_graph")
    return {
        "namespace": kubeflow.namespace,
        "image": kubeflow.image,
        "image_tag": kubeflow.image_tag,
        "image_reference": kubeflow.image_reference,
        "model_name": model_name,
        # Kubernetes object names are DNS labels: no '_'.
        "resource_name": model_name.lower().replace("_", "-"),
        "serving_base_path": serving_base_path(kubeflow.output_dir, model_name),
        "pipeline_root": kubeflow.pipeline_root,
        "config_in_image": f"{PROJECT_DIR_IN_IMAGE}/{relative}",
        "tfjob_workers": kubeflow.tfjob_workers,
        "tfjob_examples": examples or UNSET_INPUT.format(key="tfjob_examples"),
        "tfjob_transform_output": (transform_graph
                                   or UNSET_INPUT.format(key="tfjob_transform_output")),
        "tfjob_output_dir": (kubeflow.tfjob_output_dir
                             or f"{kubeflow.output_dir.rstrip('/')}/multiworker"),
    }


def default_template_values() -> Dict[str, Any]:
    """template_values of the default ExperimentConfig (for checking the templates alone)."""
    from tfprod.pipeline import config as config_lib

    return template_values(config_lib.ExperimentConfig())


def is_template_tree(root: os.PathLike) -> bool:
    """Whether a manifests tree holds Jinja2 placeholders (kubeflow/manifests, or a copy)."""
    return any("{{" in path.read_text(encoding="utf-8")
               for path in pathlib.Path(root).rglob("*.yaml"))


def _fill(path: pathlib.Path, text: str, values: Optional[Dict[str, Any]]) -> str:
    if "{{" not in text:
        return text
    if values is None:
        # A template read without a config (the tree checked on its own): the default config's.
        values = default_template_values()
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                                     keep_trailing_newline=True)
    try:
        return environment.from_string(text).render(**values)
    except jinja2.TemplateError as error:
        raise ManifestError(f"{path}: template error ({error})") from error


def _load_yaml_documents(path: pathlib.Path,
                         values: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = _fill(path, handle.read(), values)
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML ({error})") from error


def write_tree(output: os.PathLike, values: Dict[str, Any],
               templates: Optional[os.PathLike] = None) -> List[pathlib.Path]:
    """Renders the template tree (default kubeflow/manifests) into a plain Kustomize tree.

    `kubectl apply -k <output>/overlays/kserve` (or tf-serving) applies the result.

    Returns:
      the files written.
    """
    templates = pathlib.Path(templates) if templates else MANIFESTS_DIR
    output = pathlib.Path(output)
    written = []
    for source in sorted(templates.rglob("*.yaml")):
        target = output / source.relative_to(templates)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_fill(source, source.read_text(encoding="utf-8"), values),
                          encoding="utf-8")
        written.append(target)
    return written


def transform_outputs_from_mlmd(metadata_path: str) -> Dict[str, str]:
    """The Transform outputs of the latest run in an ML Metadata SQLite file (a local run's
    <output_dir>/metadata.sqlite, or a copy of a cluster's store exported to SQLite).

    Returns:
      {"examples": transformed_examples uri, "transform_graph": transform_graph uri}.

    Raises:
      ManifestError: no such file, or no Transform outputs in it.
    """
    if not os.path.isfile(metadata_path):
        raise ManifestError(f"--mlmd {metadata_path}: no such file (a local run writes "
                            "<output_dir>/metadata.sqlite)")
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    wanted = {"transformed_examples": "examples", "transform_graph": "transform_graph"}
    found: Dict[str, tuple] = {}
    outputs = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    for event in store.get_events_by_artifact_ids(
            [artifact.id for artifact in store.get_artifacts()]):
        key = event.path.steps[0].key if event.path.steps else ""
        if event.type in outputs and key in wanted:
            # The latest (highest artifact id) of each wins.
            previous = found.get(wanted[key])
            if previous is None or event.artifact_id > previous[0]:
                found[wanted[key]] = (event.artifact_id, None)
    if set(found) != set(wanted.values()):
        raise ManifestError(f"{metadata_path}: no Transform outputs (transformed_examples and "
                            "transform_graph); did the run reach Transform?")
    by_id = {a.id: a.uri for a in store.get_artifacts_by_id([v[0] for v in found.values()])}
    return {role: by_id[artifact_id] for role, (artifact_id, _) in found.items()}


def render(directory: os.PathLike,
           values: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Builds a Kustomization directory into its list of resources (a Kustomize subset).

    Args:
      directory: a Kustomization directory; a template one (kubeflow/manifests) needs values.
      values: template_values to fill Jinja2 templates with; None for a rendered tree.

    Raises:
      ManifestError: a missing file, bad YAML or a Kustomize field this renderer lacks.
    """
    directory = pathlib.Path(directory)
    kustomization_path = directory / "kustomization.yaml"
    if not kustomization_path.is_file():
        raise ManifestError(f"{directory}: no kustomization.yaml")
    (kustomization,) = _load_yaml_documents(kustomization_path, values)
    supported = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}
    unsupported = sorted(set(kustomization) - supported)
    if unsupported:
        raise ManifestError(f"{kustomization_path}: field '{unsupported[0]}' is not supported by "
                            f"this renderer (supported: {', '.join(sorted(supported))})")
    resources: List[Dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path, values))
        elif path.is_file():
            resources.extend(_load_yaml_documents(path, values))
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
    """Validates one resource against its Kubernetes or CRD schema, then its hardening
    (check_hardening: non-root, read-only, no privileges, seccomp, no API token, limits).

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
    else:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            # kubernetes-validate's error carries the jsonschema error's fields.
            path = ".".join(str(part) for part in error.path) or "(top level)"
            raise ManifestError(f"{where}: {path}: {error.message}") from None
        except kubernetes_validate.SchemaNotFoundError:
            raise ManifestError(f"{where}: no schema for {api_version} {kind} in Kubernetes "
                                f"{KUBERNETES_VERSION} or kubeflow/schemas/") from None
    check_hardening(resource)


def _raise_all(problems: List[str]) -> None:
    if len(problems) == 1:
        raise ManifestError(problems[0])
    if problems:
        raise ManifestError(f"{len(problems)} problems:\n  - " + "\n  - ".join(problems))


def check_tree(manifests_dir: Optional[os.PathLike] = None,
               values: Optional[Dict[str, Any]] = None,
               expected: Optional[Dict[str, Any]] = None) -> tuple:
    """Renders base and every overlay and checks each resource, collecting every problem.

    Args:
      manifests_dir: a rendered tree (`tfprod kubeflow manifests` output), or None for the
        templates in kubeflow/manifests (filled with `values`, default the default config's).
      values: template_values to fill a template tree with.
      expected: template_values of a config the tree must point at (check_wiring), or None.

    Returns:
      ({"base": [kinds...], "overlays/kserve": [...], ...}, [problem, ...]): one problem per
      resource that fails its schema or hardening (the first field of that resource), per
      overlay that fails its network policies, and every wiring mismatch.
    """
    root = pathlib.Path(manifests_dir) if manifests_dir else MANIFESTS_DIR
    if values is None and is_template_tree(root):
        values = default_template_values()
    checked: Dict[str, List[str]] = {}
    problems: List[str] = []
    for relative in ["base"] + [posixpath.join("overlays", name) for name in OVERLAYS]:
        try:
            resources = render(root / relative, values)
        except ManifestError as error:
            problems.append(f"{relative}: {error}")
            continue
        for resource in resources:
            try:
                validate_resource(resource)
            except ManifestError as error:
                problems.append(f"{relative}: {error}")
        try:
            check_network_policies(resources)
        except ManifestError as error:
            problems.append(f"{relative}: {error}")
        if expected is not None:
            # The base's resources are in every overlay: report their wiring once, from base.
            shown = set(checked.get("base", [])) if relative != "base" else set()
            problems.extend(f"{relative}: {problem}" for problem in wiring_problems(
                resources, expected) if problem.split(":")[0] not in shown)
        checked[relative] = [f"{r.get('kind')}/{r.get('metadata', {}).get('name', '?')}"
                             for r in resources]
    return checked, problems


def validate_tree(manifests_dir: Optional[os.PathLike] = None,
                  values: Optional[Dict[str, Any]] = None) -> Dict[str, List[str]]:
    """Renders base and every overlay and validates each resource (check_tree).

    Returns:
      {"base": [kinds...], "overlays/kserve": [...], ...}.

    Raises:
      ManifestError: listing every problem found.
    """
    checked, problems = check_tree(manifests_dir, values)
    _raise_all(problems)
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


def _flag(args: List[str], name: str) -> Optional[str]:
    values = [arg.split("=", 1)[1] for arg in args or [] if arg.startswith(f"{name}=")]
    return values[0] if values else None


def wiring_problems(resources: List[Dict[str, Any]], expected: Dict[str, Any]) -> List[str]:
    """Every field where rendered manifests disagree with a config's template_values: the
    serving base path and model name, the TFJob's image, config, inputs and output, the
    namespace, and the TFJob's TF_CONFIG port and replica types.

    Returns:
      one line per mismatch, naming the object, the field, its value and the expected one.
    """
    problems: List[str] = []

    def compare(where, value, wanted):
        if value != wanted:
            problems.append(f"{where} is {value!r}; the config says {wanted!r}")

    base_path, model_name = expected["serving_base_path"], expected["model_name"]
    for resource in resources:
        kind = resource.get("kind")
        name = resource.get("metadata", {}).get("name", "?")
        where = f"{kind}/{name}"
        if expected.get("namespace") is None:
            pass
        elif kind == "Namespace":
            compare(f"{where}: metadata.name", name, expected["namespace"])
        elif resource.get("metadata", {}).get("namespace") != expected["namespace"]:
            compare(f"{where}: metadata.namespace", resource.get("metadata", {}).get("namespace"),
                    expected["namespace"])
        if kind == "InferenceService":
            predictor = resource.get("spec", {}).get("predictor", {})
            if "tensorflow" not in predictor:
                problems.append(f"{where}: spec.predictor must use the tensorflow predictor "
                                "(KServe's TF Serving runtime)")
            else:
                compare(f"{where}: spec.predictor.tensorflow.storageUri (the pushed model's base "
                        "directory)", predictor["tensorflow"].get("storageUri"), base_path)
        elif kind == "Deployment":
            containers = resource["spec"]["template"]["spec"]["containers"]
            args = containers[0].get("args", [])
            compare(f"{where}: --model_base_path", _flag(args, "--model_base_path"), base_path)
            compare(f"{where}: --model_name", _flag(args, "--model_name"), model_name)
        elif kind == "TFJob":
            problems.extend(_tfjob_problems(where, resource, expected, compare))
    if "TFJob" not in {resource.get("kind") for resource in resources}:
        problems.append("no TFJob (the base's multi-worker training job)")
    return problems


def _tfjob_problems(where, tfjob, expected, compare) -> List[str]:
    problems = []
    replica_specs = tfjob.get("spec", {}).get("tfReplicaSpecs", {})
    replica_types = set(replica_specs)
    if not replica_types <= {"Chief", "Worker"} or "Worker" not in replica_types:
        problems.append(f"{where}: MultiWorkerMirroredStrategy needs Worker replicas (and at "
                        f"most a Chief), not {sorted(replica_types)}")
    for replica_type, replica in replica_specs.items():
        containers = replica["template"]["spec"]["containers"]
        tensorflow = [c for c in containers if c["name"] == "tensorflow"]
        if not tensorflow:
            problems.append(f"{where}: {replica_type} needs a container named tensorflow (the "
                            "training operator sets TF_CONFIG there)")
            continue
        container = tensorflow[0]
        ports = {port.get("name") for port in container.get("ports", [])}
        if "tfjob-port" not in ports:
            problems.append(f"{where}: {replica_type}'s tensorflow container needs a port named "
                            "tfjob-port (the port the operator puts in TF_CONFIG)")
        compare(f"{where}: {replica_type} image (the pipeline image)", container.get("image"),
                expected["image_reference"])
        args = container.get("args", [])
        for flag, key in (("--config", "config_in_image"), ("--examples", "tfjob_examples"),
                          ("--transform-output", "tfjob_transform_output"),
                          ("--output-dir", "tfjob_output_dir")):
            if expected.get(key) is None or expected[key].startswith("UNSET-"):
                continue  # not known (e.g. the run's artifacts): any value will do
            compare(f"{where}: {replica_type} {flag}", _flag(args, flag), expected[key])
    return problems


def unset_inputs(resources: List[Dict[str, Any]]) -> List[str]:
    """The TFJob arguments still holding the UNSET placeholder (warnings, not errors)."""
    return [f"TFJob/{resource['metadata'].get('name')}: {arg.split('=', 1)[0]}"
            for resource in resources if resource.get("kind") == "TFJob"
            for container in _containers(resource) for arg in container.get("args", [])
            if "=UNSET-" in arg]


def check_wiring(resources: List[Dict[str, Any]], output_dir: str, model_name: str,
                 image: str) -> None:
    """Checks the rendered manifests point at the config's model, image and TF_CONFIG port.

    (Kept for callers that have no full config; wiring_problems checks every field.)

    Raises:
      ManifestError: listing every field that disagrees and the expected value.
    """
    _raise_all(wiring_problems(resources, {
        "serving_base_path": serving_base_path(output_dir, model_name),
        "model_name": model_name, "image_reference": image}))


# ----- hardening: the fields every workload, image and compose service must set -------------
# A pod that really calls the Kubernetes API keeps its service account token by saying why in
# this annotation (on the pod template, or the InferenceService predictor); none of ours does.
API_TOKEN_ANNOTATION = "tfprod.io/needs-api-token"
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Plain manifests and container files outside the Kustomize tree, checked by
# validate_deploy_files (and `tfprod kubeflow validate-manifests` without --manifests).
DEPLOY_MANIFESTS = ("serving/deploy/kubernetes.yaml",)
COMPOSE_FILES = ("serving/deploy/docker-compose.yml",)
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_SECCOMP_PROFILES = {"RuntimeDefault", "Localhost"}


def _pods(resource: Dict[str, Any]) -> List[tuple]:
    """(path, pod spec, pod annotations, [(container path, container)]) of each pod template."""
    kind, spec = resource.get("kind"), resource.get("spec", {}) or {}

    def template_pod(path, template):
        template = template or {}
        return (path, template.get("spec", {}) or {},
                (template.get("metadata", {}) or {}).get("annotations", {}) or {})

    found = []  # (path, pod spec, annotations)
    if kind in _POD_TEMPLATE_KINDS:
        found.append(template_pod("spec.template.spec", spec.get("template")))
    elif kind == "CronJob":
        found.append(template_pod("spec.jobTemplate.spec.template.spec",
                                  spec.get("jobTemplate", {}).get("spec", {}).get("template")))
    elif kind == "Pod":
        found.append(("spec", spec, resource.get("metadata", {}).get("annotations", {}) or {}))
    elif kind == "TFJob":
        for replica_type, replica in (spec.get("tfReplicaSpecs", {}) or {}).items():
            found.append(template_pod(f"spec.tfReplicaSpecs.{replica_type}.template.spec",
                                      replica.get("template")))
    pods = []
    for path, pod, annotations in found:
        containers = [(f"{path}.{field}[{container.get('name', '?')}]", container)
                      for field in ("initContainers", "containers")
                      for container in pod.get(field, []) or []]
        pods.append((path, pod, annotations, containers))
    if kind == "InferenceService":
        # KServe inlines the pod spec into the predictor and a container into its framework.
        predictor = spec.get("predictor", {}) or {}
        containers = [(f"spec.predictor.{name}", predictor[name])
                      for name in ("tensorflow",) if name in predictor]
        containers += [(f"spec.predictor.containers[{container.get('name', '?')}]", container)
                       for container in predictor.get("containers", []) or []]
        pods.append(("spec.predictor", predictor, predictor.get("annotations", {}) or {},
                     containers))
    return pods


def _require(where: str, path: str, value: Any, expected: Any, why: str) -> None:
    if value is None:
        raise ManifestError(f"{where}: {path} is missing; set it to {expected} ({why})")
    if value != expected:
        raise ManifestError(f"{where}: {path} is {value!r}; it must be {expected} ({why})")


def check_hardening(resource: Dict[str, Any]) -> None:
    """Checks every pod of a workload runs unprivileged, read-only and within limits.

    Per pod: securityContext runAsNonRoot true, a numeric non-zero runAsUser and runAsGroup,
    seccompProfile RuntimeDefault (or Localhost), automountServiceAccountToken false (unless
    the pod says why it needs the API in the API_TOKEN_ANNOTATION annotation). Per container:
    allowPrivilegeEscalation false, capabilities.drop [ALL], readOnlyRootFilesystem true with
    an emptyDir mounted at /tmp, not privileged, and CPU and memory requests and limits.

    Raises:
      ManifestError: naming the object and the field that is missing or wrong.
    """
    where = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name', '?')}"
    for path, pod, annotations, containers in _pods(resource):
        context = pod.get("securityContext") or {}
        _require(where, f"{path}.securityContext.runAsNonRoot", context.get("runAsNonRoot"),
                 True, "the kubelet refuses to start a container as root")
        for field in ("runAsUser", "runAsGroup"):
            value = context.get(field)
            if value is None:
                raise ManifestError(f"{where}: {path}.securityContext.{field} is missing; set a "
                                    "numeric non-root id (e.g. 10001, the images' user)")
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ManifestError(f"{where}: {path}.securityContext.{field} is {value!r}; it "
                                    "must be a numeric id above 0 (not root)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp not in _SECCOMP_PROFILES:
            raise ManifestError(
                f"{where}: {path}.securityContext.seccompProfile.type is "
                f"{'missing' if seccomp is None else repr(seccomp)}; set RuntimeDefault")
        if not annotations.get(API_TOKEN_ANNOTATION):
            _require(where, f"{path}.automountServiceAccountToken",
                     pod.get("automountServiceAccountToken"), False,
                     "the pod does not call the Kubernetes API; a pod that does says why in the "
                     f"annotation {API_TOKEN_ANNOTATION}")
        empty_dirs = {volume.get("name") for volume in pod.get("volumes", []) or []
                      if "emptyDir" in volume}
        for container_path, container in containers:
            _check_container(where, container_path, container, empty_dirs)


def _check_container(where: str, path: str, container: Dict[str, Any], empty_dirs: set) -> None:
    context = container.get("securityContext") or {}
    _require(where, f"{path}.securityContext.allowPrivilegeEscalation",
             context.get("allowPrivilegeEscalation"), False, "no setuid or file capabilities")
    drop = (context.get("capabilities") or {}).get("drop")
    if not drop or "ALL" not in drop:
        raise ManifestError(f"{where}: {path}.securityContext.capabilities.drop is "
                            f"{'missing' if not drop else drop}; it must hold ALL")
    if (context.get("capabilities") or {}).get("add"):
        raise ManifestError(f"{where}: {path}.securityContext.capabilities.add must be empty")
    if context.get("privileged"):
        raise ManifestError(f"{where}: {path}.securityContext.privileged must not be true")
    if context.get("runAsNonRoot") is False or context.get("runAsUser") == 0:
        raise ManifestError(f"{where}: {path}.securityContext overrides the pod to run as root")
    _require(where, f"{path}.securityContext.readOnlyRootFilesystem",
             context.get("readOnlyRootFilesystem"), True,
             "mount an emptyDir where the process writes, e.g. /tmp")
    tmp = [mount for mount in container.get("volumeMounts", []) or []
           if mount.get("mountPath", "").rstrip("/") == "/tmp"]
    if not tmp or tmp[0].get("name") not in empty_dirs:
        raise ManifestError(f"{where}: {path}.volumeMounts has no emptyDir at /tmp; a read-only "
                            "root filesystem needs one for temporary files")
    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for name in ("cpu", "memory"):
            if (resources.get(bound) or {}).get(name) is None:
                raise ManifestError(f"{where}: {path}.resources.{bound}.{name} is missing; every "
                                    "container needs CPU and memory requests and limits")


def check_network_policies(resources: List[Dict[str, Any]]) -> None:
    """Checks each Deployment (StatefulSet, DaemonSet) that exposes ports has a NetworkPolicy.

    The policy must select its pods (matchLabels a non-empty subset of the pod labels, same
    namespace), restrict Ingress, and each ingress rule must name ports, all of them ports the
    pods' containers declare (by name or number).

    Raises:
      ManifestError: naming the workload or the policy and what is missing.
    """
    policies = [r for r in resources if r.get("kind") == "NetworkPolicy"]
    for resource in resources:
        if resource.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        where = f"{resource['kind']}/{resource.get('metadata', {}).get('name', '?')}"
        template = resource.get("spec", {}).get("template", {})
        labels = (template.get("metadata") or {}).get("labels") or {}
        ports = [port for container in (template.get("spec") or {}).get("containers", [])
                 for port in container.get("ports", []) or []]
        if not ports:
            continue
        declared = {port.get("name") for port in ports} | {port.get("containerPort")
                                                          for port in ports}
        namespace = resource.get("metadata", {}).get("namespace")
        selecting = []
        for policy in policies:
            selector = (policy.get("spec", {}).get("podSelector") or {}).get("matchLabels") or {}
            if (selector and policy.get("metadata", {}).get("namespace") == namespace
                    and all(labels.get(key) == value for key, value in selector.items())):
                selecting.append(policy)
        if not selecting:
            raise ManifestError(f"{where}: no NetworkPolicy selects its pods (labels {labels}); "
                                "add one that admits ingress to the serving ports only")
        for policy in selecting:
            name = f"NetworkPolicy/{policy['metadata'].get('name', '?')}"
            spec = policy.get("spec", {})
            if "Ingress" not in (spec.get("policyTypes") or []):
                raise ManifestError(f"{name}: spec.policyTypes must include Ingress")
            for index, rule in enumerate(spec.get("ingress") or []):
                rule_ports = rule.get("ports") or []
                if not rule_ports:
                    raise ManifestError(f"{name}: spec.ingress[{index}].ports is missing: the rule "
                                        f"admits every port of {where}; list the serving ports")
                for port in rule_ports:
                    if port.get("port") not in declared:
                        raise ManifestError(f"{name}: spec.ingress[{index}] admits port "
                                            f"{port.get('port')!r}, not a port {where} declares")


def validate_file(path: os.PathLike) -> List[str]:
    """Validates a plain (not Kustomize) multi-document manifest: schemas, hardening, policies.

    Returns:
      ["Kind/name", ...] of its resources.
    """
    resources = _load_yaml_documents(pathlib.Path(path))
    for resource in resources:
        validate_resource(resource)
    check_network_policies(resources)
    return [f"{r['kind']}/{r.get('metadata', {}).get('name', '?')}" for r in resources]


def check_dockerfile(path: os.PathLike) -> int:
    """Checks a Dockerfile's final stage ends as a numeric non-root USER made with useradd.

    Returns:
      the uid.

    Raises:
      ManifestError: naming the file and what is missing.
    """
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    # Join continuation lines, drop comments; keep the instructions of the last stage.
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\")
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    stage_starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    stage = lines[stage_starts[-1]:] if stage_starts else lines
    users = [line.split(None, 1)[1].strip() if " " in line else ""
             for line in stage if line.upper().startswith("USER")]
    if not users:
        raise ManifestError(f"{path}: no USER instruction; the image would run as root (add a "
                            "user with useradd --uid N and USER N:N)")
    user = users[-1].split(":")[0]
    if not user.isascii() or not user.isdigit():
        raise ManifestError(f"{path}: USER {users[-1]} is not numeric; use the uid (e.g. "
                            "USER 10001:10001) so that runAsNonRoot can verify it")
    if int(user) == 0:
        raise ManifestError(f"{path}: USER {users[-1]} is root")
    created = any(line.upper().startswith("RUN ") and "useradd" in line
                  and (f"--uid {user}" in line or f"-u {user}" in line) for line in stage)
    if not created:
        raise ManifestError(f"{path}: USER {user} is not created in the image (RUN useradd "
                            f"--uid {user} ...)")
    return int(user)


def check_compose(path: os.PathLike) -> List[str]:
    """Checks every service of a docker-compose file runs unprivileged and read-only.

    Each service needs user "UID:GID" (numeric, not 0), read_only: true, cap_drop [ALL],
    security_opt [no-new-privileges:true] and a tmpfs at /tmp.

    Returns:
      the service names.
    """
    path = pathlib.Path(path)
    (compose,) = _load_yaml_documents(path)
    services = compose.get("services") or {}
    for name, service in services.items():
        where = f"{path.name}: services.{name}"
        user = str(service.get("user", ""))
        uid = user.split(":")[0]
        if not user:
            raise ManifestError(f"{where}.user is missing; set a numeric non-root UID:GID "
                                "(e.g. \"10001:10001\")")
        if not (uid.isascii() and uid.isdigit()) or int(uid) == 0:
            raise ManifestError(f"{where}.user is {user!r}; it must be a numeric non-root uid")
        if service.get("read_only") is not True:
            raise ManifestError(f"{where}.read_only is {service.get('read_only')!r}; it must be "
                                "true (with a tmpfs at /tmp)")
        if "ALL" not in (service.get("cap_drop") or []):
            raise ManifestError(f"{where}.cap_drop must hold ALL")
        if "no-new-privileges:true" not in (service.get("security_opt") or []):
            raise ManifestError(f"{where}.security_opt must hold no-new-privileges:true")
        tmpfs = service.get("tmpfs") or []
        tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
        if not any(entry.split(":")[0].rstrip("/") == "/tmp" for entry in tmpfs):
            raise ManifestError(f"{where}.tmpfs has no /tmp; a read-only container needs one")
    return list(services)


def dockerfiles(root: Optional[os.PathLike] = None) -> List[pathlib.Path]:
    """The project's Dockerfiles (Dockerfile, *.Dockerfile, Dockerfile.*), skipping hidden
    folders (.venv, .git) and outputs/."""
    root = pathlib.Path(root) if root else PROJECT_ROOT
    found = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and name not in ("outputs", "node_modules"))
        found.extend(pathlib.Path(directory) / name for name in files
                     if name == "Dockerfile" or name.endswith(".Dockerfile")
                     or name.startswith("Dockerfile."))
    return sorted(found)


def check_deploy_files(root: Optional[os.PathLike] = None) -> tuple:
    """Checks the deployment files outside the Kustomize tree: serving/deploy's manifest and
    compose file and every Dockerfile of the project, collecting every file's problem.

    Returns:
      ({relative path: [what was checked]}, [problem, ...]).
    """
    root = pathlib.Path(root) if root else PROJECT_ROOT
    checked: Dict[str, List[str]] = {}
    problems: List[str] = []
    checks = [(relative, validate_file) for relative in DEPLOY_MANIFESTS]
    checks += [(relative, lambda path: [f"service {name}" for name in check_compose(path)])
               for relative in COMPOSE_FILES]
    checks += [(str(path.relative_to(root)), lambda path: [f"USER {check_dockerfile(path)}"])
               for path in dockerfiles(root)]
    for relative, check in checks:
        if not (root / relative).is_file():
            continue
        try:
            checked[relative] = check(root / relative)
        except ManifestError as error:
            problems.append(f"{relative}: {error}")
    return checked, problems


def validate_deploy_files(root: Optional[os.PathLike] = None) -> Dict[str, List[str]]:
    """check_deploy_files, raising ManifestError with every problem.

    Returns:
      {relative path: [what was checked]}.
    """
    checked, problems = check_deploy_files(root)
    _raise_all(problems)
    return checked
