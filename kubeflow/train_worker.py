"""Entry point of the TFJob's workers: the pipeline's run_fn under MultiWorkerMirroredStrategy.

The Kubeflow training operator sets TF_CONFIG in every replica, e.g.
``{"cluster": {"worker": ["job-worker-0.ns.svc:2222", "job-worker-1.ns.svc:2222"]},
"task": {"type": "worker", "index": 1}}``. MultiWorkerMirroredStrategy reads it; the
chief (the "chief" task, or worker 0 when there is none) writes the SavedModel to
--output-dir/serving_model and TensorBoard logs to --output-dir/model_run, the others
write to a temporary directory (every worker must save, since saving is collective).

The inputs are the outputs of a pipeline run's Transform (their URIs are in the KFP UI,
or under the pipeline root): --examples is the transformed_examples artifact (with
Split-train/ and Split-eval/), --transform-output the transform_graph artifact.

    python -m tfprod.kubeflow.train_worker --config /tfprod/configs/mnist_cnn.yaml \\
        --examples URI --transform-output URI --output-dir URI
"""

import argparse
import os
import sys
from typing import List, Optional

from tfprod import errors
from tfprod.pipeline import distribute


def split_files(examples_uri: str, split: str) -> List[str]:
    """The file pattern of one split of a TFX Examples artifact."""
    return [os.path.join(examples_uri, f"Split-{split}", "*")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfprod.kubeflow.train_worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (in the image)")
    parser.add_argument("--examples", required=True, help="Transform's transformed_examples URI")
    parser.add_argument("--transform-output", required=True, help="Transform's transform_graph URI")
    parser.add_argument("--output-dir", required=True, help="where the chief writes the model")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Trains; a TfprodError ends the worker with `error: <message>` and the exit code of its
    kind (tfprod.errors.EXIT_CODES, as `tfprod` does): 2 for a TF_CONFIG, config or path
    that is wrong, 1 when training fails."""
    args = build_parser().parse_args(argv)
    try:
        return _train(args)
    except errors.TfprodError as error:
        return errors.handle(error)


def _train(args: argparse.Namespace) -> int:
    # TF_CONFIG as the training operator writes it; DistributeError (a ConfigError) when it
    # is missing or not what MultiWorkerMirroredStrategy needs. Checked before TF loads.
    distribute.read_tf_config(os.environ, allow_ps=False)

    from tfprod.pipeline import checks
    from tfprod.pipeline import config as config_lib
    from tfprod.pipeline import ingestion, multiworker, trainer

    # Loaded, validated and checked once; run_worker trains with this object.
    with errors.missing_file_is_config_error():
        experiment = checks.load_experiment(args.config, args.overrides)
    # Every replica gets the real output dirs: run_fn sends the non-chief replicas' SavedModel
    # and logs to temporary dirs, and all replicas share <output-dir>/model_run/backup for
    # BackupAndRestore (so a restarted TFJob resumes).
    fn_args = multiworker.JobFnArgs(
        train_files=split_files(args.examples, ingestion.TRAIN_SPLIT),
        eval_files=split_files(args.examples, ingestion.EVAL_SPLIT),
        transform_output=args.transform_output,
        serving_model_dir=os.path.join(args.output_dir, "serving_model"),
        model_run_dir=os.path.join(args.output_dir, "model_run"),
        custom_config={trainer.EXPERIMENT_CONFIG_KEY: config_lib.to_dict(experiment)})
    print(f"writing to {args.output_dir} (only the chief keeps its files)", flush=True)
    # MultiWorkerMirroredStrategy is created first; variables created in its scope (the
    # model, the optimizer) are mirrored and all-reduced across workers.
    multiworker.run_worker(fn_args, experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
