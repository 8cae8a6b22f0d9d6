"""SavedModel -> TFLite models with metadata -> verification report, in one call.

The CLI (`tfprod tflite`) and the pipeline's TFLiteConverter component both
call :func:`export_tflite`. It writes

    <output_dir>/<mode>.tflite      one file per mode, metadata and labels attached
    <output_dir>/report.json/.md    the verification report (mobile.verify)
"""

import dataclasses
import os
from typing import Dict, Optional, Sequence

import numpy as np

from tfprod import errors
from tfprod.mobile import convert, metadata, verify
from tfprod.contract import features


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
    labels: Optional[Sequence[str]] = None  # defaults to the class ids "0", "1", ...


@dataclasses.dataclass
class ExportResult:
    """Where the models and the report were written."""

    output_dir: str
    model_files: Dict[str, str]
    report_files: Dict[str, str]
    report: Dict


def load_serving_model(saved_model_dir: str):
    """Loads a SavedModel exported by pipeline.tasks.image.signatures.

    Raises:
      ExportError: there is no SavedModel in saved_model_dir.
    """
    import tensorflow as tf

    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise ExportError(f"no SavedModel at {saved_model_dir} (expected saved_model.pb there)")
    return tf.saved_model.load(saved_model_dir)


def image_input_shape(serving_model):
    """(height, width, num_classes) from the SavedModel's serving_raw signature."""
    signature = serving_model.signatures.get(features.SERVING_RAW_SIGNATURE)
    if signature is None:
        raise ExportError(f"the SavedModel has no '{features.SERVING_RAW_SIGNATURE}' signature; "
                          "tfprod converts models exported by pipeline.tasks.image.signatures")
    image_spec = signature.structured_input_signature[1][features.IMAGE_KEY]
    output_spec = signature.structured_outputs[features.PROBABILITIES_OUTPUT]
    _, height, width = image_spec.shape.as_list()
    return height, width, output_spec.shape.as_list()[-1]


def metadata_spec(model_name: str, version: str, model_input: convert.ImageInput,
                  labels: Sequence[str], description: str) -> metadata.ModelMetadataSpec:
    """The Android metadata of an image classifier whose pixel scaling is folded in."""
    return metadata.ModelMetadataSpec(
        name=model_name,
        description=description or (
            f"Classifies a {model_input.height}x{model_input.width} grayscale image into "
            f"{len(labels)} classes. Trained and blessed by the tfprod TFX pipeline."),
        version=str(version),
        input=metadata.InputMetadata(
            name=features.IMAGE_KEY,
            description=(f"Grayscale image [1, {model_input.height}, {model_input.width}], raw "
                         "pixel values 0..255 (the model scales them itself: mean 0, std 1). "
                         "A uint8/int8 input takes pixel / scale + zero_point of the tensor."),
            kind=metadata.InputKind.IMAGE, mean=[0.0], std=[1.0],
            image_width=model_input.width, image_height=model_input.height,
            color_space=metadata.ColorSpace.GRAYSCALE, value_min=0.0, value_max=255.0),
        output=metadata.OutputMetadata(
            name=features.PROBABILITIES_OUTPUT,
            description="Probability of each class, in the order of labels.txt.",
            labels=list(labels)))


def export_tflite(saved_model_dir: str, output_dir: str, model_name: str, version: str,
                  calibration_images: Optional[np.ndarray], test_images: np.ndarray,
                  test_labels: np.ndarray, options: ExportOptions = ExportOptions(),
                  progress=lambda line: None, serving_model=None) -> ExportResult:
    """Converts a pushed SavedModel in each mode, attaches metadata and verifies the models.

    Args:
      saved_model_dir: the SavedModel (one pushed version, or the Trainer's Format-Serving).
      output_dir: where <mode>.tflite and report.json/.md are written.
      model_name, version: written into the metadata and the report.
      calibration_images: float32 [N, height, width] raw pixels (100..500) for int8.
      test_images, test_labels: the test split the models are verified on.
      options: modes, int8 input/output type, runtimes, latency sample size.
      progress: called with one line per step.
      serving_model: the SavedModel already loaded from saved_model_dir, if it is.

    Raises:
      ExportError, convert.ConversionError, metadata.MetadataError,
      verify.VerificationError: each names what to fix.
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
    height, width, num_classes = image_input_shape(serving_model)
    model_input = convert.probe_pixel_scaling(serving_model, height, width)
    function = convert.inference_function(serving_model, model_input)
    labels = list(options.labels or [str(index) for index in range(num_classes)])
    if len(labels) != num_classes:
        raise ExportError(f"{len(labels)} labels given for a model with {num_classes} classes")
    spec = metadata_spec(model_name, version, model_input, labels, options.description)

    def representative_dataset():
        for image in calibration_images:
            yield [image[np.newaxis].astype(np.float32)]

    reference = verify.savedmodel_probabilities(serving_model, test_images)
    savedmodel_accuracy = float(np.mean(reference.argmax(axis=1) == test_labels))
    os.makedirs(output_dir, exist_ok=True)
    model_files, reports = {}, []
    for mode in modes:
        io_type = int8_io if mode == convert.ConversionMode.INT8 \
            else convert.IoType.FLOAT32
        progress(f"converting {mode.value} (input/output {io_type.value}) ...")
        model_bytes = convert.convert(function, mode, representative_dataset, io_type,
                                      trackable=serving_model)
        convert.check_mobile_friendly(model_bytes)
        model_bytes = metadata.attach_metadata(model_bytes, spec)
        path = os.path.join(output_dir, f"{mode.value}.tflite")
        with open(path, "wb") as handle:
            handle.write(model_bytes)
        model_files[mode.value] = path
        progress(f"verifying {mode.value} on {', '.join(options.runtimes)} ...")
        reports.append(verify.ModelReport(
            mode=mode.value, io_type=io_type.value, path=path, size_bytes=len(model_bytes),
            operators=convert.operator_names(model_bytes),
            runtimes=verify.verify_model(model_bytes, test_images, test_labels, reference,
                                         options.runtimes, options.latency_examples)))
    report = verify.build_report(
        model_name, str(version), saved_model_dir, reports, savedmodel_accuracy,
        len(test_labels), min(options.latency_examples, len(test_labels)),
        extra={"input_scaling": dataclasses.asdict(model_input),
               "calibration_examples": 0 if calibration_images is None
               else int(len(calibration_images)),
               "metadata": {"name": spec.name, "version": spec.version,
                            "associated_files": [f.name for f in spec.associated_files()]}})
    report_files = verify.write_report(report, output_dir)
    return ExportResult(output_dir=output_dir, model_files=model_files,
                        report_files=report_files, report=report)
