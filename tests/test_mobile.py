"""TFLite conversion, Android metadata and LiteRT verification (mobile/).

One small real pipeline run (`tfprod run`, 2,000 MNIST training images; tests/conftest.py's
`mnist_mobile_run`, shared with the report's tests) is shared by the tests: its TFLiteConverter step converts the blessed CNN in all four
modes and verifies each on LiteRT and tflite-runtime. `tfprod tflite` is then
run on the pushed model for the int8 model with int8 input and output.
Everything runs for real: TFX, the TFLite converter, both runtimes.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfprod.mobile import convert, metadata
from tfprod.mobile.verify import TfliteClassifier
from tests.conftest import MOBILE_RUN_TEST_IMAGES, REPO_ROOT
from tests.test_mobile_android import assert_android_folder_matches_the_model

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
MODES = ("float32", "dynamic", "float16", "int8")


def run_tfprod(*args):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([TFPROD, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.fixture(scope="module")
def pipeline_run(mnist_mobile_run):
    """The session's shared MNIST run (tests/conftest.py): a blessed CNN with its TFLite models."""
    return mnist_mobile_run


@pytest.fixture(scope="module")
def float32_model(pipeline_run):
    return pathlib.Path(pipeline_run["summary"]["tflite_models"]["float32"]).read_bytes()


@pytest.mark.e2e
def test_pipeline_converts_the_blessed_model_in_every_mode(pipeline_run, mnist_sample):
    summary = pipeline_run["summary"]
    version = os.path.basename(summary["pushed_model_dir"])
    expected_dir = pipeline_run["output_dir"] / "tflite" / "mnist_cnn" / version
    assert summary["tflite_models"] == {mode: str(expected_dir / f"{mode}.tflite")
                                        for mode in MODES}
    assert summary["tflite_report"]["json"] == str(expected_dir / "report.json")
    assert "TFLiteConverter done in" in pipeline_run["stdout"]
    report = json.loads((expected_dir / "report.json").read_text())
    assert report["version"] == version and report["test_examples"] == MOBILE_RUN_TEST_IMAGES
    assert (expected_dir / "report.md").read_text().count("| litert |") == 4
    # The Android drop-in folder beside them, its constants those of the file it ships.
    contract = assert_android_folder_matches_the_model(expected_dir)
    assert contract["task_library_ok"] and contract["input"]["shape"] == [1, 28, 28, 3]
    sizes = {}
    for model in report["models"]:
        sizes[model["mode"]] = model["size_bytes"]
        assert os.path.getsize(model["path"]) == model["size_bytes"]
        # Only TFLite builtins: no Flex, no tf.Example parsing or string ops.
        assert not [op for op in model["operators"] if op.startswith("CUSTOM")], model
        assert "PARSE_EXAMPLE" not in " ".join(model["operators"])
        # Batch 1, static shapes: no shape arithmetic left for XNNPACK to trip on.
        assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(model["operators"]), model
        for runtime in ("litert", "tflite_runtime"):
            result = model["runtimes"][runtime]
            assert result["top1_agreement"] >= 0.95, (model["mode"], runtime, result)
            assert abs(result["accuracy_drop_points"]) <= 3.0, (model["mode"], runtime, result)
            assert result["latency_ms_1_thread"] > 0 and result["latency_ms_2_threads"] > 0
    assert report["savedmodel_accuracy"] >= 0.5
    # Quantized weights are about 4x (int8) and 2x (float16) smaller.
    assert sizes["int8"] < 0.3 * sizes["float32"] and sizes["dynamic"] < 0.3 * sizes["float32"]
    assert sizes["float16"] < 0.55 * sizes["float32"]
    # The float32 model on LiteRT gives the SavedModel's probabilities for raw pixels.
    _, _, test_images, _ = mnist_sample
    saved_model = tf.saved_model.load(summary["pushed_model_dir"])
    reference = saved_model.signatures["serving_raw"](
        image=tf.constant(test_images[:50], tf.float32))["probabilities"].numpy()
    float32 = pathlib.Path(summary["tflite_models"]["float32"]).read_bytes()
    classifier = TfliteClassifier(float32, "litert")
    # 4-D NHWC with three channels, as the Task Library's ImageClassifier requires.
    assert classifier.input["shape"].tolist() == [1, 28, 28, 3]
    rgb = np.repeat(test_images[:50, :, :, np.newaxis], 3, axis=-1).astype(np.float32)
    np.testing.assert_allclose(classifier.predict(rgb), reference, atol=1e-4)
    # Each channel counts by its luma weight: a red-only digit is a dimmer gray one.
    red_only = rgb.copy()
    red_only[..., 1:] = 0
    dimmed = saved_model.signatures["serving_raw"](
        image=tf.constant(test_images[:50] * 0.299, tf.float32))["probabilities"].numpy()
    # (serving_raw rounds pixels to whole values, the TFLite model does not: 0.299 * pixel
    # differs by up to half a pixel, about 1e-3 in probability.)
    dimmed_tflite = classifier.predict(red_only)
    np.testing.assert_allclose(dimmed_tflite, dimmed, atol=3e-3)
    assert (dimmed_tflite.argmax(1) == dimmed.argmax(1)).mean() >= 0.95


@pytest.mark.e2e
def test_cli_int8_with_int8_io_has_correct_quantization(pipeline_run, float32_model, tmp_path,
                                                        mnist_sample):
    pushed = pipeline_run["summary"]["pushed_model_dir"]
    output_dir = tmp_path / "cli"
    result = run_tfprod("tflite", "--model-dir", pushed, "--mode", "int8", "--int8-io",
                        "--data-dir", str(pipeline_run["data_dir"]), "--output-dir",
                        str(output_dir), "--latency-examples", "10", "--test-examples", "200")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| int8 | int8 | litert |" in result.stdout
    report = json.loads((output_dir / "report.json").read_text())
    assert [m["mode"] for m in report["models"]] == ["int8"]
    assert report["calibration_examples"] == 200
    assert (output_dir / "report.md").is_file()
    int8_model = (output_dir / "int8.tflite").read_bytes()
    assert f"android: {output_dir / 'android'}" in result.stdout
    contract = assert_android_folder_matches_the_model(output_dir)
    # The only mode: shipped, with the Kotlin warning that the Task Library refuses int8 input.
    assert contract["mode"] == "int8" and not contract["task_library_ok"]
    assert "the Task Library refuses\n *  int8.tflite (int8 input" in \
        (output_dir / "android" / "TfprodClassifier.kt").read_text()

    classifier = TfliteClassifier(int8_model, "litert")
    input_scale, input_zero_point = classifier.input["quantization"]
    output_scale, output_zero_point = classifier.output["quantization"]
    assert classifier.input["dtype"] == np.int8 and classifier.output["dtype"] == np.int8
    # Raw pixels 0..255 are calibrated to the whole int8 range: about 1 pixel per step.
    assert input_scale == pytest.approx(1.0, rel=0.02) and input_zero_point == -128
    assert classifier.input["shape"].tolist() == [1, 28, 28, 3]
    # Softmax output: TFLite fixes it to [0, 1) in 256 steps.
    assert output_scale == pytest.approx(1 / 256) and output_zero_point == -128

    _, _, test_images, _ = mnist_sample
    images = test_images[:200].astype(np.float32)
    dequantized = classifier.predict(images)
    float_probabilities = TfliteClassifier(float32_model, "litert").predict(images)
    assert np.abs(dequantized - float_probabilities).mean() < 0.01
    assert np.abs(dequantized - float_probabilities).max() < 0.25
    assert np.mean(dequantized.argmax(1) == float_probabilities.argmax(1)) >= 0.95
    # The same bytes run on the older runtime too (its int8 kernels may round a little
    # differently: a few output steps on some elements).
    older = TfliteClassifier(int8_model, "tflite_runtime").predict(images[:50])
    assert np.abs(older - dequantized[:50]).max() <= 8 * output_scale
    assert np.mean(older.argmax(1) == dequantized[:50].argmax(1)) >= 0.98


@pytest.mark.e2e
def test_metadata_round_trips_through_the_tflite_support_reader(float32_model):
    """Reads the metadata back with tflite-support's own generated schema reader.

    tensorflow_lite_support.metadata.metadata_schema_py_generated (from the
    tflite-support 0.4.4 wheel, pure Python generated from metadata_schema.fbs)
    imports without the package's broken native parts; mobile.metadata's writer
    does not use it, so this checks the bytes against the published schema.
    """
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema

    buffer = metadata.extract_metadata_buffer(float32_model)
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    model = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    assert model.name == b"mnist_cnn" and b"28x28 grayscale" in model.description
    assert model.version.decode().isdigit() and model.minParserVersion == b"1.0.0"
    (subgraph,) = model.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    assert image.name == b"image"
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    # RGB: the only colour space the Task Library and MediaPipe take; the grayscale CNN
    # converts RGB to gray inside the model.
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    size = image.content.contentProperties.defaultSize
    assert (size.width, size.height) == (28, 28)
    (normalization,) = image.processUnits
    assert normalization.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert list(normalization.options.mean) == [0.0] * 3
    assert list(normalization.options.std) == [1.0] * 3
    assert (list(image.stats.min), list(image.stats.max)) == ([0.0] * 3, [255.0] * 3)
    (probabilities,) = subgraph.outputTensorMetadata
    assert (list(probabilities.stats.min), list(probabilities.stats.max)) == ([0.0], [1.0])
    (label_file,) = probabilities.associatedFiles
    assert label_file.name == b"labels.txt"
    assert label_file.type == schema.AssociatedFileType.TENSOR_AXIS_LABELS
    # The label file is packed in the model's zip, as the TFLite metadata populator does it.
    files = metadata.read_associated_files(float32_model)
    assert files["labels.txt"].decode().split() == [str(digit) for digit in range(10)]
    # With metadata and zip attached, the model still loads and runs on both runtimes.
    for runtime in ("litert", "tflite_runtime"):
        output = TfliteClassifier(float32_model, runtime).predict(np.zeros((1, 28, 28), np.float32))
        assert output.shape == (1, 10) and abs(float(output.sum()) - 1.0) < 1e-3


@pytest.mark.e2e
def test_text_metadata_ships_the_vocabulary(float32_model):
    """The token-ids (text) metadata path: a vocabulary file on the input tensor.

    No text model exists yet, so the metadata is attached to the CNN's model bytes:
    what is checked is the flatbuffer and the zip, read back with tflite-support's reader.
    """
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema

    spec = metadata.ModelMetadataSpec(
        name="sst2_lstm", description="Sentiment of a sentence.", version="7",
        input=metadata.InputMetadata(name="token_ids", description="int32 token ids",
                                     kind=metadata.InputKind.TOKEN_IDS,
                                     vocabulary=["[PAD]", "[UNK]", "good", "bad"]),
        output=metadata.OutputMetadata(name="probabilities", description="p(class)",
                                       labels=["negative", "positive"]))
    model_bytes = metadata.attach_metadata(float32_model, spec)
    buffer = metadata.extract_metadata_buffer(model_bytes)
    model = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    assert (model.name, model.version, model.minParserVersion) == (b"sst2_lstm", b"7", b"1.0.1")
    (token_ids,) = model.subgraphMetadata[0].inputTensorMetadata
    (vocabulary,) = token_ids.associatedFiles
    assert vocabulary.name == b"vocab.txt"
    assert vocabulary.type == schema.AssociatedFileType.VOCABULARY
    files = metadata.read_associated_files(model_bytes)
    # Re-attaching replaces the earlier metadata and files rather than adding to them.
    assert set(files) == {"labels.txt", "vocab.txt"}
    assert files["vocab.txt"].decode().splitlines() == ["[PAD]", "[UNK]", "good", "bad"]
    assert files["labels.txt"].decode().splitlines() == ["negative", "positive"]
    assert len(model_bytes) < len(float32_model) + 4096


def test_metadata_spec_errors_say_what_to_fix():
    image = metadata.InputMetadata(name="image", description="d", kind=metadata.InputKind.IMAGE,
                                   mean=[0.0, 0.0], std=[1.0])
    spec = metadata.ModelMetadataSpec(
        name="m", description="d", version="1", input=image,
        output=metadata.OutputMetadata(name="p", description="d", labels=["a", "b"]))
    with pytest.raises(metadata.MetadataError, match="one mean and one std per channel"):
        metadata.build_metadata(spec)
    spec.input = metadata.InputMetadata(name="ids", description="d",
                                        kind=metadata.InputKind.TOKEN_IDS)
    with pytest.raises(metadata.MetadataError, match="needs its vocabulary"):
        metadata.build_metadata(spec)
    with pytest.raises(metadata.MetadataError, match="not a TFLite model"):
        spec.input.vocabulary = ["a"]
        metadata.attach_metadata(b"\x00" * 64, spec)


def test_unsupported_op_fails_with_an_error_naming_it():
    class Determinant(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32)])
        def __call__(self, matrices):
            return {"determinant": tf.linalg.det(matrices)}

    module = Determinant()
    with pytest.raises(convert.UnsupportedOpError, match="MatrixDeterminant") as raised:
        convert.convert(module.__call__.get_concrete_function(), "float32", trackable=module)
    assert raised.value.ops == ["MatrixDeterminant"]
    assert "Flex (SELECT_TF_OPS)" in str(raised.value)


def test_int8_needs_calibration_and_int8_io_needs_int8():
    module = tf.Module()
    module.dense = tf.Variable(tf.ones([4, 2]))
    function = tf.function(lambda x: {"y": tf.matmul(x, module.dense)},
                           input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    concrete = function.get_concrete_function()
    with pytest.raises(convert.ConversionError, match="representative dataset"):
        convert.convert(concrete, "int8", trackable=module)
    with pytest.raises(convert.ConversionError, match="need mode int8"):
        convert.convert(concrete, "float16", io_type="uint8", trackable=module)


def test_cli_bad_inputs_exit_2_and_say_what_to_fix(tmp_path, tiny_idx_dir, capsys):
    from tfprod import cli

    missing = tmp_path / "out" / "serving" / "mnist_cnn" / "1"
    code = cli.main(["tflite", "--model-dir", str(missing), "--data-dir", str(tiny_idx_dir),
                     "--mode", "float32"])
    assert code == 2
    assert f"no SavedModel at {missing}" in capsys.readouterr().err
    code = cli.main(["tflite", "--model-dir", str(missing), "--mode", "float16", "--int8-io"])
    assert code == 2
    assert "--int8-io applies to --mode int8 only" in capsys.readouterr().err
    code = cli.main(["tflite", "--model-dir", str(tmp_path / "elsewhere"), "--mode", "float32"])
    assert code == 2
    assert "pass --output-dir" in capsys.readouterr().err
