"""SavedModel -> TFLite models with metadata -> verification report, in one call.

The CLI (`tfprod tflite`) and the pipeline's TFLiteConverter component both
call :func:`export_tflite`. It writes

    <output_dir>/<mode>.tflite      one file per mode, metadata and labels attached
    <output_dir>/report.json/.md    the verification report (mobile.verify)
    <output_dir>/android/           the drop-in folder for an Android app (mobile.android)

What differs by the kind of model (mobile.sequence.ModelKind: image, text, forecast)
is chosen in one place, :func:`kind_handling`: the TFLite input, the metadata, the
SavedModel's reference outputs and the metric the models are verified on.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from tfprod import errors
from tfprod.mobile import android, convert, int8_auto, metadata, sequence, verify
from tfprod.contract import features, layout


class ExportError(errors.ConfigError, RuntimeError):
    """The SavedModel is not one tfprod can convert; the message says why."""


@dataclasses.dataclass
class ExportOptions:
    """What to convert and how to verify it."""

    modes: Sequence[str] = tuple(mode.value for mode in convert.ConversionMode)
    int8_io: convert.IoType = convert.IoType.FLOAT32
    runtimes: Sequence[str] = verify.RUNTIMES
    latency_examples: int = 200
    description: str = ""
    # Defaults to the SavedModel's assets/labels.txt, else the class ids "0", "1", ...
    labels: Optional[Sequence[str]] = None
    # The TFLite input's channels for a grayscale model: None (3, RGB: what the Task Library
    # and MediaPipe accept) or 1 (a [1, H, W, 1] input for apps that call the interpreter).
    input_channels: Optional[int] = None
    # int8 gates and strategy (mobile.int8_auto): ptq or auto; what a failing gate does.
    int8_strategy: int8_auto.Int8Strategy = int8_auto.Int8Strategy.PTQ
    int8_gates: int8_auto.Int8Gates = int8_auto.Int8Gates()
    int8_gate: int8_auto.GateAction = int8_auto.GateAction.WARN
    int8_max_float_layers: int = int8_auto.DEFAULT_MAX_FLOAT_LAYERS
    # auto's last resort: returns the int8 TFLite bytes of a QAT fine-tuned model.
    qat_fallback: Optional[int8_auto.QatFallback] = None
    # Or: returns the QAT fine-tuned Keras model (mobile.compress), converted here to int8
    # like the others (called only if auto reaches its QAT step).
    qat_model: Optional[Callable[[], Any]] = None
    # (SavedModel, model input) -> what the converter takes: the pipeline passes
    # tflite_converter.convertible_model, which rebuilds LSTM models at batch 1; None: the
    # SavedModel as loaded.
    convertible_model: Optional[Callable[[Any, Any], Any]] = None


@dataclasses.dataclass
class ExportResult:
    """Where the models and the report were written."""

    output_dir: str
    model_files: Dict[str, str]
    report_files: Dict[str, str]
    report: Dict
    android_dir: Optional[str] = None
    # The int8 attempts (mode int8 only): which one is int8.tflite and whether it passed.
    int8: Optional[int8_auto.Int8Result] = None


def load_serving_model(saved_model_dir: str):
    """Loads a SavedModel exported by pipeline.tasks.image.signatures.

    Raises:
      ExportError: there is no SavedModel in saved_model_dir.
    """
    import tensorflow as tf

    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise ExportError(f"no SavedModel at {saved_model_dir} (expected saved_model.pb there)")
    return tf.saved_model.load(saved_model_dir)


class ImageShape(NamedTuple):
    """An image model's input and output sizes, from its serving_raw signature."""

    height: int
    width: int
    channels: int  # 1 (grayscale) or 3 (RGB)
    num_classes: int


def image_input_shape(serving_model) -> ImageShape:
    """The image size, channels and class count from the SavedModel's serving_raw signature.

    The pixels signature: serving_pixels (float pixels [N, height, width, channels], in a
    model whose serving_raw takes encoded files), else serving_raw ([N, height, width] for
    grayscale, or [N, height, width, channels]).
    """
    signature = serving_model.signatures.get(features.SERVING_PIXELS_SIGNATURE) or \
        serving_model.signatures.get(features.SERVING_RAW_SIGNATURE)
    if signature is None:
        raise ExportError(f"the SavedModel has no '{features.SERVING_RAW_SIGNATURE}' signature; "
                          "tfprod converts models exported by pipeline.tasks.image.signatures")
    (image_spec,) = signature.structured_input_signature[1].values()
    output_spec = signature.structured_outputs[features.PROBABILITIES_OUTPUT]
    dims = image_spec.shape.as_list()[1:]
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3 or None in dims or dims[2] not in (1, 3):
        raise ExportError(
            f"the '{features.SERVING_RAW_SIGNATURE}' image input has shape "
            f"{image_spec.shape.as_list()}: tfprod converts images of a fixed size, "
            "[N, height, width] (grayscale) or [N, height, width, 1 or 3]")
    return ImageShape(*dims, output_spec.shape.as_list()[-1])


def saved_model_labels(saved_model_dir: str) -> Optional[List[str]]:
    """The class names the task saved with the model (assets/labels.txt), if any.

    Line i names class i. A task that knows names for its class ids (e.g. image
    folders: the folder names) writes this file as a SavedModel asset.
    """
    path = os.path.join(saved_model_dir, layout.LABELS_ASSET)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        labels = [line.rstrip("\r\n") for line in handle]
    while labels and not labels[-1]:
        labels.pop()
    return labels or None


def _value_range(io_type: convert.IoType, low: List[float], high: List[float]):
    """Stats in the tensor's own units: quantized tensors hold their integer range."""
    if io_type == convert.IoType.UINT8:
        return [0.0], [255.0]
    if io_type == convert.IoType.INT8:
        return [-128.0], [127.0]
    return low, high


def metadata_spec(model_name: str, version: str, model_input: convert.ImageInput,
                  labels: Sequence[str], description: str,
                  io_type: convert.IoType = convert.IoType.FLOAT32
                  ) -> metadata.ModelMetadataSpec:
    """The metadata of an image classifier whose pixel scaling is folded in.

    What the TFLite Task Library's (and MediaPipe's) ImageClassifier reads: the image
    size and colour space, NormalizationOptions (mean 0, std 1 per channel: the app feeds
    raw pixels 0..255 to a float input; a uint8 input takes them as they are) and
    labels.txt on the output. Stats give each tensor's value range in its own units,
    as tflite-support's metadata writers set them.
    """
    io_type = convert.IoType(io_type)
    channels = model_input.tflite_channels
    rgb = channels == convert.RGB_CHANNELS
    color_space = metadata.ColorSpace.RGB if rgb else metadata.ColorSpace.GRAYSCALE
    input_min, input_max = _value_range(io_type, [0.0] * channels, [255.0] * channels)
    output_min, output_max = _value_range(io_type, [0.0], [1.0])
    kind = "RGB" if model_input.channels == convert.RGB_CHANNELS else "grayscale"
    folded = ("the model scales them itself: mean 0, std 1"
              + ("; it turns RGB into gray itself, so a gray image goes in as three equal "
                 "channels" if rgb and model_input.channels == 1 else ""))
    return metadata.ModelMetadataSpec(
        name=model_name,
        description=description or (
            f"Classifies a {model_input.height}x{model_input.width} {kind} image into "
            f"{len(labels)} classes. Trained and blessed by the tfprod TFX pipeline."),
        version=str(version),
        input=metadata.InputMetadata(
            name=features.IMAGE_KEY,
            description=(f"{'RGB' if rgb else 'Grayscale'} image [1, {model_input.height}, "
                         f"{model_input.width}, {channels}] (NHWC), raw pixel values 0..255 "
                         f"({folded}). A uint8/int8 input takes pixel / scale + zero_point "
                         "of the tensor."),
            kind=metadata.InputKind.IMAGE, mean=[0.0] * channels, std=[1.0] * channels,
            image_width=model_input.width, image_height=model_input.height,
            color_space=color_space, value_min=input_min, value_max=input_max),
        output=metadata.OutputMetadata(
            name=features.PROBABILITIES_OUTPUT,
            description="Probability of each class, in the order of labels.txt.",
            labels=list(labels), value_min=output_min, value_max=output_max))


@dataclasses.dataclass
class KindHandling:
    """What export_tflite does differently for one kind of model."""

    kind: sequence.ModelKind
    model_input: object  # convert.ImageInput, TokenIdsInput or WindowInput
    labels: List[str]
    metric: str  # verify.ACCURACY or verify.MAE
    metadata_spec: Callable[[convert.IoType], metadata.ModelMetadataSpec]
    reference: Callable[[np.ndarray], np.ndarray]  # the SavedModel's outputs for test inputs


def _labels(options: ExportOptions, saved_model_dir: str, num_classes: int,
            fallback_asset: Optional[str] = None) -> List[str]:
    labels, labels_from = options.labels, "options.labels"
    if not labels:
        labels, labels_from = saved_model_labels(saved_model_dir), \
            os.path.join(saved_model_dir, layout.LABELS_ASSET)
    if not labels and fallback_asset:
        path = os.path.join(saved_model_dir, fallback_asset)
        if os.path.isfile(path):
            labels, labels_from = sequence.read_lines(path), path
    labels = list(labels or [str(index) for index in range(num_classes)])
    if len(labels) != num_classes:
        raise ExportError(f"{len(labels)} labels given (from {labels_from}) for a model with "
                          f"{num_classes} classes: give one label per class, in class-id order")
    return labels


def kind_handling(serving_model, saved_model_dir: str, model_name: str, version: str,
                  options: ExportOptions, model_input=None) -> KindHandling:
    """The per-kind choices (see the module docstring).

    Args:
      model_input: for text and forecasters, the input measured by mobile.sequence
        (:func:`sequence_data` returns it); images measure theirs here.
    """
    kind = sequence.model_kind(serving_model)
    description = options.description
    if kind == sequence.ModelKind.IMAGE:
        height, width, channels, num_classes = image_input_shape(serving_model)
        model_input = convert.probe_pixel_scaling(serving_model, height, width, channels,
                                                  options.input_channels)
        labels = _labels(options, saved_model_dir, num_classes)
        return KindHandling(
            kind, model_input, labels, verify.ACCURACY,
            lambda io_type: metadata_spec(model_name, version, model_input, labels,
                                          description, io_type),
            lambda images: verify.savedmodel_probabilities(serving_model, images))
    if model_input is None:
        raise ExportError(f"a {kind.value} model needs its input measured from the pipeline's "
                          "examples first: call mobile.export.sequence_data")
    if kind == sequence.ModelKind.TEXT:
        raw = serving_model.signatures[features.SERVING_RAW_SIGNATURE]
        num_classes = raw.structured_outputs[features.PROBABILITIES_OUTPUT].shape.as_list()[-1]
        labels = _labels(options, saved_model_dir, num_classes, sequence.TEXT_LABELS_ASSET)
        return KindHandling(
            kind, model_input, labels, verify.ACCURACY,
            lambda io_type: sequence.text_metadata_spec(model_name, version, model_input,
                                                        labels, description),
            lambda token_ids: sequence.text_probabilities(serving_model, token_ids))
    return KindHandling(
        kind, model_input, [], verify.MAE,
        lambda io_type: sequence.forecast_metadata_spec(model_name, version, model_input,
                                                        description),
        lambda windows: sequence.savedmodel_forecasts(serving_model, windows))


def sequence_data(serving_model, saved_model_dir: str, examples_uri: str,
                  calibration_samples: Optional[int], test_examples: Optional[int]):
    """(model_input, calibration inputs or None, test inputs, test targets) of a text
    classifier or forecaster, from an ExampleGen output's train and test splits.

    Text: token ids by the model's own transform_features, and class ids. Forecasters:
    raw windows and their future values. calibration_samples None: no calibration.
    """
    from tfprod.mobile import data

    kind = sequence.model_kind(serving_model)
    test = sequence.read_serialized(examples_uri, "test", test_examples)
    if not test:
        raise data.DataError(f"the test split of {examples_uri} is empty")
    if kind == sequence.ModelKind.TEXT:
        model_input = sequence.probe_token_ids(serving_model, saved_model_dir, test[0])

        def split(serialized):
            return sequence.text_split(serving_model, serialized)
    elif kind == sequence.ModelKind.FORECAST:
        model_input = sequence.probe_window_normalization(serving_model, test[0])

        def split(serialized):
            return sequence.forecast_split(serving_model, serialized, model_input)
    else:
        raise ExportError("sequence_data reads text and forecasting examples; images are read "
                          "by mobile.data.read_examples_split")
    calibration = None
    if calibration_samples:
        train_inputs, _ = split(sequence.read_serialized(
            examples_uri, "train", max(5000, calibration_samples)))
        # A short series (the airline sample: 69 training windows) calibrates on all it has.
        calibration = train_inputs if len(train_inputs) <= calibration_samples \
            else data.calibration_sample(train_inputs, calibration_samples)
    test_inputs, test_targets = split(test)
    return model_input, calibration, test_inputs, test_targets


def export_tflite(saved_model_dir: str, output_dir: str, model_name: str, version: str,
                  calibration_images: Optional[np.ndarray], test_images: np.ndarray,
                  test_labels: np.ndarray, options: ExportOptions = ExportOptions(),
                  progress=lambda line: None, serving_model=None,
                  model_input=None) -> ExportResult:
    """Converts a pushed SavedModel in each mode, attaches metadata and verifies the models.

    Args:
      saved_model_dir: the SavedModel (one pushed version, or the Trainer's Format-Serving).
      output_dir: where <mode>.tflite and report.json/.md are written.
      model_name, version: written into the metadata and the report.
      calibration_images: float32 raw pixels 0..255 (100..500 images) for int8, in the
        layout of serving_raw ([N, height, width] or [N, height, width, channels]);
        for text, token ids [N, max_len]; for forecasters, raw windows (sequence_data).
      test_images, test_labels: the test split the models are verified on (same layout;
        for forecasters the labels are the future values [N, horizon]).
      options: modes, int8 input/output type, runtimes, latency sample size.
      progress: called with one line per step.
      serving_model: the SavedModel already loaded from saved_model_dir, if it is.
      model_input: text and forecasters: the input sequence_data measured.

    A mode the converter refuses (e.g. int8 where an op has no integer kernel) is listed
    in the report's failed_modes with the converter's error; the export fails only when
    no mode converts.

    Raises:
      ExportError, convert.ConversionError, metadata.MetadataError,
      verify.VerificationError, android.AndroidPackageError: each names what to fix.
      int8_auto.Int8GateError: the int8 model fails its gates and options.int8_gate is
        fail (raised after the files and the report are written).
    """
    modes = [convert.ConversionMode(mode) for mode in options.modes]
    int8_io = convert.IoType(options.int8_io)
    if not modes:
        raise ExportError("no conversion modes given: choose from "
                          + ", ".join(mode.value for mode in convert.ConversionMode))
    if convert.ConversionMode.INT8 in modes and calibration_images is None:
        raise ExportError("mode int8 needs calibration images from the training data")
    if serving_model is None:
        serving_model = load_serving_model(saved_model_dir)
    handling = kind_handling(serving_model, saved_model_dir, model_name, version, options,
                             model_input)
    model_input, labels = handling.model_input, handling.labels
    if handling.kind != sequence.ModelKind.IMAGE and int8_io != convert.IoType.FLOAT32:
        raise ExportError(f"int8_io {int8_io.value} is for image models; a {handling.kind.value} "
                          "model's int8 file keeps its "
                          + ("int32 token-ids" if handling.kind == sequence.ModelKind.TEXT
                             else "float32") + " input: use int8_io float32")
    # The object whose variables the function reads (LSTM models are rebuilt, see there).
    converted_model = (options.convertible_model or (lambda model, _: model))(
        serving_model, model_input)
    function = convert.inference_function(converted_model, model_input)
    # Built (and checked) once before converting; each mode then states its own IO types.
    spec = handling.metadata_spec(convert.IoType.FLOAT32)
    spec.validate()

    def representative_dataset():
        for example in model_input.as_input(calibration_images):
            yield [example[np.newaxis]]

    reference = handling.reference(test_images)
    if handling.metric == verify.MAE:
        savedmodel_metric = float(np.mean(np.abs(reference - test_labels)))
    else:
        savedmodel_metric = float(np.mean(reference.argmax(axis=1) == test_labels))
    os.makedirs(output_dir, exist_ok=True)
    model_files, reports, failed_modes = {}, [], {}
    float32_operators = None
    int8_result = None
    for mode in modes:
        io_type = int8_io if mode == convert.ConversionMode.INT8 \
            else convert.IoType.FLOAT32
        if mode != convert.ConversionMode.FLOAT32:
            if float32_operators is None:  # the graph's ops decide which modes would crash
                float32_operators = convert.operator_names(convert.convert(
                    function, convert.ConversionMode.FLOAT32, trackable=converted_model))
            crash = convert.known_crash(mode, float32_operators)
            if crash:
                failed_modes[mode.value] = crash
                progress(f"{mode.value}: {crash}")
                continue

        def prepare(model_bytes: bytes, io_type=io_type) -> bytes:
            convert.check_mobile_friendly(model_bytes)
            return metadata.attach_metadata(model_bytes, handling.metadata_spec(io_type))

        def verify_on_runtimes(model_bytes: bytes):
            return verify.verify_model(model_bytes, model_input.as_input(test_images),
                                       test_labels, reference, options.runtimes,
                                       options.latency_examples, handling.metric)

        progress(f"converting {mode.value} (input/output {io_type.value}) ...")
        try:
            model_bytes = convert.convert(function, mode, representative_dataset, io_type,
                                          trackable=converted_model)
            convert.check_mobile_friendly(model_bytes)
        except convert.ConversionError as error:
            failed_modes[mode.value] = str(error)
            progress(f"{mode.value}: not converted: {str(error).splitlines()[0][:300]}")
            continue
        if mode == convert.ConversionMode.FLOAT32:
            float32_operators = convert.operator_names(model_bytes)
        # The int8 gates compare accuracy: they apply to classifiers, not to forecasters.
        gated = mode == convert.ConversionMode.INT8 and handling.metric != verify.MAE
        if gated and \
                int8_auto.Int8Strategy(options.int8_strategy) == int8_auto.Int8Strategy.AUTO:
            qat_fallback = options.qat_fallback
            if qat_fallback is None and options.qat_model is not None:
                def qat_fallback(io_type=io_type):
                    qat = options.qat_model()
                    return convert.convert(convert.inference_function(qat, model_input),
                                           convert.ConversionMode.INT8, representative_dataset,
                                           io_type, trackable=qat)
            int8_result = int8_auto.auto_int8(
                model_bytes, lambda: int8_auto.int8_converter(
                    function, converted_model, representative_dataset),
                representative_dataset, verify_on_runtimes, options.int8_gates,
                savedmodel_metric, qat_fallback, options.int8_max_float_layers,
                io_type.value, prepare, options.int8_gate, progress)
            model_bytes, runtimes = int8_result.model.model_bytes, int8_result.model.runtimes
            progress(int8_result.summary())
        else:
            model_bytes = prepare(model_bytes)
            progress(f"verifying {mode.value} on {', '.join(options.runtimes)} ...")
            runtimes = verify_on_runtimes(model_bytes)
            if gated:
                int8_result = int8_auto.gate_ptq(model_bytes, runtimes, options.int8_gates,
                                                 savedmodel_metric, options.int8_gate)
                progress(int8_result.summary())
        path = os.path.join(output_dir, f"{mode.value}.tflite")
        with open(path, "wb") as handle:
            handle.write(model_bytes)
        model_files[mode.value] = path
        reports.append(verify.ModelReport(
            mode=mode.value, io_type=io_type.value, path=path, size_bytes=len(model_bytes),
            operators=convert.operator_names(model_bytes), runtimes=runtimes))
    if not model_files:
        raise convert.ConversionError(
            "no mode converted: " + "; ".join(f"{mode}: {reason[:1500]}"
                                              for mode, reason in failed_modes.items()))
    input_description = dataclasses.asdict(model_input)
    input_description.pop("vocabulary", None)  # it is in the models' vocab.txt
    report = verify.build_report(
        model_name, str(version), saved_model_dir, reports, savedmodel_metric,
        len(test_labels), min(options.latency_examples, len(test_labels)),
        metric=handling.metric, failed_modes=failed_modes,
        extra={"model_kind": handling.kind.value,
               "input_scaling": input_description,
               "calibration_examples": 0 if calibration_images is None
               else int(len(calibration_images)),
               "labels": labels,
               "metadata": {"name": spec.name, "version": spec.version,
                            "associated_files": [f.name for f in spec.associated_files()]}})
    if int8_result is not None:
        report["int8"] = int8_result.to_report()
    report_files = verify.write_report(report, output_dir)
    progress("writing the Android folder ...")
    if handling.kind == sequence.ModelKind.IMAGE:
        android_dir = android.write_android_folder(output_dir, model_files, report_files["json"],
                                                   spec.input.mean, spec.input.std)
    else:
        android_dir = android.write_sequence_folder(output_dir, model_files, report, spec)
    if int8_result is not None:  # after the report and files, so a failed run leaves them
        int8_auto.check_gate(int8_result, report_files["json"])
    return ExportResult(output_dir=output_dir, model_files=model_files,
                        report_files=report_files, report=report, android_dir=android_dir,
                        int8=int8_result)
