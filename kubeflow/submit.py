"""Uploads a compiled package to a Kubeflow Pipelines API and starts a run (kfp.Client).

The package is uploaded as a new pipeline, or as a new version of the pipeline
with the same name; then a run of that version starts in the named experiment
(created if missing), with the given parameter values and pipeline root.
wait_for_run polls that run until it ends.

No Kubeflow Pipelines API server exists where this project is developed: the tests drive
the real kfp.Client against a fake HTTP server (submit) and a fake client object
(wait_for_run); neither ran against a real KFP backend.
"""

import dataclasses
import datetime
import os
import time
from typing import Callable, Dict, Optional, Sequence

import yaml

from tfprod.kubeflow import compiler
from tfprod.kubeflow.errors import ParameterError, SubmitError


# Run states (kfp_server_api V2beta1RuntimeState) after which a run does not change.
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


def make_client(host: str, namespace: Optional[str] = None, token: Optional[str] = None):
    """A kfp.Client for host, with a bearer token if given.

    Without a token, the standard KFP credentials: the projected service account token that
    kfp.Client's ServiceAccountTokenVolumeCredentials reads from $KF_PIPELINES_SA_TOKEN_PATH
    (default /var/run/secrets/kubeflow/pipelines/token) when that file exists; otherwise none
    (a port-forward to ml-pipeline-ui needs none).

    Raises:
      SubmitError: the API could not be reached (the client checks /healthz on creation).
    """
    import kfp
    import kfp_server_api
    import urllib3
    from kfp.client import set_volume_credentials

    credentials = None
    token_path = os.environ.get(kfp.client.KF_PIPELINES_SA_TOKEN_ENV,
                                kfp.client.KF_PIPELINES_SA_TOKEN_PATH)
    if not token and os.path.isfile(token_path):
        credentials = set_volume_credentials.ServiceAccountTokenVolumeCredentials(token_path)
    try:
        return kfp.Client(host=host, namespace=namespace, existing_token=token or None,
                          credentials=credentials)
    except kfp_server_api.ApiException as error:
        raise SubmitError(f"{host}: the Kubeflow Pipelines API answered {error.status} "
                          f"{error.reason}: {str(error.body)[:500]}") from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise SubmitError(f"{host}: cannot reach the Kubeflow Pipelines API ({error})") from error


def run_link(client, host: str, run_id: str) -> str:
    """The KFP UI page of a run (the link kfp.Client prints)."""
    prefix = client._get_url_prefix() if hasattr(client, "_get_url_prefix") else host
    return f"{prefix.rstrip('/')}/#/runs/details/{run_id}"


def wait_for_run(client, run_id: str, timeout: Optional[float] = None,
                 poll_seconds: float = 10.0, report: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> str:
    """Polls client.get_run(run_id) until the run reaches a final state.

    Reports each state change (one line: time, state, and the error when the run has one).
    Only tested against a fake client object: there is no KFP API server here.

    Args:
      client: a kfp.Client (or anything with get_run(run_id) -> an object with .state).
      timeout: seconds to wait at most; None: no limit.

    Returns:
      the final state, e.g. "SUCCEEDED" or "FAILED".

    Raises:
      SubmitError: the API failed, or the run had not ended after timeout seconds.
    """
    import kfp_server_api
    import urllib3

    start = clock()
    last = None
    while True:
        try:
            run = client.get_run(run_id)
        except kfp_server_api.ApiException as error:
            raise SubmitError(f"run {run_id}: the Kubeflow Pipelines API answered "
                              f"{error.status} {error.reason}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise SubmitError(f"run {run_id}: cannot reach the API ({error})") from error
        state = str(getattr(run, "state", None) or "RUNTIME_STATE_UNSPECIFIED")
        if state != last:
            error = getattr(run, "error", None)
            detail = f" ({getattr(error, 'message', None) or error})" if error else ""
            report(f"{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} run {run_id}: "
                   f"{state}{detail}")
            last = state
        if state in FINAL_STATES:
            return state
        if timeout is not None and clock() - start >= timeout:
            raise SubmitError(f"run {run_id} is still {state} after {timeout:g} s; it goes on "
                              "running (follow it in the KFP UI)")
        sleep(poll_seconds)


@dataclasses.dataclass
class SubmittedRun:
    """What the API answered: the ids needed to find the run in the UI or API."""

    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str
    run_id: str
    run_name: str


def parse_parameters(pairs: Sequence[str]) -> Dict[str, object]:
    """``k=v`` strings -> a dict; values are read as YAML scalars (``3``, ``true``, text).

    Raises:
      ParameterError: an entry is not of the form key=value.
    """
    parameters: Dict[str, object] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key.strip():
            raise ParameterError(f"--param {pair!r}: expected key=value, e.g. --param "
                              f"{compiler.DATA_DIR_PARAMETER}=gs://bucket/mnist")
        value = yaml.safe_load(text) if text.strip() else ""
        parameters[key.strip()] = value if isinstance(value, (int, float, bool)) else text
    return parameters


def check_parameters(package_path: str, parameters: Dict[str, object]) -> None:
    """Fails before any request when a parameter is not an input of the pipeline."""
    pipeline_spec, _ = compiler.read_package(package_path)
    known = set(pipeline_spec.root.input_definitions.parameters)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ParameterError(f"--param {unknown[0]}: not a parameter of this pipeline; its "
                          f"parameters are: {', '.join(sorted(known)) or 'none'}")


def without_cache(package_path: str) -> str:
    """A copy of the package (in a temporary directory) with caching off in every task."""
    import tempfile

    with open(package_path, encoding="utf-8") as handle:
        documents = list(yaml.safe_load_all(handle))
    pipeline_spec = documents[0]
    dags = [pipeline_spec.get("root", {}).get("dag", {})]
    dags += [component.get("dag", {}) for component in pipeline_spec.get("components", {}).values()]
    for dag in dags:
        for task in (dag.get("tasks") or {}).values():
            task["cachingOptions"] = {"enableCache": False}
    directory = tempfile.mkdtemp(prefix="tfprod-no-cache-")
    path = os.path.join(directory, os.path.basename(package_path))
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all(documents, handle, sort_keys=False)
    return path


def submit(package_path: str, host: str, experiment_name: str = "tfprod",
           parameters: Optional[Dict[str, object]] = None, pipeline_root: Optional[str] = None,
           run_name: Optional[str] = None, namespace: Optional[str] = None,
           existing_token: Optional[str] = None, enable_caching: Optional[bool] = None,
           client=None) -> SubmittedRun:
    """Uploads the package (new pipeline or new version) and starts a run.

    Args:
      package_path: a YAML package written by compiler.write_package.
      host: the KFP API endpoint, e.g. http://localhost:8080 (a port-forward of ml-pipeline-ui).
      experiment_name: the KFP experiment the run belongs to (created if missing).
      parameters: pipeline parameter values, e.g. {"data_dir": "gs://bucket/mnist"}.
      pipeline_root: overrides the package's defaultPipelineRoot for this run.
      run_name: defaults to "<pipeline name> <UTC time>".
      namespace: the user's namespace on a multi-user Kubeflow.
      existing_token: a bearer token, where the API requires one (make_client).
      enable_caching: False runs every step again (KFP caching off); None: the package's.
      client: a kfp.Client to use (make_client); by default one is made for host.

    Raises:
      ParameterError: a parameter is not one of the pipeline's.
      SubmitError: the API refused a request or could not be reached.
    """
    import kfp
    import kfp_server_api
    import urllib3

    parameters = dict(parameters or {})
    check_parameters(package_path, parameters)
    if enable_caching is False:
        # kfp 2.5's run_pipeline applies enable_caching only to a package it uploads itself, not
        # to a run of an uploaded version: upload a copy with every task's cache off instead.
        package_path = without_cache(package_path)
    pipeline_spec, _ = compiler.read_package(package_path)
    pipeline_name = pipeline_spec.pipeline_info.name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H-%M-%S")
    try:
        if client is None:
            client = make_client(host, namespace=namespace, token=existing_token)
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(package_path, pipeline_name=pipeline_name,
                                              namespace=namespace)
            pipeline_id = pipeline.pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, page_size=1,
                                                     sort_by="created_at desc")
            if not versions.pipeline_versions:
                raise SubmitError(f"{host}: pipeline {pipeline_name} was uploaded but has no "
                                  "version; check the API server's log")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version = client.upload_pipeline_version(
                package_path, pipeline_version_name=f"{pipeline_name} {stamp}",
                pipeline_id=pipeline_id)
            version_id = version.pipeline_version_id
        experiment = client.create_experiment(experiment_name, namespace=namespace)
        run_name = run_name or f"{pipeline_name} {stamp}"
        run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=run_name,
                                  pipeline_id=pipeline_id, version_id=version_id,
                                  params=parameters, pipeline_root=pipeline_root,
                                  enable_caching=enable_caching)
    except kfp_server_api.ApiException as error:
        raise SubmitError(f"{host}: the Kubeflow Pipelines API answered {error.status} "
                          f"{error.reason}: {str(error.body)[:500]}") from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise SubmitError(f"{host}: cannot reach the Kubeflow Pipelines API ({error}); check "
                          "--host (e.g. kubectl port-forward -n kubeflow "
                          "svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080)"
                          ) from error
    return SubmittedRun(pipeline_id=pipeline_id, pipeline_version_id=version_id,
                        experiment_id=experiment.experiment_id, run_id=run.run_id,
                        run_name=run_name)
