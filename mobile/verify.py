"""Verification of TFLite models on the runtimes Android apps bundle.

Each model runs on LiteRT (ai-edge-litert, the maintained runtime) and on
tflite-runtime 2.14 (older, still bundled in many apps), one example per
invoke as an app would. Per mode and runtime the report has the test-split
metric next to the SavedModel's (``metric``: accuracy for classifiers, with the
top-1 agreement with the SavedModel and the largest probability difference; mae
for forecasters, with the largest absolute difference from the SavedModel's
forecast), the file size, and the median latency per example with 1 and 2 threads.
Modes the converter refused are listed with its error (``failed_modes``). Both runtimes apply the XNNPACK delegate by
default (their builtin op resolver), which is what is measured.
"""

import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from tfprod import errors
from tfprod.mobile.options import RUNTIMES

THREAD_COUNTS = (1, 2)
# TFLite ops whose state lives in variable tensors that persist between invokes.
STATEFUL_OPERATORS = frozenset({"UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                                "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN"})
ACCURACY = "accuracy"
MAE = "mae"
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"


class VerificationError(errors.RunFailure):
    """A model could not be loaded or run on a runtime; the message names both."""


def _interpreter_class(runtime: str):
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter
    elif runtime == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        raise VerificationError(f"unknown runtime '{runtime}'; choose from {', '.join(RUNTIMES)}")
    return Interpreter


class TfliteClassifier:
    """Runs a single-input, single-output TFLite model (a classifier, or a forecaster) one
    example at a time.

    Quantized (int8/uint8) inputs and outputs are quantized and dequantized with
    the tensors' own scale and zero point, as an app would.
    """

    def __init__(self, model_bytes: bytes, runtime: str, num_threads: int = 1):
        self.runtime = runtime
        try:
            self.interpreter = _interpreter_class(runtime)(model_content=model_bytes,
                                                           num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise VerificationError(f"{runtime} could not load the model: {error}") from error
        # A fused LSTM keeps its state in variable tensors across invokes; each example
        # must start from zero state, as the SavedModel's does (apps: resetVariableTensors()).
        from tfprod.mobile.convert import operator_names

        self.stateful = bool(STATEFUL_OPERATORS & set(operator_names(model_bytes)))
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()

    def quantize_input(self, example: np.ndarray) -> np.ndarray:
        """One example as the input tensor takes it: [1, ...], quantized if it is int8/uint8.

        The example may come in the SavedModel's serving_raw layout (e.g. [28, 28] for a
        grayscale image whose TFLite input is [1, 28, 28, 1]); it is reshaped, and a gray
        image fed to an RGB input is repeated into three equal channels, as an app does.
        """
        shape = tuple(self.input["shape"][1:])
        example = np.asarray(example)
        if example.size * 3 == int(np.prod(shape)) and shape[-1] == 3:
            example = np.repeat(example.reshape(*shape[:-1], 1), 3, axis=-1)
        example = example.reshape(shape)
        dtype = self.input["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            example = np.clip(np.round(example / scale + zero_point), info.min, info.max)
        return example.astype(dtype)[np.newaxis]

    def dequantize_output(self, values: np.ndarray) -> np.ndarray:
        if self.output["dtype"] in (np.int8, np.uint8):
            scale, zero_point = self.output["quantization"]
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        if self.stateful:
            self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self.input["index"], prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def predict(self, examples: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes], one invoke per example."""
        return np.concatenate([self.dequantize_output(self.invoke(self.quantize_input(example)))
                               for example in examples])

    def median_latency_ms(self, examples: np.ndarray, warmup: int = 10) -> float:
        """Median wall time of one invoke (input already prepared), in milliseconds."""
        prepared = [self.quantize_input(example) for example in examples]
        for item in prepared[:warmup]:
            self.invoke(item)
        times = []
        for item in prepared:
            start = time.perf_counter()
            self.invoke(item)
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)


def savedmodel_probabilities(serving_model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The SavedModel's probabilities for raw pixels 0..255 (the reference).

    Through its serving_pixels signature (float pixels [N, H, W, C], where serving_raw
    takes encoded files) if it has one, else serving_raw.
    """
    import tensorflow as tf

    from tfprod.contract import features

    signature = serving_model.signatures.get(features.SERVING_PIXELS_SIGNATURE) or \
        serving_model.signatures[features.SERVING_RAW_SIGNATURE]
    (input_name,) = signature.structured_input_signature[1]
    return np.concatenate([
        signature(**{input_name: tf.constant(images[start:start + batch_size], tf.float32)})[
            features.PROBABILITIES_OUTPUT].numpy()
        for start in range(0, len(images), batch_size)])


def verify_model(model_bytes: bytes, images: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray, runtimes: Sequence[str] = RUNTIMES,
                 latency_examples: int = 200, metric: str = ACCURACY
                 ) -> Dict[str, Dict[str, float]]:
    """The metric, agreement and latency of one TFLite model on each runtime.

    Args:
      images, labels: the test inputs (any kind: pixels, token ids, windows) and targets
        (class ids for accuracy, future values [N, horizon] for mae).
      reference: the SavedModel's outputs for the same inputs.
      metric: ``accuracy`` (classifiers) or ``mae`` (forecasters).
    """
    results = {}
    for runtime in runtimes:
        outputs = TfliteClassifier(model_bytes, runtime, num_threads=1).predict(images)
        if metric == MAE:
            result = {
                MAE: float(np.mean(np.abs(outputs - labels))),
                "max_abs_difference": float(np.abs(outputs - reference).max()),
            }
        else:
            predicted = outputs.argmax(axis=1)
            result = {
                ACCURACY: float(np.mean(predicted == labels)),
                "top1_agreement": float(np.mean(predicted == reference.argmax(axis=1))),
                "max_probability_difference": float(np.abs(outputs - reference).max()),
            }
        for threads in THREAD_COUNTS:
            classifier = TfliteClassifier(model_bytes, runtime, num_threads=threads)
            result[f"latency_ms_{threads}_thread{'s' if threads > 1 else ''}"] = \
                classifier.median_latency_ms(images[:latency_examples])
        results[runtime] = result
    return results


@dataclasses.dataclass
class ModelReport:
    """One converted model: where it is, what it is, how it did."""

    mode: str
    io_type: str
    path: str
    size_bytes: int
    operators: List[str]
    runtimes: Dict[str, Dict[str, float]]


def build_report(model_name: str, version: str, saved_model_dir: str,
                 models: List[ModelReport], savedmodel_accuracy: float, example_count: int,
                 latency_examples: int, extra: Optional[Dict[str, Any]] = None,
                 metric: str = ACCURACY,
                 failed_modes: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The JSON report: per mode and runtime, the figures against the SavedModel.

    ``savedmodel_accuracy`` is the SavedModel's value of ``metric``: its accuracy (each
    runtime row gets ``accuracy_drop_points``) or its MAE (rows get ``mae_increase``).
    ``failed_modes`` maps each mode the converter refused to its error.
    """
    float32_size = next((m.size_bytes for m in models if m.mode == "float32"), None)
    rows = []
    for model in models:
        row = dataclasses.asdict(model)
        row["size_ratio_vs_float32"] = (model.size_bytes / float32_size) if float32_size else None
        for result in row["runtimes"].values():
            if metric == MAE:
                result["mae_increase"] = result[MAE] - savedmodel_accuracy
            else:
                result["accuracy_drop_points"] = 100.0 * (savedmodel_accuracy - result[ACCURACY])
        rows.append(row)
    report = {
        "model_name": model_name,
        "version": version,
        "saved_model_dir": saved_model_dir,
        "metric": metric,
        f"savedmodel_{metric}": savedmodel_accuracy,
        "test_examples": example_count,
        "latency_examples": latency_examples,
        "latency_note": "median wall time of one invoke (batch 1), XNNPACK delegate on "
                        "(the runtimes' default)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "models": rows,
        "failed_modes": dict(failed_modes or {}),
    }
    report.update(extra or {})
    return report


def format_markdown(report: Dict[str, Any]) -> str:
    """The report as a Markdown table (one row per mode and runtime)."""
    if report.get("metric") == MAE:
        return _format_markdown_mae(report)
    lines = [
        f"# TFLite verification: {report['model_name']} version {report['version']}",
        "",
        f"SavedModel test accuracy {report['savedmodel_accuracy']:.4f} on "
        f"{report['test_examples']} test examples; latency is the median of "
        f"{report['latency_examples']} single-example invokes ({report['latency_note']}).",
        f"Machine: {report['machine']}.",
        "",
        "| mode | io | runtime | size (KB) | x float32 | accuracy | drop (points) | "
        "top-1 agreement | max prob. diff | latency 1 thread (ms) | latency 2 threads (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in report["models"]:
        ratio = model["size_ratio_vs_float32"]
        for runtime, result in model["runtimes"].items():
            lines.append(
                f"| {model['mode']} | {model['io_type']} | {runtime} | "
                f"{model['size_bytes'] / 1024:.1f} | "
                f"{'' if ratio is None else f'{ratio:.3f}'} | {result['accuracy']:.4f} | "
                f"{result['accuracy_drop_points']:+.2f} | {result['top1_agreement']:.4f} | "
                f"{result['max_probability_difference']:.4f} | "
                f"{result['latency_ms_1_thread']:.3f} | {result['latency_ms_2_threads']:.3f} |")
    if report.get("int8"):
        from tfprod.mobile import int8_auto

        lines += int8_auto.markdown_lines(report["int8"])
    return "\n".join(lines + _failed_lines(report) + _compression_lines(report)) + "\n"


def _compression_lines(report: Dict[str, Any]) -> List[str]:
    if not report.get("compression"):
        return []
    from tfprod.mobile import compress

    return compress.markdown_lines(report["compression"], report.get("metric", ACCURACY))


def _failed_lines(report: Dict[str, Any]) -> List[str]:
    failed = report.get("failed_modes") or {}
    if not failed:
        return []
    return ["", "Modes not converted (the converter's error):", ""] + [
        f"- {mode}: {reason.splitlines()[0][:400]}" for mode, reason in failed.items()]


def _format_markdown_mae(report: Dict[str, Any]) -> str:
    """A forecaster's report: MAE against the future values, difference from the SavedModel."""
    lines = [
        f"# TFLite verification: {report['model_name']} version {report['version']}",
        "",
        f"SavedModel test MAE {report['savedmodel_mae']:.4f} on {report['test_examples']} "
        f"test windows; latency is the median of {report['latency_examples']} single-window "
        f"invokes ({report['latency_note']}).",
        f"Machine: {report['machine']}.",
        "",
        "| mode | io | runtime | size (KB) | x float32 | MAE | MAE increase | "
        "max abs. diff | latency 1 thread (ms) | latency 2 threads (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in report["models"]:
        ratio = model["size_ratio_vs_float32"]
        for runtime, result in model["runtimes"].items():
            lines.append(
                f"| {model['mode']} | {model['io_type']} | {runtime} | "
                f"{model['size_bytes'] / 1024:.1f} | "
                f"{'' if ratio is None else f'{ratio:.3f}'} | {result['mae']:.4f} | "
                f"{result['mae_increase']:+.4f} | {result['max_abs_difference']:.4f} | "
                f"{result['latency_ms_1_thread']:.3f} | {result['latency_ms_2_threads']:.3f} |")
    return "\n".join(lines + _failed_lines(report) + _compression_lines(report)) + "\n"


def write_report(report: Dict[str, Any], directory: str) -> Dict[str, str]:
    """Writes report.json and report.md into directory; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, REPORT_JSON),
             "markdown": os.path.join(directory, REPORT_MARKDOWN)}
    with open(paths["json"], "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(format_markdown(report))
    return paths
