"""AtomicPusher: TFX's filesystem Pusher, except that a pushed version appears whole or not at all.

TFX's Pusher copies the model file by file straight into <base>/<version>/ (saved_model.pb
last), so a run killed mid-copy leaves a numeric version directory with only part of the
model in it, forever. Here the model is copied into a temporary directory beside the
versions, <base>/.tmp-<version>-<random>, and renamed to <base>/<version> once complete: a
rename within one directory is atomic on a local (POSIX) filesystem, so a model server
polling <base> sees either no new version or the whole of it (on an object store such as
GCS a directory rename moves object by object: the version still appears only after the
whole copy, but not in one step). A name that is not ASCII
decimal digits is never a version to a model server, so the temporary one is ignored.

What a killed push leaves (a temporary directory, or a numeric directory with no
saved_model.pb from an older, non-atomic push) is removed by remove_partial_pushes, which
the local runner calls before the next run in the same output directory. A version
directory with a saved_model.pb is never removed.

Everything else (the blessing check, the versioning, the archive copy into the PushedModel
artifact, its custom properties) is TFX's Pusher's, so the rest of the pipeline and the run
summary read the push as before.
"""

import os
import shutil
import time
import uuid
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx import v1 as tfx
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

# Temporary push directories: <base>/.tmp-<version>-<random>. Not a version to a model
# server (only ASCII-decimal names are).
TEMPORARY_PREFIX = ".tmp-"
SAVED_MODEL_FILE = "saved_model.pb"


def is_version_name(name: str) -> bool:
    """A model server's version directory: ASCII decimal digits only ('²' is not one)."""
    return name.isascii() and name.isdigit()


def push_atomically(model_path: str, base_directory: str, version: str) -> str:
    """Copies the SavedModel at model_path to <base_directory>/<version> through a temporary
    directory beside it; returns the version's path.

    A copy that fails removes its temporary directory and raises; a process killed during
    the copy leaves only the temporary directory (remove_partial_pushes clears it).
    """
    serving_path = os.path.join(base_directory, version)
    temporary = os.path.join(base_directory,
                             f"{TEMPORARY_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    fileio.makedirs(base_directory)
    try:
        io_utils.copy_dir(model_path, temporary)
        fileio.rename(temporary, serving_path, overwrite=False)
    except Exception:  # Leave nothing half-copied behind, then fail as TFX's Pusher would.
        if fileio.exists(temporary):
            fileio.rmtree(temporary)
        raise
    return serving_path


class AtomicPusherExecutor(pusher_executor.Executor):
    """TFX's Pusher executor with the filesystem push made atomic (push_atomically)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        kind = destination.WhichOneof("destination")
        if kind != "filesystem":
            raise NotImplementedError(f"AtomicPusher pushes to a filesystem only, not {kind}")
        filesystem = destination.filesystem
        if filesystem.versioning not in (pusher_pb2.Versioning.AUTO,
                                         pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid Versioning {filesystem.versioning}")
        version = str(int(time.time()))
        serving_path = os.path.join(filesystem.base_directory, version)
        if fileio.exists(serving_path):  # As TFX: the same model pushed twice in one second.
            logging.info("Destination directory %s already exists, skipping current push.",
                         serving_path)
        else:
            push_atomically(model_path, filesystem.base_directory, version)
            logging.info("Model written to serving path %s.", serving_path)
        # The archive copy in the PushedModel artifact, as TFX's Pusher keeps it.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        logging.info("Model pushed to %s.", model_push.uri)


class AtomicPusher(tfx.components.Pusher):
    """The Pusher component with AtomicPusherExecutor (TFX deprecates passing an executor
    through custom_executor_spec in favour of a component that names its own)."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)


def remove_partial_pushes(base_directory: str) -> List[str]:
    """Removes what killed pushes left in a local serving base directory; returns the paths.

    Removed: temporary push directories (.tmp-*), and version directories with no
    saved_model.pb (an older Pusher's copy, killed before its last file). A version with a
    saved_model.pb is complete to a model server and is never touched. Call it only while no
    push into base_directory is running (the local runner holds its output directory).
    """
    if not os.path.isdir(base_directory):
        return []
    removed = []
    for name in sorted(os.listdir(base_directory)):
        path = os.path.join(base_directory, name)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        partial = name.startswith(TEMPORARY_PREFIX) or (
            is_version_name(name) and not os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)))
        if partial:
            shutil.rmtree(path)
            removed.append(path)
    return removed
