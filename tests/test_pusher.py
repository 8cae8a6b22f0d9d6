"""The atomic Pusher: a pushed version appears whole or not at all (issue 19, item 12).

The executor runs on a stand-in SavedModel directory (the Pusher only copies files); a
push killed mid-copy is simulated by making the copy raise after a few files.
"""

import os

import pytest
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from tfprod.contract import layout
from tfprod.pipeline import pusher

MODEL_FILES = ("fingerprint.pb", "assets/labels.txt", "assets.extra/tf_serving_warmup_requests",
               "variables/variables.index", "variables/variables.data-00000-of-00001",
               "saved_model.pb")


class Killed(BaseException):
    """Stands in for kill -9: no `except Exception` cleanup runs."""


def _model_artifact(tmp_path):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    serving = tmp_path / "model" / "Format-Serving"
    for name in MODEL_FILES:
        (serving / name).parent.mkdir(parents=True, exist_ok=True)
        (serving / name).write_bytes(name.encode() * 100)
    return model


def _push(tmp_path, base_directory):
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    destination = tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
        base_directory=str(base_directory)))
    pusher.AtomicPusherExecutor().Do(
        {standard_component_specs.MODEL_KEY: [_model_artifact(tmp_path)],
         standard_component_specs.MODEL_BLESSING_KEY: [blessing]},
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)})
    return pushed


def _fail_copy_after(monkeypatch, files, error):
    """fileio.copy (what TFX's copy_dir calls per file) raises after `files` files."""
    copied = []
    real_copy = fileio.copy

    def copy(source, destination, overwrite=False):
        if len(copied) == files:
            raise error
        copied.append(destination)
        real_copy(source, destination, overwrite)

    monkeypatch.setattr(fileio, "copy", copy)
    return copied


def _versions(base_directory):
    return [name for name in os.listdir(base_directory) if pusher.is_version_name(name)]


def test_push_renames_a_complete_copy_into_place(tmp_path):
    base = tmp_path / "serving" / "mnist"
    pushed = _push(tmp_path, base)
    (version,) = os.listdir(base)  # nothing else beside it: the temporary dir is gone
    assert pusher.is_version_name(version)
    for name in MODEL_FILES:
        assert (base / version / name).read_bytes() == name.encode() * 100
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == str(base / version)
    assert pushed.get_string_custom_property("pushed_version") == version


def test_a_push_killed_mid_copy_leaves_no_version_and_the_next_run_removes_it(
        tmp_path, monkeypatch):
    base = tmp_path / "serving" / "mnist"
    copied = _fail_copy_after(monkeypatch, 2, Killed())
    with pytest.raises(Killed):
        _push(tmp_path, base)
    assert len(copied) == 2
    assert _versions(base) == []  # TFX's Pusher left <version>/ with the first two files
    (leftover,) = os.listdir(base)
    assert leftover.startswith(pusher.TEMPORARY_PREFIX)
    # An older, non-atomic push's partial version, and a complete version beside them.
    (base / "1700000000" / "assets").mkdir(parents=True)
    (base / "1600000000").mkdir()
    (base / "1600000000" / "saved_model.pb").write_bytes(b"complete")
    (base / "²").mkdir()  # not a version to a server: left alone
    removed = pusher.remove_partial_pushes(str(base))
    assert removed == [str(base / leftover), str(base / "1700000000")]
    assert sorted(os.listdir(base)) == ["1600000000", "²"]


def test_a_failed_copy_removes_its_temporary_directory(tmp_path, monkeypatch):
    base = tmp_path / "serving" / "mnist"
    _fail_copy_after(monkeypatch, 3, OSError("No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        _push(tmp_path, base)
    assert os.listdir(base) == []


def test_the_pipeline_pushes_with_the_atomic_executor(tmp_path):
    from tfprod.pipeline import config as config_lib
    from tfprod.pipeline import pipeline as pipeline_lib
    from tests.conftest import MNIST_CONFIG

    experiment = config_lib.load_config(str(MNIST_CONFIG), [f"runtime.output_dir={tmp_path}"])
    built = pipeline_lib.create_pipeline(experiment, layout.PipelinePaths(str(tmp_path)))
    (component,) = [c for c in built.components if c.id == layout.PUSHER_ID]
    assert component.executor_spec.executor_class is pusher.AtomicPusherExecutor
