"""`tfprod run` fails fast, with a message that says what to fix, on bad input."""

import pytest

from tfprod import cli

from tfprod.contract import idx

from tfprod.pipeline import local_runner
from tests.conftest import MNIST_CONFIG


def test_missing_data_dir_exits_2_and_names_it(tmp_path, capsys):
    missing = tmp_path / "no_such_dir"
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(missing),
                     "--output-dir", str(tmp_path / "out")])
    assert code == local_runner.EXIT_BAD_CONFIG
    error = capsys.readouterr().err
    assert str(missing) in error and "--data-dir" in error


def test_missing_idx_file_is_named(tmp_path, tiny_idx_dir, capsys):
    data_dir = tmp_path / "partial"
    data_dir.mkdir()
    for name in (idx.TRAIN_IMAGES, idx.TRAIN_LABELS, idx.TEST_IMAGES):
        (data_dir / name).write_bytes((tiny_idx_dir / name).read_bytes())
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
                     "--output-dir", str(tmp_path / "out")])
    assert code == local_runner.EXIT_BAD_CONFIG
    assert idx.TEST_LABELS in capsys.readouterr().err


def test_truncated_file_exits_3_before_the_pipeline_starts(tmp_path, tiny_idx_dir, capsys):
    data_dir = tmp_path / "truncated"
    data_dir.mkdir()
    for name in idx.IDX_FILES:
        (data_dir / name).write_bytes((tiny_idx_dir / name).read_bytes())
    (data_dir / idx.TRAIN_LABELS).write_bytes((tiny_idx_dir / idx.TRAIN_LABELS).read_bytes()[:30])
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
                     "--output-dir", str(tmp_path / "out")])
    assert code == local_runner.EXIT_BAD_DATA
    error = capsys.readouterr().err
    assert "bad input data" in error and idx.TRAIN_LABELS in error
    assert not (tmp_path / "out" / "pipeline").exists()


def test_bad_override_exits_2(tmp_path, capsys):
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--set", "trainer.epochz=1"])
    assert code == local_runner.EXIT_BAD_CONFIG
    assert "trainer.epochz" in capsys.readouterr().err


def test_missing_config_exits_2(tmp_path, capsys):
    assert cli.main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_run_requires_a_config():
    with pytest.raises(SystemExit):
        cli.main(["run"])
