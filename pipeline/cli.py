"""`tfprod run`: the argument parsing of the local pipeline run, over the library."""

import argparse
import sys


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


def _run_command(args: argparse.Namespace) -> int:
    from tfprod.pipeline import config as config_lib
    from tfprod.contract import idx
    from tfprod.pipeline import local_runner, text_ingestion, timeseries

    overrides = []
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.output_dir:
        overrides.append(f"runtime.output_dir={args.output_dir}")
    overrides += args.overrides
    try:
        experiment = config_lib.load_config(args.config, overrides)
    except (config_lib.ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return local_runner.EXIT_BAD_CONFIG
    print(f"tfprod run: {experiment.name} (model {experiment.model.name}) on "
          f"{experiment.data.describe_source()}\n  outputs: {experiment.runtime.output_dir}",
          flush=True)
    try:
        summary = local_runner.run_pipeline(
            experiment, progress=lambda line: print(line, flush=True), verbose=args.verbose)
    except config_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return local_runner.EXIT_BAD_CONFIG
    except (idx.IdxFormatError, text_ingestion.TsvFormatError,
            timeseries.TimeSeriesFormatError) as error:
        print(f"error: bad input data: {error}", file=sys.stderr)
        return local_runner.EXIT_BAD_DATA
    except local_runner.PipelineRunError as error:
        print(f"error: {error}", file=sys.stderr)
        if error.report_path:
            print(f"Report: {error.report_path}", flush=True)
        return error.exit_code
    print(summary.format(), flush=True)
    return 0
