"""The `tfprod` command: a thin layer of argument parsing over the library.

This is the top of the import graph: it gathers each package's subcommands. The
packages themselves never import it.
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

from tfprod.kubeflow import cli as kubeflow_cli  # noqa: E402  (after the environment is set)
from tfprod.mobile import cli as mobile_cli  # noqa: E402
from tfprod.pipeline import cli as pipeline_cli  # noqa: E402
from tfprod.pipeline.report import cli as report_cli  # noqa: E402
from tfprod.pipeline.tfds_source import cli as tfds_cli  # noqa: E402
from tfprod.serving import cli as serving_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfprod", description="tfprod: a production ML pipeline on TFX and Keras.")
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
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
