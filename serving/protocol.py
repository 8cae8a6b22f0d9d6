"""Conversions between TF Serving's protos and numpy arrays."""

from typing import Dict, List, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import input_pb2

from serving.errors import InvalidArgumentError


def array_from_tensor_proto(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """tf.make_ndarray with errors a client can act on."""
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"input '{name}' is not a valid TensorProto: {error}") from error


def arrays_from_tensor_protos(protos: Mapping[str, tensor_pb2.TensorProto]) -> Dict[str, np.ndarray]:
    return {name: array_from_tensor_proto(name, proto) for name, proto in protos.items()}


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(array)


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
