"""Conversions between TF Serving's protos and numpy arrays."""

import math
from typing import Dict, List, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import input_pb2

from tfprod.serving.errors import InvalidArgumentError


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


def array_from_tensor_proto(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """tf.make_ndarray with errors a client can act on.

    A numeric tensor sent as tensor_content (what tf.make_tensor_proto writes for numpy arrays)
    is read with numpy.frombuffer, without a copy: tf.make_ndarray costs tens of microseconds more.
    """
    dtype = _PLAIN_DTYPES.get(proto.dtype)
    if dtype is not None and proto.tensor_content and not proto.tensor_shape.unknown_rank:
        shape = [dim.size for dim in proto.tensor_shape.dim]
        content = proto.tensor_content
        expected = dtype.itemsize * math.prod(shape)
        if any(size < 0 for size in shape) or len(content) != expected:
            raise InvalidArgumentError(
                f"input '{name}' is not a valid TensorProto: tensor_content holds {len(content)} bytes, "
                f"but shape {shape} of {dtype.name} needs {expected}")
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"input '{name}' is not a valid TensorProto: {error}") from error


def arrays_from_tensor_protos(protos: Mapping[str, tensor_pb2.TensorProto]) -> Dict[str, np.ndarray]:
    return {name: array_from_tensor_proto(name, proto) for name, proto in protos.items()}


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
