"""Config loading, layered overrides and validation."""

import subprocess
import sys

import pytest
import yaml

from tfprod import configlib, errors
from tfprod.pipeline import checks
from tfprod.pipeline import config as config_lib
from tests.conftest import MNIST_CONFIG, REPO_ROOT


def test_defaults_validate():
    config_lib.ExperimentConfig().validate()


def test_loads_the_shipped_config():
    config = config_lib.load_config(str(MNIST_CONFIG))
    assert config.name == "mnist_cnn"
    assert config.model.name == "cnn"
    assert config.data.format is config_lib.DataFormat.IDX
    assert config.runtime.beam_mode is config_lib.BeamMode.IN_PROCESS
    assert config.data.data_dir.endswith("data/mnist_sample")
    assert config.data.data_dir.startswith("/")  # made absolute


def test_overrides_apply_after_the_file_with_types():
    config = config_lib.load_config(str(MNIST_CONFIG), [
        "trainer.epochs=7", "trainer.learning_rate=0.01", "model.cnn.filters=[8, 16]",
        "runtime.enable_cache=false", "runtime.beam_mode=multi_process",
        "export.model_name=123", "trainer.max_steps=null", "trainer.max_steps=5"])
    assert config.trainer.epochs == 7
    assert config.trainer.learning_rate == pytest.approx(0.01)
    assert config.model.cnn.filters == [8, 16]
    assert config.runtime.enable_cache is False
    assert config.runtime.beam_mode is config_lib.BeamMode.MULTI_PROCESS
    assert config.export.model_name == "123"  # kept as text for a string field
    assert config.trainer.max_steps == 5  # the last override wins


def test_int_accepted_for_float_but_not_bool_for_int():
    config = config_lib.load_config(None, ["trainer.learning_rate=1"])
    assert isinstance(config.trainer.learning_rate, float)
    with pytest.raises(config_lib.ConfigError, match=r"trainer.epochs: expected int, got True"):
        config_lib.load_config(None, ["trainer.epochs=true"])


def test_unknown_key_lists_the_allowed_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"epoch": 3}}))
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load_config(str(path))
    message = str(error.value)
    assert "trainer.epoch" in message and "epochs" in message and str(path) in message
    with pytest.raises(config_lib.ConfigError, match=r"unknown key 'trainer.epoch'.*epochs"):
        config_lib.load_config(None, ["trainer.epoch=3"])
    with pytest.raises(config_lib.ConfigError, match=r"unknown key 'nosuch.key'; keys allowed in the top level"):
        config_lib.load_config(None, ["nosuch.key=1"])
    with pytest.raises(config_lib.ConfigError, match=r"not a section"):
        config_lib.load_config(None, ["trainer.epochs.x=1"])


def test_wrong_types_are_reported():
    cases = {
        "trainer.epochs=three": r"trainer.epochs: expected int, got 'three'",
        "model.cnn.filters=32": r"model.cnn.filters: expected list of int",
        "model.cnn.filters=[32, x]": r"model.cnn.filters\[1\]: expected int",
        "runtime.beam_mode=spark": r"runtime.beam_mode: expected one of 'in_process', 'multi_process'",
        "trainer=5": r"trainer: expected a mapping",
    }
    for override, pattern in cases.items():
        with pytest.raises(config_lib.ConfigError, match=pattern):
            config_lib.load_config(None, [override])


def test_invalid_values_are_reported():
    cases = {
        "data.eval_fraction=1.5": r"data.eval_fraction: expected a number in \(0, 1\)",
        "trainer.batch_size=0": r"trainer.batch_size: expected an integer >= 1",
        "eval.accuracy_threshold=2": r"eval.accuracy_threshold",
        "export.model_name=a/b": r"export.model_name",
    }
    for override, pattern in cases.items():
        with pytest.raises(config_lib.ConfigError, match=pattern):
            config_lib.load_config(None, [override])
    # The model registry is checked above the schema (it imports TensorFlow).
    with pytest.raises(config_lib.ConfigError,
                       match=r"unknown model 'resnet9000'; registered models are .*cnn"):
        checks.load_experiment(None, ["model.name=resnet9000"])


def test_malformed_override_and_files(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"not of the form dotted.key=value"):
        config_lib.load_config(None, ["trainer.epochs"])
    with pytest.raises(FileNotFoundError, match=r"config file not found"):
        config_lib.load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(config_lib.ConfigError, match=r"mapping of keys at the top level"):
        config_lib.load_config(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {epochs: [1,\n")
    with pytest.raises(config_lib.ConfigError, match=r"not valid YAML"):
        config_lib.load_config(str(broken))


def test_missing_paths_are_reported(tmp_path):
    config = config_lib.load_config(None, [f"data.data_dir={tmp_path / 'absent'}"])
    with pytest.raises(config_lib.ConfigError, match=r"data.data_dir: directory not found"):
        config.check_paths()
    config = config_lib.load_config(None, [f"data.data_dir={tmp_path}",
                                           f"data.schema_path={tmp_path / 'none.pbtxt'}"])
    with pytest.raises(config_lib.ConfigError, match=r"data.schema_path: file not found"):
        config.check_paths()


def test_saved_config_loads_back_identically(tmp_path):
    config = config_lib.load_config(str(MNIST_CONFIG), ["trainer.epochs=2"])
    path = tmp_path / "out" / "config.yaml"
    config_lib.save_config(config, str(path))
    assert config_lib.load_config(str(path)) == config


def test_a_model_that_does_not_fit_the_task_is_rejected(monkeypatch):
    from tfprod.models import catalog

    monkeypatch.setitem(catalog.MODEL_TASKS, "toy_forecaster", ("forecasting",))
    experiment = config_lib.ExperimentConfig()
    experiment.model.name = "toy_forecaster"
    experiment.validate()  # the schema has no registry: the check is above it
    with pytest.raises(config_lib.ConfigError,
                       match=r"model 'toy_forecaster' fits forecasting, not image_classification"):
        checks.check_experiment(experiment)


def test_image_data_gets_the_image_task():
    from tfprod.models import registry
    from tfprod.pipeline import tasks

    assert tasks.get_task(config_lib.ExperimentConfig()).name == "image_classification"
    assert "cnn" in registry.registered_for_task("image_classification")


# --------------------------------------------------------------------------
# The generic loader (tfprod.configlib) under the schema.
# --------------------------------------------------------------------------


def test_config_errors_are_tfprod_config_errors():
    assert config_lib.ConfigError is configlib.ConfigError
    assert issubclass(config_lib.ConfigError, errors.ConfigError)
    assert issubclass(config_lib.ConfigError, ValueError)


def test_errors_name_the_source_of_the_value(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"data": {"eval_fraction": 1.5}, "trainer": {"epochs": 2}}))
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load_config(str(path))
    assert str(error.value).startswith(f"{path}: data.eval_fraction: expected a number")
    # The same key fixed by --set; another one broken there.
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load_config(str(path), ["data.eval_fraction=0.2", "trainer.batch_size=0"])
    assert str(error.value).startswith(
        "--set trainer.batch_size=0: trainer.batch_size: expected an integer >= 1, got 0")
    with pytest.raises(config_lib.ConfigError, match=r"^--set trainer.epochs=x: trainer.epochs: "
                                                     r"expected int, got 'x'$"):
        config_lib.load_config(str(path), ["trainer.epochs=x"])


def test_set_value_errors_name_the_set_override_not_the_file(tmp_path):
    """A value given by --set over a file that sets the same section is charged to --set,
    also where a check reads two keys at once (issue 19, item 15)."""
    message = r"^--set data.image_width=-1: data.image_width: expected a positive integer"
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(str(MNIST_CONFIG), ["data.image_width=-1"])
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"data": {"format": "table", "table": {
        "label_column": "y", "categorical_columns": ["a"]}}, "model": {"name": "mlp"}}))
    with pytest.raises(config_lib.ConfigError, match=(
            r"^--set data.table.numeric_columns=\[a\]: data.table.categorical_columns/"
            r"numeric_columns: expected each column in at most one")):
        config_lib.load_config(str(path), ["data.table.numeric_columns=[a]"])
    # The file's own bad value is still charged to the file, whatever --set changed beside it.
    path.write_text(yaml.safe_dump({"data": {"image_width": 0}}))
    with pytest.raises(config_lib.ConfigError, match=rf"^{path}: data.image_width"):
        config_lib.load_config(str(path), ["data.image_height=30"])
    # A --set of a key the file set earlier moves it to the later layer.
    assert configlib.source_of("a.b/c", {"a.b": "file", "a.c": "--set a.c=1"}) == "--set a.c=1"
    assert configlib.source_of("a.b/c", {"a.c": "file", "a.b": "--set a.b=1"}) == "--set a.b=1"
    assert configlib.source_of("a.b[2].d", {"a": "file"}) == "file"


def test_checks_above_the_schema_name_the_source_too(tmp_path):
    """model.name is checked against the model registry after loading (checks.py): its error
    names the --set override or the file that gave the name (issue 19, item 15)."""
    experiment = config_lib.load_config(str(MNIST_CONFIG), ["model.name=nope"])
    with pytest.raises(config_lib.ConfigError,
                       match=r"^--set model.name=nope: model.name: unknown model 'nope'"):
        checks.check_experiment(experiment)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "lstm"}}))
    with pytest.raises(config_lib.ConfigError, match=rf"^{path}: model.name: model 'lstm' fits"):
        checks.check_experiment(config_lib.load_config(str(path)))
    # A config built in code has no layers: the message is the check's own.
    built = config_lib.ExperimentConfig()
    built.model.name = "nope"
    with pytest.raises(config_lib.ConfigError, match=r"^model.name: unknown model"):
        checks.check_experiment(built)


def test_one_path_setter_for_overrides_and_values():
    experiment = config_lib.ExperimentConfig()
    config_lib.set_value(experiment, "trainer.epochs", "3", source="--set")
    config_lib.set_value(experiment, "trainer.learning_rate", 0.5)
    config_lib.set_value(experiment, "trainer.optimizer", "sgd")
    config_lib.set_value(experiment, "model.cnn.filters", "[8, 16]")
    config_lib.set_value(experiment, "export.model_name", "007")  # a string stays as written
    config_lib.set_value(experiment, "trainer.max_steps", "null")
    assert (experiment.trainer.epochs, experiment.trainer.learning_rate) == (3, 0.5)
    assert experiment.trainer.optimizer is config_lib.Optimizer.SGD
    assert experiment.model.cnn.filters == [8, 16] and experiment.export.model_name == "007"
    assert experiment.trainer.max_steps is None
    with pytest.raises(config_lib.ConfigError, match=r"^tuning: trainer.epochs: expected int"):
        config_lib.set_value(experiment, "trainer.epochs", 2.5, source="tuning")
    with pytest.raises(config_lib.ConfigError, match=r"unknown key 'trainer.epoch'"):
        config_lib.set_value(experiment, "trainer.epoch", 1)
    assert experiment.trainer.epochs == 3  # unchanged by the refused values


def test_loading_imports_no_tensorflow():
    """The schema's load path (tfprod run's config check) stays light."""
    code = ("import sys; from tfprod.pipeline import config;"
            f"config.load_config({str(MNIST_CONFIG)!r}, ['trainer.epochs=2']);"
            "heavy = [m for m in ('tensorflow', 'tfx', 'keras', 'tf_keras') if m in sys.modules];"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_distribution_record_is_skipped_when_loading(tmp_path):
    config = config_lib.load_config(str(MNIST_CONFIG))
    path = tmp_path / "effective.yaml"
    path.write_text(config_lib.config_yaml(
        config, records={config_lib.DISTRIBUTION_KEY: {"replicas": 4}}, header="# a record\n"))
    assert yaml.safe_load(path.read_text())["distribution"] == {"replicas": 4}
    assert config_lib.load_config(str(path)) == config
    with pytest.raises(ValueError, match=r"not a record key"):
        config_lib.config_yaml(config, records={"trainer": {}})


def test_custom_config_round_trip_parses_without_validating():
    experiment = config_lib.load_config(str(MNIST_CONFIG))
    compact = config_lib.to_dict(experiment, compact=True)
    assert config_lib.from_dict(compact, validate=False) == experiment
    compact["trainer"]["batch_size"] = 0  # parsing checks types only
    assert config_lib.from_dict(compact, validate=False).trainer.batch_size == 0
    with pytest.raises(config_lib.ConfigError, match=r"trainer.batch_size"):
        config_lib.from_dict(compact)
