"""One loaded model version: its signatures, how to call them, and its warm-up.

Predict works on any signature. Classify and Regress follow TF Serving: they
need a signature whose method is tensorflow/serving/classify (or .../regress)
taking serialized tf.Examples under the input key "inputs".
"""

import asyncio
import logging
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfprod.contract import layout
from tfprod.serving.batching import SignatureBatcher
from tfprod.serving.config import BatchingParameters
from tfprod.serving.errors import (FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError,
                                   TensorTooLargeError)

LOG = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit

Arrays = Dict[str, np.ndarray]


class SignatureInfo:
    """What a client needs to know of a signature, and how to call it."""

    def __init__(self, name: str, definition: meta_graph_pb2.SignatureDef, function):
        self.name = name
        self.definition = definition
        self.method_name = definition.method_name
        self.function = function
        self.input_dtypes = {key: tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
                             for key, info in definition.inputs.items()}
        self.input_tf_dtypes = {key: tf.dtypes.as_dtype(info.dtype) for key, info in definition.inputs.items()}
        self.input_dtype_enums = {key: info.dtype for key, info in definition.inputs.items()}
        self.input_shapes = {
            key: (None if info.tensor_shape.unknown_rank else [dim.size for dim in info.tensor_shape.dim])
            for key, info in definition.inputs.items()}
        self.output_keys = sorted(definition.outputs)
        self.output_dtypes = {key: info.dtype for key, info in definition.outputs.items()}
        # Batching needs every input and output to have a leading batch dimension.
        self.batchable = all(shape is not None and shape and shape[0] == -1
                             for shape in list(self.input_shapes.values()) + [
                                 None if info.tensor_shape.unknown_rank else
                                 [dim.size for dim in info.tensor_shape.dim]
                                 for info in definition.outputs.values()])


def read_signature_defs(export_dir: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """The signature defs of the "serve" meta graph of a SavedModel on disk."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return {key: value for key, value in meta_graph.signature_def.items()
                    if not key.startswith("__")}
    raise NotFoundError(f"{export_dir}: the SavedModel has no meta graph tagged 'serve'")


def check_shape(name: str, array: np.ndarray, expected: Optional[List[int]]) -> None:
    """Raises InvalidArgumentError when array's shape does not fit the signature's shape."""
    if expected is None:
        return
    if array.ndim != len(expected) or any(want not in (-1, got) for want, got in zip(expected, array.shape)):
        shown = "[" + ",".join("?" if dim == -1 else str(dim) for dim in expected) + "]"
        raise InvalidArgumentError(
            f"input '{name}' has shape {list(array.shape)}, but the signature expects {shown}")


def coerce_input(name: str, array: np.ndarray, dtype) -> np.ndarray:
    """Converts an input array to the signature's dtype when that loses nothing.

    Raises:
        InvalidArgumentError: strings for a numeric input or the other way round, or
            non-integral numbers for an integer input.
    """
    target = np.dtype(dtype) if dtype is not object else np.dtype(object)
    if array.dtype.kind == "O" and array.size and all(item is None for item in array.flat):
        # Every value null (json_codec's missing column): NaN for floats, "" for strings.
        return missing_values(name, array.shape, target)
    if array.dtype == target:
        return array
    is_text = array.dtype.kind in "OSU"
    wants_text = target.kind in "OSU"
    if is_text != wants_text:
        expected = "string" if wants_text else target.name
        got = "string" if is_text else array.dtype.name
        raise InvalidArgumentError(f"input '{name}' expects {expected} values but got {got}")
    if wants_text:
        return array.astype(object)
    if target.kind in "iu" and array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(np.equal(np.mod(array, 1), 0)):
            raise InvalidArgumentError(f"input '{name}' expects {target.name} values but got fractions")
    if target.kind == "b" and array.dtype.kind != "b":
        raise InvalidArgumentError(f"input '{name}' expects bool values but got {array.dtype.name}")
    try:
        return array.astype(target)
    except (ValueError, OverflowError) as error:
        raise InvalidArgumentError(f"input '{name}': cannot convert to {target.name}: {error}") from error


def missing_values(name: str, shape, target: np.dtype) -> np.ndarray:
    """An input whose values are all missing: NaN (float) or "" (string); other dtypes have
    no missing value, so the request is refused."""
    if target.kind == "f":
        return np.full(shape, np.nan, dtype=target)
    if target.kind in "OSU":
        return np.full(shape, b"", dtype=object)
    raise InvalidArgumentError(f"input '{name}' is missing (null or left out), and its "
                               f"{target.name} values have no missing value; send a value")


def fill_missing_inputs(signature: "SignatureInfo", inputs: Arrays, missing: List[str]) -> List[str]:
    """JSON rows may leave out a per-row scalar input (shape [N], float or string): each row's
    value is then missing (NaN or ""), as a table model's serving_raw reads it. Fills inputs
    in place; returns the names still missing (other shapes and dtypes stay required)."""
    if not inputs or any(np.ndim(value) != 1 for value in inputs.values()):
        return missing
    rows = {np.shape(value)[0] for value in inputs.values()}
    if len(rows) != 1:
        return missing
    count = rows.pop()
    still = []
    for key in missing:
        target = np.dtype(signature.input_dtypes[key])
        if signature.input_shapes[key] == [-1] and target.kind in "fO":
            inputs[key] = missing_values(key, (count,), target)
        else:
            still.append(key)
    return still


def check_total_size(inputs: Arrays, max_bytes: int) -> None:
    """Raises InvalidArgumentError when the inputs take more than max_bytes (strings: their bytes
    plus a pointer each), naming the --max_request_tensor_bytes limit."""
    total = 0
    for value in inputs.values():
        total += value.nbytes
        if value.dtype.kind == "O":
            total += sum(len(item) for item in value.flat if isinstance(item, bytes))
    if total > max_bytes:
        raise TensorTooLargeError("the request's inputs", total, max_bytes)


class Servable:
    """A loaded SavedModel version.

    Args:
        model_name: the model's name.
        version: the version number.
        export_dir: the version directory (<base>/<model_name>/<version>).
        batching: batching parameters, or None to run each request on its own.
        on_batch: metrics callback (signature name, batch size, padded size).
    """

    def __init__(self, model_name: str, version: int, export_dir: str,
                 batching: Optional[BatchingParameters] = None, on_batch=None):
        self.model_name = model_name
        self.version = version
        self.export_dir = export_dir
        self._batching = batching
        self._on_batch = on_batch
        definitions = read_signature_defs(export_dir)
        self._loaded = tf.saved_model.load(export_dir, tags=["serve"])
        self.signatures: Dict[str, SignatureInfo] = {}
        for key, definition in definitions.items():
            if key in self._loaded.signatures:
                self.signatures[key] = SignatureInfo(key, definition, self._loaded.signatures[key])
        self._batchers: Dict[str, SignatureBatcher] = {}
        self._batchers_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()

    # In-flight accounting: a version is unloaded only once no request uses it.
    def acquire(self) -> None:
        with self._in_flight_changed:
            self._in_flight += 1

    def release(self) -> None:
        with self._in_flight_changed:
            self._in_flight -= 1
            self._in_flight_changed.notify_all()

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        with self._in_flight_changed:
            return self._in_flight_changed.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        with self._batchers_lock:
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for batcher in batchers:
            batcher.stop()
        self._loaded = None
        self.signatures = {}

    def signature(self, name: str) -> SignatureInfo:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise NotFoundError(f"Serving signature name: \"{name}\" not found in signature def; "
                                f"model {self.model_name} version {self.version} has "
                                f"{sorted(self.signatures)}")
        return self.signatures[name]

    def _call(self, signature: SignatureInfo, inputs: Arrays) -> Arrays:
        tensors = {key: tf.constant(value, dtype=signature.input_tf_dtypes[key])
                   for key, value in inputs.items()}
        try:
            outputs = signature.function(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise InvalidArgumentError(f"the model rejected the input: {_first_line(error)}") from error
        except tf.errors.OpError as error:
            raise InternalError(f"the model failed: {_first_line(error)}") from error
        return {key: value.numpy() for key, value in outputs.items()}

    def _batcher(self, signature: SignatureInfo) -> Optional[SignatureBatcher]:
        if self._batching is None or not signature.batchable:
            return None
        with self._batchers_lock:
            batcher = self._batchers.get(signature.name)
            if batcher is None:
                callback = None
                if self._on_batch is not None:
                    callback = lambda size, padded, name=signature.name: self._on_batch(name, size, padded)
                batcher = SignatureBatcher(lambda inputs: self._call(signature, inputs), self._batching,
                                           name=f"{self.model_name}/{self.version}/{signature.name}",
                                           on_batch=callback)
                self._batchers[signature.name] = batcher
            return batcher

    def validate_inputs(self, signature: SignatureInfo, inputs: Arrays, strict_dtypes: bool = False,
                        max_bytes: Optional[int] = None) -> Arrays:
        """Checks input names, dtypes, shapes and their total size (at most max_bytes in the
        signature's dtypes); returns the inputs in the signature's dtypes.

        The key None stands for the signature's only input (an unnamed REST input).
        """
        if None in inputs:
            names = list(signature.input_dtypes)
            if len(names) != 1 or len(inputs) != 1:
                raise InvalidArgumentError(
                    f"signature '{signature.name}' has {len(names)} inputs {sorted(names)}; name each "
                    "input (objects in 'instances', or an object in 'inputs')")
            inputs = {names[0]: inputs[None]}
        missing = sorted(set(signature.input_dtypes) - set(inputs))
        extra = sorted(set(inputs) - set(signature.input_dtypes))
        if missing and not strict_dtypes and not extra:
            # JSON (not gRPC): a key no row has is a missing value in every row.
            inputs = dict(inputs)
            missing = fill_missing_inputs(signature, inputs, missing)
        if missing or extra:
            raise InvalidArgumentError(
                f"signature '{signature.name}' takes inputs {sorted(signature.input_dtypes)}; "
                + (f"missing {missing}" if missing else "") + ("; " if missing and extra else "")
                + (f"unknown {extra}" if extra else ""))
        checked = {}
        for key, value in inputs.items():
            expected = np.dtype(signature.input_dtypes[key])
            if strict_dtypes and value.dtype != expected and not (expected.kind == "O" and value.dtype.kind in "OS"):
                # gRPC carries typed tensors: like TF Serving, refuse a dtype other than the signature's.
                raise InvalidArgumentError(
                    f"Expects arg '{key}' to be {signature.input_tf_dtypes[key].name} but "
                    f"{tf.dtypes.as_dtype(value.dtype).name} is provided")
            value = np.asarray(value) if not isinstance(value, np.ndarray) else value
            try:
                value = coerce_input(key, value, signature.input_dtypes[key])
            except InvalidArgumentError as error:
                hint = self._signature_hint(signature, value)
                if hint:
                    raise InvalidArgumentError(f"{error.message}; {hint}") from None
                raise
            check_shape(key, value, signature.input_shapes[key])
            checked[key] = value
        if max_bytes is not None:
            check_total_size(checked, max_bytes)
        return checked

    def _signature_hint(self, signature: SignatureInfo, value: np.ndarray) -> Optional[str]:
        """For values of the wrong kind (numbers sent to serving_default's serialized tf.Examples,
        say): the other signatures whose inputs all take that kind, as a hint for the request."""
        is_text = value.dtype.kind in "OSU"
        fits = [name for name, other in sorted(self.signatures.items())
                if name != signature.name and other.input_dtypes
                and all((np.dtype(dtype).kind in "OSU") == is_text
                        for dtype in other.input_dtypes.values())]
        if not fits:
            return None
        names = " or ".join(f"'{name}'" for name in fits)
        return (f"signature {names} takes {'strings' if is_text else 'numbers'}: name it in the request "
                f"(REST: \"signature_name\": \"{fits[0]}\"; gRPC: model_spec.signature_name)")

    def _prepare_predict(self, signature_name: str, inputs: Arrays, output_filter: Sequence[str],
                         strict_dtypes: bool, max_bytes: Optional[int]):
        """Validates a predict call; returns (signature, inputs, batcher or None, batch size or None)."""
        signature = self.signature(signature_name)
        inputs = self.validate_inputs(signature, inputs, strict_dtypes, max_bytes)
        unknown = sorted(set(output_filter) - set(signature.output_keys))
        if unknown:
            raise InvalidArgumentError(f"output tensor alias(es) {unknown} not found in signature "
                                       f"'{signature.name}' (outputs: {signature.output_keys})")
        batcher = self._batcher(signature)
        sizes = {value.shape[0] if value.ndim else None for value in inputs.values()}
        if batcher is not None and len(sizes) == 1 and None not in sizes and 0 not in sizes:
            return signature, inputs, batcher, sizes.pop()
        if batcher is not None and len(sizes) > 1:
            raise InvalidArgumentError(f"inputs of signature '{signature.name}' have different "
                                       f"batch sizes {sorted(sizes)}")
        return signature, inputs, None, None

    def predict(self, signature_name: str, inputs: Arrays, output_filter: Sequence[str] = (),
                timeout: Optional[float] = None, strict_dtypes: bool = False,
                max_bytes: Optional[int] = None) -> Tuple[SignatureInfo, Arrays]:
        """Runs a signature on validated inputs; returns (signature, outputs).

        strict_dtypes refuses inputs of another dtype (gRPC); otherwise lossless conversions are made (JSON).
        max_bytes bounds the inputs' total size in the signature's dtypes.
        """
        signature, inputs, batcher, size = self._prepare_predict(signature_name, inputs, output_filter,
                                                                 strict_dtypes, max_bytes)
        if batcher is not None:
            outputs = batcher.submit(inputs, size, timeout)
        else:
            outputs = self._call(signature, inputs)
        if output_filter:
            outputs = {key: outputs[key] for key in output_filter}
        return signature, outputs

    async def predict_async(self, signature_name: str, inputs: Arrays, output_filter: Sequence[str] = (),
                            timeout: Optional[float] = None,
                            strict_dtypes: bool = False,
                            max_bytes: Optional[int] = None) -> Tuple[SignatureInfo, Arrays]:
        """predict() for asyncio code: waits for the batch (or an unbatched call in the loop's
        default executor) without blocking the event loop."""
        signature, inputs, batcher, size = self._prepare_predict(signature_name, inputs, output_filter,
                                                                 strict_dtypes, max_bytes)
        if batcher is not None:
            outputs = await batcher.submit_async(inputs, size, timeout)
        else:
            # Like predict(): an unbatched call runs to its end (TensorFlow cannot stop it midway).
            outputs = await asyncio.get_running_loop().run_in_executor(None, self._call, signature, inputs)
        if output_filter:
            outputs = {key: outputs[key] for key in output_filter}
        return signature, outputs

    def _examples_signature(self, signature_name: str, method: str, what: str) -> SignatureInfo:
        signature = self.signature(signature_name)
        if signature.method_name != method:
            raise FailedPreconditionError(
                f"Expected {what} signature method_name to be {method}. Was: {signature.method_name}")
        if list(signature.input_dtypes) != ["inputs"] or signature.input_dtypes["inputs"] is not object:
            raise FailedPreconditionError(
                f"{what} signature '{signature.name}' must take one string input named 'inputs'")
        return signature

    def classify(self, signature_name: str, serialized_examples: List[bytes],
                 timeout: Optional[float] = None) -> Tuple[SignatureInfo, Optional[np.ndarray], Optional[np.ndarray]]:
        """Returns (signature, classes [N, K] or None, scores [N, K] or None)."""
        signature = self._examples_signature(signature_name, CLASSIFY_METHOD, "classification")
        _, outputs = self.predict(signature.name, {"inputs": np.array(serialized_examples, dtype=object)},
                                  timeout=timeout)
        classes, scores = outputs.get("classes"), outputs.get("scores")
        if classes is None and scores is None:
            raise FailedPreconditionError(f"classification signature '{signature.name}' has neither "
                                          "'classes' nor 'scores' outputs")
        count = len(serialized_examples)
        for name, value in (("classes", classes), ("scores", scores)):
            if value is not None and (value.ndim != 2 or value.shape[0] != count):
                raise InternalError(f"classification output '{name}' has shape {list(value.shape)}, "
                                    f"expected [{count}, number of classes]")
        return signature, classes, scores

    def regress(self, signature_name: str, serialized_examples: List[bytes],
                timeout: Optional[float] = None) -> Tuple[SignatureInfo, np.ndarray]:
        """Returns (signature, values [N])."""
        signature = self._examples_signature(signature_name, REGRESS_METHOD, "regression")
        _, outputs = self.predict(signature.name, {"inputs": np.array(serialized_examples, dtype=object)},
                                  timeout=timeout)
        if "outputs" not in outputs:
            raise FailedPreconditionError(f"regression signature '{signature.name}' has no 'outputs' output")
        values = outputs["outputs"]
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or values.shape[0] != len(serialized_examples):
            raise InternalError(f"regression output has shape {list(values.shape)}, expected [N] or [N, 1]")
        return signature, values

    def warm_up(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests; returns how many requests ran.

        Raises:
            ServingError: a warm-up request failed (the version then fails to load, as in TF Serving).
        """
        from tensorflow_serving.apis import prediction_log_pb2

        from tfprod.serving import protocol

        path = os.path.join(self.export_dir, layout.WARMUP_PATH)
        if not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(record)
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                self.predict(request.model_spec.signature_name,
                             protocol.arrays_from_tensor_protos(request.inputs),
                             list(request.output_filter))
            elif kind == "classify_log":
                request = log.classify_log.request
                self.classify(request.model_spec.signature_name, protocol.serialized_examples(request.input))
            elif kind == "regress_log":
                request = log.regress_log.request
                self.regress(request.model_spec.signature_name, protocol.serialized_examples(request.input))
            else:
                raise InvalidArgumentError(f"{path}: unsupported warm-up log type {kind!r}")
            count += 1
        LOG.info("model %s version %d: replayed %d warm-up requests", self.model_name, self.version, count)
        return count


def _first_line(error: BaseException) -> str:
    """The useful part of a TensorFlow error: its message without graph locations and stacks."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(("[[", "Detected at node", "File ", "Graph execution"))]
    summary = " ".join(lines)[:500]
    return summary or type(error).__name__
