"""Conversions between TF Serving's protos and numpy arrays."""

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import input_pb2

from tfprod.serving.errors import InvalidArgumentError, TensorTooLargeError


# Numeric dtypes whose tensor_content is the array's bytes in machine order (the DataType enum of
# tensorflow/core/framework/types.proto -> numpy). Others (strings, half-precision variants kept
# in half_val, quantized and resource types) go through tf.make_ndarray / tf.make_tensor_proto.
_PLAIN_DTYPES = {
    types_pb2.DT_FLOAT: np.dtype(np.float32), types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32), types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8), types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16), types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32), types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
}
_PLAIN_DTYPE_ENUMS = {dtype: enum for enum, dtype in _PLAIN_DTYPES.items()}


# The repeated field each dtype's values travel in when tensor_content is empty, and how many
# field entries make one value (a complex number is two). Any other dtype (DT_RESOURCE,
# DT_VARIANT, DT_INVALID, float8, int4, an enum number TensorFlow does not know) cannot be a
# request's input: TF Serving refuses it as an invalid argument.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1), types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT32: ("int_val", 1), types_pb2.DT_UINT8: ("int_val", 1), types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1), types_pb2.DT_UINT16: ("int_val", 1), types_pb2.DT_QINT8: ("int_val", 1),
    types_pb2.DT_QUINT8: ("int_val", 1), types_pb2.DT_QINT16: ("int_val", 1), types_pb2.DT_QUINT16: ("int_val", 1),
    types_pb2.DT_QINT32: ("int_val", 1), types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1), types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1), types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_HALF: ("half_val", 1), types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2), types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}
MAX_RANK = 32  # numpy's (1.x) largest number of dimensions


def dtype_name(enum: int) -> str:
    """DT_FLOAT -> "float" (TF Serving's spelling); an unknown enum number as itself."""
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown dtype {enum}"


def tensor_proto_shape(name: str, proto: tensor_pb2.TensorProto) -> List[int]:
    """The shape a TensorProto declares, checked (known rank at most MAX_RANK, no negative size)."""
    if proto.dtype not in _VALUE_FIELDS:
        raise InvalidArgumentError(
            f"input '{name}' has dtype {dtype_name(proto.dtype)}, which a request cannot carry; send "
            "numbers, booleans or strings")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if len(shape) > MAX_RANK or any(size < 0 for size in shape):
        raise InvalidArgumentError(f"input '{name}' has an invalid shape {shape}: sizes must be known "
                                   f"(not negative) and there can be at most {MAX_RANK} dimensions")
    return shape


def decoded_tensor_bytes(name: str, proto: tensor_pb2.TensorProto, shape: Sequence[int]) -> int:
    """How many bytes the array of a TensorProto takes once decoded, read from its header only.

    Also checks that the values fit the shape: tensor_content must hold exactly the shape's bytes;
    a `*_val` field holds one value per element, or a single value that TensorFlow repeats over
    the shape (a broadcast), or none for an empty tensor. Strings count their bytes plus one
    pointer each.

    Raises:
        InvalidArgumentError: the dtype cannot be decoded, or the values do not fit the shape.
    """
    field, per_value = _VALUE_FIELDS[proto.dtype]
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) not in (1, count) or (count and not values):
            raise InvalidArgumentError(
                f"input '{name}' has {len(values)} string_val entries, but shape {list(shape)} needs "
                f"{count} (or 1, repeated over the shape)")
        text_bytes = sum(map(len, values)) if len(values) == count else count * len(values[0]) if count else 0
        return count * 8 + text_bytes
    itemsize = tf.dtypes.as_dtype(proto.dtype).size
    if proto.tensor_content:
        return count * itemsize  # array_from_tensor_proto checks that the content holds that many bytes
    entries = len(getattr(proto, field))
    if entries % per_value or entries // per_value not in ((1, count) if count else (0, 1)):
        raise InvalidArgumentError(
            f"input '{name}' has {entries // per_value} values in {field}, but shape {list(shape)} needs "
            f"{count} (or 1, repeated over the shape)")
    return count * itemsize


def array_from_tensor_proto(name: str, proto: tensor_pb2.TensorProto, max_bytes: Optional[int] = None) -> np.ndarray:
    """tf.make_ndarray with errors a client can act on, and nothing allocated before the checks.

    The shape, the dtype and the number of values are checked from the proto's header first, and
    the decoded size against max_bytes, so a request of a few bytes cannot make the server
    allocate gigabytes (a shape of [20000, 28, 28] with one float_val).

    A numeric tensor sent as tensor_content (what tf.make_tensor_proto writes for numpy arrays)
    is read with numpy.frombuffer, without a copy: tf.make_ndarray costs tens of microseconds more.

    Raises:
        InvalidArgumentError: a bad dtype, shape or value count, or more than max_bytes decoded.
    """
    shape = tensor_proto_shape(name, proto)
    size = decoded_tensor_bytes(name, proto, shape)
    if max_bytes is not None and size > max_bytes:
        raise TensorTooLargeError(f"input '{name}' (shape {shape}, {dtype_name(proto.dtype)})", size, max_bytes)
    dtype = _PLAIN_DTYPES.get(proto.dtype)
    if dtype is not None and proto.tensor_content:
        content = proto.tensor_content
        expected = dtype.itemsize * math.prod(shape)
        if len(content) != expected:
            raise InvalidArgumentError(
                f"input '{name}' is not a valid TensorProto: tensor_content holds {len(content)} bytes, "
                f"but shape {shape} of {dtype.name} needs {expected}")
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError) as error:
        raise InvalidArgumentError(f"input '{name}' is not a valid TensorProto: {error}") from error


def arrays_for_signature(protos: Mapping[str, tensor_pb2.TensorProto], input_names: Sequence[str],
                         input_dtypes: Mapping[str, int], input_shapes: Mapping[str, Optional[List[int]]],
                         max_bytes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Decodes a Predict request's tensors for one signature, checking everything before allocating.

    Each input must be one the signature takes, of its dtype, and of a shape whose known
    dimensions match the signature's (a dimension of -1, the batch, is free); all inputs
    together decode to at most max_bytes.

    Args:
        protos: the request's inputs.
        input_names: the signature's input names.
        input_dtypes: the signature's input DataType enums.
        input_shapes: the signature's input shapes (-1 for an unknown size, None for an unknown rank).
        max_bytes: the decoded size limit of the request, or None.

    Raises:
        InvalidArgumentError: naming the input.
    """
    missing = sorted(set(input_names) - set(protos))
    extra = sorted(set(protos) - set(input_names))
    if missing or extra:
        raise InvalidArgumentError(
            f"the signature takes inputs {sorted(input_names)}; "
            + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                          f"unknown {extra}" if extra else "") if part))
    total = 0
    for name, proto in protos.items():
        if proto.dtype != input_dtypes[name]:
            raise InvalidArgumentError(f"Expects arg '{name}' to be {dtype_name(input_dtypes[name])} but "
                                       f"{dtype_name(proto.dtype)} is provided")
        shape = tensor_proto_shape(name, proto)
        expected = input_shapes[name]
        if expected is not None and (len(shape) != len(expected) or any(
                want not in (-1, got) for want, got in zip(expected, shape))):
            shown = "[" + ",".join("?" if dim == -1 else str(dim) for dim in expected) + "]"
            raise InvalidArgumentError(f"input '{name}' has shape {shape}, but the signature expects {shown}")
        size = decoded_tensor_bytes(name, proto, shape)
        total += size
        if max_bytes is not None and size > max_bytes:
            raise TensorTooLargeError(f"input '{name}' (shape {shape}, {dtype_name(proto.dtype)})", size, max_bytes)
    if max_bytes is not None and total > max_bytes:
        raise TensorTooLargeError(f"the request's inputs {sorted(protos)}", total, max_bytes)
    return {name: array_from_tensor_proto(name, proto) for name, proto in protos.items()}


def arrays_from_tensor_protos(protos: Mapping[str, tensor_pb2.TensorProto],
                              max_bytes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Decodes tensors without a signature to check them against (warm-up records)."""
    return {name: array_from_tensor_proto(name, proto, max_bytes) for name, proto in protos.items()}


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """The TensorProto of an output: numeric arrays as tensor_content, like tf.make_tensor_proto."""
    enum = _PLAIN_DTYPE_ENUMS.get(array.dtype)
    if enum is None or array.size == 0:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_content=array.tobytes())
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape)
    return proto


def fill_tensor_proto(target: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Writes an output array into a TensorProto field of a response (no intermediate copy)."""
    enum = _PLAIN_DTYPE_ENUMS.get(array.dtype)
    if enum is None or array.size == 0:
        target.CopyFrom(tf.make_tensor_proto(array))
        return
    target.dtype = enum
    for size in array.shape:
        target.tensor_shape.dim.add().size = size
    target.tensor_content = array.tobytes()


def serialized_examples(model_input: input_pb2.Input) -> List[bytes]:
    """The tf.Examples of a Classify/Regress `Input`, context features merged into each.

    Raises:
        InvalidArgumentError: the Input holds no examples.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
        if not examples:
            raise InvalidArgumentError("Input is empty: example_list has no examples")
        return [example.SerializeToString() for example in examples]
    if kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        if not with_context.examples:
            raise InvalidArgumentError("Input is empty: example_list_with_context has no examples")
        merged = []
        for example in with_context.examples:
            combined = tf.train.Example()
            combined.CopyFrom(with_context.context)
            for key, feature in example.features.feature.items():
                combined.features.feature[key].CopyFrom(feature)
            merged.append(combined.SerializeToString())
        return merged
    raise InvalidArgumentError("Input is empty: set example_list or example_list_with_context")
