"""InfraValidator: the candidate model in a real model server, before the Pusher, without Docker.

TFX's own InfraValidator starts TF Serving in Docker or on Kubernetes. This step starts the
server as a plain subprocess on 127.0.0.1 (any free ports): `tfprod serve` by default, or
`tensorflow_model_server` when infra.server says so and the binary is on PATH. It

1. starts the server first (it imports TensorFlow: seconds), and meanwhile loads the same
   SavedModel in this process and computes what it answers;
2. waits for the server to announce (or report AVAILABLE) within infra.startup_timeout_seconds;
3. compares the served signatures (GetModelMetadata) with the SavedModel's own;
4. sends the model's warm-up requests (assets.extra/tf_serving_warmup_requests) and a sample
   of the test split (infra.sample_size examples, serving_default on serialized tf.Examples
   and serving_raw on the raw tensors built from them) over gRPC and REST, and checks each
   answer against the in-process one: integer and string outputs (class ids, class names)
   equal, float outputs (probabilities, forecasts) within infra.tolerance
   (|served - expected| <= tolerance x (1 + |expected|));
5. sends single-example requests for infra.load_seconds (at most infra.load_max_requests,
   from infra.load_concurrency threads, half REST and half gRPC) and checks p50/p99 latency
   and the error count against infra.max_p50_ms / infra.max_p99_ms / infra.max_errors.

The outcome is TFX's standard InfraBlessing artifact marked as TFX's InfraValidator marks it
(custom property ``blessed`` 1 or 0, an INFRA_BLESSED or INFRA_NOT_BLESSED file), so TFX's
Pusher (and the AtomicPusher) push only a model that is blessed by both the Evaluator and
this step. ``infra_validation.json`` in the artifact records every check, the latencies and
one line per failure naming what differed. A model the Evaluator did not bless is not
validated (and so not blessed here either): a server start costs seconds.

validate_model() is the library function; the InfraValidator component wraps it.
"""

import base64
import dataclasses
import glob
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging
from tfx import v1 as tfx

from tfprod import errors
from tfprod.contract import features, layout, splits
from tfprod.pipeline import checks
from tfprod.pipeline import config as config_lib

COMPONENT_ID = "InfraValidator"
RESULT_FILE = "infra_validation.json"
# As TFX's InfraValidator writes them (tfx/components/infra_validator/executor.py), so TFX's
# Pusher (model_utils.is_infra_validated) reads them.
BLESSED_KEY = "blessed"
BLESSED_FILE = "INFRA_BLESSED"
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
SKIPPED_KEY = "skipped"
TF_SERVING_BINARY = checks.TF_SERVING_BINARY
# The signatures that take serialized tf.Examples under this input name (tasks.signatures).
EXAMPLES_INPUT = "examples"
# The server's stderr (its log) is kept beside the result; its tail goes into a start failure.
SERVER_LOG_FILE = "server.log"
_MAX_VALUES_SHOWN = 4
_FAILURES_SHOWN = 3  # in the one-line outcome; infra_validation.json keeps them all


class InfraValidationError(errors.RunFailure):
    """The validation itself could not run (not: the model failed it)."""


@dataclasses.dataclass
class InfraResult:
    """What validate_model found. `failures` empty means blessed."""

    blessed: bool
    server: str
    failures: List[str] = dataclasses.field(default_factory=list)
    # "<signature> <protocol> <source>": number of examples whose answers were compared.
    checks: Dict[str, int] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)
    latency: Dict[str, Any] = dataclasses.field(default_factory=dict)
    limits: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # Wall times: server start (spawn to ready), in-process model, parity, load, total.
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for the console and the run summary."""
        if self.skipped:
            return f"Infra validation: skipped ({self.skipped})"
        latency = self.latency
        load = (f"p50 {latency.get('p50_ms', float('nan')):.1f} ms, "
                f"p99 {latency.get('p99_ms', float('nan')):.1f} ms, "
                f"{latency.get('errors', 0)} error(s) in {latency.get('requests', 0)} requests"
                if latency else "no load measured")
        if self.blessed:
            return (f"Infra validation: passed ({self.server}; {len(self.checks)} signature/"
                    f"protocol checks equal to the in-process model; {load})")
        shown = self.failures[:_FAILURES_SHOWN]
        more = len(self.failures) - len(shown)
        return (f"Infra validation: FAILED ({self.server}): " + "; ".join(shown)
                + (f"; and {more} more ({RESULT_FILE})" if more > 0 else ""))


# --------------------------------------------------------------------------
# The server subprocess.
# --------------------------------------------------------------------------

class ServerProcess:
    """A model server subprocess on 127.0.0.1; stop() ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, kind: str, command: List[str], log_path: str,
                 grpc_port: Optional[int] = None, rest_port: Optional[int] = None):
        self.kind = kind
        self.command = command
        self.log_path = log_path
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.started = time.monotonic()
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1",
                   TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log,
                                        stdin=subprocess.DEVNULL, env=env,
                                        preexec_fn=_end_with_parent)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        for raw in self.process.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                text = handle.read().strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def wait_ready(self, model_name: str, timeout: float) -> float:
        """Blocks until the server serves model_name; returns the seconds since the spawn.

        Raises:
          InfraValidationError: the server exited or did not get ready within timeout.
        """
        deadline = self.started + timeout
        if self.kind == config_lib.InfraServer.TFPROD.value:
            while True:  # `tfprod serve` prints one JSON line with its ports once loaded
                try:
                    line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if line is None:
                    self.process.wait(timeout=5)
                    raise InfraValidationError(
                        f"the server exited (status {self.process.returncode}) before it served "
                        f"the model: {self.log_tail()}")
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "serving":
                    self.grpc_port, self.rest_port = event["grpc_port"], event["rest_port"]
                    return time.monotonic() - self.started
        else:
            from tfprod.serving import client as client_lib

            rest = client_lib.RestClient(f"127.0.0.1:{self.rest_port}", timeout=2.0)
            try:
                while time.monotonic() < deadline:
                    if self.process.poll() is not None:
                        raise InfraValidationError(
                            f"the server exited (status {self.process.returncode}) before it "
                            f"served the model: {self.log_tail()}")
                    try:
                        status = rest.status(model_name)
                        states = [v.get("state") for v in status.get("model_version_status", [])]
                        if "AVAILABLE" in states:
                            return time.monotonic() - self.started
                    except client_lib.ClientError:
                        pass
                    time.sleep(0.2)
            finally:
                rest.close()
        raise InfraValidationError(
            f"the server did not serve the model within infra.startup_timeout_seconds "
            f"({timeout:g}s): {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._log.close()


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when the pipeline's process dies (Linux), so a
    killed run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_server_available(server: str) -> None:
    """Raises ConfigError when infra.server names a binary that is not on PATH."""
    checks.check_infra_server(config_lib.InfraConfig(server=config_lib.InfraServer(server)))


def start_server(server: str, model_dir: str, model_name: str, work_dir: str) -> ServerProcess:
    """Starts a server for the SavedModel in model_dir as <work_dir>/models/<model_name>/1.

    Raises:
      ConfigError: infra.server is tensorflow_model_server and it is not on PATH.
    """
    check_server_available(server)
    base_path = os.path.join(work_dir, "models", model_name)
    os.makedirs(base_path, exist_ok=True)
    version_dir = os.path.join(base_path, "1")
    if os.path.isdir(model_dir):
        os.symlink(os.path.abspath(model_dir), version_dir)
    else:  # e.g. a gs:// model on Kubeflow: a local copy for the server
        from tfx.utils import io_utils

        io_utils.copy_dir(model_dir, version_dir)
    log_path = os.path.join(work_dir, SERVER_LOG_FILE)
    if server == config_lib.InfraServer.TFPROD.value:
        command = [sys.executable, "-m", "tfprod.cli", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--rest_api_port", "0", "--model_name", model_name,
                   "--model_base_path", base_path, "--file_system_poll_wait_seconds", "0",
                   "--drain_seconds", "1", "--enable_model_warmup", "true"]
        return ServerProcess(server, command, log_path)
    grpc_port, rest_port = _free_port(), _free_port()
    command = [shutil.which(TF_SERVING_BINARY), f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", f"--model_name={model_name}",
               f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=0",
               "--enable_model_warmup=true"]
    return ServerProcess(server, command, log_path, grpc_port, rest_port)


# --------------------------------------------------------------------------
# Requests and their expected answers.
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Probe:
    """One predict request: where it came from, its inputs, and what the in-process model said."""

    signature: str
    source: str  # "warm-up request 2", "test examples"
    inputs: Dict[str, np.ndarray]
    expected: Dict[str, np.ndarray]
    # Index of each row in the sample (test examples), or None (warm-up requests).
    rows: Optional[List[int]] = None


def read_examples(examples_uri: str, count: int) -> Tuple[List[bytes], str]:
    """The first `count` serialized tf.Examples of the test split (else the eval split)."""
    import tensorflow as tf

    for split in (splits.TEST, splits.EVAL):
        files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
        if files:
            dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
            return [record.numpy() for record in dataset], split
    raise InfraValidationError(f"no test or eval split under {examples_uri}")


def read_warmup_requests(model_dir: str) -> List[Any]:
    """The PredictRequests of the model's warm-up file ([] when it has none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(model_dir, layout.WARMUP_PATH)
    if not tf.io.gfile.exists(path):
        return []
    requests = []
    for record in tf.data.TFRecordDataset([path]):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") == "predict_log":
            requests.append(log.predict_log.request)
    return requests


def _input_specs(loaded, signature: str) -> Dict[str, Any]:
    return dict(loaded.signatures[signature].structured_input_signature[1])


def _call(loaded, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    import tensorflow as tf

    specs = _input_specs(loaded, signature)
    tensors = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()}
    return {name: value.numpy() for name, value in loaded.signatures[signature](**tensors).items()}


def raw_inputs_from_examples(specs: Dict[str, Any], serialized: Sequence[bytes]
                             ) -> Tuple[Optional[Dict[str, np.ndarray]], str]:
    """serving_raw's inputs built from tf.Examples, when each input is a feature of them.

    A string input takes the feature's first bytes value ("" when absent); a number input
    of shape [N] its first value (NaN when absent: a table's missing value); a larger one
    the feature's values reshaped (an image's int64 pixels as [N, height, width]). Returns
    (None, why) when a larger input is not a feature of the examples (a forecasting window
    stacks several).
    """
    import tensorflow as tf

    parsed = [tf.train.Example.FromString(record).features.feature for record in serialized]
    inputs = {}
    for name, spec in specs.items():
        shape = spec.shape.as_list()[1:]
        if shape and not any(name in feature for feature in parsed):
            return None, f"its input '{name}' is not a feature of the examples"
        rows = []
        for feature in parsed:
            entry = feature.get(name) if name in feature else None
            kind = entry.WhichOneof("kind") if entry is not None else None
            values = list(getattr(entry, kind).value) if kind else []
            if spec.dtype == tf.string:
                rows.append(values[0] if values else b"")
            elif not shape:
                rows.append(values[0] if values else np.nan)
            else:
                if None in shape or len(values) != int(np.prod(shape)):
                    return None, f"the feature '{name}' does not fill the input's shape {shape}"
                rows.append(np.reshape(values, shape))
        dtype = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
        inputs[name] = np.array(rows, dtype=dtype)
    return inputs, ""


def build_probes(loaded, model_dir: str, serialized: Sequence[bytes],
                 notes: List[str]) -> List[Probe]:
    """The parity requests with the in-process model's answers: every warm-up request, then
    the sample on serving_default (serialized tf.Examples) and serving_raw (raw tensors)."""
    import tensorflow as tf

    probes = []
    for position, request in enumerate(read_warmup_requests(model_dir)):
        signature = request.model_spec.signature_name or features.SERVING_DEFAULT_SIGNATURE
        if signature not in loaded.signatures:
            continue  # the signature check below names the mismatch
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        probes.append(Probe(signature, f"warm-up request {position}", inputs,
                            _call(loaded, signature, inputs)))
    rows = list(range(len(serialized)))
    if serialized and features.SERVING_DEFAULT_SIGNATURE in loaded.signatures:
        specs = _input_specs(loaded, features.SERVING_DEFAULT_SIGNATURE)
        if set(specs) == {EXAMPLES_INPUT}:
            inputs = {EXAMPLES_INPUT: np.array(list(serialized), dtype=object)}
            probes.append(Probe(features.SERVING_DEFAULT_SIGNATURE, "test examples", inputs,
                                _call(loaded, features.SERVING_DEFAULT_SIGNATURE, inputs), rows))
    if serialized and features.SERVING_RAW_SIGNATURE in loaded.signatures:
        inputs, why = raw_inputs_from_examples(
            _input_specs(loaded, features.SERVING_RAW_SIGNATURE), serialized)
        if inputs is None:
            notes.append(f"{features.SERVING_RAW_SIGNATURE} checked on the warm-up requests "
                         f"only: {why}")
        else:
            probes.append(Probe(features.SERVING_RAW_SIGNATURE, "test examples", inputs,
                                _call(loaded, features.SERVING_RAW_SIGNATURE, inputs), rows))
    return probes


# --------------------------------------------------------------------------
# Talking to the server.
# --------------------------------------------------------------------------

def _rest_value(value: np.ndarray) -> Any:
    if value.dtype == object or value.dtype.kind in "SU":
        encoded = [{"b64": base64.b64encode(item if isinstance(item, bytes) else
                                            str(item).encode()).decode("ascii")}
                   for item in value.ravel()]
        return np.array(encoded, dtype=object).reshape(value.shape).tolist()
    return value.tolist()


def _from_rest(value: Any) -> np.ndarray:
    """A REST output back to an array: strings and {"b64": ...} as bytes."""
    def convert(item):
        if isinstance(item, list):
            return [convert(entry) for entry in item]
        if isinstance(item, dict) and "b64" in item:
            return base64.b64decode(item["b64"])
        if isinstance(item, str):
            return item.encode("utf-8")
        return item

    converted = convert(value)
    array = np.array(converted, dtype=object)
    if array.size and all(isinstance(item, bytes) for item in array.ravel()):
        return array
    return np.array(converted)


class Clients:
    """A REST and a gRPC client of one server (not thread-safe: one per thread)."""

    def __init__(self, server: ServerProcess, timeout: float):
        from tfprod.serving import client as client_lib
        from tfprod.serving import grpc_client

        self.rest = client_lib.RestClient(f"127.0.0.1:{server.rest_port}", timeout=timeout)
        self.grpc = grpc_client.GrpcClient(f"127.0.0.1:{server.grpc_port}", timeout=timeout)

    def predict(self, protocol: str, model_name: str, signature: str,
                inputs: Dict[str, np.ndarray], output_names: Sequence[str]) -> Dict[str, np.ndarray]:
        if protocol == "grpc":
            return self.grpc.predict(model_name, inputs, signature_name=signature)
        body = {name: _rest_value(value) for name, value in inputs.items()}
        answer = self.rest.predict(model_name, inputs=body, signature_name=signature)
        outputs = answer.get("outputs")
        if not isinstance(outputs, dict):  # one output: TF Serving leaves its name out
            outputs = {output_names[0]: outputs} if len(output_names) == 1 else {}
        return {name: _from_rest(value) for name, value in outputs.items()}

    def close(self) -> None:
        self.rest.close()
        self.grpc.close()


def _shown(values: np.ndarray) -> str:
    flat = np.asarray(values).ravel()
    items = [item.decode("utf-8", "replace") if isinstance(item, bytes) else
             (round(float(item), 6) if np.asarray(item).dtype.kind == "f" else item)
             for item in flat[:_MAX_VALUES_SHOWN]]
    return str(items) + (" ..." if flat.size > _MAX_VALUES_SHOWN else "")


def compare_outputs(expected: Dict[str, np.ndarray], served: Dict[str, np.ndarray],
                    tolerance: float, where: str, rows: Optional[List[int]]) -> List[str]:
    """One line per output that differs: float outputs beyond tolerance x (1 + |expected|), any other
    output not equal; each names the first differing example and both values."""
    problems = []
    missing = sorted(set(expected) - set(served))
    extra = sorted(set(served) - set(expected))
    if missing or extra:
        problems.append(f"{where}: the server answered outputs {sorted(served)}, the in-process "
                        f"model {sorted(expected)}")
    for name in sorted(set(expected) & set(served)):
        want, got = np.asarray(expected[name]), np.asarray(served[name])
        if want.shape != got.shape:
            problems.append(f"{where}, output '{name}': shape {list(got.shape)} served, "
                            f"{list(want.shape)} in process")
            continue
        if want.dtype.kind == "f":
            # |served - expected| <= tolerance * (1 + |expected|): absolute for probabilities,
            # relative for outputs in a label's units (a fare, a forecast).
            bad = ~np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=tolerance,
                              atol=tolerance, equal_nan=True)
        elif want.dtype == object or want.dtype.kind in "SU":
            bad = np.vectorize(lambda a, b: _as_bytes(a) != _as_bytes(b), otypes=[bool])(
                want, got) if want.size else np.zeros(want.shape, bool)
        else:
            bad = got.astype(np.int64) != want.astype(np.int64)
        if not bad.any():
            continue
        per_row = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim else np.array([True])
        row = int(np.argmax(per_row))
        label = f"example {rows[row]}" if rows is not None else f"row {row}"
        detail = ""
        if want.dtype.kind == "f":
            largest = np.nanmax(np.abs(got.astype(np.float64) - want))
            detail = f" (largest difference in the request {largest:.3g} > infra.tolerance {tolerance:g})"
        problems.append(f"{where}, output '{name}', {label} ({int(per_row.sum())} of "
                        f"{per_row.size} differ): expected {_shown(want[row])}, served "
                        f"{_shown(got[row])}{detail}")
    return problems


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _signature_summary(signature_def) -> Dict[str, Any]:
    """A SignatureDef's input and output names with their dtypes (what a client relies on)."""
    from tensorflow.core.framework import types_pb2

    def dtype(info) -> str:
        return types_pb2.DataType.Name(info.dtype)

    return {"inputs": {name: dtype(info) for name, info in signature_def.inputs.items()},
            "outputs": {name: dtype(info) for name, info in signature_def.outputs.items()}}


def saved_model_signatures(model_dir: str) -> Dict[str, Any]:
    """The SavedModel's serving signatures as its saved_model.pb declares them."""
    from tensorflow.core.protobuf import saved_model_pb2
    import tensorflow as tf

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(model_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    meta_graph = next((graph for graph in saved_model.meta_graphs
                       if "serve" in graph.meta_info_def.tags), saved_model.meta_graphs[0])
    return {name: _signature_summary(signature)
            for name, signature in meta_graph.signature_def.items()
            if not name.startswith("__")}


def compare_signatures(expected: Dict[str, Any], served: Dict[str, Any]) -> List[str]:
    problems = []
    for name in sorted(set(expected) | set(served)):
        if name not in served:
            problems.append(f"signature '{name}': not served")
        elif name not in expected:
            problems.append(f"signature '{name}': served, but not in the candidate model")
        elif expected[name] != served[name]:
            problems.append(f"signature '{name}': served as {served[name]}, the candidate "
                            f"model has {expected[name]}")
    return problems


# --------------------------------------------------------------------------
# The load phase.
# --------------------------------------------------------------------------

def measure_load(server: ServerProcess, model_name: str, serialized: Sequence[bytes],
                 settings: config_lib.InfraConfig, output_names: Sequence[str]) -> Dict[str, Any]:
    """Single-example serving_default requests for settings.load_seconds (at most
    load_max_requests) from load_concurrency threads, alternately REST and gRPC."""
    deadline = time.monotonic() + settings.load_seconds
    lock = threading.Lock()
    latencies: Dict[str, List[float]] = {"rest": [], "grpc": []}
    failures: List[str] = []
    sent = [0]

    def work(worker: int) -> None:
        protocol = "rest" if worker % 2 == 0 else "grpc"
        clients = Clients(server, settings.request_timeout_seconds)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= settings.load_max_requests:
                        return
                    index = sent[0]
                    sent[0] += 1
                inputs = {EXAMPLES_INPUT: np.array([serialized[index % len(serialized)]],
                                                   dtype=object)}
                start = time.perf_counter()
                try:
                    clients.predict(protocol, model_name, features.SERVING_DEFAULT_SIGNATURE,
                                    inputs, output_names)
                except Exception as error:  # noqa: BLE001 - every failure counts as an error
                    with lock:
                        failures.append(f"{protocol}: {type(error).__name__}: {error}")
                    continue
                with lock:
                    latencies[protocol].append((time.perf_counter() - start) * 1000.0)
        finally:
            clients.close()

    threads = [threading.Thread(target=work, args=(worker,), daemon=True)
               for worker in range(settings.load_concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(settings.load_seconds + 2 * settings.request_timeout_seconds)
    elapsed = time.monotonic() - started
    every = latencies["rest"] + latencies["grpc"]
    result: Dict[str, Any] = {"requests": sent[0], "errors": len(failures),
                              "seconds": round(elapsed, 3),
                              "first_errors": failures[:3]}
    if every:
        result.update(p50_ms=round(float(np.percentile(every, 50)), 3),
                      p99_ms=round(float(np.percentile(every, 99)), 3))
        for protocol, values in latencies.items():
            if values:
                result[f"{protocol}_p50_ms"] = round(float(np.percentile(values, 50)), 3)
                result[f"{protocol}_p99_ms"] = round(float(np.percentile(values, 99)), 3)
    return result


def check_load(load: Dict[str, Any], settings: config_lib.InfraConfig) -> List[str]:
    problems = []
    if load["errors"] > settings.max_errors:
        problems.append(f"load: {load['errors']} error(s) in {load['requests']} requests > "
                        f"infra.max_errors {settings.max_errors} (first: "
                        f"{'; '.join(load['first_errors'])})")
    if "p99_ms" not in load:
        problems.append("load: no request succeeded")
        return problems
    if load["p99_ms"] > settings.max_p99_ms:
        problems.append(f"load: p99 latency {load['p99_ms']:.1f} ms > infra.max_p99_ms "
                        f"{settings.max_p99_ms:g} ms ({load['requests']} requests)")
    if settings.max_p50_ms is not None and load["p50_ms"] > settings.max_p50_ms:
        problems.append(f"load: p50 latency {load['p50_ms']:.1f} ms > infra.max_p50_ms "
                        f"{settings.max_p50_ms:g} ms ({load['requests']} requests)")
    return problems


# --------------------------------------------------------------------------
# The whole check.
# --------------------------------------------------------------------------

def validate_model(model_dir: str, serialized_examples: Sequence[bytes], model_name: str,
                   settings: config_lib.InfraConfig, work_dir: Optional[str] = None,
                   served_model_dir: Optional[str] = None,
                   loaded_model: Any = None,
                   server: Optional[ServerProcess] = None) -> InfraResult:
    """Serves served_model_dir (default: model_dir) and checks it against model_dir in process.

    Args:
      model_dir: the candidate SavedModel (the in-process reference).
      serialized_examples: test tf.Examples: the parity sample (all of them) and the load.
      model_name: the name it is served under.
      settings: the experiment's infra section.
      work_dir: where the server's model directory and log go (default: a temp dir, removed).
      served_model_dir: what the server loads, when it is not model_dir (tests tamper with it).
      loaded_model: model_dir already loaded (tf.saved_model.load), to skip loading it again.
      server: a server the caller started already (start_server) for served_model_dir, in
        work_dir; it is stopped here.

    Raises:
      ConfigError: infra.server names a binary that is not on PATH.
    """
    total_start = time.monotonic()
    own_dir = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="tfprod-infra-")
    result = InfraResult(blessed=False, server=settings.server.value, limits={
        "tolerance": settings.tolerance, "max_p99_ms": settings.max_p99_ms,
        "max_p50_ms": settings.max_p50_ms, "max_errors": settings.max_errors})
    # The server imports TensorFlow in its own process: start it before anything else here.
    if server is None:
        server = start_server(settings.server.value, served_model_dir or model_dir, model_name,
                              work_dir)
    clients = None
    try:
        import tensorflow as tf

        step = time.monotonic()
        loaded = loaded_model if loaded_model is not None else tf.saved_model.load(model_dir)
        probes = build_probes(loaded, model_dir, serialized_examples, result.notes)
        expected_signatures = saved_model_signatures(model_dir)
        result.seconds["in_process"] = round(time.monotonic() - step, 3)
        try:
            result.seconds["server_start"] = round(
                server.wait_ready(model_name, settings.startup_timeout_seconds), 3)
        except InfraValidationError as error:
            result.failures.append(f"server: {error}")
            return result
        step = time.monotonic()
        clients = Clients(server, settings.request_timeout_seconds)
        from tfprod.serving import client as client_lib

        try:
            served_signatures = {
                name: _signature_summary(signature) for name, signature in
                clients.grpc.metadata(model_name).signature_def.items()
                if not name.startswith("__")}
            result.failures += compare_signatures(expected_signatures, served_signatures)
        except client_lib.ClientError as error:
            result.failures.append(f"GetModelMetadata over GRPC failed: {error}")
        for probe in probes:
            for protocol in ("grpc", "rest"):
                where = f"signature '{probe.signature}' over {protocol.upper()} ({probe.source})"
                try:
                    served = clients.predict(protocol, model_name, probe.signature, probe.inputs,
                                             sorted(probe.expected))
                except Exception as error:  # noqa: BLE001 - an error answer is a failure
                    result.failures.append(f"{where}: the request failed: {error}")
                    continue
                result.checks[f"{probe.signature} {protocol} {probe.source}"] = len(
                    next(iter(probe.expected.values()))) if probe.expected else 0
                result.failures += compare_outputs(probe.expected, served, settings.tolerance,
                                                   where, probe.rows)
        result.seconds["parity"] = round(time.monotonic() - step, 3)
        if serialized_examples and features.SERVING_DEFAULT_SIGNATURE in loaded.signatures:
            output_names = sorted(loaded.signatures[
                features.SERVING_DEFAULT_SIGNATURE].structured_outputs)
            result.latency = measure_load(server, model_name, serialized_examples, settings,
                                          output_names)
            result.failures += check_load(result.latency, settings)
        else:
            result.notes.append("no load measured: no test examples or no serving_default")
    finally:
        if clients is not None:
            clients.close()
        server.stop()
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        result.seconds["total"] = round(time.monotonic() - total_start, 3)
        result.blessed = not result.failures
    return result


def write_blessing(blessing_uri: str, result: InfraResult, set_int_property) -> None:
    """Marks the InfraBlessing artifact as TFX's InfraValidator does, and writes the result."""
    os.makedirs(blessing_uri, exist_ok=True)
    with open(os.path.join(blessing_uri, BLESSED_FILE if result.blessed else NOT_BLESSED_FILE),
              "w", encoding="utf-8"):
        pass
    with open(os.path.join(blessing_uri, RESULT_FILE), "w", encoding="utf-8") as handle:
        json.dump(result.to_json(), handle, indent=2)
    set_int_property(BLESSED_KEY, 1 if result.blessed else 0)
    set_int_property(SKIPPED_KEY, 1 if result.skipped else 0)


def read_result(blessing_uri: str) -> Optional[Dict[str, Any]]:
    """infra_validation.json of an InfraBlessing artifact, or None."""
    path = os.path.join(blessing_uri, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@tfx.dsl.components.component
def InfraValidator(  # noqa: N802  (TFX component classes are CamelCase)
        model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
        model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
        examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
        blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InfraBlessing],
        model_name: tfx.dsl.components.Parameter[str],
        infra_config: tfx.dsl.components.Parameter[str]) -> None:
    """Serves the candidate on 127.0.0.1 and checks it (see the module docstring).

    Args:
      infra_config: the experiment's ``infra`` section as JSON (pipeline.config.InfraConfig).
    """
    from tfx.utils import path_utils

    from tfprod import configlib

    settings = configlib.from_dict(config_lib.InfraConfig, json.loads(infra_config))
    if model_blessing.get_int_custom_property("blessed") != 1:
        result = InfraResult(blessed=False, server=settings.server.value,
                             skipped="the Evaluator did not bless the model")
        write_blessing(blessing.uri, result, blessing.set_int_custom_property)
        # The local runner's progress reads "not blessed" as "skipped (not blessed)".
        logging.info("InfraValidator: the model was not blessed by the Evaluator; not served")
        return
    model_dir = path_utils.serving_model_path(model.uri)
    work_dir = tempfile.mkdtemp(prefix="tfprod-infra-")
    try:
        # First the server (its TensorFlow import is most of this step's time), then the rest.
        server = start_server(settings.server.value, model_dir, model_name, work_dir)
        try:
            serialized, _ = read_examples(examples.uri, settings.sample_size)
        except BaseException:
            server.stop()
            raise
        result = validate_model(model_dir, serialized, model_name, settings, work_dir=work_dir,
                                server=server)
        log_path = os.path.join(work_dir, SERVER_LOG_FILE)
        if os.path.isfile(log_path):  # kept with the result: why a server failed to start
            shutil.copy(log_path, os.path.join(blessing.uri, SERVER_LOG_FILE))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    write_blessing(blessing.uri, result, blessing.set_int_custom_property)
    logging.info("InfraValidator: %s", result.line())
