"""The local runner: LocalDagRunner, SQLite metadata and Beam's DirectRunner.

run_pipeline(config) resolves paths, holds the output directory (one run at a time;
pipeline.recovery clears what a killed run left), writes the config in progress, runs
create_pipeline(config) with progress per component, and writes the report, then
config.yaml and run_summary.json together (a killed run leaves the last finished run's
three files as they were). When the run fails it raises PipelineRunError (a RunFailure: a
component failed) or PipelineDataError (an InputDataError: a component stopped on the
data), each with the failing component and the report's path; tfprod.errors gives the
exit code (1 or 3).
"""

import importlib
import json
import logging
import os
import re
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from tfprod import console, errors
from tfprod.pipeline import checks
from tfprod.pipeline import config as config_lib
from tfprod.contract import layout
from tfprod.pipeline import pipeline as pipeline_lib, summary as summary_lib
from tfprod.pipeline import recovery
from tfprod.pipeline import tasks
from tfprod.pipeline.report import builder as report_builder

ProgressFn = Callable[[str], None]


class _StoppedRun(Exception):
    """What a failed run knows: .component (the one that failed, when known) and
    .report_path (the run report written after the failure, when there is one)."""

    def __init__(self, message: str, component: Optional[str] = None):
        super().__init__(message)
        self.component = component
        self.report_path: Optional[str] = None


class PipelineRunError(_StoppedRun, errors.RunFailure):
    """A component failed (exit code 1); the message names it and where the log is."""


class PipelineDataError(_StoppedRun, errors.InputDataError):
    """A component stopped on the input data (exit code 3): a corrupt file, anomalies."""


# What run_pipeline raises after writing run_summary.json and the report.
RUN_STOPPED = (PipelineRunError, PipelineDataError)


# A log line, while a component runs, that says it did nothing: TFX's Pusher ("Model on
# ... was not blessed by model validation"), the TFLiteConverter ("... was not blessed;
# nothing converted"), and the launcher when a component's inputs resolve to none.
_SKIPPED = ((re.compile(r"\bnot blessed\b"), "not blessed"),
            (re.compile(r"^Skipping execution for "), "no inputs"))


class ComponentProgress(logging.Handler):
    """Follows LocalDagRunner's 'Component X is running/finished.' log lines.

    Prints one line per component as it starts and ends, and times each one; a component
    that did nothing ends with `skipped (<why>)` instead of its time.
    """

    def __init__(self, component_ids: List[str], progress: ProgressFn):
        super().__init__(level=logging.INFO)
        self.component_ids = component_ids
        self.progress = progress
        self.seconds: Dict[str, float] = {}
        self.running: Optional[str] = None
        self.started = 0.0  # when the running component started (perf_counter)
        #: Components that did nothing -> why (see _SKIPPED).
        self.skipped: Dict[str, str] = {}
        #: Called on every record (the run refreshes its console filters with it).
        self.on_record: Optional[Callable[[], None]] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.on_record is not None:
            self.on_record()
        message = record.getMessage()
        if self.running is not None:
            for pattern, why in _SKIPPED:
                if pattern.search(message):
                    self.skipped.setdefault(self.running, why)
        if message.startswith("Component ") and record.args:
            node_id = record.args[0]
            position = (f"[{self.component_ids.index(node_id) + 1}/{len(self.component_ids)}]"
                        if node_id in self.component_ids else "[?]")
            if record.msg.endswith("is running."):
                self.running = node_id
                self.started = time.perf_counter()
                self.progress(f"{position} {node_id} ...")
            elif record.msg.endswith("is finished."):
                elapsed = time.perf_counter() - self.started
                self.seconds[node_id] = round(elapsed, 2)
                self.running = None
                if node_id in self.skipped:
                    self.progress(f"{position} {node_id} skipped ({self.skipped[node_id]})")
                else:
                    self.progress(f"{position} {node_id} done in {elapsed:.1f}s")


class Heartbeat:
    """Every `interval` seconds while a component runs, a line with its elapsed time, so a
    long step (ExampleGen, Transform, Evaluator, TFLite) is never silent for minutes. The
    Trainer is left out: its epochs have their own progress (pipeline.keras_progress)."""

    def __init__(self, tracker: ComponentProgress, progress: ProgressFn, interval: float = 30.0,
                 quiet_ids: Sequence[str] = ()):
        import threading

        self.tracker = tracker
        self.progress = progress
        self.interval = interval
        self.quiet_ids = set(quiet_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tfprod-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            running, started = self.tracker.running, self.tracker.started
            if running is None or running in self.quiet_ids:
                continue
            elapsed = time.perf_counter() - started
            if elapsed >= self.interval:
                minutes, seconds = divmod(int(elapsed), 60)
                self.progress(f"  {running}: still running ({minutes}m{seconds:02d}s)")


def _console_handlers() -> List[logging.Handler]:
    """The handlers that write to the console: the stream handlers of the root and
    tensorflow loggers (Beam's logging.basicConfig, TensorFlow's own) and absl's."""
    from absl import logging as absl_logging

    found: List[logging.Handler] = [absl_logging.get_absl_handler()]
    for logger in (logging.getLogger(), logging.getLogger("tensorflow")):
        found += [handler for handler in logger.handlers
                  if isinstance(handler, logging.StreamHandler)
                  and not isinstance(handler, logging.FileHandler) and handler not in found]
    return found


_HARMLESS_FILTER = console.HarmlessFilter()


def _filter_console(verbose: bool) -> None:
    """Puts console.HARMLESS's filter on every console handler (verbose: none); run again
    as the run goes, since libraries may add a handler while it runs."""
    if verbose:
        return
    for handler in _console_handlers():
        if _HARMLESS_FILTER not in handler.filters:
            handler.addFilter(_HARMLESS_FILTER)


def _quiet_logs(log_path: str, verbose: bool) -> List[logging.Handler]:
    """Sends every log line to run.log; the console gets WARNING and above (verbose: INFO),
    less the known-harmless lines of tfprod.console.HARMLESS (verbose: with them).
    Returns the added handlers."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_handler = absl_logging.get_absl_handler()
    absl_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # TensorFlow adds its own stderr handler to the "tensorflow" logger when the root logger
    # has none at its import; Beam then calls logging.basicConfig(), and each TensorFlow
    # warning was printed twice (once by each). Its records reach the root's handlers (and
    # run.log) by propagation, so its own handler goes.
    tf_logger = logging.getLogger("tensorflow")
    if root.handlers:
        for handler in list(tf_logger.handlers):
            if isinstance(handler, logging.StreamHandler):
                tf_logger.removeHandler(handler)
    # Beam calls logging.basicConfig(); keep its INFO lines in the log file only.
    for handler in _console_handlers():
        if handler is not absl_handler:
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
    _filter_console(verbose)
    # Python warnings (google.api_core's, deprecations) become log records: in run.log,
    # and on the console less the harmless ones.
    logging.captureWarnings(True)
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    if console.IMPORT_LINES:  # what TensorFlow's import wrote to stderr, held back then
        file_handler.stream.write("".join(
            f"(standard error while importing TensorFlow) {line}\n"
            for line in console.IMPORT_LINES))
        file_handler.flush()
    return [file_handler]


def _chain(error: Optional[BaseException]) -> List[BaseException]:
    """The error and its causes: each link's __cause__, else its __context__."""
    links: List[BaseException] = []
    while error is not None and all(error is not link for link in links):
        links.append(error)
        error = error.__cause__ or error.__context__
    return links


# The last line of a traceback that a Beam worker process sent as text, when the exception
# is one of tfprod's: "tfprod.contract.idx.IdxFormatError: <message> [while running '<step>']".
_WORKER_TRACEBACK_LINE = re.compile(
    r"^(?P<module>tfprod(?:\.\w+)+)\.(?P<name>\w+): (?P<message>.*?)"
    r"(?: \[while running '[^\n]*'\])?$", re.MULTILINE)


def _input_data_error_in_worker_text(error: BaseException) -> Optional[str]:
    """The message of an InputDataError that reached us only as traceback text.

    Beam's DirectRunner keeps the exception object in the chain when it runs in-process
    (runtime.beam_mode: in_process, the default): DoFnRunner._reraise_augmented raises the
    same type with the step name appended, its __context__ the original. In
    multi_processing mode (runtime.beam_mode: multi_process) the DoFn runs in a worker
    process, which answers with its traceback as text, and the runner raises
    RuntimeError(<that text>): the object is gone (tests/test_errors.py shows both). For
    that path only, this reads the last tfprod exception line of the text and checks, by
    the class itself, that it is an InputDataError.
    """
    for match in reversed(list(_WORKER_TRACEBACK_LINE.finditer(str(error)))):
        try:
            module = sys.modules.get(match["module"]) or importlib.import_module(match["module"])
        except ImportError:
            continue
        kind = getattr(module, match["name"], None)
        if isinstance(kind, type) and issubclass(kind, errors.InputDataError):
            return match["message"].strip()
        return None  # the last tfprod error in the text is of another kind
    return None


def _classify_failure(error: Exception, component: Optional[str], log_path: str) -> errors.TfprodError:
    """PipelineDataError when an InputDataError is in the exception's chain (or, from a
    Beam worker process, in its text); PipelineRunError for any other failure."""
    links = _chain(error)
    # The deepest one: Beam re-raises a DoFn's error as a copy whose message ends with
    # " [while running '<step>']", the original being the copy's __context__.
    bad_data = [link for link in links if isinstance(link, errors.InputDataError)]
    if bad_data:
        return PipelineDataError(str(bad_data[-1]), component)
    for link in links:  # only where a Beam worker process sent the error as text
        detail = _input_data_error_in_worker_text(link)
        if detail is not None:
            return PipelineDataError(detail, component)
    text = str(error)
    where = f"component {component} failed" if component else "the pipeline failed"
    return PipelineRunError(
        f"{where}: {type(error).__name__}: {text.strip().splitlines()[-1] if text.strip() else ''}"
        f"\nThe full log is in {log_path}", component)


# Kept under its old name for callers of the library.
preflight_check = checks.preflight


def finish_run_files(paths: layout.PipelinePaths, run_summary: summary_lib.RunSummary,
                     progress: ProgressFn) -> None:
    """Writes the report, then puts the run's config and summary in place.

    The report reads the config from the in-progress file; the summary is written to a
    temporary file; then config.yaml and run_summary.json are renamed into place, one right
    after the other and after report.html, so a run killed at any point leaves the three
    files of one run (the last finished one), not a new config beside an old summary.
    """
    progress("Writing the run report ...")
    report_builder.write_after_run(run_summary, progress, config_path=paths.running_config_path)
    temporary_summary = paths.summary_path + ".tmp"
    with open(temporary_summary, "w", encoding="utf-8") as handle:
        json.dump(run_summary.to_json(), handle, indent=2)
    os.replace(paths.running_config_path, paths.config_path)
    os.replace(temporary_summary, paths.summary_path)


def run_pipeline(experiment: config_lib.ExperimentConfig, progress: ProgressFn = print,
                 verbose: bool = False, checked: bool = False) -> summary_lib.RunSummary:
    """Runs the pipeline locally and returns (and writes) the run summary.

    checked: the caller ran checks.preflight on this experiment already (`tfprod run` does,
    before TensorFlow is imported), so it is not run twice.

    Raises:
      tfprod.errors.ConfigError: a bad path in the config, or the output directory is
        held by another run (before the run starts).
      tfprod.errors.InputDataError: unreadable input files (before the run starts).
      PipelineRunError: a component failed; run_summary.json and the report are written
        all the same.
      PipelineDataError: a component stopped on the input data (an InputDataError in the
        failure's chain); run_summary.json and the report are written all the same.
    """
    if not checked:
        checks.preflight(experiment)
    paths = layout.PipelinePaths(experiment.runtime.output_dir)
    os.makedirs(paths.output_dir, exist_ok=True)
    with recovery.hold_output_dir(paths) as running_config:
        killed_run_config = os.fstat(running_config).st_size > 0
        recovery.write_running_config(running_config, config_lib.config_yaml(experiment))
        recovered = recovery.recover(paths, experiment.export.model_name, killed_run_config)
        if recovered:
            progress(recovery.describe(recovered))
        return _run_holding(experiment, paths, recovered, progress, verbose)


def _run_holding(experiment: config_lib.ExperimentConfig, paths: layout.PipelinePaths,
                 recovered: Dict, progress: ProgressFn, verbose: bool) -> summary_lib.RunSummary:
    """run_pipeline's run, while it holds the output directory."""
    from tfx import v1 as tfx

    log_path = paths.log_path
    added_handlers = _quiet_logs(log_path, verbose)

    tfx_pipeline = pipeline_lib.create_pipeline(experiment, paths)
    component_ids = [component.id for component in tfx_pipeline.components]
    tracker = ComponentProgress(component_ids, progress)
    tracker.on_record = lambda: _filter_console(verbose)
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(tracker)
    started = time.perf_counter()
    failure: Optional[_StoppedRun] = None
    stderr_logger = logging.getLogger("tfprod.stderr")  # INFO: run.log only
    try:
        with console.filtered_stderr(stderr_logger.info, verbose), \
                Heartbeat(tracker, progress, quiet_ids=[layout.TRAINER_ID]):
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
    run_summary.recovered = recovered
    if failure is not None:
        run_summary.status = "failed"
        run_summary.error = errors.describe(failure)
        run_summary.failed_component = failure.component
    finish_run_files(paths, run_summary, progress)
    if failure is not None:
        failure.report_path = run_summary.report_path
        raise failure
    return run_summary
