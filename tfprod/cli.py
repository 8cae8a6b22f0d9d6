"""The `tfprod` command: a thin layer of argument parsing over the library.

This is the top of the import graph: it gathers each package's subcommands. The
packages themselves never import it. Subcommands raise tfprod.errors' kinds; main() turns
them into `error: <message>` and the exit code of tfprod.errors.EXIT_CODES.
"""

import argparse
import os
import sys
import warnings
from typing import List, Optional

# Quiet TensorFlow's C++ start-up chatter unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Google Cloud client libraries (pulled in by TFX) warn about Python 3.10 on import.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")

import tfprod  # noqa: E402  (after the environment is set)
from tfprod import errors  # noqa: E402
from tfprod.kubeflow import cli as kubeflow_cli  # noqa: E402
from tfprod.mobile import cli as mobile_cli  # noqa: E402
from tfprod.pipeline import cli as pipeline_cli  # noqa: E402
from tfprod.pipeline.report import cli as report_cli  # noqa: E402
from tfprod.pipeline.ingestion.tfds import cli as tfds_cli  # noqa: E402
from tfprod.serving import cli as serving_cli  # noqa: E402


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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one subcommand; any TfprodError ends it with `error: <message>` and the exit
    code of its kind (tfprod.errors.EXIT_CODES: 2 config, 3 input data, 1 run failure)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except errors.TfprodError as error:
        return errors.handle(error)


if __name__ == "__main__":
    sys.exit(main())
