"""`tfprod run`: the argument parsing of the local pipeline run, over the library.

Errors leave as tfprod.errors kinds; tfprod/cli.py prints them and picks the exit code:
2 a bad config or path, 3 bad input data (found before the run, or by a component),
1 a component failed. A failed run has written run_summary.json and its report first.
"""

import argparse
import time
from typing import List


def register(subparsers) -> None:
    """Adds `tfprod run`."""
    parser = subparsers.add_parser(
        "run", help="run the TFX pipeline locally (LocalDagRunner, SQLite metadata, Beam)",
        description="Run the pipeline for an experiment config and push the model if blessed.")
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/mnist_cnn.yaml")
    parser.add_argument("--data-dir", help="raw data directory (overrides data.data_dir)")
    parser.add_argument("--output-dir", help="where the run writes (overrides runtime.output_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set trainer.epochs=2 (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="show the full TFX/Beam logs")
    parser.set_defaults(handler=_run_command)
    _register_predict_batch(subparsers)


def _output_dir_source(args: argparse.Namespace, overrides: List[str]) -> str:
    """What set runtime.output_dir, as an error names it: the last override of the key
    (``--output-dir`` comes before the --set ones), else the config file."""
    for override in reversed(overrides):
        if override.split("=", 1)[0].strip() == "runtime.output_dir":
            return "--set " + override if override in args.overrides else "--output-dir"
    return f"{args.config}: runtime.output_dir"


def _run_command(args: argparse.Namespace) -> int:
    from tfprod import console, errors
    from tfprod.pipeline import checks, tasks
    from tfprod.pipeline import config as config_lib

    overrides = []
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.output_dir:
        overrides.append(f"runtime.output_dir={args.output_dir}")
    overrides += args.overrides
    with errors.missing_file_is_config_error():
        experiment = config_lib.load_config(args.config, overrides)
    # Everything below up to the local runner's import is TensorFlow-free: a bad config,
    # path or data layout is exit 2 or 3 in well under a second (tests/test_cli.py).
    config_lib.check_output_dir(experiment.runtime.output_dir,
                                _output_dir_source(args, overrides))
    checks.check_experiment(experiment)
    task = tasks.get_task(experiment)
    print(f"tfprod run: {experiment.name} ({args.config}): model {experiment.model.name}, "
          f"task {task.name}\n  data:    {experiment.data.describe_source()}"
          f"\n  outputs: {experiment.runtime.output_dir}", flush=True)
    checks.check_inputs(experiment)
    print("  checks passed; loading TensorFlow and TFX ...", flush=True)
    started = time.perf_counter()
    with console.quiet_import(verbose=args.verbose):
        from tfprod.pipeline import local_runner
    print(f"  loaded in {time.perf_counter() - started:.1f}s", flush=True)

    try:
        summary = local_runner.run_pipeline(
            experiment, progress=lambda line: print(line, flush=True), verbose=args.verbose,
            checked=True)
    except local_runner.RUN_STOPPED as error:  # not handled here: only its report is named
        if error.report_path:
            print(f"Report: {error.report_path}", flush=True)
        raise
    print(summary.format(), flush=True)
    return 0


def _register_predict_batch(subparsers) -> None:
    """Adds `tfprod predict-batch` (pipeline/batch_predict.py)."""
    parser = subparsers.add_parser(
        "predict-batch", help="score a whole data directory with a pushed model, on Beam",
        description="Reads the data as the run's ExampleGen does, runs the model's serving_default "
                    "signature on every example and writes one row per example (split, key, label, "
                    "the model's outputs) to a .jsonl or .csv file. Give --run OUTPUT_DIR (its "
                    "config.yaml and pushed model) or --config as for `tfprod run`.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="OUTPUT_DIR", help="a finished run's output directory")
    source.add_argument("--config", help="experiment YAML, as for tfprod run")
    parser.add_argument("--model-dir", help="a SavedModel version directory or a base of numbered versions "
                                            "(default with --run: OUTPUT_DIR/serving/<export.model_name>)")
    parser.add_argument("--data-dir", help="raw data directory (overrides data.data_dir)")
    parser.add_argument("--output", required=True, help="OUT.jsonl or OUT.csv")
    parser.add_argument("--split", dest="splits", action="append", choices=("train", "eval", "test"),
                        help="score only this split (repeatable; default all three)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per call of the model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set runtime.beam_mode=multi_process")
    parser.set_defaults(handler=_predict_batch_command)


def _predict_batch_command(args: argparse.Namespace) -> int:
    import os

    from tfprod import console, errors
    from tfprod.contract import layout
    from tfprod.pipeline import checks
    from tfprod.pipeline import config as config_lib

    config_path = args.config
    if args.run:
        config_path = layout.PipelinePaths(args.run).config_path
        if not os.path.isfile(config_path):
            raise errors.ConfigError(f"--run {args.run}: no {layout.CONFIG_FILE} there (give a tfprod run "
                                     "output directory, or --config)")
    overrides = ([f"data.data_dir={args.data_dir}"] if args.data_dir else []) + args.overrides
    with errors.missing_file_is_config_error():
        experiment = config_lib.load_config(config_path, overrides)
    model_dir = args.model_dir
    if model_dir is None:
        if not args.run:
            raise errors.ConfigError("--model-dir is required with --config (or give --run OUTPUT_DIR)")
        model_dir = layout.PipelinePaths(args.run).serving_model_dir(experiment.export.model_name)
    if args.batch_size <= 0:
        raise errors.ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    checks.check_experiment(experiment)
    experiment.check_paths()
    from tfprod.pipeline import batch_predict, tasks

    batch_predict.check_output_path(args.output)
    batch_predict.resolve_model_dir(model_dir)  # a missing model: exit 2 before TensorFlow loads

    tasks.get_task(experiment).preflight(experiment)  # bad data: exit 3 before TensorFlow loads
    print(f"tfprod predict-batch: {experiment.data.describe_source()} with {model_dir} -> {args.output}", flush=True)
    with console.quiet_import():
        import tensorflow  # noqa: F401  (its start-up lines held back)
    summary = batch_predict.predict_batch(experiment, model_dir, args.output,
                                          splits=tuple(args.splits or batch_predict.SPLITS),
                                          batch_size=args.batch_size)
    print(f"  {summary['rows']} rows from {', '.join(summary['splits'])} scored with {summary['model']}: "
          f"{summary['output']}", flush=True)
    return 0
