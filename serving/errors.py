"""Error classes of the server, carrying TF Serving's status codes.

Every error a request can meet is a `ServingError` with a gRPC status code; the
REST layer maps the code to an HTTP status the way TF Serving's HTTP server does.

ServingError is not a tfprod.errors.TfprodError, on purpose: it is an answer to one client
(a status the server sends and goes on serving), never the end of a process, so it has no
exit code; under TfprodError a handler meant for a command's failure could swallow it, and
INVALID_ARGUMENT or NOT_FOUND have no fixed kind (the request is bad, not tfprod's config
or data). What does end the server is a ConfigFileError, a tfprod ConfigError (exit 2).
On the client side, `tfprod predict` turns an error answer into a RunFailure (exit 1).
"""

import grpc

from tfprod import errors

# TF Serving's mapping from canonical status codes to HTTP status codes
# (tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode).
HTTP_STATUS_BY_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request failed; `code` is the gRPC status code the client receives."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_BY_CODE.get(self.code, 500)


class InvalidArgumentError(ServingError):
    """The request is malformed: bad JSON, wrong dtype or shape, missing fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class TensorTooLargeError(InvalidArgumentError):
    """A request's tensors would decode to more than --max_request_tensor_bytes (checked before allocating)."""

    def __init__(self, what: str, size: int, max_bytes: int):
        super().__init__(f"{what} would take {size:,} bytes decoded, over the server's limit of {max_bytes:,} "
                         "bytes per request (--max_request_tensor_bytes); send fewer examples per request")


class NotFoundError(ServingError):
    """The model, version, label or signature named in the request does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(ServingError):
    """The request is well formed but the servable cannot answer it (e.g. wrong method)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(ServingError):
    """The server is overloaded or shutting down; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ServingError):
    """The request did not finish within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(ServingError):
    """The model failed while running."""

    code = grpc.StatusCode.INTERNAL


class ConfigFileError(errors.ConfigError):
    """A server configuration file (models.config, batching or monitoring) is invalid."""


class NoServableVersionError(errors.ConfigError):
    """At start, a configured model has no version that loaded (its base path is missing or
    empty, or every version failed): serving it would only answer NOT_FOUND."""
