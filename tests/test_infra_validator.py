"""The InfraValidator's library function on tiny SavedModels with the project's signatures.

Each check starts a real `tfprod serve` subprocess on 127.0.0.1 (free ports), sends real
REST and gRPC requests, and compares with the model loaded in this process. Two server
starts in all: one model that passes, and one served copy that differs from the candidate
(other weights, and one signature's output renamed) checked with a p99 limit below anything
measurable, so both kinds of failure are named.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfprod import errors
from tfprod.contract import features
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import infra_validator
from tfprod.serving import warmup

HEIGHT, WIDTH, CLASSES = 4, 4, 3
MODEL_NAME = "tiny"


def build_image_model(export_dir, seed=0, raw_output_name=features.PROBABILITIES_OUTPUT):
    """A linear softmax classifier over 4x4 images with the image task's signatures:
    serving_default on serialized tf.Examples (`image`: 16 int64 pixels), serving_raw on
    [N, 4, 4] float32, both answering probabilities and class_id; warm-up requests written."""
    weights = tf.random.stateless_normal([HEIGHT * WIDTH, CLASSES], seed=[seed, 1]) / 100.0
    module = tf.Module()
    module.weights = tf.Variable(weights)

    def predict(pixels):
        probabilities = tf.nn.softmax(tf.cast(pixels, tf.float32) @ module.weights)
        return probabilities, tf.argmax(probabilities, axis=-1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, {features.IMAGE_KEY: tf.io.FixedLenFeature(
            [HEIGHT * WIDTH], tf.int64)})
        probabilities, class_id = predict(parsed[features.IMAGE_KEY])
        return {features.PROBABILITIES_OUTPUT: probabilities, features.CLASS_ID_OUTPUT: class_id}

    @tf.function(input_signature=[tf.TensorSpec([None, HEIGHT, WIDTH], tf.float32,
                                                name=features.IMAGE_KEY)])
    def serve_raw(image):
        probabilities, class_id = predict(tf.round(tf.reshape(image, [-1, HEIGHT * WIDTH])))
        return {raw_output_name: probabilities, features.CLASS_ID_OUTPUT: class_id}

    tf.saved_model.save(module, str(export_dir), signatures={
        features.SERVING_DEFAULT_SIGNATURE: serve_examples.get_concrete_function(),
        features.SERVING_RAW_SIGNATURE: serve_raw.get_concrete_function()})
    warmup.write_warmup_requests(str(export_dir), warmup.image_warmup_requests(
        MODEL_NAME, HEIGHT, WIDTH, batch_sizes=(1,)))
    return str(export_dir)


def sample_examples(count=8):
    rng = np.random.default_rng(0)
    result = []
    for _ in range(count):
        example = tf.train.Example()
        example.features.feature[features.IMAGE_KEY].int64_list.value.extend(
            rng.integers(0, 256, HEIGHT * WIDTH).tolist())
        example.features.feature[features.LABEL_KEY].int64_list.value.append(1)
        result.append(example.SerializeToString())
    return result


def settings(**overrides):
    values = {"load_seconds": 0.5, "load_max_requests": 200, "startup_timeout_seconds": 180}
    values.update(overrides)
    infra = config_lib.InfraConfig(**values)
    infra.validate()
    return infra


def test_a_model_that_serves_as_it_predicts_is_blessed(tmp_path):
    model_dir = build_image_model(tmp_path / "model")
    result = infra_validator.validate_model(model_dir, sample_examples(), MODEL_NAME, settings(),
                                            work_dir=str(tmp_path / "work"))
    assert result.failures == []
    assert result.blessed
    # Both prediction signatures, over both protocols, on the warm-up requests and the sample.
    for signature in (features.SERVING_DEFAULT_SIGNATURE, features.SERVING_RAW_SIGNATURE):
        for protocol in ("grpc", "rest"):
            assert result.checks[f"{signature} {protocol} test examples"] == 8
            assert f"{signature} {protocol} warm-up request 0" in result.checks or \
                f"{signature} {protocol} warm-up request 1" in result.checks
    latency = result.latency
    assert latency["errors"] == 0 and 1 <= latency["requests"] <= 200
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= 1000
    assert latency["rest_p99_ms"] > 0 and latency["grpc_p99_ms"] > 0
    assert result.line().startswith("Infra validation: passed (tfprod;")
    # The blessing as TFX's InfraValidator writes it (TFX's Pusher reads `blessed`).
    properties = {}
    blessing_dir = tmp_path / "blessing"
    infra_validator.write_blessing(str(blessing_dir), result, properties.__setitem__)
    assert properties[infra_validator.BLESSED_KEY] == 1
    assert (blessing_dir / infra_validator.BLESSED_FILE).is_file()
    assert json.loads((blessing_dir / infra_validator.RESULT_FILE).read_text())["blessed"] is True


def test_a_served_model_that_differs_and_a_p99_over_the_limit_are_named(tmp_path):
    """The server gets another model than the in-process candidate (other weights, and
    serving_raw's probabilities output renamed), and max_p99_ms is far below any round trip."""
    model_dir = build_image_model(tmp_path / "candidate", seed=0)
    served_dir = build_image_model(tmp_path / "served", seed=7, raw_output_name="scores")
    result = infra_validator.validate_model(
        model_dir, sample_examples(), MODEL_NAME, settings(max_p99_ms=0.001),
        work_dir=str(tmp_path / "work"), served_model_dir=served_dir)
    assert not result.blessed
    text = "\n".join(result.failures)
    # The signature check names the signature whose outputs differ.
    assert "signature 'serving_raw': served as" in text and "'scores'" in text
    # serving_default: same outputs, other weights: the example, expected and served values.
    parity = [line for line in result.failures if line.startswith(
        "signature 'serving_default' over GRPC (test examples), output 'probabilities', example ")]
    assert parity and "expected [" in parity[0] and "served [" in parity[0]
    assert "> infra.tolerance 0.0001" in parity[0]
    assert any(line.startswith("signature 'serving_default' over REST (test examples)")
               for line in result.failures)
    # serving_raw answers another output name.
    assert any("signature 'serving_raw' over GRPC" in line and "the server answered outputs "
               "['class_id', 'scores']" in line for line in result.failures)
    p99 = [line for line in result.failures if line.startswith("load: p99 latency ")]
    assert p99 and "> infra.max_p99_ms 0.001 ms" in p99[0]
    assert result.line().startswith("Infra validation: FAILED (tfprod): ")
    properties = {}
    infra_validator.write_blessing(str(tmp_path / "blessing"), result, properties.__setitem__)
    assert properties[infra_validator.BLESSED_KEY] == 0
    assert (tmp_path / "blessing" / infra_validator.NOT_BLESSED_FILE).is_file()


def test_tensorflow_model_server_missing_from_path_is_refused_clearly(tmp_path, monkeypatch):
    from tfprod.pipeline import checks

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    # Before the run starts (tfprod run's preflight: exit 2 before TensorFlow loads) ...
    experiment = config_lib.load_config(None, ["infra.server=tensorflow_model_server"])
    with pytest.raises(errors.ConfigError, match=r"^infra.server: tensorflow_model_server is "):
        checks.check_infra_server(experiment.infra)
    checks.check_infra_server(config_lib.load_config(None, [
        "infra.server=tensorflow_model_server", "infra.enabled=false"]).infra)  # not used: fine
    # ... and in the step itself (a Kubeflow image without the binary).
    with pytest.raises(errors.ConfigError, match=r"infra.server: tensorflow_model_server is "
                                                 r"selected but no tensorflow_model_server binary "
                                                 r"is on PATH.*infra.server: tfprod"):
        infra_validator.validate_model(
            str(tmp_path), [], MODEL_NAME,
            settings(server=config_lib.InfraServer.TF_SERVING), work_dir=str(tmp_path / "w"))


@pytest.mark.parametrize("key, value", [
    ("infra.tolerance", "-1"), ("infra.sample_size", "0"), ("infra.load_seconds", "0"),
    ("infra.max_p99_ms", "0"), ("infra.max_errors", "-1"), ("infra.server", "docker"),
    ("infra.startup_timeout_seconds", "0"), ("infra.load_concurrency", "0")])
def test_bad_infra_values_name_the_key(key, value):
    with pytest.raises(errors.ConfigError, match=key.replace(".", r"\.")):
        config_lib.load_config(None, [f"{key}={value}"])


def _blessing(kind, tmp_path, name, blessed):
    artifact = kind()
    artifact.uri = str(tmp_path / name)
    artifact.set_int_custom_property(infra_validator.BLESSED_KEY, blessed)
    return artifact


def test_the_pusher_and_the_tflite_converter_refuse_a_model_the_infra_validator_did_not_bless(
        tmp_path):
    """Blessed by the Evaluator, not by the InfraValidator: the pipeline's Pusher executor
    pushes nothing, and the TFLiteConverter converts nothing."""
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    from tfprod.pipeline import tflite_converter as mobile_component
    from tfprod.pipeline import pusher

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    build_image_model(tmp_path / "model" / "Format-Serving")
    model_blessing = _blessing(standard_artifacts.ModelBlessing, tmp_path, "mb", 1)
    base = tmp_path / "serving"

    def push(infra_blessed):
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / f"pushed{infra_blessed}")
        destination = tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=str(base)))
        pusher.AtomicPusherExecutor().Do(
            {standard_component_specs.MODEL_KEY: [model],
             standard_component_specs.MODEL_BLESSING_KEY: [model_blessing],
             standard_component_specs.INFRA_BLESSING_KEY: [_blessing(
                 standard_artifacts.InfraBlessing, tmp_path, f"ib{infra_blessed}", infra_blessed)]},
            {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
            {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)})
        return pushed

    assert push(0).get_int_custom_property("pushed") == 0
    assert not base.exists()
    assert push(1).get_int_custom_property("pushed") == 1
    assert len(list(base.iterdir())) == 1

    tflite = mobile_component.TFLiteModels()
    tflite.uri = str(tmp_path / "tflite")
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    mobile_component.TFLiteConverter.EXECUTOR_SPEC.executor_class().Do(
        {"model": [model], "model_blessing": [model_blessing], "examples": [examples],
         "pushed_model": [push(1)],
         "infra_blessing": [_blessing(standard_artifacts.InfraBlessing, tmp_path, "ibx", 0)]},
        {"tflite_models": [tflite]},
        {"output_dir": str(tmp_path / "out"), "model_name": MODEL_NAME, "mobile_config": "{}"})
    assert tflite.get_int_custom_property(mobile_component.CONVERTED_PROPERTY) == 0


def test_raw_inputs_are_built_from_the_examples_features_with_missing_values_filled():
    """serving_raw's inputs from test tf.Examples, as each task's raw signature takes them:
    an image's pixels reshaped, a table's columns one value per row (NaN / "" missing), and
    no inputs (why instead) for a window that no single feature holds."""
    first, second = tf.train.Example(), tf.train.Example()
    first.features.feature["fare"].float_list.value.append(12.5)
    first.features.feature["company"].bytes_list.value.append(b"Flash Cab")
    first.features.feature[features.IMAGE_KEY].int64_list.value.extend(range(4))
    second.features.feature[features.IMAGE_KEY].int64_list.value.extend(range(4, 8))
    serialized = [first.SerializeToString(), second.SerializeToString()]
    table_specs = {"fare": tf.TensorSpec([None], tf.float32, name="fare"),
                   "company": tf.TensorSpec([None], tf.string, name="company"),
                   "trips": tf.TensorSpec([None], tf.float32, name="trips")}
    inputs, why = infra_validator.raw_inputs_from_examples(table_specs, serialized)
    assert why == ""
    np.testing.assert_array_equal(inputs["fare"], np.array([12.5, np.nan], np.float32))
    assert inputs["company"].tolist() == [b"Flash Cab", b""]
    assert np.isnan(inputs["trips"]).all() and inputs["trips"].dtype == np.float32
    image, _ = infra_validator.raw_inputs_from_examples(
        {features.IMAGE_KEY: tf.TensorSpec([None, 2, 2], tf.float32)}, serialized)
    np.testing.assert_array_equal(image[features.IMAGE_KEY],
                                  np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    window, why = infra_validator.raw_inputs_from_examples(
        {"window": tf.TensorSpec([None, 3, 2], tf.float32)}, serialized)
    assert window is None and "'window' is not a feature of the examples" in why


def test_float_outputs_compare_within_the_tolerance_and_classes_exactly():
    expected = {"probabilities": np.array([[0.2, 0.8], [0.6, 0.4]], np.float32),
                "prediction": np.array([1000.0, 2.0], np.float32),
                "class_name": np.array([b"cat", b"dog"], dtype=object)}
    served = {"probabilities": expected["probabilities"] + 5e-5,
              "prediction": np.array([1000.09, 2.0], np.float32),  # within 1e-4 x 1001
              "class_name": np.array([b"cat", b"dog"], dtype=object)}
    assert infra_validator.compare_outputs(expected, served, 1e-4, "sig", [3, 4]) == []
    served["probabilities"] = expected["probabilities"] + np.array([[0, 0], [0.01, -0.01]])
    served["class_name"] = np.array([b"cat", b"cow"], dtype=object)
    problems = infra_validator.compare_outputs(expected, served, 1e-4, "sig", [3, 4])
    assert problems[0].startswith("sig, output 'class_name', example 4 (1 of 2 differ): "
                                  "expected ['dog'], served ['cow']")
    assert problems[1].startswith("sig, output 'probabilities', example 4 (1 of 2 differ): "
                                  "expected [0.6, 0.4], served [0.61, 0.39]")
