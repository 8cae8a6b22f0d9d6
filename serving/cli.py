"""`tfprod serve` (tensorflow_model_server's flags) and `tfprod predict` (a client).

Errors leave as tfprod.errors kinds (tfprod/cli.py prints them and exits): a bad flag,
config file or request body is a ConfigError (2); a request the server refused is a
ClientError, a RunFailure (1).
"""

import argparse
import json
import logging
import sys

from tfprod import errors


def _bool_flag(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def register(subparsers) -> None:
    """Adds the `serve` and `predict` subcommands to tfprod's parser."""
    serve = subparsers.add_parser(
        "serve", help="serve SavedModels over TF Serving's gRPC and REST APIs",
        description="A TF Serving-compatible model server. Flags are tensorflow_model_server's, so "
                    "commands and manifests carry over to the real server.")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    serve.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (tfprod only; default 127.0.0.1, use 0.0.0.0 in a container)")
    serve.add_argument("--model_name", default="default", help="name of the model (with --model_base_path)")
    serve.add_argument("--model_base_path", help="directory holding the model's numbered versions")
    serve.add_argument("--model_config_file", help="a ModelServerConfig text proto (models.config)")
    serve.add_argument("--enable_batching", type=_bool_flag, nargs="?", const=True, default=False,
                       help="batch requests on the server")
    serve.add_argument("--batching_parameters_file", help="a BatchingParameters text proto")
    serve.add_argument("--monitoring_config_file",
                       help="a MonitoringConfig text proto enabling /monitoring/prometheus/metrics")
    serve.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                       help="how often to look for new versions (0: only at start)")
    serve.add_argument("--rest_api_timeout_in_ms", type=int, default=30000, help="REST request timeout")
    serve.add_argument("--max_request_bytes", type=int, default=16 * 1024 * 1024,
                       help="largest request body or message accepted (tfprod only)")
    serve.add_argument("--max_request_tensor_bytes", type=int, default=None,
                       help="largest decoded size of one request's input tensors, checked before allocating "
                            "(tfprod only; default twice --max_request_bytes)")
    serve.add_argument("--enable_model_config_reload", type=_bool_flag, nargs="?", const=True, default=None,
                       help="allow ModelService.HandleReloadConfigRequest, which has no authentication "
                            "(tfprod only; default: true when --host is a loopback address, else false)")
    serve.add_argument("--allow_empty_base_path", type=_bool_flag, nargs="?", const=True, default=False,
                       help="start although a model's base path has no version that loads, and wait for "
                            "one (tfprod only; by default that is an error at start, exit 2)")
    serve.add_argument("--allow_empty_model_config", type=_bool_flag, nargs="?", const=True, default=False,
                       help="let a config reload remove every model (tfprod only)")
    serve.add_argument("--rest_header_timeout_seconds", type=float, default=10.0,
                       help="a REST request's head must arrive within this long, else 408 (tfprod only)")
    serve.add_argument("--rest_body_timeout_seconds", type=float, default=60.0,
                       help="a REST request's body must arrive within this long of its head, else 408 "
                            "(tfprod only)")
    serve.add_argument("--rest_max_connections", type=int, default=1000,
                       help="open REST connections beyond this are answered 503 (tfprod only)")
    serve.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                       help="threads TensorFlow spreads one op over (0: as many as cores)")
    serve.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                       help="ops TensorFlow runs at once (0: its default)")
    serve.add_argument("--enable_model_warmup", type=_bool_flag, nargs="?", const=True, default=True,
                       help="replay assets.extra/tf_serving_warmup_requests on load")
    serve.add_argument("--drain_seconds", type=float, default=30.0,
                       help="on SIGTERM, how long in-flight requests may finish (tfprod only)")
    serve.add_argument("--request_log_dir", default=None,
                       help="log sampled requests and answers here as TF Serving PredictionLog protos in "
                            "TFRecord files (tfprod only; docs/serving.md, Request logging)")
    serve.add_argument("--request_log_sampling_rate", type=float, default=0.1,
                       help="fraction of requests logged, 0 to 1 (tfprod only)")
    serve.add_argument("--request_log_max_file_bytes", type=int, default=64 * 1024 * 1024,
                       help="a log file is finished and a new one started at this size (tfprod only)")
    serve.add_argument("--request_log_rotate_seconds", type=float, default=3600.0,
                       help="... or when it is this old (tfprod only)")
    serve.add_argument("--request_log_max_total_bytes", type=int, default=1024 * 1024 * 1024,
                       help="the oldest log files are deleted to keep the directory under this (tfprod only)")
    serve.add_argument("--request_log_queue_size", type=int, default=1024,
                       help="records waiting for the writer; beyond this they are dropped and counted "
                            "(tfprod only)")
    serve.set_defaults(handler=_serve_command)

    predict = subparsers.add_parser(
        "predict", help="send a predict request to a TF Serving-compatible server (REST or gRPC)",
        description="Sends a TF Serving REST predict body ({\"instances\": ...} or {\"inputs\": ...}) "
                    "over REST, or the same tensors over gRPC, and prints the answer as JSON.")
    predict.add_argument("--server", default=None, help="host:port (default 127.0.0.1:8501 for REST, "
                                                        "127.0.0.1:8500 for gRPC)")
    predict.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    predict.add_argument("--model_name", required=True)
    predict.add_argument("--model_version", type=int, help="a version number (default: latest)")
    predict.add_argument("--version_label", help="a version label instead of a number")
    predict.add_argument("--signature_name", help="overrides the body's signature_name")
    predict.add_argument("--request", required=True,
                         help="JSON request body, or @FILE to read it from a file ('@-' for stdin)")
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds")
    predict.set_defaults(handler=_predict_command)


def _serve_command(args: argparse.Namespace) -> int:
    from tfprod.serving.server import ModelServer, ServerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    options = ServerOptions(
        port=args.port, rest_api_port=args.rest_api_port, host=args.host, model_name=args.model_name,
        model_base_path=args.model_base_path, model_config_file=args.model_config_file,
        enable_batching=args.enable_batching, batching_parameters_file=args.batching_parameters_file,
        monitoring_config_file=args.monitoring_config_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms, max_request_bytes=args.max_request_bytes,
        rest_header_timeout_seconds=args.rest_header_timeout_seconds,
        rest_body_timeout_seconds=args.rest_body_timeout_seconds, rest_max_connections=args.rest_max_connections,
        drain_seconds=args.drain_seconds, enable_model_warmup=args.enable_model_warmup,
        max_request_tensor_bytes=args.max_request_tensor_bytes,
        enable_model_config_reload=args.enable_model_config_reload,
        allow_empty_model_config=args.allow_empty_model_config,
        allow_empty_base_path=args.allow_empty_base_path,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        request_log_dir=args.request_log_dir, request_log_sampling_rate=args.request_log_sampling_rate,
        request_log_max_file_bytes=args.request_log_max_file_bytes,
        request_log_rotate_seconds=args.request_log_rotate_seconds,
        request_log_max_total_bytes=args.request_log_max_total_bytes,
        request_log_queue_size=args.request_log_queue_size)
    server = ModelServer(options)  # a bad flag or config file: ConfigFileError, a ConfigError

    def announce():
        # One machine-readable line: tests and scripts read the bound ports from it.
        print(json.dumps({"event": "serving", "grpc_port": server.grpc_port, "rest_port": server.rest_port,
                          "models": server.manager.model_names()}), flush=True)

    try:
        server.serve_forever(on_ready=announce)
    except OSError as error:  # e.g. the port is taken: the --port/--rest_api_port flags
        raise errors.ConfigError(str(error)) from error
    return 0


def _read_request(text: str) -> dict:
    """The --request body as a JSON object; ConfigError when it is not one."""
    try:
        if text == "@-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        body = json.loads(text)
    except (OSError, json.JSONDecodeError) as error:
        raise errors.ConfigError(f"--request is not readable JSON: {error}") from error
    if not isinstance(body, dict):
        raise errors.ConfigError("--request must be a JSON object with 'instances' or 'inputs'")
    return body


def _predict_command(args: argparse.Namespace) -> int:
    from tfprod.serving import client as client_lib

    body = _read_request(args.request)
    signature_name = args.signature_name or body.get("signature_name")
    try:
        if args.protocol == "rest":
            client = client_lib.RestClient(args.server or "127.0.0.1:8501", timeout=args.timeout)
            answer = client.predict(args.model_name, instances=body.get("instances"), inputs=body.get("inputs"),
                                    signature_name=signature_name, version=args.model_version,
                                    label=args.version_label)
        else:
            answer = _grpc_predict(args, body, signature_name)
    except client_lib.ServerUnreachable as error:  # one line naming the address (1)
        raise errors.RunFailure(error.message) from error
    except client_lib.ClientError as error:  # a RunFailure (1)
        raise errors.RunFailure(f"the server answered {error}") from error
    except errors.TfprodError:
        raise
    except ValueError as error:  # the client refused the request before sending it (2)
        raise errors.ConfigError(str(error)) from error
    print(json.dumps(answer))
    return 0


def _grpc_predict(args: argparse.Namespace, body: dict, signature_name):
    """Sends the REST-shaped body over gRPC; answers in REST's columnar shape {"outputs": {...}}.

    TensorFlow is not imported (seconds to a minute of start-up): the protos load without
    it (serving.api_protos) and tensors are packed with numpy (serving.tensor_codec).
    """
    from tfprod.serving import api_protos

    api_protos.load_without_tensorflow()  # before the modules below import the protos
    from tfprod.serving import grpc_client, json_codec, tensor_codec

    client = grpc_client.GrpcClient(args.server or "127.0.0.1:8500", timeout=args.timeout)
    try:
        _, _, inputs = json_codec.decode_predict_request(json.dumps(body).encode())
        signature_map = client.metadata(args.model_name, args.model_version, args.version_label)
        signature = signature_map.signature_def[signature_name or "serving_default"]
        if json_codec.SINGLE_INPUT in inputs:
            if len(signature.inputs) != 1:
                raise errors.ConfigError(
                    f"signature has inputs {sorted(signature.inputs)}; name them in the request")
            inputs = {next(iter(signature.inputs)): inputs[json_codec.SINGLE_INPUT]}
        # JSON numbers decode as int64/float64; gRPC needs the signature's dtypes, as TF Serving does.
        for name in inputs:
            if name in signature.inputs:
                dtype = tensor_codec.numpy_dtype(signature.inputs[name].dtype)
                if dtype != object:  # strings stay bytes
                    inputs[name] = inputs[name].astype(dtype)
        outputs = client.predict(args.model_name, inputs, signature_name, args.model_version, args.version_label)
    except json_codec.InvalidArgumentError as error:  # a ServingError: the body, not a request
        raise errors.ConfigError(str(error)) from error
    finally:
        client.close()
    return {"outputs": {name: value.tolist() if value.dtype.kind not in "OS" else
                        [item.decode("utf-8", "replace") for item in value.ravel()]
                        for name, value in outputs.items()}}
