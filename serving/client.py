"""Python clients for TF Serving's REST and gRPC APIs (tfprod's server or the real one).

    client = RestClient("127.0.0.1:8501")
    client.predict("mnist_cnn", instances=images.tolist(), signature_name="serving_raw")

    client = GrpcClient("127.0.0.1:8500")
    client.predict("mnist_cnn", {"image": images.astype("float32")}, signature_name="serving_raw")
"""

import http.client
import json
from typing import Any, Dict, List, Optional

from tfprod import errors


class ClientError(errors.RunFailure):
    """The server answered with an error; `status` is the HTTP status or gRPC code name."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ServerUnreachable(ClientError):
    """No server answered at the address (refused, unresolvable, timed out): one line names it."""

    def __init__(self, protocol: str, address: str, reason: str):
        super().__init__("UNAVAILABLE", f"no {protocol} server answered at {address}: {reason} "
                         "(is `tfprod serve` running there? --server picks another address)")
        self.address = address


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
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                self.close()
                if attempt:
                    raise ServerUnreachable("REST", f"{self.host}:{self.port}",
                                            f"the connection closed ({error})") from error
            except OSError as error:  # refused, unknown host, no answer in time
                self.close()
                reason = (f"no answer in {self.timeout:g}s" if isinstance(error, TimeoutError)
                          else (error.strerror or str(error)))
                raise ServerUnreachable("REST", f"{self.host}:{self.port}", reason) from error
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
        """POST :classify with tf.Example JSON (and an optional shared `context`)."""
        return self._examples_call("classify", model, examples, context, signature_name,
                                   version, label)

    def regress(self, model: str, examples: List[Dict[str, Any]], context: Optional[Dict[str, Any]] = None,
                signature_name: Optional[str] = None, version: Optional[int] = None,
                label: Optional[str] = None) -> Dict[str, Any]:
        """POST :regress with tf.Example JSON (and an optional shared `context`)."""
        return self._examples_call("regress", model, examples, context, signature_name,
                                   version, label)

    def _examples_call(self, method: str, model: str, examples: List[Dict[str, Any]],
                       context: Optional[Dict[str, Any]], signature_name: Optional[str],
                       version: Optional[int], label: Optional[str]) -> Dict[str, Any]:
        body: Dict[str, Any] = {"examples": examples}
        if context is not None:
            body["context"] = context
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", f"{_model_path(model, version, label)}:{method}", body)

    def status(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
        return self._call("GET", _model_path(model, version, label))

    def metadata(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
        return self._call("GET", _model_path(model, version, label) + "/metadata")


def __getattr__(name: str):
    # GrpcClient lives in serving.grpc_client (grpc and the generated protos); REST users skip it.
    if name == "GrpcClient":
        from tfprod.serving.grpc_client import GrpcClient
        return GrpcClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
