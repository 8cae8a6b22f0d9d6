"""`tfprod report`: rebuild the HTML run report of a finished run.

A directory without a run raises ReportError, a ConfigError: tfprod/cli.py exits with 2.
"""

import argparse


def register(subparsers) -> None:
    """Adds the `report` subcommand to tfprod's argument parser."""
    parser = subparsers.add_parser(
        "report", help="(re)build <output-dir>/report.html from a finished run",
        description="Build the self-contained HTML report of a finished `tfprod run` from its "
                    "ML Metadata, artifacts, run_summary.json and config.yaml.")
    parser.add_argument("--output-dir", required=True,
                        help="the run's output directory (runtime.output_dir)")
    parser.add_argument("--report", dest="report_path",
                        help="where to write the report (default <output-dir>/report.html)")
    parser.set_defaults(handler=_report_command)


def _report_command(args: argparse.Namespace) -> int:
    from tfprod.pipeline.report import builder

    path = builder.build_report(args.output_dir, report_path=args.report_path)
    print(f"Report: {path}")
    return 0
