"""Logged requests back into the raw features the run's statistics describe.

Two request shapes (pipeline/tasks/signatures.py):

- serving_default (and any signature whose input is `examples`): serialized tf.Examples of
  the raw features, exactly as ExampleGen wrote them for training. They are used as they are.
- serving_raw: the task's raw tensors. Their input names are the raw feature keys
  (tfprod.contract.features: `image` for IDX/TFDS images, `image_bytes` for photos, the
  text column's key for text, one input per column for tables), so each input maps to the
  schema's feature of the same name, converted as the task's `raw_to_features` converts it
  inside the served graph: values of an INT feature are rounded to int64 (pixels sent as
  floats 0..255 become the int64 pixels a tf.Example carries; [N, 28, 28] and
  [N, 28, 28, 1] alike become 784 values), FLOAT stays float, BYTES stays bytes. For tables,
  NaN and "" mean "missing" (as serving_raw reads them), so the value is left out.

This mapping is the served graph's own raw_to_features step rewritten in NumPy, not a second
transform: the statistics compared are of raw features on both sides (the training
StatisticsGen runs before Transform). An input with no schema feature of its name (a
forecaster's `window`, image_folder's `pixels`) is not mapped; the report counts it.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfprod.contract import features
from tfprod.pipeline.monitor.reader import LoggedCall

EXAMPLES_INPUT = "examples"  # pipeline.tasks.signatures.EXAMPLES_INPUT (no TFX import here)
PREDICTION_FEATURE = "prediction"  # the one feature of the prediction statistics
# Regression outputs (pipeline.tasks.table.PREDICTION_OUTPUT).
VALUE_OUTPUTS = ("prediction",)


@dataclasses.dataclass
class MappedRequests:
    """The logged calls as serialized tf.Examples of raw features, and their predictions.

    predictions: one per example (class ids as strings, or regression values as floats);
    categorical_predictions: whether they are classes (L-infinity) or values (JS divergence).
    unmapped: "<signature>: <reason>" -> examples that could not be mapped.
    """

    examples: List[bytes] = dataclasses.field(default_factory=list)
    predictions: List = dataclasses.field(default_factory=list)
    categorical_predictions: Optional[bool] = None
    by_signature: Dict[str, int] = dataclasses.field(default_factory=dict)
    unmapped: Dict[str, int] = dataclasses.field(default_factory=dict)


def _schema_features(schema) -> Dict[str, object]:
    return {feature.name: feature for feature in schema.feature}


def _feature(values: np.ndarray, schema_type: int, missing_markers: bool):
    """One tf.train.Feature from a row of values in the schema feature's type; None when
    every value is missing."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import schema_pb2

    values = np.asarray(values).reshape(-1)
    if schema_type == schema_pb2.BYTES:
        items = [item if isinstance(item, bytes) else str(item).encode("utf-8")
                 for item in values.tolist()]
        if missing_markers:
            items = [item for item in items if item != b""]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=items)) if items else None
    numbers = values.astype(np.float64) if values.dtype.kind in "fc" else values
    if numbers.dtype.kind == "f":
        numbers = numbers[~np.isnan(numbers)]
    if numbers.size == 0:
        return None
    if schema_type == schema_pb2.INT:
        return tf.train.Feature(int64_list=tf.train.Int64List(
            value=np.round(numbers).astype(np.int64).tolist()))
    return tf.train.Feature(float_list=tf.train.FloatList(value=numbers.astype(np.float32)))


def _fixed_size(schema_feature) -> Optional[int]:
    dims = [dim.size for dim in schema_feature.shape.dim]
    return int(np.prod(dims)) if dims else None


def raw_tensors_to_examples(inputs: Dict[str, np.ndarray], schema,
                            missing_markers: bool) -> Tuple[List[bytes], Optional[str]]:
    """serving_raw's input tensors -> serialized tf.Examples (one per row), or ([], reason).

    Args:
      inputs: input name -> [N, ...] array, as the request carried it.
      schema: the run's schema; each input maps to its feature of the same name.
      missing_markers: NaN and "" mean a missing value (tables).
    """
    import tensorflow as tf

    by_name = _schema_features(schema)
    unknown = sorted(name for name in inputs if name not in by_name)
    if unknown:
        return [], (f"input(s) {', '.join(unknown)} name no feature of the run's schema "
                    "(not mapped)")
    rows = {np.shape(array)[0] if np.ndim(array) else 1 for array in inputs.values()}
    if len(rows) != 1:
        return [], "inputs of different batch sizes"
    count = rows.pop()
    flat = {}
    for name, array in inputs.items():
        array = np.asarray(array)
        flat[name] = array.reshape(count, -1) if array.ndim else array.reshape(1, 1)
        size = _fixed_size(by_name[name])
        if size is not None and flat[name].shape[1] != size:
            return [], (f"input '{name}' has {flat[name].shape[1]} values per example, the "
                        f"schema's feature {size}")
    examples = []
    for row in range(count):
        example = tf.train.Example()
        for name, values in flat.items():
            feature = _feature(values[row], by_name[name].type, missing_markers)
            if feature is not None:
                example.features.feature[name].CopyFrom(feature)
        examples.append(example.SerializeToString())
    return examples, None


def predictions_of(outputs: Dict[str, np.ndarray]) -> Tuple[Optional[list], Optional[bool]]:
    """(predictions, categorical) from a prediction signature's outputs: class ids (as
    strings), else regression values; (None, None) when the outputs carry neither."""
    if features.CLASS_ID_OUTPUT in outputs:
        class_ids = np.asarray(outputs[features.CLASS_ID_OUTPUT]).reshape(-1)
        return [str(int(v)) for v in class_ids], True
    if features.PROBABILITIES_OUTPUT in outputs:
        probabilities = np.asarray(outputs[features.PROBABILITIES_OUTPUT])
        return [str(int(v)) for v in probabilities.reshape(len(probabilities), -1).argmax(-1)], True
    for name in VALUE_OUTPUTS:
        if name in outputs:
            return [float(v) for v in np.asarray(outputs[name], np.float64).reshape(-1)], False
    return None, None


def map_calls(calls: List[LoggedCall], schema, missing_markers: bool = False) -> MappedRequests:
    """Every logged call's examples (raw features) and predictions."""
    result = MappedRequests()
    for call in calls:
        key = f"{call.kind}:{call.signature_name}"
        if call.kind == "predict" and EXAMPLES_INPUT in call.inputs:
            examples = [bytes(item) for item in np.asarray(call.inputs[EXAMPLES_INPUT]).reshape(-1)]
            reason = None
        elif call.kind == "predict":
            examples, reason = raw_tensors_to_examples(call.inputs, schema, missing_markers)
        else:
            examples, reason = call.examples, None if call.examples else "no examples"
        if reason is not None:
            label = f"{call.signature_name}: {reason}"
            result.unmapped[label] = result.unmapped.get(label, 0) + 1
            continue
        result.examples.extend(examples)
        result.by_signature[key] = result.by_signature.get(key, 0) + len(examples)
        if call.kind == "classify":
            predictions, categorical = list(call.classes), True
        elif call.kind == "regress":
            predictions, categorical = list(call.values), False
        else:
            predictions, categorical = predictions_of(call.outputs)
        if predictions is not None and len(predictions) == len(examples):
            if result.categorical_predictions is None:
                result.categorical_predictions = categorical
            if categorical == result.categorical_predictions:
                result.predictions.extend(predictions)
    return result


def prediction_examples(predictions: list, categorical: bool) -> List[bytes]:
    """Predictions as serialized tf.Examples of one feature, for TFDV's statistics."""
    import tensorflow as tf

    examples = []
    for value in predictions:
        example = tf.train.Example()
        feature = example.features.feature[PREDICTION_FEATURE]
        if categorical:
            feature.bytes_list.value.append(str(value).encode("utf-8"))
        else:
            feature.float_list.value.append(float(value))
        examples.append(example.SerializeToString())
    return examples
