"""Warm-up requests: assets.extra/tf_serving_warmup_requests, as TF Serving reads them.

The file is a TFRecord of PredictionLog protos. Both tfprod's server and the
real TF Serving replay it when they load a version, so the first real request
does not pay for graph tracing and kernel initialisation.
"""

import os
from typing import Iterable, List

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tfprod.contract import features, layout


def write_warmup_requests(export_dir: str, requests: Iterable[predict_pb2.PredictRequest]) -> str:
    """Writes the predict requests as PredictionLogs under export_dir; returns the file's path."""
    directory = os.path.join(export_dir, layout.WARMUP_DIRECTORY)
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, layout.WARMUP_FILE_NAME)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def image_warmup_requests(model_name: str, image_height: int, image_width: int,
                          batch_sizes: Iterable[int] = (1, 8)) -> List[predict_pb2.PredictRequest]:
    """Requests for both prediction signatures of the image model (blank images)."""
    requests = []
    for batch_size in batch_sizes:
        raw = predict_pb2.PredictRequest()
        raw.model_spec.name = model_name
        raw.model_spec.signature_name = features.SERVING_RAW_SIGNATURE
        raw.inputs[features.IMAGE_KEY].CopyFrom(tf.make_tensor_proto(
            np.zeros([batch_size, image_height, image_width], np.float32)))
        requests.append(raw)

        example = tf.train.Example()
        example.features.feature[features.IMAGE_KEY].int64_list.value.extend([0] * (image_height * image_width))
        serialized = predict_pb2.PredictRequest()
        serialized.model_spec.name = model_name
        serialized.model_spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
        serialized.inputs["examples"].CopyFrom(tf.make_tensor_proto(
            np.array([example.SerializeToString()] * batch_size, dtype=object)))
        requests.append(serialized)
    return requests
