"""The gRPC client over the stock tensorflow_serving.apis stubs (see serving.client for REST)."""

from typing import Dict, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from tfprod.serving.client import ClientError


class GrpcClient:
    """A client for the gRPC API built on the stock tensorflow_serving.apis stubs.

    Args:
        address: host:port of the gRPC API.
        timeout: seconds per call.
    """

    def __init__(self, address: str = "127.0.0.1:8500", timeout: float = 30.0,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _spec(target, model: str, signature_name: Optional[str], version: Optional[int],
              label: Optional[str]) -> None:
        target.name = model
        if signature_name:
            target.signature_name = signature_name
        if version is not None:
            target.version.value = version
        elif label:
            target.version_label = label

    def _invoke(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ClientError(error.code().name, error.details()) from error

    def predict(self, model: str, inputs: Dict[str, np.ndarray], signature_name: Optional[str] = None,
                version: Optional[int] = None, label: Optional[str] = None,
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, signature_name, version, label)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        response = self._invoke(self.prediction.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def classify(self, model: str, examples: Sequence[tf.train.Example], signature_name: Optional[str] = None,
                 version: Optional[int] = None, label: Optional[str] = None):
        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, model, signature_name, version, label)
        request.input.example_list.examples.extend(examples)
        return self._invoke(self.prediction.Classify, request)

    def regress(self, model: str, examples: Sequence[tf.train.Example], signature_name: Optional[str] = None,
                version: Optional[int] = None, label: Optional[str] = None):
        request = regression_pb2.RegressionRequest()
        self._spec(request.model_spec, model, signature_name, version, label)
        request.input.example_list.examples.extend(examples)
        return self._invoke(self.prediction.Regress, request)

    def status(self, model: str, version: Optional[int] = None, label: Optional[str] = None):
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, None, version, label)
        return self._invoke(self.models.GetModelStatus, request)

    def metadata(self, model: str, version: Optional[int] = None,
                 label: Optional[str] = None) -> get_model_metadata_pb2.SignatureDefMap:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, None, version, label)
        response = self._invoke(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map
