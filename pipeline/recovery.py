"""One run at a time per output directory, and what a killed run left behind.

A run holds its output directory through a lock on its in-progress config
(layout.RUNNING_CONFIG_FILE, config.yaml.running), which becomes config.yaml only when the
run ends, beside its run_summary.json and report.html (local_runner.finish_run_files).
So config.yaml, run_summary.json and report.html always describe the same finished run,
even after a kill.

Whoever takes the lock knows that no run is working in the directory, so anything a run
left unfinished there is abandoned: executions that ML Metadata still records as RUNNING
(or NEW) are marked CANCELED with a custom property saying why, and partial pushes in the
serving directory are removed (pipeline.pusher.remove_partial_pushes; complete versions are
never touched). recover() does both and says what it did, for the progress line and the run
summary.
"""

import contextlib
import datetime
import fcntl
import os
from typing import Any, Dict, Iterator, List

from tfprod.contract import layout
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import pusher

# The custom property an abandoned execution gets (why, and when it was marked).
ABANDONED_PROPERTY = "tfprod_abandoned"


class OutputDirInUse(config_lib.ConfigError):
    """Another `tfprod run` holds the output directory (exit code 2)."""


@contextlib.contextmanager
def hold_output_dir(paths: layout.PipelinePaths) -> Iterator[int]:
    """Locks the run's in-progress config file for the time of the run; yields its fd.

    The file is opened without truncating it, so a refused run leaves the holder's file as
    it was. The lock goes with the process: a killed run leaves the file, not the lock.

    Raises:
      OutputDirInUse: another process holds the lock.
    """
    descriptor = os.open(paths.running_config_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirInUse(
                f"runtime.output_dir: {paths.output_dir} is in use by another `tfprod run` "
                f"(it holds {layout.RUNNING_CONFIG_FILE}); wait for it to end, or pass "
                "another --output-dir") from None
        yield descriptor
    finally:
        os.close(descriptor)


def write_running_config(descriptor: int, text: str) -> None:
    """Replaces the locked in-progress config file's content with text."""
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    data = text.encode("utf-8")
    while data:
        data = data[os.write(descriptor, data):]
    os.fsync(descriptor)


def abandon_unfinished_executions(metadata_path: str) -> int:
    """Marks executions left RUNNING or NEW in a SQLite ML Metadata store as CANCELED, each
    with ABANDONED_PROPERTY; returns how many. Call it only while holding the directory."""
    if not os.path.isfile(metadata_path):
        return 0
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    state = metadata_store_pb2.Execution.State
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    store = metadata_store.MetadataStore(connection)
    unfinished = [execution for execution in store.get_executions()
                  if execution.last_known_state in (state.RUNNING, state.NEW)]
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for execution in unfinished:
        was = state.Name(execution.last_known_state)
        execution.last_known_state = state.CANCELED
        execution.custom_properties[ABANDONED_PROPERTY].string_value = (
            f"left {was} by a run that did not finish; marked CANCELED at {when} when the "
            "next run started")
    if unfinished:
        store.put_executions(unfinished)
    return len(unfinished)


def recover(paths: layout.PipelinePaths, model_name: str,
            killed_run_config: bool) -> Dict[str, Any]:
    """Clears what an unfinished earlier run left; returns what was done ({} if nothing).

    Args:
      paths: the run's paths (the caller holds the directory: hold_output_dir).
      model_name: export.model_name, whose serving directory is cleaned of partial pushes.
      killed_run_config: a config.yaml.running with content was there before this run.

    Returns:
      {"unfinished_run": True, "abandoned_executions": n, "removed_partial_pushes": [paths]}
      when any of them was found, else {}.
    """
    abandoned = abandon_unfinished_executions(paths.metadata_path)
    removed: List[str] = pusher.remove_partial_pushes(paths.serving_model_dir(model_name))
    if not (killed_run_config or abandoned or removed):
        return {}
    return {"unfinished_run": True, "abandoned_executions": abandoned,
            "removed_partial_pushes": removed}


def describe(recovered: Dict[str, Any]) -> str:
    """One progress line for recover()'s record ('' when there is nothing to say)."""
    if not recovered:
        return ""
    parts = [f"marked {recovered['abandoned_executions']} execution(s) left RUNNING in ML "
             "Metadata as CANCELED"]
    if recovered["removed_partial_pushes"]:
        parts.append(f"removed {len(recovered['removed_partial_pushes'])} partial push(es): "
                     + ", ".join(recovered["removed_partial_pushes"]))
    return "An earlier run in this directory did not finish: " + "; ".join(parts)
