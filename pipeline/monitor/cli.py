"""`tfprod monitor`: served requests against a run's training data (docs/monitoring.md).

Exit codes: 0 no drift; 4 a feature or the prediction distribution is past its threshold
(tfprod.errors.DriftDetected, naming them); 2 a bad flag, run directory or threshold; 3 a
log file that cannot be read, or no request that maps to features.
"""

import argparse
import os
from typing import Any, Callable, Dict, Optional

MONITOR_DIR = "monitor"  # the default output, under the run directory


def register(subparsers) -> None:
    """Adds `tfprod monitor`."""
    parser = subparsers.add_parser(
        "monitor", help="compare logged requests with a run's training data (drift and skew)",
        description="Read TF Serving PredictionLogs (tfprod serve --request_log_dir), turn "
                    "them into features, compare their TFDV statistics with the run's "
                    "training statistics and schema, and the served predictions with the "
                    "model's own on the run's test data. Writes monitor.json and "
                    "monitor.html; exits 4 when a threshold is crossed.")
    parser.add_argument("--request-logs", required=True, metavar="DIR",
                        help="the request log directory (prediction_log-*.tfrecord files)")
    parser.add_argument("--run", required=True, metavar="OUTPUT_DIR",
                        help="the output directory of the `tfprod run` whose model served them")
    parser.add_argument("--output", metavar="DIR",
                        help=f"where monitor.json and monitor.html go (default: "
                             f"OUTPUT_DIR/{MONITOR_DIR})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a key of the run's config, e.g. --set "
                             "monitor.numeric_threshold=0.05 (repeatable)")
    parser.add_argument("--prometheus-textfile", metavar="PATH",
                        help="also write the distances as Prometheus gauges in node-exporter's "
                             "textfile format (e.g. /var/lib/node_exporter/tfprod.prom)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="read at most N logged calls (default: all)")
    parser.set_defaults(handler=_monitor_command)


def _monitor_command(args: argparse.Namespace) -> int:
    from tfprod import console, errors

    if args.limit is not None and args.limit < 1:
        raise errors.ConfigError(f"--limit: expected an integer >= 1, got {args.limit}")
    if not os.path.isdir(args.request_logs):
        raise errors.ConfigError(f"--request-logs: {args.request_logs} is not a directory "
                                 "(pass the --request_log_dir that `tfprod serve` logged into)")
    if not os.path.isdir(args.run):
        raise errors.ConfigError(f"--run: {args.run} is not a directory (pass the "
                                 "--output-dir of a finished `tfprod run`)")
    output = os.path.abspath(args.output or os.path.join(args.run, MONITOR_DIR))
    with console.quiet_import(verbose=False):
        import tensorflow  # noqa: F401  (its start-up lines held back)
        import tensorflow_data_validation  # noqa: F401
        from tfprod.pipeline.monitor import check

    reference = check.reference_from_run(args.run, args.overrides)
    monitor(reference, args.request_logs, output, limit=args.limit,
            prometheus_textfile=args.prometheus_textfile)
    return 0


def monitor(reference, request_logs: str, output: str, limit: Optional[int] = None,
            prometheus_textfile: Optional[str] = None,
            progress: Callable[[str], None] = lambda line: print(line, flush=True)
            ) -> Dict[str, Any]:
    """One check of request_logs against a run's reference (check.Reference): writes
    monitor.json and monitor.html into output (and the Prometheus textfile), says what it
    found, and returns the record.

    Raises:
      DriftDetected: a threshold was crossed (after the files are written); the message
        names the features.
      InputDataError: a log file is unreadable, or no request maps to features.
    """
    from tfprod import errors
    from tfprod.pipeline.monitor import check, reader, report

    logs = reader.read_logs(request_logs, limit)
    record = check.run_check(logs, reference)
    os.makedirs(output, exist_ok=True)
    json_path = report.write_json(record, output)
    html_path = report.write_html(record, output)
    progress(f"tfprod monitor: {record['examples']:,} examples from {record['calls']:,} logged "
             f"calls in {record['log_files']} file(s) against {record['run']}")
    for feature in record["features"]:
        shown = "not measured" if feature["distance"] is None else f"{feature['distance']:.4f}"
        progress(f"  {feature['feature']:<24} {feature['comparator']:<26} {shown:>12}  "
                 f"threshold {feature['threshold']:g}{'  DRIFT' if feature['drifted'] else ''}")
    prediction = record["prediction"]
    if "skipped" in prediction:
        progress(f"  predictions: not compared ({prediction['skipped']})")
    else:
        shown = ("not measured" if prediction["distance"] is None
                 else f"{prediction['distance']:.4f}")
        progress(f"  {check.PREDICTION_KEY:<24} {prediction['comparator']:<26} "
                 f"{shown:>12}  threshold {prediction['threshold']:g}"
                 f"{'  DRIFT' if prediction['drifted'] else ''}")
    if prometheus_textfile:
        progress(f"Prometheus: {report.write_prometheus(record, prometheus_textfile)}")
    progress(f"Monitor: {json_path}\nReport: {html_path}")
    if record["drift_detected"]:
        raise errors.DriftDetected(check.drift_message(record))
    progress("No drift.")
    return record
