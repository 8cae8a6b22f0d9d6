"""TF Serving's REST JSON formats: request decoding and response encoding.

Predict requests carry either row-format `instances` (a list, one entry per
example; entries are objects when the signature has several named inputs) or
columnar `inputs` (an object of named tensors, or one tensor). Binary strings
are written {"b64": "..."}. Classify and Regress requests carry tf.Examples as
JSON objects in `examples`, with optional shared `context` features.
"""

import base64
import binascii
import itertools
import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tfprod.serving.errors import InvalidArgumentError

ROW_FORMAT = "row"
COLUMNAR_FORMAT = "columnar"
SINGLE_INPUT = None  # key of an unnamed input: the signature's only input
MAX_RANK = 32  # numpy's (1.x) largest number of dimensions: deeper lists are refused, not a 500


def parse_json_object(body: bytes) -> Dict[str, Any]:
    """The request body as a JSON object; InvalidArgumentError if it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(f"JSON Parse error: the body is not UTF-8 ({error.reason})") from error
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"JSON Parse error: {error.msg} at line {error.lineno} column {error.colno}") \
            from error
    except RecursionError as error:  # Python's parser stops at about 1,000 nested arrays or objects
        raise InvalidArgumentError("JSON Parse error: arrays or objects nested too deep") from error
    if not isinstance(value, dict):
        raise InvalidArgumentError("JSON Value is not an object: the body must be a JSON object")
    return value


def _reject_constant(name: str):
    # NaN and Infinity are not JSON; TF Serving accepts them as floats, so do we.
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_b64(value: Dict[str, Any]) -> bytes:
    text = value["b64"]
    if not isinstance(text, str):
        raise InvalidArgumentError("'b64' must hold a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise InvalidArgumentError(f"'b64' value is not valid base64: {error}") from error


def tensor_from_json(value: Any, name: str = "input", max_elements: Optional[int] = None) -> np.ndarray:
    """A JSON (nested list of) number/bool/string/{"b64"} value as a numpy array.

    Integers give int64, any non-integral number makes the tensor float64 (the
    server converts to the signature's dtype), strings and b64 give bytes (object).
    Lists nest at most MAX_RANK deep; more than max_elements values are refused before
    any array is built.

    Raises:
        InvalidArgumentError: ragged or too deep lists, mixed types, empty or unsupported
            values, too many values.
    """
    fast = _numeric_tensor_fast(value, name, max_elements)
    if fast is not None:
        return fast
    shape: Optional[List[int]] = None
    leaves: List[Any] = []

    def walk(node: Any, dims: List[int]) -> None:
        nonlocal shape
        if isinstance(node, list):
            if not node:
                raise InvalidArgumentError(f"'{name}': empty lists are not allowed")
            if len(dims) == MAX_RANK:
                raise _too_deep(name)
            child_dims = dims + [len(node)]  # one list per list, not per value
            for child in node:
                walk(child, child_dims)
            return
        if shape is None:
            shape = dims
        elif dims != shape:
            raise InvalidArgumentError(f"'{name}': all lists at one level must have the same length "
                                       f"(found shapes {shape} and {dims})")
        leaves.append(node)
        if max_elements is not None and len(leaves) > max_elements:
            raise _too_many(name, max_elements)

    walk(value, [])
    kinds = set()
    converted = []
    for leaf in leaves:
        if isinstance(leaf, bool):
            kinds.add("bool")
            converted.append(leaf)
        elif isinstance(leaf, int):
            kinds.add("int")
            converted.append(leaf)
        elif isinstance(leaf, float):
            kinds.add("float")
            converted.append(leaf)
        elif isinstance(leaf, str):
            kinds.add("bytes")
            converted.append(leaf.encode("utf-8"))
        elif _is_b64(leaf):
            kinds.add("bytes")
            converted.append(_decode_b64(leaf))
        else:
            raise InvalidArgumentError(f"'{name}': unsupported JSON value {json.dumps(leaf)[:60]}; use "
                                       "numbers, booleans, strings or {\"b64\": ...}")
    if kinds == {"int", "float"}:
        kinds = {"float"}
    if len(kinds) != 1:
        raise InvalidArgumentError(f"'{name}': values mix types {sorted(kinds)}")
    kind = kinds.pop()
    dtype = {"bool": np.bool_, "float": np.float64, "bytes": object}.get(kind)
    if kind == "int":
        if any(abs(leaf) >= 2 ** 63 for leaf in converted):
            dtype = np.float64 if not any(leaf >= 2 ** 64 or leaf < -2 ** 63 for leaf in converted) else None
            if dtype is None:
                raise InvalidArgumentError(f"'{name}': integer out of the int64 range")
        else:
            dtype = np.int64
    array = np.empty(len(converted), dtype=dtype)
    try:
        array[:] = converted
    except OverflowError as error:  # an integer beyond float64's range among fractions
        raise InvalidArgumentError(f"'{name}': number out of range: {error}") from error
    return array.reshape(shape)


def _too_deep(name: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"'{name}': lists nested more than {MAX_RANK} deep; a tensor has at most "
                                f"{MAX_RANK} dimensions")


def _too_many(name: str, max_elements: int) -> InvalidArgumentError:
    return InvalidArgumentError(f"'{name}': more than {max_elements:,} values, over the server's limit on "
                                "decoded request tensors (--max_request_tensor_bytes); send fewer examples per "
                                "request")


_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


def _numeric_tensor_fast(value: Any, name: str, max_elements: Optional[int]) -> Optional[np.ndarray]:
    """tensor_from_json for the common case, with C-speed loops: a regular nested list of numbers
    (or of booleans). Returns None for anything else (strings, b64, ragged or empty lists, mixed
    types, huge integers), which the general path then decodes or rejects with its errors.

    The values are read into the array straight from the innermost lists (numpy.fromiter over
    them), without a flat list of every value: that list alone took as much memory as the array.
    """
    shape = []
    level = [value]
    while True:
        types = set(map(type, level))
        if types != {list}:
            break
        lengths = set(map(len, level))
        if len(lengths) != 1 or 0 in lengths:
            return None
        if len(shape) == MAX_RANK:
            raise _too_deep(name)
        shape.append(lengths.pop())
        count = math.prod(shape)
        if max_elements is not None and count > max_elements:
            raise _too_many(name, max_elements)
        if not isinstance(level[0][0], list):  # the innermost lists: their values go into the array
            types = set(map(type, itertools.chain.from_iterable(level)))
            break
        level = list(itertools.chain.from_iterable(level))
    if not shape:  # a scalar
        count, level = 1, [[value]]
    if types <= {int, float}:
        dtype = np.int64 if types == {int} else np.float64
    elif types == {bool}:
        dtype = np.bool_
    else:
        return None
    try:
        array = np.fromiter(itertools.chain.from_iterable(level), dtype=dtype, count=count)
    except (OverflowError, ValueError):  # an integer beyond int64 or float64: the general path says so
        return None
    if dtype is np.int64 and count and array.min() == _INT64_MIN:  # as the general path: |x| >= 2**63 is float64
        return None
    return array.reshape(shape)


def decode_predict_request(body: bytes, max_elements: Optional[int] = None
                           ) -> Tuple[str, str, Dict[Optional[str], np.ndarray]]:
    """Decodes a :predict body; returns (signature_name, format, inputs).

    inputs maps input names to arrays; the key SINGLE_INPUT (None) stands for the
    signature's only input when the request does not name it. A tensor of more than
    max_elements values is refused before its array is built (the server passes its
    --max_request_tensor_bytes: every value takes at least one byte in any dtype).

    Raises:
        InvalidArgumentError: the body breaks TF Serving's request format.
    """
    request = parse_json_object(body)
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgumentError("'signature_name' must be a string")
    unknown = set(request) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise InvalidArgumentError(f"unknown request field(s) {sorted(unknown)}; a predict request has "
                                   "'signature_name' and one of 'instances' or 'inputs'")
    has_instances, has_inputs = "instances" in request, "inputs" in request
    if has_instances == has_inputs:
        raise InvalidArgumentError("Missing 'inputs' or 'instances' key" if not has_instances else
                                   "Not both 'inputs' and 'instances' keys can be specified")
    if has_instances:
        return signature_name, ROW_FORMAT, _decode_instances(request["instances"], max_elements)
    inputs = request["inputs"]
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if not inputs:
            raise InvalidArgumentError("'inputs' is an empty object")
        return signature_name, COLUMNAR_FORMAT, {
            str(key): tensor_from_json(value, str(key), max_elements) for key, value in inputs.items()}
    return signature_name, COLUMNAR_FORMAT, {SINGLE_INPUT: tensor_from_json(inputs, "inputs", max_elements)}


def _decode_instances(instances: Any, max_elements: Optional[int]) -> Dict[Optional[str], np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgumentError("'instances' must be a non-empty list, one entry per example")
    named = [isinstance(item, dict) and not _is_b64(item) for item in instances]
    if any(named) and not all(named):
        raise InvalidArgumentError("'instances' mixes named (object) and unnamed entries")
    if not all(named):
        return {SINGLE_INPUT: tensor_from_json(instances, "instances", max_elements)}
    keys = set().union(*instances)
    if not keys:
        raise InvalidArgumentError("'instances' entries are empty objects")
    result = {}
    for key in sorted(keys):
        column = [item.get(key) for item in instances]
        if any(value is None for value in column):
            result[key] = _column_with_missing(key, column, instances)
        else:
            result[key] = tensor_from_json(column, key, max_elements)
    return result


def _column_with_missing(key: str, column: List[Any], instances: List[Dict[str, Any]]) -> np.ndarray:
    """A named input some instances leave out or give as null: a missing value in those rows.

    Only for one number or one string per instance (a table's column): numbers give float64
    with NaN where missing, strings give bytes with b"" where missing, and a column with no
    value at all gives None values (the servable makes them NaN or "" for the signature's
    dtype). Anything else keeps TF Serving's rule: every instance has the same inputs.
    """
    present = [value for value in column if value is not None]
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present)
    strings = all(isinstance(value, str) for value in present)
    if not (numbers or strings):
        index = next(i for i, value in enumerate(column) if value is None)
        raise InvalidArgumentError(
            f"instance {index} has inputs {sorted(k for k, v in instances[index].items() if v is not None)}, "
            f"but input '{key}' is not one number or string per instance; every instance needs the same "
            "named inputs (a missing or null value is allowed only for single numbers or strings)")
    if not present:
        return np.array([None] * len(column), dtype=object)
    if numbers:
        return np.array([math.nan if value is None else float(value) for value in column], dtype=np.float64)
    return np.array([b"" if value is None else value.encode("utf-8") for value in column], dtype=object)


def _json_value(array: np.ndarray, binary: bool) -> Any:
    if array.dtype.kind in "OS":
        if binary:
            return _map_nested(array, lambda item: {"b64": base64.b64encode(item).decode("ascii")})
        return _map_nested(array, lambda item: item.decode("utf-8", "replace")
                           if isinstance(item, bytes) else str(item))
    return array.tolist()


def _map_nested(array: Any, function) -> Any:
    if not isinstance(array, np.ndarray):
        return function(array)
    if array.ndim == 0:
        return function(array.item())
    return [_map_nested(item, function) for item in array]


def encode_predict_response(outputs: Dict[str, np.ndarray], request_format: str) -> Dict[str, Any]:
    """TF Serving's response: {"predictions": [...]} for row format, {"outputs": ...} for columnar.

    Output names ending in "_bytes" are written {"b64": ...}, as TF Serving does.

    Raises:
        InvalidArgumentError: row format with outputs of different batch sizes.
    """
    names = sorted(outputs)
    if request_format == COLUMNAR_FORMAT:
        values = {name: _json_value(outputs[name], name.endswith("_bytes")) for name in names}
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    sizes = {outputs[name].shape[0] if outputs[name].ndim else None for name in names}
    if len(sizes) != 1 or None in sizes:
        raise InvalidArgumentError("row format needs every output to have the same batch size; "
                                   "use the columnar 'inputs' format for this signature")
    if len(names) == 1:
        return {"predictions": _json_value(outputs[names[0]], names[0].endswith("_bytes"))}
    columns = {name: _json_value(outputs[name], name.endswith("_bytes")) for name in names}
    count = sizes.pop()
    return {"predictions": [{name: columns[name][row] for name in names} for row in range(count)]}


def _feature(name: str, value: Any):
    """A tf.train.Feature. TensorFlow is imported here, not at the top: `tfprod predict`
    decodes predict bodies with this module in a process without TensorFlow."""
    import tensorflow as tf

    values = value if isinstance(value, list) else [value]
    if not values:
        return tf.train.Feature()
    if all(isinstance(item, bool) for item in values) or not all(
            isinstance(item, (int, float, str)) and not isinstance(item, bool) or _is_b64(item)
            for item in values):
        raise InvalidArgumentError(f"feature '{name}': values must be numbers, strings or "
                                   "{\"b64\": ...}, all of one kind")
    if all(isinstance(item, int) for item in values):
        if any(abs(item) >= 2 ** 63 for item in values):
            raise InvalidArgumentError(f"feature '{name}': integer out of the int64 range")
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(item, (int, float)) for item in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    if all(isinstance(item, str) or _is_b64(item) for item in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[_decode_b64(item) if _is_b64(item) else item.encode("utf-8") for item in values]))
    raise InvalidArgumentError(f"feature '{name}': values mix numbers and strings")


def example_from_json(value: Any, where: str):
    """A tf.train.Example from its JSON form (an object of features)."""
    import tensorflow as tf

    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where} must be a JSON object of features")
    example = tf.train.Example()
    for name, feature in value.items():
        example.features.feature[name].CopyFrom(_feature(name, feature))
    return example


def decode_examples_request(body: bytes) -> Tuple[str, List[bytes]]:
    """Decodes a :classify or :regress body; returns (signature_name, serialized tf.Examples).

    Context features are merged into every example (the example wins on a clash).
    """
    request = parse_json_object(body)
    unknown = set(request) - {"signature_name", "context", "examples"}
    if unknown:
        raise InvalidArgumentError(f"unknown request field(s) {sorted(unknown)}; expected "
                                   "'signature_name', 'context' and 'examples'")
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgumentError("'signature_name' must be a string")
    examples = request.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidArgumentError("'examples' must be a non-empty list of objects")
    context = example_from_json(request["context"], "'context'") if "context" in request else None
    serialized = []
    for index, item in enumerate(examples):
        example = example_from_json(item, f"example {index}")
        if context is not None:
            merged = type(context)()
            merged.CopyFrom(context)
            for name, feature in example.features.feature.items():
                merged.features.feature[name].CopyFrom(feature)
            example = merged
        serialized.append(example.SerializeToString())
    return signature_name, serialized


def encode_classify_response(classes, scores, count: int) -> Dict[str, Any]:
    """{"results": [[[label, score], ...], ...]}, one list of (label, score) pairs per example."""
    results = []
    for row in range(count):
        width = (classes if classes is not None else scores).shape[1]
        pairs = []
        for column in range(width):
            label = classes[row, column] if classes is not None else b""
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            score = float(scores[row, column]) if scores is not None else 0.0
            pairs.append([label, score])
        results.append(pairs)
    return {"results": results}


def encode_regress_response(values: np.ndarray) -> Dict[str, Any]:
    return {"results": [float(value) for value in values]}
