"""int8 quality gates, and the `auto` strategy that repairs an int8 model failing them.

Post-training int8 quantization (PTQ) sometimes loses too much accuracy: a few layers
with a wide or skewed value range do not fit in 256 levels. tfprod verifies every int8
model against the SavedModel on the verification examples, on each runtime, with two
gates (:class:`Int8Gates`): the accuracy drop in points (``mobile.max_int8_accuracy_drop``)
and the top-1 agreement with the SavedModel (``mobile.min_int8_agreement``).

``mobile.int8_strategy``:

* ``ptq`` (default): today's full-integer conversion; the gates are evaluated and
  reported. A failing gate is a warning in the report, or a failed run with
  ``mobile.int8_gate: fail``.
* ``auto``: a sequence of attempts, stopping at the first that passes the gates:

  1. PTQ, as above;
  2. selective quantization: TF's ``QuantizationDebugger`` measures, per quantized
     tensor, the error of the int8 result against the float one on the calibration
     images; the layers are ranked by RMSE / scale (the error in quantization steps),
     after the tensors whose int8 step is wider than :data:`WIDE_STEP` (an attention
     mask's large negative constant: the real scores beside it all fall on one level,
     while RMSE / scale calls the error small), and the model is re-converted with the
     worst (at least all the wide ones), then 2, 4, ... layers kept in float
     (``denylisted_nodes``), up to ``mobile.int8_max_float_layers``. These models mix
     int8 and float builtin ops (QUANTIZE / DEQUANTIZE between them), never Flex ops;
  3. quantization-aware training: a :data:`QatFallback` callable, given by the caller,
     returns the int8 TFLite bytes of a QAT fine-tuned model. Without one the attempt
     is recorded as "QAT not available".

The int8 file written is the first attempt that passed, or, when none did, the best one
(the fewest gate failures, then the highest worst-runtime agreement, then the smallest
drop), marked failing.
Every attempt, its figures and the reason the next one was taken go into the report
(:meth:`Int8Result.to_report`).
"""

import csv
import dataclasses
import enum
import io
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfprod import errors

# The QAT fallback: called with no arguments, returns the int8 TFLite model (bytes) of the
# quantization-aware fine-tuned model, converted with the same input/output types as PTQ
# and the same input (mobile.convert.inference_function's); export_tflite checks it and
# attaches the metadata itself.
QatFallback = Callable[[], bytes]

# Verifies one model: its bytes -> {runtime: {"accuracy", "top1_agreement", ...}}.
Verifier = Callable[[bytes], Dict[str, Dict[str, float]]]

DEFAULT_MAX_ACCURACY_DROP_POINTS = 1.0
DEFAULT_MIN_TOP1_AGREEMENT = 0.98
DEFAULT_MAX_FLOAT_LAYERS = 8


class Int8Strategy(str, enum.Enum):
    """mobile.int8_strategy: how the int8 model is made."""

    PTQ = "ptq"  # post-training quantization only; gates reported
    AUTO = "auto"  # PTQ, then layers kept in float, then QAT, until the gates pass


class GateAction(str, enum.Enum):
    """mobile.int8_gate: what a failing int8 gate does to the run."""

    WARN = "warn"  # reported (report.json/md, the run report), the run succeeds
    FAIL = "fail"  # the run fails (after writing the report)


class Int8GateError(errors.RunFailure):
    """The int8 model fails its gates and mobile.int8_gate is fail."""


class Step(str, enum.Enum):
    """What one attempt tried."""

    PTQ = "ptq"
    FLOAT_LAYERS = "float_layers"  # PTQ with the worst layers kept in float
    QAT = "qat"


@dataclasses.dataclass(frozen=True)
class Int8Gates:
    """The int8 model's limits against the SavedModel, on every verified runtime."""

    max_accuracy_drop_points: float = DEFAULT_MAX_ACCURACY_DROP_POINTS
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT

    def failures(self, runtimes: Mapping[str, Mapping[str, float]],
                 savedmodel_accuracy: float) -> List[str]:
        """One line per gate a runtime misses, naming the config key; empty if all pass."""
        lines = []
        for runtime, result in runtimes.items():
            drop = 100.0 * (savedmodel_accuracy - result["accuracy"])
            if drop > self.max_accuracy_drop_points:
                lines.append(f"{runtime}: drop {drop:.2f} points > mobile.max_int8_accuracy_drop "
                             f"{self.max_accuracy_drop_points:g}")
            if result["top1_agreement"] < self.min_top1_agreement:
                lines.append(f"{runtime}: top-1 agreement {result['top1_agreement']:.4f} < "
                             f"mobile.min_int8_agreement {self.min_top1_agreement:g}")
        return lines


@dataclasses.dataclass
class Attempt:
    """One int8 model tried, and how it did."""

    step: Step
    description: str
    float_layers: List[str] = dataclasses.field(default_factory=list)  # tensor names
    model_bytes: Optional[bytes] = None  # None: nothing was produced (e.g. QAT not available)
    runtimes: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    failures: List[str] = dataclasses.field(default_factory=list)
    next_reason: Optional[str] = None  # why the next attempt was taken

    @property
    def passed(self) -> bool:
        return self.model_bytes is not None and not self.failures

    def worst(self, savedmodel_accuracy: float):
        """(largest drop in points, smallest agreement) over the runtimes: for ranking."""
        drops = [100.0 * (savedmodel_accuracy - r["accuracy"]) for r in self.runtimes.values()]
        agreements = [r["top1_agreement"] for r in self.runtimes.values()]
        return (max(drops) if drops else math.inf, min(agreements) if agreements else 0.0)

    def to_report(self, savedmodel_accuracy: float) -> Dict[str, Any]:
        return {
            "step": self.step.value,
            "description": self.description,
            "float_layers": list(self.float_layers),
            "size_bytes": None if self.model_bytes is None else len(self.model_bytes),
            "runtimes": {runtime: {
                "accuracy": result["accuracy"],
                "accuracy_drop_points": 100.0 * (savedmodel_accuracy - result["accuracy"]),
                "top1_agreement": result["top1_agreement"]}
                for runtime, result in self.runtimes.items()},
            "passed": self.passed,
            "failures": list(self.failures),
            "next": self.next_reason,
        }


@dataclasses.dataclass
class Int8Result:
    """The attempts in order, and which one is the int8 model."""

    strategy: Int8Strategy
    gates: Int8Gates
    gate_action: GateAction
    savedmodel_accuracy: float
    attempts: List[Attempt]
    chosen: int  # index into attempts

    @property
    def model(self) -> Attempt:
        return self.attempts[self.chosen]

    @property
    def passed(self) -> bool:
        return self.model.passed

    def summary(self) -> str:
        """One line: which attempt is the int8 model and whether it passed."""
        chosen = self.model
        if chosen.passed:
            return (f"int8 passes its gates with attempt {self.chosen + 1} of "
                    f"{len(self.attempts)} ({chosen.description})")
        return (f"int8 FAILS its gates ({'; '.join(chosen.failures)}); no attempt passed, "
                f"int8.tflite is the best of {len(self.attempts)}: attempt {self.chosen + 1} "
                f"({chosen.description})")

    def to_report(self) -> Dict[str, Any]:
        return {
            "strategy": self.strategy.value,
            "gates": {"max_accuracy_drop_points": self.gates.max_accuracy_drop_points,
                      "min_top1_agreement": self.gates.min_top1_agreement,
                      "on_failure": self.gate_action.value},
            "passed": self.passed,
            "chosen_attempt": self.chosen + 1,
            "summary": self.summary(),
            "attempts": [attempt.to_report(self.savedmodel_accuracy)
                         for attempt in self.attempts],
        }


def _choose(attempts: Sequence[Attempt], savedmodel_accuracy: float) -> int:
    """The first attempt that passed, else the best one that produced a model.

    Best: the fewest gate failures, then the highest worst-runtime agreement with the
    SavedModel (int8 that gets more test labels right but disagrees with the SavedModel
    more is not a better copy of it), then the smallest drop, then the earliest.
    """
    for index, attempt in enumerate(attempts):
        if attempt.passed:
            return index
    candidates = [index for index, attempt in enumerate(attempts)
                  if attempt.model_bytes is not None]

    def rank(index: int):
        drop, agreement = attempts[index].worst(savedmodel_accuracy)
        return (len(attempts[index].failures), -agreement, drop, index)

    return min(candidates, key=rank)


def gate_ptq(model_bytes: bytes, runtimes: Dict[str, Dict[str, float]], gates: Int8Gates,
             savedmodel_accuracy: float, gate_action: GateAction = GateAction.WARN
             ) -> Int8Result:
    """The ``ptq`` strategy: the one PTQ model, already verified, against the gates."""
    attempt = Attempt(Step.PTQ, "post-training int8", model_bytes=model_bytes,
                      runtimes=runtimes, failures=gates.failures(runtimes, savedmodel_accuracy))
    return Int8Result(Int8Strategy.PTQ, gates, GateAction(gate_action), savedmodel_accuracy,
                      [attempt], 0)


# An int8 step wider than this (a range over about +-128,000) holds no ordinary activation:
# the tensor carries a large constant, such as the -1e9 Keras adds to masked attention
# scores (measured on the SST-2 Transformer: a step of 3.9e6, and 22 points of accuracy
# lost until the mask's MUL and ADD were kept in float).
WIDE_STEP = 1e3


@dataclasses.dataclass(frozen=True)
class LayerQuantizationStat:
    """One quantized tensor's error, from the QuantizationDebugger's layer statistics."""

    tensor: str  # the float tensor's name: what denylisted_nodes takes
    op: str  # the TFLite op that produces it, e.g. CONV_2D
    rmse_per_scale: float  # the RMS error in quantization steps
    scale: float = 0.0  # the int8 step

    @property
    def wide(self) -> bool:
        return self.scale > WIDE_STEP

    def label(self) -> str:
        """How the report names it: op, tensor name (the graph's op names after conversion
        from a SavedModel; Keras layer names only where the graph kept them)."""
        return f"{self.op} '{self.tensor}'"


def rank_layers(debugger) -> List[LayerQuantizationStat]:
    """The debugger's layers, worst first: the wide ones (:data:`WIDE_STEP`), widest first,
    then the rest by RMSE / scale (TF's quantization debugger guide).

    Reads the statistics through ``layer_statistics_dump`` (the debugger's public output).
    Tensors with no measurable error (reshapes, pooling: they only pass int8 values on)
    are left out.
    """
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    buffer.seek(0)
    layers = []
    for row in csv.DictReader(buffer):
        scale = float(row["scale"])
        rmse = math.sqrt(max(float(row["mean_squared_error"]), 0.0))
        ratio = rmse / scale if scale > 0 else math.inf
        if ratio > 1e-3 or scale > WIDE_STEP:
            layers.append(LayerQuantizationStat(row["tensor_name"], row["op_name"], ratio,
                                                scale))
    return sorted(layers, key=lambda layer: (not layer.wide,
                                             -layer.scale if layer.wide else 0.0,
                                             -layer.rmse_per_scale))


def float_layer_counts(available: int, limit: int, first: int = 1) -> List[int]:
    """How many of the worst layers each selective attempt keeps in float: 1, 2, 4, ...,
    starting at ``first`` (the wide layers go to float together).

    Bounded by the layers the debugger ranked and by ``limit``; the last count is the
    bound itself when it is not a power of two.
    """
    bound = min(available, limit)
    if bound < 1:
        return []
    first = min(max(first, 1), bound)
    counts, count = [first], 2
    while count < bound:
        if count > first:
            counts.append(count)
        count *= 2
    if bound > first:
        counts.append(bound)
    return counts


def int8_converter(concrete_function, trackable, representative_dataset):
    """A full-integer TFLiteConverter with tfprod's int8 settings (mobile.convert.convert).

    Float input and output: the debugger's selective models choose their IO types
    when quantized (``fully_quantize``).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function], trackable)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def _label(layers: Sequence[LayerQuantizationStat]) -> str:
    return ", ".join(f"{layer.label()} (int8 step {layer.scale:.3g}: a wide range, e.g. a "
                     "mask's large constant)" if layer.wide else
                     f"{layer.label()} (rmse/scale {layer.rmse_per_scale:.2f})"
                     for layer in layers)


def auto_int8(ptq_model: bytes, make_converter: Callable[[], Any], debug_dataset,
              verify: Verifier, gates: Int8Gates, savedmodel_accuracy: float,
              qat_fallback: Optional[QatFallback] = None,
              max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS,
              int8_io: str = "float32", prepare: Callable[[bytes], bytes] = lambda model: model,
              gate_action: GateAction = GateAction.WARN,
              progress: Callable[[str], None] = lambda line: None) -> Int8Result:
    """The ``auto`` strategy (see the module docstring): PTQ, float layers, QAT.

    Args:
      ptq_model: the post-training int8 model (mobile.convert.convert, mode int8).
      make_converter: returns a fresh int8 TFLiteConverter of the same function
        (:func:`int8_converter`); the QuantizationDebugger calibrates with it.
      debug_dataset: the representative dataset (callable yielding [input] lists): the
        debugger measures each layer's error on it.
      verify: runs a model on the runtimes against the SavedModel (mobile.verify).
      gates: the limits every runtime must meet.
      savedmodel_accuracy: the SavedModel's accuracy on the verification examples.
      qat_fallback: the last resort, see :data:`QatFallback`; None records "QAT not
        available".
      max_float_layers: the most layers a selective attempt keeps in float.
      int8_io: the int8 model's input/output type (float32, int8 or uint8). Selective
        models are quantized by the debugger, which gives float32 or int8 IO only, so
        with uint8 the float-layer step is skipped (and says so).
      prepare: applied to every model before it is verified (checks, metadata); the
        attempts keep the prepared bytes.
      progress: called with one line per attempt.
    """
    attempts: List[Attempt] = []

    def attempt(step: Step, description: str, model: bytes, layers: Sequence[str] = ()) -> bool:
        model = prepare(model)
        progress(f"int8 attempt {len(attempts) + 1}: {description} ...")
        runtimes = verify(model)
        attempts.append(Attempt(step, description, list(layers), model, runtimes,
                                gates.failures(runtimes, savedmodel_accuracy)))
        return attempts[-1].passed

    def finish() -> Int8Result:
        return Int8Result(Int8Strategy.AUTO, gates, GateAction(gate_action),
                          savedmodel_accuracy, attempts, _choose(attempts, savedmodel_accuracy))

    def failed_because() -> str:
        last = attempts[-1]
        return "; ".join(last.failures) if last.failures else last.description

    if attempt(Step.PTQ, "post-training int8", ptq_model):
        return finish()

    # 2. The layers with the largest quantization error, kept in float.
    if int8_io == "uint8":
        attempts[-1].next_reason = (f"{failed_because()}: the float-layer step is skipped "
                                    "(the debugger's selective models take float32 or int8 "
                                    "input and output, not mobile.int8_io uint8)")
    else:
        import tensorflow as tf

        try:
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=make_converter(), debug_dataset=debug_dataset)
            debugger.run()
            ranked = rank_layers(debugger)
        except (ValueError, RuntimeError) as error:
            ranked, reason = [], f"the QuantizationDebugger failed: {str(error)[:300]}"
        else:
            reason = "the QuantizationDebugger found no layer with a quantization error"
        counts = float_layer_counts(len(ranked), max_float_layers,
                                    first=sum(layer.wide for layer in ranked))
        if not counts:
            attempts[-1].next_reason = f"{failed_because()}; {reason}"
        for count in counts:
            layers = ranked[:count]
            attempts[-1].next_reason = f"{failed_because()}: keeping {_label(layers)} in float"
            debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=[layer.tensor for layer in layers],
                fully_quantize=int8_io == "int8")
            model = debugger.get_nondebug_quantized_model()
            if attempt(Step.FLOAT_LAYERS, f"int8 with {count} layer(s) in float: "
                       + ", ".join(layer.label() for layer in layers), model,
                       [layer.tensor for layer in layers]):
                return finish()

    # 3. Quantization-aware training.
    last = attempts[-1]
    if last.next_reason is None:
        limit = (f" (the worst layers kept in float, at most mobile.int8_max_float_layers "
                 f"{max_float_layers}, were not enough)" if last.step == Step.FLOAT_LAYERS else "")
        last.next_reason = f"{failed_because()}{limit}: trying QAT"
    else:
        last.next_reason += "; trying QAT"
    if qat_fallback is None:
        attempts.append(Attempt(Step.QAT, "QAT not available: no QAT fine-tune was given "
                                "(the pipeline gives one; a SavedModel converted alone has "
                                "no training data to fine-tune on)",
                                failures=["QAT not available"]))
        return finish()
    progress("int8: quantization-aware fine-tuning ...")
    attempt(Step.QAT, "quantization-aware training, int8", qat_fallback())
    return finish()


def markdown_lines(int8_report: Mapping[str, Any]) -> List[str]:
    """The report's int8 section (report.md): the gates, then one row per attempt."""
    gates = int8_report["gates"]
    fails = gates["on_failure"] == GateAction.FAIL.value
    lines = ["", f"## int8: gates and attempts (mobile.int8_strategy {int8_report['strategy']})",
             "",
             f"Gates on every runtime: accuracy drop <= {gates['max_accuracy_drop_points']:g} "
             f"points, top-1 agreement >= {gates['min_top1_agreement']:g}; a failure "
             f"{'fails the run' if fails else 'is a warning'}"
             f" (mobile.int8_gate {gates['on_failure']}). {int8_report['summary']}.",
             "",
             "| # | tried | size (KB) | drop (points) | top-1 agreement | passed | "
             "why the next was taken |",
             "|---:|---|---:|---|---|---|---|"]
    for number, attempt in enumerate(int8_report["attempts"], start=1):
        size = "" if attempt["size_bytes"] is None else f"{attempt['size_bytes'] / 1024:.1f}"
        runtimes = attempt["runtimes"].items()
        drops = ", ".join(f"{runtime} {result['accuracy_drop_points']:+.2f}"
                          for runtime, result in runtimes)
        agreements = ", ".join(f"{runtime} {result['top1_agreement']:.4f}"
                               for runtime, result in runtimes)
        lines.append(f"| {number} | {attempt['description']} | {size} | {drops} | {agreements} "
                     f"| {'yes' if attempt['passed'] else 'no'} | {attempt['next'] or ''} |")
    return lines


def check_gate(result: Int8Result, report_path: str) -> None:
    """Raises Int8GateError when the int8 model failed and mobile.int8_gate is fail."""
    if not result.passed and result.gate_action == GateAction.FAIL:
        raise Int8GateError(
            f"{result.summary()}. mobile.int8_gate is fail: see the attempts in {report_path}; "
            "loosen mobile.max_int8_accuracy_drop / mobile.min_int8_agreement, try "
            "mobile.int8_strategy: auto, set mobile.int8_gate: warn, or leave int8 out of "
            "mobile.modes")


def tensor_types(model_bytes: bytes) -> Dict[str, str]:
    """{tensor name: numpy dtype name} of a TFLite model's tensors (for inspection)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    return {detail["name"]: np.dtype(detail["dtype"]).name
            for detail in interpreter.get_tensor_details()}
