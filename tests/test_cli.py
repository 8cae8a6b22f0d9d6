"""`tfprod run` fails fast, with a message that says what to fix, on bad input.

Exit codes are the user's contract, so they are written out: 2 a bad config or path,
3 bad input data, 1 a failed component (tfprod.errors.EXIT_CODES).
"""

import os

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


def test_images_of_another_size_exit_3_before_the_pipeline_starts(tmp_path, mnist_sample,
                                                                  capsys):
    """27x28 images under a 28x28 config: the preflight reads the IDX headers and stops,
    naming the file, before any component runs (issue 19, item 14)."""
    from tests.conftest import write_idx_dataset

    train_images, train_labels, test_images, test_labels = mnist_sample
    data_dir = write_idx_dataset(tmp_path / "narrow", train_images[:50, 1:, :],
                                 train_labels[:50], test_images[:20, 1:, :], test_labels[:20])
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
                     "--output-dir", str(tmp_path / "out")])
    assert code == 3
    error = capsys.readouterr().err
    assert f"{data_dir / idx.TRAIN_IMAGES}: images are 27x28" in error
    assert not (tmp_path / "out" / "pipeline").exists()


def _run_into(output_dir, *extra):
    return cli.main(["run", "--config", str(MNIST_CONFIG), "--output-dir", str(output_dir),
                     *extra])


def test_output_dir_that_is_a_file_or_under_a_file_exits_2(tmp_path, tiny_idx_dir, capsys):
    """Issue 19, item 11: checked before any work; works as root too (no permissions)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for output_dir, says in ((a_file, f"--output-dir: {a_file} is a file, not a directory"),
                             (a_file / "out" / "deeper",
                              f"--output-dir: cannot make {a_file / 'out' / 'deeper'}: "
                              f"{a_file} is a file")):
        assert _run_into(output_dir, "--data-dir", str(tiny_idx_dir)) == 2
        assert says in capsys.readouterr().err
    assert a_file.read_text() == "not a directory"
    # Set by --set, or by the config file: named so.
    assert cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(tiny_idx_dir),
                     "--set", f"runtime.output_dir={a_file}"]) == 2
    assert f"--set runtime.output_dir={a_file}: {a_file} is a file" in capsys.readouterr().err
    config = tmp_path / "exp.yaml"
    config.write_text(MNIST_CONFIG.read_text().replace("outputs/mnist_cnn", str(a_file)))
    assert cli.main(["run", "--config", str(config), "--data-dir", str(tiny_idx_dir)]) == 2
    assert f"{config}: runtime.output_dir: {a_file} is a file" in capsys.readouterr().err


def test_output_dir_check_comes_before_tfx_and_the_data(tmp_path):
    """Exit 2 with neither TFX's orchestration nor TensorFlow imported, and the data not
    read (the data dir does not even exist)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code = ("import sys; from tfprod import cli;"
            f"code = cli.main(['run', '--config', {str(MNIST_CONFIG)!r}, '--output-dir', "
            f"{str(a_file)!r}, '--data-dir', {str(tmp_path / 'nowhere')!r}]);"
            "print(code, [m for m in ('tensorflow', 'tfx.orchestration') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "2 []", result.stderr
    assert "--output-dir" in result.stderr and "is a file" in result.stderr


def test_output_dir_on_a_read_only_mount_exits_2(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    """A read-only mount (EROFS) or an immutable directory (EPERM) refuses the write probe;
    simulated, since tests cannot mount or chattr (and root writes through chmod)."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert _run_into(tmp_path / "out", "--data-dir", str(tiny_idx_dir)) == 2
    assert (f"--output-dir: cannot write in {tmp_path} (Read-only file system)"
            in capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a chmod 555 directory: "
                    "the read-only-mount test covers the refused write as root")
def test_output_dir_without_write_permission_exits_2(tmp_path, tiny_idx_dir, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert _run_into(locked / "out", "--data-dir", str(tiny_idx_dir)) == 2
        assert f"--output-dir: cannot write in {locked}" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


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


# --------------------------------------------------------------------------
# Config, paths and data layout are answered before TensorFlow, TFX or Beam is imported.
# --------------------------------------------------------------------------

_HEAVY = ("tensorflow", "tf_keras", "tfx.orchestration", "tfx.v1", "apache_beam")


def _run_in_a_fresh_process(argv):
    """(exit code, heavy modules imported, stdout, stderr, seconds) of cli.main(argv) in a
    new interpreter, timed from its start."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO_ROOT

    code = ("import sys; from tfprod import cli;"
            f"code = cli.main({list(argv)!r});"
            f"print('RESULT', code, [m for m in {_HEAVY!r} if m in sys.modules])")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    seconds = time.perf_counter() - started
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), result.stderr
    exit_code, heavy = last[len("RESULT "):].split(" ", 1)
    return int(exit_code), heavy, result.stdout, result.stderr, seconds


@pytest.mark.parametrize("extra, exit_code, message", [
    (["--set", "trainer.epochz=1"], 2, "unknown key 'trainer.epochz'"),
    (["--set", "model.name=nope"], 2, "unknown model 'nope'"),
    (["--set", "model.name=lstm"], 2, "model 'lstm' fits text_classification"),
    (["--data-dir", "/nonexistent/tfprod-data"], 2, "directory not found"),
    (["--data-dir", "{empty}"], 2, "missing train-images-idx3-ubyte.gz"),
])
def test_config_and_data_errors_come_before_tensorflow_is_imported(tmp_path, extra, exit_code,
                                                                   message):
    """A bad key, model, data dir or data layout: the error, with none of TensorFlow, TFX or
    Beam imported, in seconds (a loose bound for a loaded CI machine; the figure on a quiet
    one is bench/cli_bench.py's)."""
    (tmp_path / "empty").mkdir()
    extra = [value.replace("{empty}", str(tmp_path / "empty")) for value in extra]
    code, heavy, _, stderr, seconds = _run_in_a_fresh_process(
        ["run", "--config", str(MNIST_CONFIG), "--output-dir", str(tmp_path / "out")] + extra)
    assert (code, heavy) == (exit_code, "[]"), stderr
    assert message in stderr
    assert seconds < 15


def test_the_first_line_says_what_the_run_will_do_before_tensorflow(tmp_path):
    """The config, model, task, data and output dir are printed before the heavy imports
    (here the data's layout is wrong, so the run stops right after that line)."""
    (tmp_path / "empty").mkdir()
    code, heavy, stdout, _, _ = _run_in_a_fresh_process(
        ["run", "--config", str(MNIST_CONFIG), "--output-dir", str(tmp_path / "out"),
         "--data-dir", str(tmp_path / "empty")])
    assert (code, heavy) == (2, "[]")
    first = stdout.splitlines()[:3]
    assert first[0] == (f"tfprod run: mnist_cnn ({MNIST_CONFIG}): model cnn, "
                        "task image_classification")
    assert first[1].split() == ["data:", str(tmp_path / "empty")]
    assert first[2].split() == ["outputs:", str(tmp_path / "out")]


def test_every_config_passes_its_checks_without_tensorflow_where_its_reader_allows():
    """checks.check_experiment never imports TensorFlow (models.catalog, recipe_checks)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = ("import glob, sys; from tfprod.pipeline import checks, config;"
            "[checks.check_experiment(config.load_config(path)) "
            " for path in sorted(glob.glob('configs/*.yaml'))];"
            f"print([m for m in {_HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


@pytest.mark.parametrize("extra, level", [([], "2"), (["--verbose"], None)])
def test_tensorflow_cxx_logs_are_quieted_unless_verbose(extra, level, monkeypatch):
    """main() sets TF_CPP_MIN_LOG_LEVEL=2 before any subcommand can import TensorFlow (its
    worker processes inherit it); --verbose leaves TensorFlow's C++ lines alone."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert cli.main(["run", "--config", str(MNIST_CONFIG), "--set", "trainer.epochz=1"]
                    + extra) == 2
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == level
