"""A killed run leaves the last finished run's files consistent, and the next run clears
what it left: executions still RUNNING in ML Metadata, partial pushes (issue 19, item 13).

A kill is simulated by a stand-in LocalDagRunner raising a BaseException (no `except
Exception` cleanup runs, as with kill -9); ML Metadata is a temporary SQLite store written
with ml_metadata directly.
"""

import json

import pytest
import yaml
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tfprod.contract import layout
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import local_runner, recovery
from tests.conftest import MNIST_CONFIG

State = metadata_store_pb2.Execution.State


class Killed(BaseException):
    """Stands in for kill -9 during a component."""


def _store(path):
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(path)
    connection.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    return metadata_store.MetadataStore(connection)


def _executions(path, *states):
    """Puts one execution per state into the store at path; returns their ids."""
    store = _store(path)
    kind = metadata_store_pb2.ExecutionType(name="tfprod.test.Component")
    type_id = store.put_execution_type(kind)
    executions = []
    for state in states:
        execution = metadata_store_pb2.Execution(type_id=type_id)
        execution.last_known_state = state
        executions.append(execution)
    return store.put_executions(executions)


def _experiment(data_dir, output_dir, epochs):
    return config_lib.load_config(str(MNIST_CONFIG), [
        f"data.data_dir={data_dir}", f"runtime.output_dir={output_dir}",
        f"trainer.epochs={epochs}"])


def _stand_in_runner(monkeypatch, raised, leave=lambda: None):
    from tfx import v1 as tfx

    class StandIn:
        def run(self, pipeline):
            leave()
            raise raised

    monkeypatch.setattr(tfx.orchestration, "LocalDagRunner", StandIn)


def test_unfinished_executions_are_marked_canceled_and_counted(tmp_path):
    path = tmp_path / layout.METADATA_FILE
    running, new, complete, failed = _executions(
        path, State.RUNNING, State.NEW, State.COMPLETE, State.FAILED)
    assert recovery.abandon_unfinished_executions(str(path)) == 2
    by_id = {e.id: e for e in _store(path).get_executions()}
    for marked, was in ((running, "RUNNING"), (new, "NEW")):
        assert by_id[marked].last_known_state == State.CANCELED
        reason = by_id[marked].custom_properties[recovery.ABANDONED_PROPERTY].string_value
        assert reason.startswith(f"left {was} by a run that did not finish")
    assert by_id[complete].last_known_state == State.COMPLETE
    assert by_id[failed].last_known_state == State.FAILED
    assert recovery.abandon_unfinished_executions(str(path)) == 0
    assert recovery.abandon_unfinished_executions(str(tmp_path / "none.sqlite")) == 0


def test_a_killed_run_keeps_the_last_finished_runs_files_and_the_next_run_clears_up(
        tmp_path, tiny_idx_dir, monkeypatch):
    paths = layout.PipelinePaths(str(tmp_path / "out"))
    # The last finished run: epochs 2.
    _stand_in_runner(monkeypatch, RuntimeError("stand-in failure"))
    with pytest.raises(local_runner.PipelineRunError):
        local_runner.run_pipeline(_experiment(tiny_idx_dir, paths.output_dir, 2),
                                  progress=lambda line: None)
    finished = {name: (tmp_path / "out" / name).read_bytes()
                for name in (layout.CONFIG_FILE, layout.SUMMARY_FILE, layout.REPORT_FILE)}
    assert yaml.safe_load(finished[layout.CONFIG_FILE])["trainer"]["epochs"] == 2

    # A run with epochs 7 killed mid-pipeline, leaving a Trainer execution RUNNING and a
    # partial push.
    partial = tmp_path / "out" / layout.SERVING_DIR / "mnist_cnn" / ".tmp-1700000000-0a1b2c3d"

    def leave():
        _executions(paths.metadata_path, State.RUNNING)
        partial.mkdir(parents=True)

    _stand_in_runner(monkeypatch, Killed(), leave)
    with pytest.raises(Killed):
        local_runner.run_pipeline(_experiment(tiny_idx_dir, paths.output_dir, 7),
                                  progress=lambda line: None)
    for name, content in finished.items():  # config.yaml was overwritten before the fix
        assert (tmp_path / "out" / name).read_bytes() == content, name
    running = yaml.safe_load(open(paths.running_config_path, encoding="utf-8"))
    assert running["trainer"]["epochs"] == 7

    # The next run says what it cleared, and ends with its own three files.
    lines = []
    _stand_in_runner(monkeypatch, RuntimeError("stand-in failure"))
    with pytest.raises(local_runner.PipelineRunError):
        local_runner.run_pipeline(_experiment(tiny_idx_dir, paths.output_dir, 5),
                                  progress=lines.append)
    assert ("An earlier run in this directory did not finish: marked 1 execution(s) left "
            f"RUNNING in ML Metadata as CANCELED; removed 1 partial push(es): {partial}"
            in lines)
    summary = json.loads(open(paths.summary_path, encoding="utf-8").read())
    assert summary["recovered"] == {"unfinished_run": True, "abandoned_executions": 1,
                                    "removed_partial_pushes": [str(partial)]}
    assert yaml.safe_load(open(paths.config_path, encoding="utf-8"))["trainer"]["epochs"] == 5
    assert "epochs: 5" in open(paths.report_path, encoding="utf-8").read()
    assert not partial.exists()
    assert not (tmp_path / "out" / layout.RUNNING_CONFIG_FILE).exists()


def test_a_second_run_in_a_held_output_dir_is_refused(tmp_path):
    paths = layout.PipelinePaths(str(tmp_path))
    with recovery.hold_output_dir(paths) as held:
        recovery.write_running_config(held, "name: first\n")
        with pytest.raises(recovery.OutputDirInUse, match=r"in use by another `tfprod run`"):
            with recovery.hold_output_dir(paths):
                pass
        assert open(paths.running_config_path, encoding="utf-8").read() == "name: first\n"
    with recovery.hold_output_dir(paths):  # free once the first let go
        pass
