"""`tfprod run` fails fast, with a message that says what to fix, on bad input.

Exit codes are the user's contract, so they are written out: 2 a bad config or path,
3 bad input data, 1 a failed component (tfprod.errors.EXIT_CODES).
"""

import pytest

from tfprod import cli

from tfprod.contract import idx
from tests.conftest import MNIST_CONFIG


def test_missing_data_dir_exits_2_and_names_it(tmp_path, capsys):
    missing = tmp_path / "no_such_dir"
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(missing),
                     "--output-dir", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "--data-dir" in error


def test_missing_idx_file_is_named(tmp_path, tiny_idx_dir, capsys):
    data_dir = tmp_path / "partial"
    data_dir.mkdir()
    for name in (idx.TRAIN_IMAGES, idx.TRAIN_LABELS, idx.TEST_IMAGES):
        (data_dir / name).write_bytes((tiny_idx_dir / name).read_bytes())
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
                     "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert idx.TEST_LABELS in capsys.readouterr().err


def test_truncated_file_exits_3_before_the_pipeline_starts(tmp_path, tiny_idx_dir, capsys):
    data_dir = tmp_path / "truncated"
    data_dir.mkdir()
    for name in idx.IDX_FILES:
        (data_dir / name).write_bytes((tiny_idx_dir / name).read_bytes())
    (data_dir / idx.TRAIN_LABELS).write_bytes((tiny_idx_dir / idx.TRAIN_LABELS).read_bytes()[:30])
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
                     "--output-dir", str(tmp_path / "out")])
    assert code == 3
    error = capsys.readouterr().err
    assert "bad input data" in error and idx.TRAIN_LABELS in error
    assert not (tmp_path / "out" / "pipeline").exists()


def test_bad_override_exits_2(tmp_path, capsys):
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--set", "trainer.epochz=1"])
    assert code == 2
    assert "trainer.epochz" in capsys.readouterr().err


def test_missing_config_exits_2(tmp_path, capsys):
    assert cli.main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_run_requires_a_config():
    with pytest.raises(SystemExit):
        cli.main(["run"])


def test_every_subcommand_error_goes_through_one_handler(monkeypatch, capsys):
    """A TfprodError from a subcommand: `error: <message>` on stderr, its kind's code."""
    from tfprod import errors
    from tfprod.pipeline.report import cli as report_cli

    for error, code, line in [
            (errors.ConfigError("trainer.epochs: expected int"), 2,
             "error: trainer.epochs: expected int"),
            (idx.IdxFormatError("t10k-labels: truncated"), 3,
             "error: bad input data: t10k-labels: truncated"),
            (errors.RunFailure("component Trainer failed"), 1,
             "error: component Trainer failed")]:
        monkeypatch.setattr(report_cli, "_report_command", lambda args, error=error: _raise(error))
        assert cli.main(["report", "--output-dir", "x"]) == code
        assert capsys.readouterr().err == line + "\n"


def test_an_error_that_is_not_tfprods_is_not_swallowed(monkeypatch):
    """A bug (here a KeyError) keeps its traceback: only TfprodError becomes an exit code."""
    from tfprod.pipeline.report import cli as report_cli

    monkeypatch.setattr(report_cli, "_report_command", lambda args: _raise(KeyError("a bug")))
    with pytest.raises(KeyError):
        cli.main(["report", "--output-dir", "x"])


def _raise(error):
    raise error


@pytest.mark.parametrize("raised, code, message", [
    (lambda: _beam_copy(idx.IdxFormatError("train-labels-idx1-ubyte: truncated")), 3,
     "bad input data: train-labels-idx1-ubyte: truncated"),
    (lambda: RuntimeError("NaN loss"), 1, "component {first} failed: RuntimeError: NaN loss")],
    ids=["input-data", "run-failure"])
def test_a_failed_run_writes_its_summary_and_report_then_exits_by_kind(
        raised, code, message, tmp_path, tiny_idx_dir, monkeypatch, capsys):
    """A component's failure (here from a stand-in for LocalDagRunner, after the first
    component started): run_summary.json and the report are written, then the exit code."""
    import json
    import logging

    from tfx import v1 as tfx

    started = []

    class FailingRunner:
        def run(self, pipeline):
            started.append(pipeline.components[0].id)
            logging.getLogger("absl").info("Component %s is running.", started[0])
            raise raised()

    monkeypatch.setattr(tfx.orchestration, "LocalDagRunner", FailingRunner)
    output_dir = tmp_path / "out"
    code_got = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(tiny_idx_dir),
                         "--output-dir", str(output_dir)])
    captured = capsys.readouterr()
    assert code_got == code, captured.err
    message = message.format(first=started[0])
    assert f"error: {message}" in captured.err
    summary = json.loads((output_dir / "run_summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_component"] == started[0]
    assert summary["error"].startswith(message)
    assert f"Report: {output_dir / 'report.html'}" in captured.out


def _beam_copy(original):
    """What Beam raises from a DoFn: a copy naming the step, the original its __context__."""
    try:
        raise original
    except type(original) as error:
        try:
            raise type(error)(f"{error} [while running 'ParseIdx']")
        except type(error) as copy:
            return copy


def test_version_prints_tfprods_version_without_tensorflow():
    import subprocess
    import sys

    import tfprod

    code = ("import sys\nfrom tfprod import cli\ntry:\n    cli.main(['--version'])\n"
            "except SystemExit as done:\n    print('exit', done.code)\n"
            "print('tensorflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == [f"tfprod {tfprod.__version__}", "exit 0", "False"]
