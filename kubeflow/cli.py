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
    submit_parser.add_argument("--token", default=None,
                               help="bearer token for the API (default: the standard KFP "
                               "credentials, i.e. the service account token file at "
                               "$KF_PIPELINES_SA_TOKEN_PATH when it exists)")
    submit_parser.add_argument("--no-cache", action="store_true",
                               help="run every step again (KFP's caching off for this run)")
    submit_parser.add_argument("--wait", action="store_true",
                               help="poll the run until it ends; print its state changes and "
                               "link; exit 1 unless it SUCCEEDED")
    submit_parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                               help="with --wait: give up after this long (default: no limit)")
    submit_parser.set_defaults(handler=_submit_command)

    manifests_parser = commands.add_parser(
        "manifests", help="render the Kustomize base/overlays (TFJob, KServe, TF Serving) "
        "from a config into a directory")
    manifests_parser.add_argument("--config", required=True, help="experiment YAML")
    manifests_parser.add_argument("--output", required=True,
                                  help="directory to write (kubectl apply -k DIR/overlays/kserve)")
    manifests_parser.add_argument("--set", dest="overrides", action="append", default=[],
                                  metavar="KEY=VALUE", help="override a config key (repeatable), "
                                  "e.g. --set kubeflow.tfjob_examples=gs://...")
    manifests_parser.add_argument("--mlmd", default=None, metavar="METADATA_SQLITE",
                                  help="fill the TFJob's --examples/--transform-output from the "
                                  "latest run in this ML Metadata SQLite file")
    manifests_parser.set_defaults(handler=_manifests_command)

    validate_parser = commands.add_parser(
        "validate-manifests", help="render the Kustomize base/overlays and validate them offline "
        "(schemas and hardening; without --manifests also serving/deploy and the Dockerfiles)")
    validate_parser.add_argument("--manifests", default=None,
                                 help="a directory `tfprod kubeflow manifests` wrote (default: "
                                 "the templates in kubeflow/manifests, filled from --config)")
    validate_parser.add_argument("--config", help="also check that the manifests point at this "
                                 "config's model directory, image, namespace and TFJob inputs")
    validate_parser.add_argument("--set", dest="overrides", action="append", default=[],
                                 metavar="KEY=VALUE", help="override a config key (repeatable)")
    validate_parser.set_defaults(handler=_validate_command)

    _register_run_local(commands)


def _compile_command(args: argparse.Namespace) -> int:
    from tfprod.pipeline import checks
    from tfprod.pipeline import config as config_lib

    with errors.missing_file_is_config_error():
        experiment = config_lib.load_config(args.config, args.overrides)
        # Before the compiler (TFX, TensorFlow) is imported: a bad config is exit 2 at once.
        checks.check_experiment(experiment)
        from tfprod.kubeflow import compiler

        compiled = compiler.compile_pipeline(experiment)  # CompileError: a ConfigError
    compiler.write_package(compiled, args.output)
    tasks = compiled.pipeline_spec["root"]["dag"]["tasks"]
    print(f"wrote {args.output}: pipeline {compiled.name}, {len(tasks)} tasks, image "
          f"{compiler.image_reference(experiment.kubeflow)}, Beam runner "
          f"{experiment.kubeflow.beam_runner.value}")
    return 0


def _submit_command(args: argparse.Namespace) -> int:
    from tfprod.kubeflow import submit
    from tfprod.kubeflow.errors import SubmitError

    parameters = submit.parse_parameters(args.params)  # ParameterError: a ConfigError
    # A missing --package: ConfigError; the API failing: SubmitError, a RunFailure.
    with errors.missing_file_is_config_error():
        client = submit.make_client(args.host, namespace=args.namespace, token=args.token)
        run = submit.submit(args.package, args.host, experiment_name=args.experiment,
                            parameters=parameters, pipeline_root=args.pipeline_root,
                            run_name=args.run_name, namespace=args.namespace,
                            enable_caching=False if args.no_cache else None, client=client)
    print(f"submitted run {run.run_name!r}: run_id {run.run_id}, pipeline {run.pipeline_id} "
          f"version {run.pipeline_version_id}, experiment {run.experiment_id}")
    print(f"link: {submit.run_link(client, args.host, run.run_id)}")
    if args.wait:
        state = submit.wait_for_run(client, run.run_id, timeout=args.timeout, report=print)
        if state != "SUCCEEDED":
            raise SubmitError(f"run {run.run_id} ended {state}; see "
                                    f"{submit.run_link(client, args.host, run.run_id)}")
    return 0


def _manifests_command(args: argparse.Namespace) -> int:
    from tfprod.kubeflow import manifests
    from tfprod.pipeline import config as config_lib

    with errors.missing_file_is_config_error():
        experiment = config_lib.load_config(args.config, args.overrides)
        outputs = manifests.transform_outputs_from_mlmd(args.mlmd) if args.mlmd else None
        values = manifests.template_values(experiment, args.config, outputs)
        written = manifests.write_tree(args.output, values)
        checked, problems = manifests.check_tree(args.output, expected=values)
    if problems:  # the templates themselves are wrong: a bug here, but say what
        raise errors.ConfigError("the rendered manifests do not validate:\n  - "
                                 + "\n  - ".join(problems))
    print(f"wrote {len(written)} files to {args.output}: image {values['image_reference']}, "
          f"namespace {values['namespace']}, model {values['serving_base_path']}")
    for overlay in manifests.OVERLAYS:
        print(f"  kubectl apply -k {os.path.join(args.output, 'overlays', overlay)}")
    unset = manifests.unset_inputs(manifests.render(os.path.join(args.output, "base")))
    if unset:
        print("note: the TFJob's inputs are not known yet (" + ", ".join(unset) + "); set "
              "kubeflow.tfjob_examples / kubeflow.tfjob_transform_output or pass --mlmd "
              "(docs/kubeflow.md, section 8)")
    return 0


def _validate_command(args: argparse.Namespace) -> int:
    # No compiler import here: it loads TFX (tens of seconds); the image reference is the
    # config's own.
    from tfprod.kubeflow import manifests
    from tfprod.pipeline import config as config_lib

    with errors.missing_file_is_config_error():  # and ManifestError: a ConfigError
        values = None
        if args.config:
            experiment = config_lib.load_config(args.config, args.overrides)
            values = manifests.template_values(experiment, args.config)
        # A rendered tree is compared with the config; the templates are filled with it.
        checked, problems = manifests.check_tree(
            args.manifests, values=None if args.manifests else values,
            expected=values if args.manifests else None)
        if args.manifests is None:
            # The project's own tree: also serving/deploy's manifest and compose file and the
            # Dockerfiles (hardening: non-root user, read-only, no privileges).
            deploy_checked, deploy_problems = manifests.check_deploy_files()
            checked.update(deploy_checked)
            problems.extend(deploy_problems)
    for name, kinds in checked.items():
        print(f"{name}: {', '.join(kinds)} checked")
    if problems:
        # Every problem at once, then a non-zero exit (2, a ConfigError).
        raise manifests.ManifestError(f"{len(problems)} problem(s):\n  - "
                                      + "\n  - ".join(problems))
    if args.config:
        print(f"manifests point at {args.config}'s model directory, image and namespace")
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
