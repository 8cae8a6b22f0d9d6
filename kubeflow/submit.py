"""Uploads a compiled package to a Kubeflow Pipelines API and starts a run (kfp.Client).

The package is uploaded as a new pipeline, or as a new version of the pipeline
with the same name; then a run of that version starts in the named experiment
(created if missing), with the given parameter values and pipeline root.
"""

import dataclasses
import datetime
from typing import Dict, Optional, Sequence

import yaml

from tfprod.kubeflow import compiler
from tfprod.kubeflow.errors import ParameterError, SubmitError


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


def submit(package_path: str, host: str, experiment_name: str = "tfprod",
           parameters: Optional[Dict[str, object]] = None, pipeline_root: Optional[str] = None,
           run_name: Optional[str] = None, namespace: Optional[str] = None,
           existing_token: Optional[str] = None) -> SubmittedRun:
    """Uploads the package (new pipeline or new version) and starts a run.

    Args:
      package_path: a YAML package written by compiler.write_package.
      host: the KFP API endpoint, e.g. http://localhost:8080 (a port-forward of ml-pipeline-ui).
      experiment_name: the KFP experiment the run belongs to (created if missing).
      parameters: pipeline parameter values, e.g. {"data_dir": "gs://bucket/mnist"}.
      pipeline_root: overrides the package's defaultPipelineRoot for this run.
      run_name: defaults to "<pipeline name> <UTC time>".
      namespace: the user's namespace on a multi-user Kubeflow.
      existing_token: a bearer token, where the API requires one.

    Raises:
      ParameterError: a parameter is not one of the pipeline's.
      SubmitError: the API refused a request or could not be reached.
    """
    import kfp
    import kfp_server_api
    import urllib3

    parameters = dict(parameters or {})
    check_parameters(package_path, parameters)
    pipeline_spec, _ = compiler.read_package(package_path)
    pipeline_name = pipeline_spec.pipeline_info.name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H-%M-%S")
    try:
        client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
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
                                  params=parameters, pipeline_root=pipeline_root)
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
