"""int8 gates and mobile.int8_strategy auto (mobile/int8_auto.py), through export_tflite.

No pipeline run: a tiny CNN is trained for one short epoch on 1,000 real MNIST images
(data/mnist_sample) and saved as a SavedModel with the two signatures export_tflite
reads (serving_raw, and transform_features for the pixel scaling probe), once per
module. The conversions, the QuantizationDebugger and both runtimes are real.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfprod.contract import features
from tfprod.mobile import convert, export, int8_auto
from tfprod.mobile.verify import TfliteClassifier
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.report import sections

HEIGHT = WIDTH = 28
TEST_EXAMPLES = 300
IMPOSSIBLE = int8_auto.Int8Gates(max_accuracy_drop_points=-100.0, min_top1_agreement=1.0)


def tiny_cnn() -> tf.keras.Model:
    """A two-conv CNN over flat pixels scaled to [0, 1] (untrained)."""
    return tf.keras.Sequential([
        tf.keras.layers.Input((HEIGHT * WIDTH,)),
        tf.keras.layers.Reshape((HEIGHT, WIDTH, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu", name="conv_a"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(16, 3, activation="relu", name="conv_b"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, name="logits"),
        tf.keras.layers.Softmax(),
    ])


def _save_tiny_cnn(directory, train_images, train_labels) -> str:
    """tiny_cnn trained one epoch, saved as export_tflite expects."""
    tf.keras.utils.set_random_seed(0)
    model = tiny_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train_images.reshape(-1, HEIGHT * WIDTH) / 255.0, train_labels, epochs=1,
              batch_size=32, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None, HEIGHT, WIDTH], tf.float32,
                                                name=features.IMAGE_KEY)])
    def serving_raw(image):
        flat = tf.reshape(image, [-1, HEIGHT * WIDTH]) / 255.0
        return {features.PROBABILITIES_OUTPUT: model(flat, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        parsed = tf.io.parse_example(examples, {features.IMAGE_KEY: tf.io.FixedLenFeature(
            [HEIGHT * WIDTH], tf.int64)})
        return {features.IMAGE_TRANSFORMED_KEY: tf.cast(parsed[features.IMAGE_KEY],
                                                        tf.float32) / 255.0}

    path = str(directory / "saved_model")
    tf.saved_model.save(model, path, signatures={
        features.SERVING_RAW_SIGNATURE: serving_raw,
        features.TRANSFORM_SIGNATURE: transform_features})
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, mnist_sample):
    train_images, train_labels, test_images, test_labels = mnist_sample
    path = _save_tiny_cnn(tmp_path_factory.mktemp("int8_auto"), train_images[:1000],
                          train_labels[:1000])
    return {"path": path, "calibration": train_images[1000:1100].astype(np.float32),
            "test_images": test_images[:TEST_EXAMPLES].astype(np.float32),
            "test_labels": test_labels[:TEST_EXAMPLES].astype(np.int64)}


def _export(tiny_model, output_dir, **int8_options):
    return export.export_tflite(
        tiny_model["path"], str(output_dir), "tiny", "1", tiny_model["calibration"],
        tiny_model["test_images"], tiny_model["test_labels"],
        export.ExportOptions(modes=["int8"], latency_examples=5, **int8_options))


def test_auto_with_the_default_gates_passes_at_post_training_int8(tiny_model, tmp_path):
    result = _export(tiny_model, tmp_path, int8_strategy="auto")
    report = json.loads((tmp_path / "report.json").read_text())
    int8 = report["int8"]
    assert int8["strategy"] == "auto" and int8["passed"] and int8["chosen_attempt"] == 1
    assert int8["gates"] == {"max_accuracy_drop_points": 1.0, "min_top1_agreement": 0.98,
                             "on_failure": "warn"}
    (attempt,) = int8["attempts"]
    assert attempt["step"] == "ptq" and attempt["passed"] and attempt["next"] is None
    assert set(attempt["runtimes"]) == {"litert", "tflite_runtime"}
    for runtime, figures in attempt["runtimes"].items():
        assert figures["top1_agreement"] >= 0.98
        # The attempt's figures are the int8 row's (the same verification).
        row = report["models"][0]["runtimes"][runtime]
        assert figures["top1_agreement"] == row["top1_agreement"]
    assert attempt["size_bytes"] == len((tmp_path / "int8.tflite").read_bytes())
    assert result.int8.passed and result.int8.model.step == int8_auto.Step.PTQ
    markdown = (tmp_path / "report.md").read_text()
    assert "## int8: gates and attempts (mobile.int8_strategy auto)" in markdown
    assert "int8 passes its gates with attempt 1 of 1" in markdown


def test_auto_with_an_impossible_gate_keeps_layers_in_float_then_calls_qat(tiny_model,
                                                                            tmp_path):
    calls = []

    def qat_fallback() -> bytes:  # stands in for the QAT fine-tune: a real int8 model
        calls.append("qat")
        model = export.load_serving_model(tiny_model["path"])
        model_input = convert.probe_pixel_scaling(model, HEIGHT, WIDTH, 1)
        function = convert.inference_function(model, model_input)
        images = model_input.as_input(tiny_model["calibration"])
        return int8_auto.int8_converter(
            function, model, lambda: ([image[np.newaxis]] for image in images)).convert()

    result = _export(tiny_model, tmp_path, int8_strategy="auto", int8_gates=IMPOSSIBLE,
                     int8_max_float_layers=2, qat_fallback=qat_fallback)
    assert calls == ["qat"]
    attempts = result.int8.attempts
    assert [attempt.step.value for attempt in attempts] == ["ptq", "float_layers",
                                                            "float_layers", "qat"]
    assert [len(attempt.float_layers) for attempt in attempts] == [0, 1, 2, 0]
    assert not any(attempt.passed for attempt in attempts)
    # The worst layer first, then it and the next worst: a growing denylist.
    assert attempts[2].float_layers[0] == attempts[1].float_layers[0]
    assert len(set(attempts[2].float_layers)) == 2

    report = json.loads((tmp_path / "report.json").read_text())["int8"]
    assert not report["passed"] and [a["step"] for a in report["attempts"]] == [
        "ptq", "float_layers", "float_layers", "qat"]
    first, second, third, last = report["attempts"]
    assert "drop" in first["next"] and "> mobile.max_int8_accuracy_drop -100" in first["next"]
    assert f"'{attempts[1].float_layers[0]}' (rmse/scale " in first["next"]
    assert "in float" in first["next"] and "in float" in second["next"]
    assert "mobile.int8_max_float_layers 2" in third["next"] and "trying QAT" in third["next"]
    assert last["next"] is None and last["description"].startswith("quantization-aware")
    for attempt in report["attempts"]:
        assert set(attempt["runtimes"]) == {"litert", "tflite_runtime"}  # ran on both
        assert attempt["failures"] and attempt["size_bytes"] > 0
    # None passed: int8.tflite is the best attempt, and the report says so.
    written = (tmp_path / "int8.tflite").read_bytes()
    assert written == result.int8.model.model_bytes
    assert report["chosen_attempt"] == result.int8.chosen + 1
    assert report["summary"].startswith("int8 FAILS its gates")
    assert f"attempt {report['chosen_attempt']}" in report["summary"]
    markdown = (tmp_path / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| 4 | quantization")]
    assert len(rows) == 1 and "| litert " in rows[0] and "tflite_runtime " in rows[0]
    assert "trying QAT" in markdown and "| 3 | int8 with 2 layer(s) in float" in markdown
    assert markdown.count("| litert |") == 1  # the attempts are one row each, not per runtime
    # The run report (report.html) shows the same attempts.
    html = sections._int8_attempts(report)
    assert 'id="tflite-int8-attempts"' in html and html.count("trying QAT") == 2  # 2 runtimes
    assert "mobile.int8_strategy auto" in html and "FAILS its gates" in html

    # The selective models really keep those layers in float, and only builtin ops.
    ptq_types = int8_auto.tensor_types(attempts[0].model_bytes)
    worst = attempts[1].float_layers[0]
    assert ptq_types[worst] == "int8"
    for attempt in attempts[1:3]:
        types = int8_auto.tensor_types(attempt.model_bytes)
        assert all(types[tensor] == "float32" for tensor in attempt.float_layers), types
        operators = convert.operator_names(attempt.model_bytes)
        assert not [op for op in operators if op.startswith("CUSTOM")], operators
        assert {"QUANTIZE", "DEQUANTIZE"} <= set(operators)
        # The other layers stay int8 (the convolutions' outputs among them).
        assert sum(dtype == "int8" and ptq_types.get(name) == "int8"
                   for name, dtype in types.items()) >= 3


def test_auto_without_a_qat_fallback_records_qat_not_available(tiny_model, tmp_path):
    # With int8 input and output: the float-layer model keeps them (fully quantized).
    result = _export(tiny_model, tmp_path, int8_strategy="auto", int8_gates=IMPOSSIBLE,
                     int8_max_float_layers=1, int8_io="int8")
    for attempt in result.int8.attempts[:2]:
        classifier = TfliteClassifier(attempt.model_bytes, "tflite_runtime")
        assert classifier.input["dtype"] == np.int8 and classifier.output["dtype"] == np.int8
    steps = [(attempt.step.value, attempt.model_bytes is None) for attempt in
             result.int8.attempts]
    assert steps == [("ptq", False), ("float_layers", False), ("qat", True)]
    last = result.report["int8"]["attempts"][-1]
    assert last["description"].startswith("QAT not available") and not last["passed"]
    assert last["size_bytes"] is None and last["runtimes"] == {}
    assert result.int8.chosen in (0, 1)  # the best model that exists


def test_ptq_reports_the_gate_and_fails_the_run_only_when_asked(tiny_model, tmp_path):
    warned = _export(tiny_model, tmp_path / "warn", int8_gates=IMPOSSIBLE)
    assert warned.report["int8"]["strategy"] == "ptq"
    assert not warned.report["int8"]["passed"] and len(warned.int8.attempts) == 1
    assert "is a warning (mobile.int8_gate warn)" in (tmp_path / "warn" / "report.md").read_text()
    with pytest.raises(int8_auto.Int8GateError, match="mobile.int8_gate is fail"):
        _export(tiny_model, tmp_path / "fail", int8_gates=IMPOSSIBLE, int8_gate="fail")
    # The report and the model are written before the run fails, for the user to read.
    report = json.loads((tmp_path / "fail" / "report.json").read_text())
    assert report["int8"]["gates"]["on_failure"] == "fail" and not report["int8"]["passed"]
    assert (tmp_path / "fail" / "int8.tflite").is_file()


def test_float_layer_counts_double_up_to_the_bound():
    assert int8_auto.float_layer_counts(6, 8) == [1, 2, 4, 6]
    assert int8_auto.float_layer_counts(10, 8) == [1, 2, 4, 8]
    assert int8_auto.float_layer_counts(3, 1) == [1]
    assert int8_auto.float_layer_counts(0, 8) == []
    # The wide layers (attention masks) go to float together, then the doubling goes on.
    assert int8_auto.float_layer_counts(10, 8, first=3) == [3, 4, 8]
    assert int8_auto.float_layer_counts(2, 8, first=5) == [2]


def test_an_attention_masks_wide_range_is_ranked_first_and_kept_in_float(tmp_path):
    """A tiny Transformer (seeded, untrained): Keras adds -1e9 to the masked attention
    scores, so that tensor's int8 step is millions and the real scores beside it all fall
    on one level. RMSE / scale calls that error small; the ranking puts those tensors first,
    and keeping them in float brings the int8 model back to the float one."""
    from tests.test_mobile_sequence import SEQUENCE_LENGTH, VOCABULARY, _text_model, _token_ids

    loaded = _text_model("transformer", tmp_path / "transformer", seed=6)
    model_input = convert.TokenIdsInput(sequence_length=SEQUENCE_LENGTH, vocabulary=VOCABULARY)
    function = convert.inference_function(loaded, model_input)
    calibration = _token_ids(100, seed=1)

    def representative():
        for example in calibration:
            yield [example[np.newaxis]]

    def converter():
        return int8_auto.int8_converter(function, loaded, representative)

    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(),
                                                         debug_dataset=representative)
    debugger.run()
    ranked = int8_auto.rank_layers(debugger)
    wide = [layer for layer in ranked if layer.wide]
    assert wide and ranked[:len(wide)] == wide
    assert all("softmax" in layer.tensor and layer.scale > 1e6 for layer in wide), wide
    assert not any(layer.wide for layer in ranked[len(wide):])
    assert "a wide range" in int8_auto._label(wide[:1])

    ids = _token_ids(200)
    reference = loaded(tf.constant(ids, tf.int64), training=False).numpy()

    def mean_error(model_bytes):
        return np.abs(TfliteClassifier(model_bytes, "litert").predict(ids) - reference).mean()

    debugger.options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=[layer.tensor for layer in wide])
    ptq = convert.convert(function, "int8", representative, trackable=loaded)
    # Measured: mean probability error 0.099 for PTQ, 0.008 with the mask's ops in float.
    assert mean_error(debugger.get_nondebug_quantized_model()) < mean_error(ptq) / 4


def test_without_a_passing_attempt_the_closest_copy_of_the_savedmodel_is_chosen():
    def attempt(accuracy, agreement, failures, model=b"x"):
        return int8_auto.Attempt(int8_auto.Step.FLOAT_LAYERS, "", model_bytes=model,
                                 runtimes={"litert": {"accuracy": accuracy,
                                                      "top1_agreement": agreement}},
                                 failures=["gate"] * failures)
    attempts = [attempt(0.95, 0.97, 2), attempt(0.99, 0.96, 1), attempt(0.97, 0.99, 1),
                attempt(0.99, 0.999, 1, model=None)]
    # Fewest failures, then the agreement; higher accuracy alone does not win; no model, no pick.
    assert int8_auto._choose(attempts, savedmodel_accuracy=0.97) == 2
    attempts.append(attempt(0.90, 0.90, 0))
    assert int8_auto._choose(attempts, savedmodel_accuracy=0.97) == 4  # the one that passed


def test_gate_failures_name_the_runtime_and_the_key():
    gates = int8_auto.Int8Gates(max_accuracy_drop_points=1.0, min_top1_agreement=0.98)
    runtimes = {"litert": {"accuracy": 0.95, "top1_agreement": 0.99},
                "tflite_runtime": {"accuracy": 0.97, "top1_agreement": 0.97}}
    assert gates.failures(runtimes, savedmodel_accuracy=0.97) == [
        "litert: drop 2.00 points > mobile.max_int8_accuracy_drop 1",
        "tflite_runtime: top-1 agreement 0.9700 < mobile.min_int8_agreement 0.98"]
    assert gates.failures({"litert": {"accuracy": 0.965, "top1_agreement": 0.98}}, 0.97) == []


def test_mobile_config_int8_keys_are_validated_and_stay_out_of_the_compact_form():
    mobile = config_lib.MobileConfig()
    assert config_lib.to_dict(mobile, compact=True).keys().isdisjoint(
        {"int8_strategy", "max_int8_accuracy_drop", "min_int8_agreement", "int8_gate",
         "int8_max_float_layers"})
    assert mobile.int8_gates() == int8_auto.Int8Gates(1.0, 0.98)
    for key, value in (("min_int8_agreement", 1.5), ("max_int8_accuracy_drop", 101.0),
                       ("int8_max_float_layers", 0)):
        bad = config_lib.MobileConfig(**{key: value})
        with pytest.raises(config_lib.ConfigError, match=f"mobile.{key}"):
            bad.validate()
    with pytest.raises(config_lib.ConfigError, match="mobile.int8_strategy"):
        config_lib.configlib.from_dict(config_lib.MobileConfig, {"int8_strategy": "qat"},
                                       "mobile")
