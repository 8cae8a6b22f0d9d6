"""The run report: one self-contained HTML page per run (`<output-dir>/report.html`).

run_data collects a finished run (ML Metadata, artifacts, run_summary.json,
training_stats.json, config.yaml); sections turns it into HTML sections with
inline charts (charts); builder writes the page; cli adds `tfprod report`.
"""
