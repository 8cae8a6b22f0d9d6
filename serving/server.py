"""The model server: a model manager behind the gRPC and REST APIs, with graceful shutdown."""

import dataclasses
import ipaddress
import logging
import resource
import signal
import threading
from typing import Optional

from tensorflow_serving.config import model_server_config_pb2

from tfprod.serving import config as config_lib
from tfprod.serving import grpc_server, http11, request_log, rest
from tfprod.serving.errors import ConfigFileError, NoServableVersionError
from tfprod.serving.model_manager import ModelManager, freeze_long_lived_objects
from tfprod.serving.service import ServingService

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerOptions:
    """The server's settings; field names follow tensorflow_model_server's flags."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    model_name: Optional[str] = None
    model_base_path: Optional[str] = None
    model_config_file: Optional[str] = None
    enable_batching: bool = False
    batching_parameters_file: Optional[str] = None
    monitoring_config_file: Optional[str] = None
    file_system_poll_wait_seconds: float = 1.0
    rest_api_timeout_in_ms: int = 30000
    max_request_bytes: int = rest.DEFAULT_MAX_BODY_BYTES
    rest_header_timeout_seconds: float = http11.HEADER_TIMEOUT_SECONDS
    rest_body_timeout_seconds: float = http11.BODY_TIMEOUT_SECONDS
    rest_max_connections: int = http11.MAX_CONNECTIONS
    grpc_max_threads: int = 64
    drain_seconds: float = 30.0
    enable_model_warmup: bool = True
    max_request_tensor_bytes: Optional[int] = None  # None: twice max_request_bytes
    enable_model_config_reload: Optional[bool] = None  # None: only when host is a loopback address
    allow_empty_model_config: bool = False
    allow_empty_base_path: bool = False  # start although a model has no loadable version yet
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    # Request logging (tfprod only; docs/serving.md, Request logging): off without a directory.
    request_log_dir: Optional[str] = None
    request_log_sampling_rate: float = request_log.DEFAULT_SAMPLING_RATE
    request_log_max_file_bytes: int = request_log.DEFAULT_MAX_FILE_BYTES
    request_log_rotate_seconds: float = request_log.DEFAULT_ROTATE_SECONDS
    request_log_max_total_bytes: int = request_log.DEFAULT_MAX_TOTAL_BYTES
    request_log_queue_size: int = request_log.DEFAULT_QUEUE_SIZE

    def request_log_options(self) -> Optional[request_log.RequestLogOptions]:
        """The --request_log_* flags checked, or None when --request_log_dir is not set.

        Raises:
            ConfigFileError: a value out of range (the message names the flag).
        """
        if not self.request_log_dir:
            return None
        try:
            return request_log.RequestLogOptions(
                self.request_log_dir, self.request_log_sampling_rate, self.request_log_max_file_bytes,
                self.request_log_rotate_seconds, self.request_log_max_total_bytes, self.request_log_queue_size)
        except ValueError as error:
            raise ConfigFileError(str(error)) from error

    def model_server_config(self) -> model_server_config_pb2.ModelServerConfig:
        """The models to serve, from --model_config_file or --model_name/--model_base_path.

        Raises:
            ConfigFileError: neither or both ways are given, or the file is invalid.
        """
        if self.model_config_file and self.model_base_path:
            raise ConfigFileError("give either --model_config_file or --model_base_path, not both")
        if self.model_config_file:
            return config_lib.load_model_server_config(self.model_config_file)
        if not self.model_base_path:
            raise ConfigFileError("give --model_base_path (with --model_name) or --model_config_file")
        return config_lib.model_config_from_flags(self.model_name or "default", self.model_base_path)

    def tensor_bytes_limit(self) -> int:
        """--max_request_tensor_bytes, by default twice --max_request_bytes (32 MiB at the defaults).

        Raises:
            ConfigFileError: not positive.
        """
        limit = self.max_request_tensor_bytes
        if limit is None:
            return 2 * self.max_request_bytes
        if limit <= 0:
            raise ConfigFileError(f"--max_request_tensor_bytes must be a positive number of bytes, got {limit}")
        return limit

    def config_reload_enabled(self) -> bool:
        """--enable_model_config_reload, by default true only when the server binds a loopback address:
        the reload RPC has no authentication and can point the server at any directory."""
        if self.enable_model_config_reload is not None:
            return self.enable_model_config_reload
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP addresses (127.0.0.0/8, ::1); False for every other
    address, including "0.0.0.0" and "" (all interfaces) and host names."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism (0 keeps TF's choice).

    Fewer intra-op threads leave the request handling more of a small machine's cores, but a batch
    then runs on fewer cores (docs/serving.md, Performance, has the trade-off measured).

    Raises:
        ConfigFileError: a negative count, or TensorFlow has already started in this process.
    """
    import tensorflow as tf

    for name, value, setter in (
            ("--tensorflow_intra_op_parallelism", intra_op, tf.config.threading.set_intra_op_parallelism_threads),
            ("--tensorflow_inter_op_parallelism", inter_op, tf.config.threading.set_inter_op_parallelism_threads)):
        if value < 0:
            raise ConfigFileError(f"{name} must be 0 (TensorFlow's default) or a positive thread count, got {value}")
        if value:
            try:
                setter(value)
            except RuntimeError as error:
                raise ConfigFileError(f"{name} must be set before TensorFlow starts in this process: {error}") \
                    from error
    LOG.info("TensorFlow thread pools: intra-op %d, inter-op %d (0: TensorFlow's choice)",
             tf.config.threading.get_intra_op_parallelism_threads(),
             tf.config.threading.get_inter_op_parallelism_threads())


def raise_open_file_limit(wanted: int) -> int:
    """Raises this process's soft open-file limit towards the hard one (as Go and the JVM do); returns it.

    Each REST or gRPC connection holds a file descriptor, and a soft limit of 1024 (a common
    default) is barely above the default connection limit. The hard limit is left as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = (1 << 20) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            LOG.warning("cannot raise the open-file limit from %d: %s", soft, error)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        LOG.warning("the open-file limit (%d, ulimit -n) is below what --rest_max_connections needs (%d): "
                    "accepting may fail with 'Too many open files' before the limit is reached", soft, wanted)
    return soft


class ModelServer:
    """Runs the manager and both APIs until stop() (or SIGTERM/SIGINT in serve_forever)."""

    def __init__(self, options: ServerOptions):
        self.options = options
        configure_tensorflow_threads(options.tensorflow_intra_op_parallelism,
                                     options.tensorflow_inter_op_parallelism)
        server_config = options.model_server_config()
        batching = None
        if options.enable_batching:
            batching = config_lib.load_batching_parameters(options.batching_parameters_file)
        elif options.batching_parameters_file:
            raise ConfigFileError("--batching_parameters_file needs --enable_batching")
        self.monitoring = config_lib.load_monitoring_config(options.monitoring_config_file)
        for flag, value in (("--rest_header_timeout_seconds", options.rest_header_timeout_seconds),
                            ("--rest_body_timeout_seconds", options.rest_body_timeout_seconds),
                            ("--rest_max_connections", options.rest_max_connections)):
            if not value > 0:
                raise ConfigFileError(f"{flag} must be positive, got {value}")
        self.manager = ModelManager(server_config, batching=batching,
                                    poll_seconds=options.file_system_poll_wait_seconds,
                                    warm_up=options.enable_model_warmup)
        timeout = options.rest_api_timeout_in_ms / 1000.0 if options.rest_api_timeout_in_ms > 0 else None
        self.service = ServingService(
            self.manager, default_timeout_seconds=timeout, max_tensor_bytes=options.tensor_bytes_limit(),
            enable_config_reload=options.config_reload_enabled(), allow_empty_config=options.allow_empty_model_config)
        self._log_options = options.request_log_options()
        self.request_log = None
        self.grpc_server = None
        self.rest_server = None
        self.grpc_port = None
        self.rest_port = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Binds the gRPC and REST ports (0 picks a free port), loads the models, then serves.

        The ports are bound first, so a port in use is reported at once rather than after the
        models have loaded. Until the models are loaded, REST connections are refused (the port
        is not listening yet) and gRPC calls wait (grpc listens when the port is added).

        Raises:
            OSError: a port cannot be bound (the message names its flag).
        """
        options = self.options
        rest_wanted = options.rest_api_port is not None and options.rest_api_port >= 0
        raise_open_file_limit(options.rest_max_connections + 256)  # room for gRPC, models, logs
        try:
            self.grpc_server, self.grpc_port = _bind("--port", lambda: grpc_server.create_server(
                self.service, options.port, options.host, options.grpc_max_threads,
                max_message_bytes=options.max_request_bytes, start=False))
            if rest_wanted:
                metrics_path = self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None
                self.rest_server, self.rest_port = _bind("--rest_api_port", lambda: rest.create_server(
                    self.service, options.rest_api_port, options.host, options.max_request_bytes, metrics_path,
                    header_timeout_seconds=options.rest_header_timeout_seconds,
                    body_timeout_seconds=options.rest_body_timeout_seconds,
                    max_connections=options.rest_max_connections, start_serving=False))
            self._start_request_log()
            self.manager.start()
            missing = self.manager.unavailable_models()
            if missing and not options.allow_empty_base_path:
                raise NoServableVersionError(
                    "nothing to serve: " + "; ".join(missing) + ". Export a model there (tfprod run "
                    "pushes to <output_dir>/serving/<model_name>/<version>), fix --model_base_path / "
                    "the models.config, or start anyway with --allow_empty_base_path to wait for a "
                    "version to appear")
            for line in missing:
                LOG.warning("no version to serve yet: %s (waiting for one: --allow_empty_base_path)", line)
        except BaseException:
            self._close_ports()
            raise
        freeze_long_lived_objects()  # what the server itself has imported and built so far
        self.grpc_server.start()
        if self.rest_server is not None:
            self.rest_server.start_serving()

    def _start_request_log(self) -> None:
        """Starts the request log's writer (--request_log_dir), before any request is served.

        Raises:
            ConfigFileError: the directory cannot be created.
        """
        log_options = self._log_options
        if log_options is None:
            return
        metrics = self.service.metrics
        for reason in request_log.DROP_REASONS:  # every reason is exported, at 0 until it happens
            metrics.request_log_drops.inc_key((reason,), 0.0)
        metrics.request_log_written.inc_key((), 0.0)
        try:
            self.request_log = request_log.RequestLogger(log_options, drops=metrics.record_log_drop,
                                                         written=metrics.record_log_written)
        except OSError as error:
            raise ConfigFileError(f"--request_log_dir {log_options.directory}: cannot create it: {error}") \
                from error
        self.service.request_log = self.request_log
        LOG.info("logging %g of requests to %s (PredictionLog TFRecords)", log_options.sampling_rate,
                 log_options.directory)

    def _close_request_log(self) -> None:
        if self.request_log is not None:
            self.service.request_log = None
            self.request_log.close()
            self.request_log = None

    def _close_ports(self) -> None:
        self._close_request_log()
        if self.rest_server is not None:
            self.rest_server.shutdown()
            self.rest_server.server_close()
            self.rest_server = None
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0).wait(10)
            self.grpc_server = None

    def stop(self) -> None:
        """Refuses new requests, lets those in flight finish (up to drain_seconds), then exits."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        LOG.info("shutting down: draining in-flight requests (up to %.0f s)", self.options.drain_seconds)
        self.service.start_draining()
        if not self.service.wait_drained(self.options.drain_seconds):
            LOG.warning("requests still in flight after %.0f s", self.options.drain_seconds)
        if self.rest_server is not None:
            self.rest_server.wait_idle(5.0)  # answers computed while draining are written out
            self.rest_server.shutdown()
            self.rest_server.server_close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=5).wait(10)
        self.manager.stop(drain_seconds=self.options.drain_seconds)
        self._close_request_log()  # the open log file is finished (renamed) last
        LOG.info("server stopped")

    def serve_forever(self, on_ready=None) -> None:
        """Starts, calls on_ready(), and blocks until SIGTERM or SIGINT, then stops gracefully."""
        stop_requested = threading.Event()

        def request_stop(signum, frame):
            stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.start()
        if on_ready is not None:
            on_ready()
        while not stop_requested.wait(0.5):
            pass
        self.stop()


def _bind(flag: str, create):
    """create() (a server binding its port), its OSError naming the flag that sets the port."""
    try:
        return create()
    except OSError as error:
        raise OSError(f"{error} (choose another port with {flag})") from error
