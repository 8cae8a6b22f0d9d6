"""build_report(output_dir): the run report, written to <output-dir>/report.html."""

import logging
import os
import time
import traceback
from typing import Any, Callable, Dict, Optional

from tfprod.pipeline.report import html, sections
from tfprod.contract import layout
from tfprod.pipeline.report.run_data import ReportError, RunData, load_run

logger = logging.getLogger(__name__)


def _build_section(builder: Callable[[RunData], Optional[html.Section]],
                   run: RunData) -> Optional[html.Section]:
    """A section (None: not one for this run's task); a builder that fails shows its error
    in the report instead of losing it all."""
    try:
        return builder(run)
    except Exception as error:  # One broken section must not cost the whole report.
        logger.warning("report section %s failed:\n%s", builder.__name__, traceback.format_exc())
        name = builder.__name__.replace("_section", "")
        return html.Section(name, name.capitalize(), (
            f'<p class="section-error">This section could not be built: '
            f"{html.escape(type(error).__name__)}: {html.escape(error)}</p>"), present=False)


def render(run: RunData) -> str:
    """The report's HTML for a loaded run."""
    built = [section for section in (_build_section(builder, run)
                                     for builder in sections.SECTION_BUILDERS) if section]
    experiment = run.summary.get("experiment") or run.config.get("name") or "run"
    status = run.summary.get("status", "unknown")
    blessed = ("blessed" if run.summary.get("blessed") else "not blessed") \
        if status == "succeeded" else f"failed at {run.summary.get('failed_component') or '?'}"
    headline = sections.headline_metric(run)
    verdict = f"{status} · {blessed}" + (f" · {headline[0]} {headline[1]}" if headline else "")
    return html.page(f"tfprod run report: {experiment}", f"{run.output_dir} · {verdict}", built)


def build_report(output_dir: str, summary: Optional[Dict[str, Any]] = None,
                 report_path: Optional[str] = None, config_path: Optional[str] = None) -> str:
    """Builds the report of the run in output_dir and returns the file's path.

    Args:
      output_dir: a `tfprod run` output directory.
      summary: the run summary as a dict (the runner passes the one it is about to write);
        read from run_summary.json when None.
      report_path: where to write; defaults to <output_dir>/report.html.
      config_path: the run's config; defaults to <output_dir>/config.yaml (the runner
        passes its in-progress config, which becomes config.yaml after the report).

    Raises:
      ReportError: output_dir holds no run.
    """
    run = load_run(output_dir, summary, config_path)
    page = render(run)
    report_path = report_path or os.path.join(run.output_dir, layout.REPORT_FILE)
    temporary = report_path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(temporary, report_path)
    return report_path


def write_after_run(run_summary, progress: Callable[[str], None],
                    config_path: Optional[str] = None) -> Optional[str]:
    """The runner's hook: records the git commit, writes the report, sets run_summary.report_path.

    A report that cannot be written is a warning, not a failed run. Returns the path or None.
    config_path: as build_report's.
    """
    from tfprod.pipeline.report.run_data import source_commit

    run_summary.git_commit = source_commit()
    started = time.perf_counter()
    try:
        path = build_report(run_summary.output_dir, run_summary.to_json(),
                            config_path=config_path)
    except Exception as error:  # The run's result matters more than its report: warn, go on.
        logger.warning("the run report failed:\n%s", traceback.format_exc())
        progress(f"warning: the run report was not written: {type(error).__name__}: {error}")
        return None
    run_summary.report_path = path
    progress(f"Run report written in {time.perf_counter() - started:.1f}s")
    return path


__all__ = ["ReportError", "build_report", "render", "write_after_run"]
