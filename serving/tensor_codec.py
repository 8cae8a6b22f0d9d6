"""numpy arrays <-> TensorProto without TensorFlow (for clients: `tfprod predict --protocol grpc`).

What tf.make_tensor_proto and tf.make_ndarray do for the dtypes a model's signature
takes: numbers and booleans as little-endian bytes in tensor_content, strings as
string_val. Reading also accepts the typed *_val fields (as TF Serving and TensorFlow
write small or scalar tensors), a single value standing for a whole tensor of it.
The DataType numbers are those of tensorflow/core/framework/types.proto.
"""

from typing import Dict, Tuple

import numpy as np

DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT16, DT_HALF, DT_UINT32, DT_UINT64 = 9, 10, 17, 19, 22, 23

# DataType -> (numpy dtype, the typed field its values may come in).
NUMPY_DTYPES: Dict[int, Tuple[np.dtype, str]] = {
    DT_FLOAT: (np.dtype("<f4"), "float_val"),
    DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    DT_INT32: (np.dtype("<i4"), "int_val"),
    DT_UINT8: (np.dtype("u1"), "int_val"),
    DT_INT16: (np.dtype("<i2"), "int_val"),
    DT_INT8: (np.dtype("i1"), "int_val"),
    DT_INT64: (np.dtype("<i8"), "int64_val"),
    DT_BOOL: (np.dtype("?"), "bool_val"),
    DT_UINT16: (np.dtype("<u2"), "int_val"),
    DT_HALF: (np.dtype("<f2"), "half_val"),
    DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    DT_UINT64: (np.dtype("<u8"), "uint64_val"),
}
_BY_NUMPY = {dtype.newbyteorder("="): number for number, (dtype, _) in NUMPY_DTYPES.items()}


def data_type_of(array: np.ndarray) -> int:
    """The DataType of a numpy array (strings and bytes: DT_STRING)."""
    if array.dtype.kind in "OSU":
        return DT_STRING
    number = _BY_NUMPY.get(array.dtype.newbyteorder("="))
    if number is None:
        raise ValueError(f"no TensorFlow dtype for numpy {array.dtype}")
    return number


def numpy_dtype(data_type: int) -> np.dtype:
    """The numpy dtype of a DataType (DT_STRING: object, holding bytes)."""
    if data_type == DT_STRING:
        return np.dtype(object)
    if data_type not in NUMPY_DTYPES:
        raise ValueError(f"DataType {data_type} is not supported by this client")
    return NUMPY_DTYPES[data_type][0].newbyteorder("=")


def _as_bytes(item) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else bytes(item)


def fill_tensor_proto(proto, value, data_type: int = None) -> None:
    """Writes value (array-like) into an empty TensorProto, as tf.make_tensor_proto would.

    Args:
      proto: a tensorflow.core.framework.tensor_pb2.TensorProto.
      value: an array-like; strings and bytes become DT_STRING.
      data_type: the DataType to send (the value is cast to it); default: the value's own.
    """
    array = np.asarray(value)
    if data_type is None:
        data_type = data_type_of(array)
    proto.dtype = data_type
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if data_type == DT_STRING:
        proto.string_val.extend(_as_bytes(item) for item in array.ravel())
        return
    dtype, _ = NUMPY_DTYPES[data_type]
    proto.tensor_content = np.ascontiguousarray(array, dtype=dtype).tobytes()


def to_ndarray(proto) -> np.ndarray:
    """A TensorProto's value as a numpy array, as tf.make_ndarray gives it (strings: bytes)."""
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if proto.dtype == DT_STRING:
        values = list(proto.string_val)
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        if proto.dtype not in NUMPY_DTYPES:
            raise ValueError(f"DataType {proto.dtype} is not supported by this client")
        dtype, field = NUMPY_DTYPES[proto.dtype]
        if proto.tensor_content:
            return np.frombuffer(proto.tensor_content, dtype=dtype).astype(
                dtype.newbyteorder("=")).reshape(shape)
        values = getattr(proto, field)
        if proto.dtype == DT_HALF:  # half_val holds the float16s' bit patterns
            array = np.asarray(values, dtype=np.uint16).view(np.float16)
        else:
            array = np.asarray(values, dtype=dtype.newbyteorder("="))
    if array.size == count:
        return array.reshape(shape)
    if array.size == 0:
        return np.zeros(shape, dtype=array.dtype) if array.dtype != object else \
            np.full(shape, b"", dtype=object)
    # Fewer values than elements: the last one repeats (TensorFlow's convention).
    padded = np.concatenate([array, np.repeat(array[-1:], count - array.size)])
    return padded.reshape(shape)
