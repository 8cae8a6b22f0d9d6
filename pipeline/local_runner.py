"""The local runner: LocalDagRunner, SQLite metadata and Beam's DirectRunner.

run_pipeline(config) resolves paths, writes the final config, runs
create_pipeline(config) with progress per component, and writes
run_summary.json. It raises PipelineRunError (with the failing component and a
message that says what to fix) when the run fails.
"""

import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional

from tfprod.pipeline import config as config_lib
from tfprod.contract import idx
from tfprod.pipeline import pipeline as pipeline_lib, summary as summary_lib
from tfprod.pipeline import text_ingestion, timeseries, validation
from tfprod.pipeline.report import builder as report_builder

ProgressFn = Callable[[str], None]


class PipelineRunError(RuntimeError):
    """A component failed; .component names it and .exit_code classifies the failure."""

    def __init__(self, message: str, component: Optional[str], exit_code: int):
        super().__init__(message)
        self.component = component
        self.exit_code = exit_code
        self.report_path: Optional[str] = None  # the run report, when one was written


# Exit codes of `tfprod run` (0 means the pipeline ran, blessed or not).
EXIT_PIPELINE_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_BAD_DATA = 3


class ComponentProgress(logging.Handler):
    """Follows LocalDagRunner's 'Component X is running/finished.' log lines.

    Prints one line per component as it starts and ends, and times each one.
    """

    def __init__(self, component_ids: List[str], progress: ProgressFn):
        super().__init__(level=logging.INFO)
        self.component_ids = component_ids
        self.progress = progress
        self.seconds: Dict[str, float] = {}
        self.running: Optional[str] = None
        self._started = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Component ") and record.args:
            node_id = record.args[0]
            position = (f"[{self.component_ids.index(node_id) + 1}/{len(self.component_ids)}]"
                        if node_id in self.component_ids else "[?]")
            if record.msg.endswith("is running."):
                self.running = node_id
                self._started = time.perf_counter()
                self.progress(f"{position} {node_id} ...")
            elif record.msg.endswith("is finished."):
                elapsed = time.perf_counter() - self._started
                self.seconds[node_id] = round(elapsed, 2)
                self.running = None
                self.progress(f"{position} {node_id} done in {elapsed:.1f}s")


def _quiet_logs(log_path: str, verbose: bool) -> List[logging.Handler]:
    """Sends INFO logs to a file (and stderr only when verbose). Returns added handlers."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_handler = absl_logging.get_absl_handler()
    absl_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # Beam calls logging.basicConfig() and TensorFlow adds its own stderr handler; keep
    # their INFO lines in the log file only.
    for logger in (root, logging.getLogger("tensorflow")):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler is not absl_handler:
                handler.setLevel(logging.INFO if verbose else logging.WARNING)
    # A missing optional speed-up (python-snappy) is not worth a warning on every run.
    logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    return [file_handler]


def _find_cause(error: BaseException, types: tuple) -> Optional[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, types):
            return error
        error = error.__cause__ or error.__context__
    return None


def _classify_failure(error: Exception, component: Optional[str], log_path: str) -> PipelineRunError:
    anomalies = _find_cause(error, (validation.DataValidationError,))
    if anomalies is not None:
        return PipelineRunError(str(anomalies), component, EXIT_BAD_DATA)
    bad_file = _find_cause(error, (idx.IdxFormatError, text_ingestion.TsvFormatError,
                                   timeseries.TimeSeriesFormatError))
    if bad_file is not None:
        return PipelineRunError(f"bad input data: {bad_file}", component, EXIT_BAD_DATA)
    # Errors raised inside Beam workers arrive wrapped; their text still names the cause.
    text = str(error)
    for marker in ("IdxFormatError: ", "TsvFormatError: ", "DataValidationError: ",
                   "TimeSeriesFormatError: "):
        if marker in text:
            detail = text.split(marker, 1)[1].split("\n [while running")[0].strip()
            return PipelineRunError(f"bad input data: {detail}", component, EXIT_BAD_DATA)
    where = f"component {component} failed" if component else "the pipeline failed"
    return PipelineRunError(
        f"{where}: {type(error).__name__}: {text.strip().splitlines()[-1] if text.strip() else ''}"
        f"\nThe full log is in {log_path}", component, EXIT_PIPELINE_FAILED)


def preflight_check(experiment: config_lib.ExperimentConfig) -> None:
    """Fails fast, before TFX starts, on a missing directory or unreadable IDX files.

    For ``data.source: tfds``: on a dataset that is not prepared, an unknown split or
    features that do not fit (pipeline.tfds_source.dataset.TfdsSourceError, a ConfigError).
    """
    experiment.check_paths()
    if experiment.data.source == config_lib.DataSource.TFDS:
        from tfprod.pipeline.tfds_source import dataset as tfds_dataset

        tfds_dataset.check_source(experiment.data)
        return
    if experiment.data.format == config_lib.DataFormat.TSV:
        text_ingestion.check_tsv_dir(experiment.data)
        return
    if experiment.data.format == config_lib.DataFormat.CSV:
        from tfprod.pipeline import timeseries_ingestion

        time_series = experiment.data.time_series
        path = timeseries_ingestion.find_csv(experiment.data.data_dir, time_series.file)
        series = timeseries.read_series(path, timeseries.SeriesSpec.from_config(time_series))
        timeseries.split_bounds(len(series), timeseries.SeriesSpec.from_config(time_series))
        return
    try:
        idx.check_idx_dir(experiment.data.data_dir)
    except FileNotFoundError as error:
        raise config_lib.ConfigError(f"data.data_dir: {error}") from None
    for images, labels in ((idx.TRAIN_IMAGES, idx.TRAIN_LABELS), (idx.TEST_IMAGES, idx.TEST_LABELS)):
        idx.read_image_label_pair(os.path.join(experiment.data.data_dir, images),
                                  os.path.join(experiment.data.data_dir, labels))


def run_pipeline(experiment: config_lib.ExperimentConfig, progress: ProgressFn = print,
                 verbose: bool = False) -> summary_lib.RunSummary:
    """Runs the pipeline locally and returns (and writes) the run summary.

    Raises:
      config_lib.ConfigError: a bad path in the config.
      idx.IdxFormatError: unreadable input files (found before the run starts).
      PipelineRunError: a component failed; run_summary.json is written all the same.
    """
    from tfx import v1 as tfx

    preflight_check(experiment)
    paths = pipeline_lib.PipelinePaths(experiment.runtime.output_dir)
    os.makedirs(paths.output_dir, exist_ok=True)
    config_lib.save_config(experiment, paths.config_path)
    log_path = os.path.join(paths.output_dir, "run.log")
    added_handlers = _quiet_logs(log_path, verbose)

    tfx_pipeline = pipeline_lib.create_pipeline(experiment, paths)
    component_ids = [component.id for component in tfx_pipeline.components]
    tracker = ComponentProgress(component_ids, progress)
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(tracker)
    started = time.perf_counter()
    failure: Optional[PipelineRunError] = None
    try:
        tfx.orchestration.LocalDagRunner().run(tfx_pipeline)
    except Exception as error:  # Any component failure: classify, summarise, re-raise.
        failure = _classify_failure(error, tracker.running, log_path)
    finally:
        absl_logger.removeHandler(tracker)
        for handler in added_handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
    total_seconds = time.perf_counter() - started

    run_summary = summary_lib.collect(experiment, paths, tracker.seconds, total_seconds,
                                      succeeded=failure is None)
    if failure is not None:
        run_summary.status = "failed"
        run_summary.error = str(failure)
        run_summary.failed_component = failure.component
    report_builder.write_after_run(run_summary, progress)
    with open(paths.summary_path, "w", encoding="utf-8") as handle:
        json.dump(run_summary.to_json(), handle, indent=2)
    if failure is not None:
        failure.report_path = run_summary.report_path
        raise failure
    return run_summary
