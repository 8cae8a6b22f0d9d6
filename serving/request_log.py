"""Request logging: sampled requests and their answers as TF Serving's PredictionLog, in TFRecord files.

`tfprod serve --request_log_dir DIR --request_log_sampling_rate 0.1` keeps one request in ten
(REST and gRPC alike) as a `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`:
predict_log, classify_log, regress_log or multi_inference_log as the call was, with
log_metadata (the model spec with the version and signature that answered,
timestamp_secs, and sampling_config.sampling_rate). A REST JSON predict is logged as the PredictRequest gRPC would have sent.

Logging never blocks or fails a request. The request's thread only draws the sample and
puts a closure on a bounded queue (put_nowait); a writer thread builds the proto, serializes
it and writes it. When the queue is full, a write fails (disk full, directory made
unwritable) or a record would take the directory over --request_log_max_total_bytes even
after the oldest finished files are deleted, the record is dropped and counted in
`tfprod_serving_request_log_drop_count{reason=...}`.

The file contract (a reader such as `tfprod monitor` relies on it):

- finished files are `DIR/prediction_log-<UTC yyyymmddTHHMMSSffffff>-<pid>-<seq>.tfrecord`,
  uncompressed TFRecord, one serialized PredictionLog per record;
- the file being written has the same name plus `.tmp`, and is renamed when it is rotated
  (--request_log_max_file_bytes or --request_log_rotate_seconds reached) or the server stops,
  so a reader globbing `*.tfrecord` never sees a half-written file;
- when the directory's finished files and the open one would exceed
  --request_log_max_total_bytes, the oldest finished files are deleted first.

The records are framed here (length, masked CRC32C of the length, data, masked CRC32C of the
data: TFRecord's format) with google-crc32c's C implementation rather than through
tf.io.TFRecordWriter: each write's OSError is seen at once (to count a full disk as a drop)
and the bytes on disk are known exactly (for the caps). tf.data.TFRecordDataset reads the
files, checking both CRCs.
"""

import datetime
import errno
import logging
import os
import queue
import random
import struct
import threading
import time
from typing import Callable, List, Optional

import google_crc32c

LOG = logging.getLogger(__name__)

FILE_PREFIX = "prediction_log-"
FILE_SUFFIX = ".tfrecord"
TMP_SUFFIX = ".tmp"

# Drop reasons (the counter's `reason` label).
DROP_QUEUE_FULL = "queue_full"  # the writer is behind: the bounded queue is full
DROP_OVER_CAP = "over_cap"  # the record does not fit under --request_log_max_total_bytes
DROP_DISK_FULL = "disk_full"  # ENOSPC / EDQUOT while writing
DROP_WRITE_ERROR = "write_error"  # any other OSError (e.g. the directory made unwritable)
DROP_BUILD_ERROR = "build_error"  # the log record could not be built (a bug; the log has it)
DROP_REASONS = (DROP_QUEUE_FULL, DROP_OVER_CAP, DROP_DISK_FULL, DROP_WRITE_ERROR, DROP_BUILD_ERROR)

DEFAULT_SAMPLING_RATE = 0.1
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_ROTATE_SECONDS = 3600.0
DEFAULT_MAX_TOTAL_BYTES = 1024 * 1024 * 1024
DEFAULT_QUEUE_SIZE = 1024
_RETRY_OPEN_SECONDS = 1.0  # after a failed open, records are dropped for this long before trying again


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord record: uint64 length, masked CRC32C of it, the data, masked CRC32C of the data."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), data, struct.pack("<I", _masked_crc(data))))


def file_name(when: datetime.datetime, pid: int, seq: int) -> str:
    """A finished file's name (the contract): prediction_log-<UTC yyyymmddTHHMMSSffffff>-<pid>-<seq>.tfrecord."""
    return f"{FILE_PREFIX}{when.strftime('%Y%m%dT%H%M%S%f')}-{pid}-{seq}{FILE_SUFFIX}"


def finished_files(directory: str) -> List[str]:
    """The finished log files of a directory, oldest first (their names sort by time)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, name) for name in names
                  if name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX))


class RequestLogOptions:
    """The --request_log_* flags, checked.

    Raises:
        ValueError: a value out of range (the message names the flag).
    """

    def __init__(self, directory: str, sampling_rate: float = DEFAULT_SAMPLING_RATE,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, rotate_seconds: float = DEFAULT_ROTATE_SECONDS,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, queue_size: int = DEFAULT_QUEUE_SIZE):
        if not 0.0 <= sampling_rate <= 1.0:
            raise ValueError(f"--request_log_sampling_rate must be between 0 and 1, got {sampling_rate}")
        for flag, value in (("--request_log_max_file_bytes", max_file_bytes),
                            ("--request_log_rotate_seconds", rotate_seconds),
                            ("--request_log_max_total_bytes", max_total_bytes),
                            ("--request_log_queue_size", queue_size)):
            if not value > 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if max_file_bytes > max_total_bytes:
            raise ValueError(f"--request_log_max_file_bytes ({max_file_bytes}) must not exceed "
                             f"--request_log_max_total_bytes ({max_total_bytes})")
        self.directory = directory
        self.sampling_rate = float(sampling_rate)
        self.max_file_bytes = int(max_file_bytes)
        self.rotate_seconds = float(rotate_seconds)
        self.max_total_bytes = int(max_total_bytes)
        self.queue_size = int(queue_size)


class RequestLogger:
    """Samples requests and writes their PredictionLogs on a thread of its own.

    Args:
        options: the flags.
        drops: called with a DROP_* reason for each record dropped (the server counts them).
        written: called once per record written.
        seed: seeds the sampling (tests); None draws from the system.

    Raises:
        OSError: the directory cannot be created (at start only; later failures are drops).
    """

    def __init__(self, options: RequestLogOptions, drops: Callable[[str], None] = lambda reason: None,
                 written: Callable[[], None] = lambda: None, seed: Optional[int] = None):
        self.options = options
        self._drop = drops
        self._written = written
        self._random = random.Random(seed).random
        self._rate = options.sampling_rate
        os.makedirs(options.directory, exist_ok=True)
        self._queue: "queue.Queue" = queue.Queue(maxsize=options.queue_size)
        self._pid = os.getpid()
        self._seq = 0
        self._file = None
        self._path = ""
        self._file_bytes = 0
        self._opened_at = 0.0
        self._retry_open_at = 0.0
        self._finished: List[List] = [[path, _size(path)] for path in finished_files(options.directory)]
        self._stop = object()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    # ----- the request's side: cheap, never raises ---------------------------------------------
    def sample(self) -> bool:
        """Whether to log this request (one draw; rate 1 logs all, 0 none)."""
        rate = self._rate
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def submit(self, build: Callable[..., object], *args) -> None:
        """Queues build(*args, timestamp=now) (a PredictionLog builder below, run on the writer thread).

        Never blocks and never raises: a full queue drops the record. The arguments must not
        change afterwards (the request's own messages and arrays, which nothing reuses).
        """
        try:
            self._queue.put_nowait((build, args, int(time.time())))
        except queue.Full:
            self._drop(DROP_QUEUE_FULL)

    # ----- the writer thread ---------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (up to timeout seconds), closes and renames the open file."""
        try:
            self._queue.put(self._stop, timeout=timeout)
        except queue.Full:
            LOG.warning("request log: the writer did not catch up within %.0f s; closing anyway", timeout)
        self._thread.join(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued so far is written (tests, benchmarks)."""
        done = _Flush()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            timeout = None
            if self._file is not None:
                timeout = max(0.0, self._opened_at + self.options.rotate_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:  # the open file is due for rotation
                self._finish_file()
                continue
            if item is self._stop:
                self._finish_file()
                return
            if isinstance(item, _Flush):
                item.set()
                continue
            build, args, timestamp = item
            try:
                log = build(*args, timestamp=timestamp)
                log.log_metadata.sampling_config.sampling_rate = self._rate  # a reader can scale counts back
                record = log.SerializeToString()
            except Exception:  # a bug, never the request's problem
                LOG.exception("request log: building a PredictionLog failed")
                self._drop(DROP_BUILD_ERROR)
                continue
            try:
                self._write(tfrecord_frame(record))
            except Exception:  # the writer thread must outlive any surprise
                LOG.exception("request log: writing a record failed")
                self._drop(DROP_WRITE_ERROR)

    def _write(self, frame: bytes) -> None:
        options = self.options
        if self._file is not None and (self._file_bytes + len(frame) > options.max_file_bytes
                                       or time.monotonic() - self._opened_at >= options.rotate_seconds):
            self._finish_file()
        if not self._make_room(len(frame)):
            self._drop(DROP_OVER_CAP)
            return
        if self._file is None and not self._open_file():
            return
        try:
            view = memoryview(frame)
            while view:  # unbuffered: a short write (a nearly full disk) goes on, its error comes next
                view = view[self._file.write(view):]
        except OSError as error:
            self._drop_for(error)
            self._abandon_file()
            return
        self._file_bytes += len(frame)
        self._written()

    def _make_room(self, size: int) -> bool:
        """Deletes the oldest finished files until the open file plus `size` fits under the cap."""
        cap = self.options.max_total_bytes
        if self._file_bytes + size > cap:  # cannot fit even alone: keep what is there
            return False
        while sum(entry[1] for entry in self._finished) + self._file_bytes + size > cap:
            if not self._finished:
                return False
            path, _ = self._finished.pop(0)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                LOG.warning("request log: cannot delete %s to stay under the cap: %s", path, error)
                return False
        return True

    def _open_file(self) -> bool:
        now = time.monotonic()
        if now < self._retry_open_at:
            self._drop(DROP_WRITE_ERROR)
            return False
        self._seq += 1
        name = file_name(datetime.datetime.now(datetime.timezone.utc), self._pid, self._seq)
        path = os.path.join(self.options.directory, name)
        try:
            os.makedirs(self.options.directory, exist_ok=True)
            self._file = open(path + TMP_SUFFIX, "wb", buffering=0)  # each record reaches the file at once
        except OSError as error:
            self._retry_open_at = now + _RETRY_OPEN_SECONDS
            LOG.warning("request log: cannot open %s: %s (dropping records; retrying in %.0f s)",
                        path + TMP_SUFFIX, error, _RETRY_OPEN_SECONDS)
            self._drop_for(error)
            return False
        self._path = path
        self._file_bytes = 0
        self._opened_at = now
        return True

    def _finish_file(self) -> None:
        """Closes the open file and renames it to its finished name (an empty one is removed)."""
        if self._file is None:
            return
        handle, path, size = self._file, self._path, self._file_bytes
        self._file = None
        self._file_bytes = 0
        try:
            handle.close()
            if size == 0:
                os.remove(path + TMP_SUFFIX)
                return
            os.rename(path + TMP_SUFFIX, path)
        except OSError as error:
            LOG.warning("request log: cannot finish %s: %s", path, error)
            return
        self._finished.append([path, size])

    def _abandon_file(self) -> None:
        """After a failed write: the file may end in a partial record. It is cut back to its last
        whole record and finished (the records before are kept); if even that fails, it is removed,
        never renamed half-written."""
        handle, good_bytes = self._file, self._file_bytes
        try:
            handle.truncate(good_bytes)
            if good_bytes:
                self._finish_file()
                return
        except OSError:
            pass
        path = self._path
        self._file = None
        self._file_bytes = 0
        for action in (handle.close, lambda: os.remove(path + TMP_SUFFIX)):
            try:
                action()
            except OSError:
                pass

    def _drop_for(self, error: OSError) -> None:
        full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        self._drop(DROP_DISK_FULL if full else DROP_WRITE_ERROR)


class _Flush(threading.Event):
    """A marker on the queue: set once everything before it is written."""


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ----- PredictionLog builders (run on the writer thread) ----------------------------------------------
def _metadata(log, model_spec, timestamp: int) -> None:
    log.log_metadata.model_spec.CopyFrom(model_spec)
    log.log_metadata.timestamp_secs = timestamp


def predict_log(request, response, timestamp: int):
    """A PredictionLog of a gRPC Predict (its response's model_spec names the version and signature)."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    _metadata(log, response.model_spec, timestamp)
    log.predict_log.request.CopyFrom(request)
    log.predict_log.response.CopyFrom(response)
    return log


def predict_log_from_arrays(model: str, version: int, signature_name: str, input_dtypes, inputs, outputs,
                            timestamp: int):
    """A PredictionLog of a REST predict: the JSON's tensors as the equivalent PredictRequest/Response.

    input_dtypes ({name: numpy dtype}, the signature's) names an unnamed REST input and gives the
    dtypes gRPC would have carried (JSON numbers decode as int64/float64).
    """
    import numpy as np

    from tensorflow_serving.apis import prediction_log_pb2

    from tfprod.serving import protocol

    log = prediction_log_pb2.PredictionLog()
    spec = log.log_metadata.model_spec
    spec.name = model
    spec.version.value = version
    spec.signature_name = signature_name
    log.log_metadata.timestamp_secs = timestamp
    request, response = log.predict_log.request, log.predict_log.response
    request.model_spec.CopyFrom(spec)
    response.model_spec.CopyFrom(spec)
    for name, value in inputs.items():
        if name is None and len(input_dtypes) == 1:  # json_codec.SINGLE_INPUT: the signature's only input
            name = next(iter(input_dtypes))
        dtype = np.dtype(input_dtypes.get(name, value.dtype))
        if dtype.kind != "O" and value.dtype != dtype:
            value = value.astype(dtype)
        protocol.fill_tensor_proto(request.inputs[str(name)], value)
    for name, value in outputs.items():
        protocol.fill_tensor_proto(response.outputs[name], value)
    return log


def classify_log(request, response, timestamp: int):
    """A PredictionLog of a Classify call (gRPC's messages, or REST's converted to them)."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    _metadata(log, response.model_spec, timestamp)
    log.classify_log.request.CopyFrom(request)
    log.classify_log.response.CopyFrom(response)
    return log


def regress_log(request, response, timestamp: int):
    """A PredictionLog of a Regress call."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    _metadata(log, response.model_spec, timestamp)
    log.regress_log.request.CopyFrom(request)
    log.regress_log.response.CopyFrom(response)
    return log


def multi_inference_log(request, response, timestamp: int):
    """A PredictionLog of a MultiInference call (log_metadata from its first task's answer)."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    if response.results:
        _metadata(log, response.results[0].model_spec, timestamp)
    else:
        log.log_metadata.timestamp_secs = timestamp
    log.multi_inference_log.request.CopyFrom(request)
    log.multi_inference_log.response.CopyFrom(response)
    return log


def _examples_input(target, examples) -> None:
    """A REST body's serialized tf.Examples as a gRPC Input (example_list)."""
    example_list = target.example_list.examples
    for serialized in examples:
        example_list.add().ParseFromString(serialized)


def _spec(target, model: str, version: int, signature_name: str) -> None:
    target.name = model
    target.version.value = version
    target.signature_name = signature_name


def classify_log_from_examples(model: str, version: int, signature_name: str, examples, classes, scores,
                               timestamp: int):
    """A PredictionLog of a REST classify, as the ClassificationRequest/Response gRPC would carry."""
    from tensorflow_serving.apis import classification_pb2

    from tfprod.serving.grpc_server import fill_classifications

    request = classification_pb2.ClassificationRequest()
    _spec(request.model_spec, model, version, signature_name)
    _examples_input(request.input, examples)
    response = classification_pb2.ClassificationResponse()
    _spec(response.model_spec, model, version, signature_name)
    fill_classifications(response.result, classes, scores, len(examples))
    return classify_log(request, response, timestamp=timestamp)


def regress_log_from_examples(model: str, version: int, signature_name: str, examples, values, timestamp: int):
    """A PredictionLog of a REST regress, as the RegressionRequest/Response gRPC would carry."""
    from tensorflow_serving.apis import regression_pb2

    request = regression_pb2.RegressionRequest()
    _spec(request.model_spec, model, version, signature_name)
    _examples_input(request.input, examples)
    response = regression_pb2.RegressionResponse()
    _spec(response.model_spec, model, version, signature_name)
    for value in values:
        response.result.regressions.add(value=float(value))
    return regress_log(request, response, timestamp=timestamp)
