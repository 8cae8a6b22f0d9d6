"""TFLiteConverter: the pipeline step that converts the blessed model to TFLite.

It runs after the Evaluator and the Pusher. It consumes the Trainer's model, the
Evaluator's blessing and, when the pipeline has one, the InfraValidator's (a model that
either did not bless is not converted), the
ExampleGen examples (train split: int8 calibration; test split: verification)
and the Pusher's output (for the pushed version number, so the TFLite files
carry the same version as the served model). It writes

    <output_dir>/tflite/<model_name>/<version>/<mode>.tflite + report.json/.md
    <output_dir>/tflite/<model_name>/<version>/android/   (mobile.android)

    <output_dir>/tflite/<model_name>/<version>/<technique>/   (mobile.compression)

and lists them in ``files.json`` in its own output artifact, which
pipeline.summary reads into run_summary.json. The conversion itself is mobile/ (export_tflite);
this module is the pipeline's step around it, with what needs the pipeline's config and the
model registry (the LSTM rebuild, :func:`convertible_model`).
"""

import json
import os
import re

from absl import logging

from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from tfprod.contract import layout

COMPONENT_ID = layout.TFLITE_CONVERTER_ID
FILES_JSON = "files.json"
CONVERTED_PROPERTY = "converted"


class TFLiteModels(types.Artifact):
    """The TFLite models of one blessed model version, and their verification report."""

    # "<namespace>.<Name>": the form KFP v2 requires of custom artifact types.
    TYPE_NAME = "tfprod.TFLiteModels"


def tflite_dir(output_dir: str, model_name: str, version: str) -> str:
    """<output_dir>/tflite/<model_name>/<version>: where one version's models go."""
    return os.path.join(output_dir, "tflite", model_name, str(version))


def int8_export_options(settings) -> dict:
    """ExportOptions' int8 gate and strategy fields from the mobile settings (JSON).

    The keys are left out of the JSON while they hold their defaults (config.to_dict's
    compact form), so the defaults come from MobileConfig. auto's QAT step is given by
    the component (a pipeline.mobile_compression.Finetuner), not here.
    """
    from tfprod import configlib
    from tfprod.pipeline.config import MobileConfig

    mobile = configlib.from_dict(MobileConfig, settings, "mobile")
    return {"int8_strategy": mobile.int8_strategy, "int8_gates": mobile.int8_gates(),
            "int8_gate": mobile.int8_gate, "int8_max_float_layers": mobile.int8_max_float_layers}


def read_data(settings, examples_uri: str, serving_model, saved_model_dir: str):
    """(model_input, calibration inputs, test inputs, test targets) by the kind of model.

    Images: raw pixels and labels (model_input None: export measures the pixel scaling).
    Text and forecasters: what mobile.export.sequence_data measures and reads. Only
    full-integer quantization (mode int8) is calibrated.
    """
    from tfprod.mobile import data, export, sequence

    # int8 in mobile.modes, or a compressed variant converted in int8 (qat: always).
    int8_needed = "int8" in settings["modes"] or any(
        technique in ("qat", "prune_qat") for technique in settings.get("compression", ())) or (
        settings.get("compression") and "int8" in settings.get("compression_modes", ["int8"]))
    calibration_samples = settings["calibration_samples"] if int8_needed else None
    if sequence.model_kind(serving_model) != sequence.ModelKind.IMAGE:
        return export.sequence_data(serving_model, saved_model_dir, examples_uri,
                                    calibration_samples, settings["test_examples"])
    shape = export.image_input_shape(serving_model)
    height_width = shape.height, shape.width
    calibration = None
    if calibration_samples:
        train_images, _ = data.read_examples_split(
            examples_uri, "train", *height_width, limit=max(5000, calibration_samples),
            channels=shape.channels, serving_model=serving_model)
        calibration = data.calibration_sample(train_images, calibration_samples)
    test_images, test_labels = data.read_examples_split(
        examples_uri, "test", *height_width, limit=settings["test_examples"],
        channels=shape.channels, serving_model=serving_model)
    return None, calibration, test_images, test_labels


@component
def TFLiteConverter(  # noqa: N802  (TFX component classes are CamelCase)
        model: InputArtifact[standard_artifacts.Model],
        model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
        examples: InputArtifact[standard_artifacts.Examples],
        pushed_model: InputArtifact[standard_artifacts.PushedModel],
        tflite_models: OutputArtifact[TFLiteModels],
        output_dir: Parameter[str],
        model_name: Parameter[str],
        mobile_config: Parameter[str],
        infra_blessing: InputArtifact[standard_artifacts.InfraBlessing] = None,
        transformed_examples: InputArtifact[standard_artifacts.Examples] = None,
        transform_graph: InputArtifact[standard_artifacts.TransformGraph] = None,
        experiment_config: Parameter[str] = None) -> None:
    """Converts, annotates and verifies the blessed model (see the module docstring).

    Args:
      mobile_config: the experiment's ``mobile`` section as JSON (pipeline.config.MobileConfig).
      infra_blessing: the InfraValidator's blessing (optional: absent when infra.enabled is false).
      transformed_examples, transform_graph, experiment_config: what a fine-tune needs
        (mobile.compression, and int8_strategy auto's QAT step; pipeline.mobile_compression);
        given only when the mobile section asks for one.
    """
    from tfprod.mobile import export

    if model_blessing.get_int_custom_property("blessed") != 1 or (
            infra_blessing is not None and infra_blessing.get_int_custom_property("blessed") != 1):
        tflite_models.set_int_custom_property(CONVERTED_PROPERTY, 0)
        # The local runner's progress reads "not blessed" as "skipped (not blessed)".
        logging.info("TFLiteConverter: the model was not blessed; nothing converted")
        return
    settings = json.loads(mobile_config)
    version = pushed_model.get_string_custom_property("pushed_version") or str(model.id)
    saved_model_dir = path_utils.serving_model_path(model.uri)
    serving_model = export.load_serving_model(saved_model_dir)
    model_input, calibration, test_inputs, test_targets = read_data(
        settings, examples.uri, serving_model, saved_model_dir)
    destination = tflite_dir(output_dir, model_name, version)
    finetuner = None
    if experiment_config:
        from tfprod.pipeline import config as config_lib
        from tfprod.pipeline import mobile_compression

        finetuner = mobile_compression.Finetuner(
            config_lib.from_dict(json.loads(experiment_config), validate=False),
            saved_model_dir, transformed_examples.uri, transform_graph.uri,
            progress=lambda line: logging.info("TFLiteConverter: %s", line))
    options = export.ExportOptions(
        modes=settings["modes"], int8_io=settings["int8_io"], runtimes=settings["runtimes"],
        latency_examples=settings["latency_examples"],
        convertible_model=convertible_model, **int8_export_options(settings),
        qat_model=finetuner.qat_model if finetuner else None)
    result = export.export_tflite(
        saved_model_dir, destination, model_name, version, calibration, test_inputs,
        test_targets, options, serving_model=serving_model, model_input=model_input)
    compression = None
    if finetuner and finetuner.experiment.mobile.compression:
        from tfprod.pipeline import mobile_compression

        compression = mobile_compression.convert_variants(
            finetuner, result, calibration, test_inputs, test_targets, options, serving_model,
            model_input, convertible_model)
    if result.int8 is not None:  # the gates' verdict (details in report.json's "int8")
        (logging.info if result.int8.passed else logging.warning)(
            "TFLiteConverter: %s", result.int8.summary())
    files = {"output_dir": destination, "version": version, "models": result.model_files,
             "report": result.report_files, "android": result.android_dir,
             "failed_modes": result.report.get("failed_modes", {})}
    if compression is not None:  # {technique: {mode: path}}, and what failed
        files["compressed_models"] = {
            variant["technique"]: {model["mode"]: model["path"] for model in variant["models"]}
            for variant in compression["variants"]}
        files["compression_failed"] = compression["failed"]
    with open(os.path.join(tflite_models.uri, FILES_JSON), "w", encoding="utf-8") as handle:
        json.dump(files, handle, indent=2)
    tflite_models.set_int_custom_property(CONVERTED_PROPERTY, 1)
    tflite_models.set_string_custom_property("output_dir", destination)


# --------------------------------------------------------------------------
# LSTM models rebuilt for the converter (here, not in mobile/: it needs the model
# registry and the config's model sections).
# --------------------------------------------------------------------------
_TEXT_LSTM_VARIABLES = ("embedding/embeddings:0",
                        "bidirectional_lstm/forward_lstm/lstm_cell/kernel:0",
                        "probabilities/kernel:0")
_FORECAST_LSTM_KERNEL = "lstm{}/lstm_cell/kernel:0"


def convertible_model(serving_model, model_input):
    """What the TFLite converter can take: the SavedModel, or its LSTM model rebuilt.

    Keras traced the LSTMs' loops in the SavedModel for any batch size; the converter
    then stops at ``'tf.TensorListReserve' op requires element_shape to be static``
    (the text `lstm`, whose padding mask keeps Keras's own loop, and stacked
    `lstm_forecaster` LSTMs that return sequences). Such a model is rebuilt here from
    the registry with the sizes its variables have, the SavedModel's weights are copied
    in, and the rebuilt model is traced at batch 1: the forecaster's LSTMs then become
    the fused UNIDIRECTIONAL_SEQUENCE_LSTM op; the text LSTM's masked loop becomes a
    TFLite WHILE loop (the fused op has no mask). Other models convert as loaded.

    Raises:
      ConversionError: a variable of the rebuilt model is missing from the SavedModel.
    """
    from tfprod.mobile import convert, sequence
    from tfprod.models import registry
    from tfprod.pipeline import config as config_lib

    # Keras suffixes the names of layers built again in one process (forward_lstm_1: a
    # Tuner's trials, or tests), so the variables are found by their unsuffixed names.
    variables = {_unsuffixed(variable.name): variable for variable in serving_model.variables}

    def shape(name):
        return variables[name].shape.as_list()

    if isinstance(model_input, convert.TokenIdsInput) and all(
            name in variables for name in _TEXT_LSTM_VARIABLES):
        vocab_size, embedding_dim = shape(_TEXT_LSTM_VARIABLES[0])
        model_config = config_lib.ModelConfig(name="lstm", lstm=config_lib.LstmConfig(
            embedding_dim=embedding_dim, lstm_units=shape(_TEXT_LSTM_VARIABLES[1])[1] // 4,
            embedding_dropout=0.0, dropout=0.0))
        inputs = registry.ModelInputs(
            feature_name=sequence.TOKENS_TRANSFORMED_KEY, feature_shape=(model_input.sequence_length,),
            num_classes=shape(_TEXT_LSTM_VARIABLES[2])[1], vocab_size=vocab_size)
    elif isinstance(model_input, convert.WindowInput) and \
            _FORECAST_LSTM_KERNEL.format(0) in variables:
        units, layer = [], 0
        while _FORECAST_LSTM_KERNEL.format(layer) in variables:
            units.append(shape(_FORECAST_LSTM_KERNEL.format(layer))[1] // 4)
            layer += 1
        model_config = config_lib.ModelConfig(
            name="lstm_forecaster", lstm_forecaster=config_lib.LstmForecasterConfig(
                lstm_units=units, dropout=0.0,
                linear_skip="linear_change/kernel:0" in variables))
        columns = len(model_input.columns)
        inputs = registry.ModelInputs(
            feature_name=sequence.WINDOW_TRANSFORMED_KEY,
            feature_shape=(model_input.lookback * columns,), num_classes=0,
            window_shape=(model_input.lookback, columns), horizon=model_input.horizon,
            target_index=sequence.target_column(model_input))
    else:
        return serving_model
    model = registry.build_model(model_config, inputs)
    for variable in model.variables:
        source = variables.get(_unsuffixed(variable.name))
        if source is None or source.shape != variable.shape:
            raise convert.ConversionError(
                f"rebuilding the {model_config.name} model for TFLite: the SavedModel has no "
                f"variable {variable.name} of shape {variable.shape} (it has {sorted(variables)})")
        variable.assign(source)
    return model


def _unsuffixed(name: str) -> str:
    return re.sub(r"_\d+(?=[/:])", "", name)


