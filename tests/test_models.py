"""The model registry and the registered builders."""

import numpy as np
import pytest

from tfprod.contract.tasks import TaskName
from tfprod.models import registry
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import tasks, trainer

INPUTS = registry.ModelInputs(feature_name="image_xf", feature_shape=(784,), num_classes=10)


def test_unknown_name_lists_registered_models():
    with pytest.raises(registry.UnknownModelError) as error:
        registry.get_builder("vgg1000")
    assert "unknown model 'vgg1000'" in str(error.value)
    assert "cnn" in str(error.value)


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match=r"already registered"):
        registry.register("cnn")(lambda config, inputs: None)


TEXT_INPUTS = registry.ModelInputs(feature_name="tokens_xf", feature_shape=(16,),
                                   num_classes=10, vocab_size=100)


def _inputs_and_batch(task):
    """ModelInputs and a batch of 3 transformed examples for a task's models."""
    random = np.random.RandomState(0)
    if task == "image_classification":
        return INPUTS, random.rand(3, 784).astype(np.float32)
    if task == "text_classification":
        ids = random.randint(1, 100, size=(3, 16)).astype(np.int64)
        ids[1, 5:] = 0  # padding
        return TEXT_INPUTS, ids
    raise AssertionError(f"no test inputs for task {task!r}; add them here")


def _classifiers():
    return [(name, task) for name in registry.registered_names()
            for task in registry.model_tasks(name) if task.endswith("_classification")]


def test_every_registered_model_fits_a_task():
    assert all(registry.model_tasks(name) for name in registry.registered_names())


@pytest.mark.parametrize("name, task", _classifiers())
def test_every_registered_model_builds_with_the_right_output_shape(name, task):
    model_config = config_lib.ModelConfig(name=name)
    inputs, batch = _inputs_and_batch(task)
    model = registry.build_model(model_config, inputs)
    probabilities = model(batch, training=False).numpy()
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


FORECAST_INPUTS = registry.ModelInputs(feature_name="window_xf", feature_shape=(16 * 2,),
                                       num_classes=0, window_shape=(16, 2), horizon=4,
                                       target_index=1)


@pytest.mark.parametrize("name", registry.registered_for_task("forecasting"))
def test_every_forecaster_builds_and_starts_at_persistence(name):
    model = registry.build_model(config_lib.ModelConfig(name=name), FORECAST_INPUTS)
    window = np.random.RandomState(0).rand(3, 16, 2).astype(np.float32)
    forecast = model(window.reshape(3, 32), training=False).numpy()
    assert forecast.shape == (3, 4)
    # Zero-initialised change layers: the untrained forecast repeats the last target value.
    np.testing.assert_allclose(forecast, np.repeat(window[:, -1:, 1], 4, axis=1), atol=1e-6)


def test_models_are_registered_for_their_tasks():
    assert registry.registered_for_task("forecasting") == [
        "lstm_forecaster", "transformer_forecaster"]
    assert registry.registered_for_task("text_classification") == ["lstm", "transformer"]
    assert registry.registered_for_task("image_classification") == ["cnn", "resnet"]


def test_every_task_name_has_a_registered_task_and_a_model():
    registered = tasks.registered_tasks()
    assert set(registered) == set(TaskName)
    for name, task in registered.items():
        assert task.name is name
        assert registry.registered_for_task(name), f"no model fits task {name}"
        assert task.data_formats or task.data_sources, f"task {name} reads no data"
    for model_name in registry.registered_names():
        assert all(isinstance(task, TaskName) for task in registry.model_tasks(model_name))


def test_each_data_format_and_source_picks_one_task():
    claims = [(kind, value) for task in tasks.registered_tasks().values()
              for kind, values in (("format", task.data_formats), ("source", task.data_sources))
              for value in values]
    assert len(claims) == len(set(claims)), claims
    assert tasks.task_name_for_data("files", "idx") is TaskName.IMAGE_CLASSIFICATION
    assert tasks.task_name_for_data("tfds", "tsv") is TaskName.IMAGE_CLASSIFICATION
    assert tasks.task_name_for_data("files", "tsv") is TaskName.TEXT_CLASSIFICATION
    assert tasks.task_name_for_data("files", "csv") is TaskName.FORECASTING
    with pytest.raises(config_lib.ConfigError, match="data.format: no task handles 'parquet'"):
        tasks.task_name_for_data("files", "parquet")


def test_the_catalog_lists_every_registered_model_with_its_tasks():
    """models.catalog (read by the config checks before TensorFlow) is the registry's table."""
    from tfprod.models import catalog

    assert catalog.registered_names() == registry.registered_names()
    for name in registry.registered_names():
        assert set(catalog.model_tasks(name)) == set(registry.model_tasks(name)), name
    for task in TaskName:
        assert catalog.registered_for_task(task) == registry.registered_for_task(task)


def test_a_model_missing_from_the_catalog_cannot_register(monkeypatch):
    from tfprod.models import catalog

    with pytest.raises(ValueError, match=r"catalog.MODEL_TASKS lists no such model"):
        registry.register("toy", tasks=(TaskName.FORECASTING,))(lambda config, inputs: None)
    monkeypatch.setitem(catalog.MODEL_TASKS, "toy", (TaskName.IMAGE_CLASSIFICATION,))
    with pytest.raises(ValueError, match=r"lists \['image_classification'\]"):
        registry.register("toy", tasks=(TaskName.FORECASTING,))(lambda config, inputs: None)
    assert "toy" not in registry._BUILDERS


def test_registering_a_model_for_an_unknown_task_raises():
    with pytest.raises(ValueError, match=r"must be TaskName members \(image_classification"):
        registry.register("toy", tasks=("segmentation",))


def test_cnn_follows_its_config():
    small = config_lib.ModelConfig(cnn=config_lib.CnnConfig(
        filters=[4, 8, 16], convs_per_block=1, dense_units=8, conv_dropout=0.0, dense_dropout=0.0))
    model = registry.build_model(small, INPUTS)
    conv_layers = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [layer.filters for layer in conv_layers] == [4, 8, 16]
    assert not any(layer.__class__.__name__ == "Dropout" for layer in model.layers)
    default = registry.build_model(config_lib.ModelConfig(), INPUTS)
    assert sum(layer.__class__.__name__ == "BatchNormalization" for layer in default.layers) == 5
    assert sum(layer.__class__.__name__ == "Dropout" for layer in default.layers) == 3


def test_cnn_handles_other_image_sizes_and_class_counts():
    inputs = registry.ModelInputs(feature_name="image_xf", feature_shape=(32 * 32,),
                                  num_classes=3, image_shape=(32, 32, 1))
    model = registry.build_model(config_lib.ModelConfig(), inputs)
    assert model(np.zeros((2, 1024), np.float32)).shape == (2, 3)


def test_training_schedule_honours_max_steps():
    assert trainer.training_schedule(1000, config_lib.TrainerConfig(epochs=3, batch_size=100)) == {
        "epochs": 3, "steps_per_epoch": 10}
    assert trainer.training_schedule(1000, config_lib.TrainerConfig(
        epochs=3, batch_size=100, max_steps=1)) == {"epochs": 1, "steps_per_epoch": 1}
    assert trainer.training_schedule(1000, config_lib.TrainerConfig(
        epochs=3, batch_size=100, max_steps=25)) == {"epochs": 3, "steps_per_epoch": 10}
    assert trainer.training_schedule(1001, config_lib.TrainerConfig(
        epochs=1, batch_size=100)) == {"epochs": 1, "steps_per_epoch": 11}
