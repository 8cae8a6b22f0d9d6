"""The `tfprod` command: a thin layer of argument parsing over the library.

This is the top of the import graph: it gathers each package's subcommands. The
packages themselves never import it. Subcommands raise tfprod.errors' kinds; main() turns
them into `error: <message>` and the exit code of tfprod.errors.EXIT_CODES.

Nothing imported here loads TensorFlow, TFX or Beam: each subcommand checks its config,
paths and data first and imports the heavy libraries inside its handler (tests/test_cli.py
checks that a bad config is answered with none of them loaded).
"""

import argparse
import sys
import warnings
from typing import List, Optional

import tfprod
from tfprod import console, errors
from tfprod.kubeflow import cli as kubeflow_cli
from tfprod.mobile import cli as mobile_cli
from tfprod.pipeline import cli as pipeline_cli
from tfprod.pipeline.monitor import cli as monitor_cli
from tfprod.pipeline.report import cli as report_cli
from tfprod.pipeline.ingestion.tfds import cli as tfds_cli
from tfprod.serving import cli as serving_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfprod", description="tfprod: a production ML pipeline on TFX and Keras.")
    parser.add_argument("--version", action="version", version=f"tfprod {tfprod.__version__}",
                        help="print tfprod's version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    pipeline_cli.register(subparsers)
    kubeflow_cli.register(subparsers)
    tfds_cli.register(subparsers)
    serving_cli.register(subparsers)
    mobile_cli.register(subparsers)
    report_cli.register(subparsers)
    monitor_cli.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one subcommand; any TfprodError ends it with `error: <message>` and the exit
    code of its kind (tfprod.errors.EXIT_CODES: 2 config, 3 input data, 1 run failure,
    4 drift detected)."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    # Before any subcommand imports TensorFlow: its C++ INFO/WARNING lines off, unless set.
    console.quiet_tensorflow_env(verbose)
    if not verbose and args.command != "run":
        # google.api_core's Python 3.10 FutureWarning (console.HARMLESS). `tfprod run` drops
        # it from the console with the rest of that list and keeps it in run.log.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")
    try:
        return args.handler(args)
    except errors.TfprodError as error:
        return errors.handle(error)


if __name__ == "__main__":
    sys.exit(main())
