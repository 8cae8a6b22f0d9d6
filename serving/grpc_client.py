"""The gRPC client over the stock tensorflow_serving.apis stubs (see serving.client for REST).

It does not import TensorFlow itself: tensors are packed with numpy (serving.tensor_codec),
and the protos come from serving.api_protos. Call api_protos.load_without_tensorflow()
first to keep TensorFlow out of the process altogether (`tfprod predict` does).
"""

import re
from typing import Any, Dict, Optional, Sequence

import grpc
import numpy as np

from tfprod.serving import api_protos, tensor_codec
from tfprod.serving.client import ClientError, ServerUnreachable


class GrpcClient:
    """A client for the gRPC API built on the stock tensorflow_serving.apis stubs.

    Args:
        address: host:port of the gRPC API.
        timeout: seconds per call.
    """

    def __init__(self, address: str = "127.0.0.1:8500", timeout: float = 30.0,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.address = address
        self.protos = api_protos.modules()
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self.prediction = self.protos.prediction_service_pb2_grpc.PredictionServiceStub(
            self.channel)
        self.models = self.protos.model_service_pb2_grpc.ModelServiceStub(self.channel)
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
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                # gRPC's own text says "failed to connect to all addresses; last error: ...".
                reason = (error.details() or "unavailable").split("last error:")[-1].strip()
                reason = re.sub(r"^[A-Z_]+: |(ipv[46]|unix|dns):\S+: ", "", reason)
                raise ServerUnreachable("gRPC", self.address, reason) from error
            raise ClientError(error.code().name, error.details()) from error

    def predict(self, model: str, inputs: Dict[str, np.ndarray], signature_name: Optional[str] = None,
                version: Optional[int] = None, label: Optional[str] = None,
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        request = self.protos.predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, signature_name, version, label)
        for name, value in inputs.items():
            tensor_codec.fill_tensor_proto(request.inputs[name], value)
        request.output_filter.extend(output_filter)
        response = self._invoke(self.prediction.Predict, request)
        return {name: tensor_codec.to_ndarray(proto) for name, proto in response.outputs.items()}

    def classify(self, model: str, examples: Sequence[Any], signature_name: Optional[str] = None,
                 version: Optional[int] = None, label: Optional[str] = None):
        """Classify with tf.train.Example protos."""
        request = self.protos.classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, model, signature_name, version, label)
        request.input.example_list.examples.extend(examples)
        return self._invoke(self.prediction.Classify, request)

    def regress(self, model: str, examples: Sequence[Any], signature_name: Optional[str] = None,
                version: Optional[int] = None, label: Optional[str] = None):
        """Regress with tf.train.Example protos."""
        request = self.protos.regression_pb2.RegressionRequest()
        self._spec(request.model_spec, model, signature_name, version, label)
        request.input.example_list.examples.extend(examples)
        return self._invoke(self.prediction.Regress, request)

    def status(self, model: str, version: Optional[int] = None, label: Optional[str] = None):
        request = self.protos.get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, None, version, label)
        return self._invoke(self.models.GetModelStatus, request)

    def metadata(self, model: str, version: Optional[int] = None, label: Optional[str] = None):
        """The model's SignatureDefMap (get_model_metadata_pb2)."""
        get_model_metadata_pb2 = self.protos.get_model_metadata_pb2
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, None, version, label)
        response = self._invoke(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map
