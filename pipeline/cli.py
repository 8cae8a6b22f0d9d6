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
