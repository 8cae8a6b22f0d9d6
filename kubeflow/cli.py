"""`tfprod kubeflow compile|submit|validate-manifests|run-local`: argument parsing over the library.

Errors leave as tfprod.errors kinds (kubeflow/errors.py); tfprod/cli.py prints them and
exits: 2 a bad config, --param, package path or manifest (ConfigError); 1 the Kubeflow
Pipelines API failed (SubmitError, a RunFailure) or a run-local task failed (LocalRunError).
"""

import argparse
import os

from tfprod import errors


def register(subparsers) -> None:
    """Adds the `kubeflow` command and its subcommands to tfprod's parser."""
    parser = subparsers.add_parser(
        "kubeflow", help="compile for Kubeflow Pipelines v2, submit runs, check manifests",
        description="Kubeflow Pipelines v2 and Kubernetes manifests (docs/kubeflow.md).")
    commands = parser.add_subparsers(dest="kubeflow_command", metavar="SUBCOMMAND")
    commands.required = True

    compile_parser = commands.add_parser(
        "compile", help="compile the pipeline of a config into a KFP v2 YAML package")
    compile_parser.add_argument("--config", required=True, help="experiment YAML")
    compile_parser.add_argument("--output", required=True,
                                help="where to write, e.g. pipeline.yaml")
    compile_parser.add_argument("--set", dest="overrides", action="append", default=[],
                                metavar="KEY=VALUE",
                                help="override a config key, e.g. --set kubeflow.trainer_gpus=1")
    compile_parser.set_defaults(handler=_compile_command)

    submit_parser = commands.add_parser(
        "submit", help="upload a compiled package and start a run (kfp.Client)")
    submit_parser.add_argument("--host", required=True,
                               help="KFP API endpoint, e.g. http://localhost:8080")
    submit_parser.add_argument("--package", default="pipeline.yaml",
                               help="the compiled package (default: pipeline.yaml)")
    submit_parser.add_argument("--experiment", default="tfprod", help="KFP experiment name")
    submit_parser.add_argument("--param", dest="params", action="append", default=[],
                               metavar="KEY=VALUE", help="a pipeline parameter (repeatable), "
                               "e.g. --param data_dir=gs://bucket/mnist")
    submit_parser.add_argument("--pipeline-root", help="overrides the package's pipeline root")
    submit_parser.add_argument("--run-name", help="defaults to '<pipeline> <UTC time>'")
    submit_parser.add_argument("--namespace", help="your namespace on a multi-user Kubeflow")
    submit_parser.set_defaults(handler=_submit_command)

    validate_parser = commands.add_parser(
        "validate-manifests", help="render the Kustomize base/overlays and validate them offline "
        "(schemas and hardening; without --manifests also serving/deploy and the Dockerfiles)")
    validate_parser.add_argument("--manifests", default=None,
                                 help="manifests directory (default: kubeflow/manifests)")
    validate_parser.add_argument("--config", help="also check that the overlays point at this "
                                 "config's model directory (kubeflow.output_dir) and image")
    validate_parser.add_argument("--set", dest="overrides", action="append", default=[],
                                 metavar="KEY=VALUE", help="override a config key (repeatable)")
    validate_parser.set_defaults(handler=_validate_command)

    _register_run_local(commands)


def _compile_command(args: argparse.Namespace) -> int:
    from tfprod.kubeflow import compiler
    from tfprod.pipeline import config as config_lib

    with errors.missing_file_is_config_error():
        experiment = config_lib.load_config(args.config, args.overrides)
        compiled = compiler.compile_pipeline(experiment)  # CompileError: a ConfigError
    compiler.write_package(compiled, args.output)
    tasks = compiled.pipeline_spec["root"]["dag"]["tasks"]
    print(f"wrote {args.output}: pipeline {compiled.name}, {len(tasks)} tasks, image "
          f"{compiler.image_reference(experiment.kubeflow)}, Beam runner "
          f"{experiment.kubeflow.beam_runner.value}")
    return 0


def _submit_command(args: argparse.Namespace) -> int:
    from tfprod.kubeflow import submit

    parameters = submit.parse_parameters(args.params)  # ParameterError: a ConfigError
    # A missing --package: ConfigError; the API failing: SubmitError, a RunFailure.
    with errors.missing_file_is_config_error():
        run = submit.submit(args.package, args.host, experiment_name=args.experiment,
                            parameters=parameters, pipeline_root=args.pipeline_root,
                            run_name=args.run_name, namespace=args.namespace)
    print(f"submitted run {run.run_name!r}: run_id {run.run_id}, pipeline {run.pipeline_id} "
          f"version {run.pipeline_version_id}, experiment {run.experiment_id}")
    return 0


def _validate_command(args: argparse.Namespace) -> int:
    from tfprod.kubeflow import compiler, manifests
    from tfprod.pipeline import config as config_lib

    with errors.missing_file_is_config_error():  # and ManifestError: a ConfigError
        checked = manifests.validate_tree(args.manifests)
        if args.manifests is None:
            # The project's own tree: also serving/deploy's manifest and compose file and the
            # Dockerfiles (hardening: non-root user, read-only, no privileges).
            checked.update(manifests.validate_deploy_files())
        if args.config:
            experiment = config_lib.load_config(args.config, args.overrides)
            root = args.manifests or manifests.MANIFESTS_DIR
            for overlay in manifests.OVERLAYS:
                manifests.check_wiring(
                    manifests.render(os.path.join(root, "overlays", overlay)),
                    experiment.kubeflow.output_dir, experiment.export.model_name,
                    compiler.image_reference(experiment.kubeflow))
    for name, kinds in checked.items():
        print(f"{name}: {', '.join(kinds)} valid")
    if args.config:
        print(f"overlays point at {args.config}'s model directory and image")
    return 0


# -- run-local: the compiled package executed on this machine (kubeflow/local_run.py) -------

def _register_run_local(commands) -> None:
    parser = commands.add_parser(
        "run-local", help="run a compiled package here, task by task, as the KFP v2 launcher "
        "would (no cluster, no containers, no caching)")
    parser.add_argument("--package", default="pipeline.yaml",
                        help="the compiled package (default: pipeline.yaml)")
    parser.add_argument("--pipeline-root", help="where the artifacts go (default: the "
                        "package's defaultPipelineRoot); a run writes <root>/<run id>/<task>/")
    parser.add_argument("--param", dest="params", action="append", default=[],
                        metavar="KEY=VALUE", help="a pipeline parameter (repeatable), e.g. "
                        "--param data_dir=data/mnist_sample")
    parser.add_argument("--project-dir", default=None, help="stands in for /tfprod, the "
                        "image's project directory with configs/ (default: the current "
                        "directory)")
    parser.add_argument("--run-id", help="the run's directory under the pipeline root "
                        "(default: run-<UTC time>)")
    parser.set_defaults(handler=_run_local_command)


def _run_local_command(args: argparse.Namespace) -> int:
    from tfprod.kubeflow import local_run, submit

    parameters = submit.parse_parameters(args.params)  # ParameterError: a ConfigError
    with errors.missing_file_is_config_error():  # LocalRunError: a RunFailure
        run = local_run.run_package(args.package, pipeline_root=args.pipeline_root,
                                    parameters=parameters, project_dir=args.project_dir,
                                    run_id=args.run_id)
    total = sum(task.seconds for task in run.tasks)
    print(f"ran {len(run.tasks)} tasks in {total:.0f} s: {run.run_root}")
    return 0
