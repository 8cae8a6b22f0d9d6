"""Python clients for TF Serving's REST and gRPC APIs (tfprod's server or the real one).

    client = RestClient("127.0.0.1:8501")
    client.predict("mnist_cnn", instances=images.tolist(), signature_name="serving_raw")

    client = GrpcClient("127.0.0.1:8500")
    client.predict("mnist_cnn", {"image": images.astype("float32")}, signature_name="serving_raw")
"""

import http.client
import json
from typing import Any, Dict, List, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)


class ClientError(Exception):
    """The server answered with an error; `status` is the HTTP status or gRPC code name."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _split_address(address: str, default_port: int):
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host, int(port)


def _model_path(model: str, version: Optional[int], label: Optional[str]) -> str:
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    elif label:
        path += f"/labels/{label}"
    return path


class RestClient:
    """A small client for the REST API over one keep-alive connection (not thread-safe).

    Args:
        address: host:port of the REST API.
        timeout: seconds per request.
    """

    def __init__(self, address: str = "127.0.0.1:8501", timeout: float = 30.0):
        self.host, self.port = _split_address(address, 8501)
        self.timeout = timeout
        self._connection: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: Optional[bytes] = None):
        """Sends one request; returns (HTTP status, parsed JSON or text body). Retries once on a dropped connection."""
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        content_type = response.getheader("Content-Type", "")
        value = json.loads(payload) if content_type.startswith("application/json") else payload.decode()
        return response.status, value

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None):
        status, value = self.request(method, path, None if body is None else json.dumps(body).encode())
        if status != 200:
            message = value.get("error", value) if isinstance(value, dict) else value
            raise ClientError(status, str(message))
        return value

    def predict(self, model: str, instances: Optional[list] = None, inputs: Any = None,
                signature_name: Optional[str] = None, version: Optional[int] = None,
                label: Optional[str] = None) -> Dict[str, Any]:
        """POST :predict with row `instances` or columnar `inputs`; returns the JSON answer."""
        if (instances is None) == (inputs is None):
            raise ValueError("pass exactly one of instances or inputs")
        body: Dict[str, Any] = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", _model_path(model, version, label) + ":predict", body)

    def classify(self, model: str, examples: List[Dict[str, Any]], context: Optional[Dict[str, Any]] = None,
                 signature_name: Optional[str] = None, version: Optional[int] = None,
                 label: Optional[str] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"examples": examples}
        if context is not None:
            body["context"] = context
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", _model_path(model, version, label) + ":classify", body)

    def regress(self, model: str, examples: List[Dict[str, Any]], context: Optional[Dict[str, Any]] = None,
                signature_name: Optional[str] = None, version: Optional[int] = None,
                label: Optional[str] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"examples": examples}
        if context is not None:
            body["context"] = context
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", _model_path(model, version, label) + ":regress", body)

    def status(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
        return self._call("GET", _model_path(model, version, label))

    def metadata(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
        return self._call("GET", _model_path(model, version, label) + "/metadata")


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
