"""Reading request logs: TF Serving PredictionLog protos in TFRecord files.

The log directory holds finished files named ``prediction_log-*.tfrecord`` (uncompressed
TFRecords, one ``tensorflow_serving.apis.prediction_log_pb2.PredictionLog`` per record);
files still being written end in ``.tmp`` and are left alone. A record holds one logged
call: its model spec (name, version, signature) and its request and response, as a
predict_log, classify_log or regress_log. Other kinds (multi_inference, session_run) are
counted and skipped.
"""

import dataclasses
import glob
import os
from typing import Dict, List, Optional

import numpy as np

from tfprod import errors

LOG_FILE_PATTERN = "prediction_log-*.tfrecord"
UNFINISHED_SUFFIX = ".tmp"


@dataclasses.dataclass
class LoggedCall:
    """One logged request and its response, as plain arrays.

    Attributes:
      kind: "predict", "classify" or "regress".
      inputs: predict: the request's input tensors by name ([N, ...] arrays).
      outputs: predict: the response's output tensors by name.
      examples: classify/regress: the request's serialized tf.Examples.
      classes / values: classify: each example's top class label; regress: its value.
    """

    file: str
    kind: str
    model_name: str
    model_version: Optional[int]
    signature_name: str
    inputs: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    outputs: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    examples: List[bytes] = dataclasses.field(default_factory=list)
    classes: List[str] = dataclasses.field(default_factory=list)
    values: List[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LogContents:
    """What a log directory holds: the calls, the files read and what was skipped."""

    directory: str
    files: List[str]
    calls: List[LoggedCall]
    unfinished_files: List[str]
    skipped: Dict[str, int]  # log kind -> records skipped (not predict/classify/regress)


class RequestLogError(errors.InputDataError):
    """A request log file cannot be read; the message names it."""


def log_files(directory: str) -> List[str]:
    """The finished log files of a directory, sorted by name (their start times)."""
    return sorted(path for path in glob.glob(os.path.join(directory, LOG_FILE_PATTERN))
                  if os.path.isfile(path))


def _input_examples(request_input) -> List[bytes]:
    """The serialized tf.Examples of a TF Serving Input (example_list, or with context:
    each example merged with the context, as TF Serving does)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in request_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        merged = []
        for example in listed.examples:
            combined = type(example)()
            combined.CopyFrom(listed.context)
            combined.MergeFrom(example)
            merged.append(combined.SerializeToString())
        return merged
    return []


def _call(path: str, record: bytes) -> Optional[LoggedCall]:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog.FromString(record)
    spec = log.log_metadata.model_spec
    kind = log.WhichOneof("log_type")
    version = spec.version.value if spec.HasField("version") else None
    if kind == "predict_log":
        request, response = log.predict_log.request, log.predict_log.response
        spec = request.model_spec if request.model_spec.name else spec
        return LoggedCall(
            file=path, kind="predict", model_name=spec.name, model_version=version,
            signature_name=spec.signature_name or "serving_default",
            inputs={name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()},
            outputs={name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()})
    if kind == "classify_log":
        request, response = log.classify_log.request, log.classify_log.response
        classes = []
        for result in response.result.classifications:
            best = max(result.classes, key=lambda c: c.score, default=None)
            classes.append("" if best is None else (
                best.label or str(list(result.classes).index(best))))
        return LoggedCall(file=path, kind="classify", model_name=spec.name,
                          model_version=version,
                          signature_name=spec.signature_name or "serving_default",
                          examples=_input_examples(request.input), classes=classes)
    if kind == "regress_log":
        request, response = log.regress_log.request, log.regress_log.response
        return LoggedCall(file=path, kind="regress", model_name=spec.name, model_version=version,
                          signature_name=spec.signature_name or "serving_default",
                          examples=_input_examples(request.input),
                          values=[result.value for result in response.result.regressions])
    return None


def read_logs(directory: str, limit: Optional[int] = None) -> LogContents:
    """Every logged call in the finished files of directory (at most limit calls).

    Raises:
      ConfigError: directory is not a directory.
      RequestLogError (bad input data, exit 3): a file is truncated or not PredictionLogs;
        the message names it. A finished file is never half-written by the logger.
    """
    import tensorflow as tf

    if not os.path.isdir(directory):
        raise errors.ConfigError(f"--request-logs: {directory} is not a directory (pass the "
                                 "--request_log_dir that `tfprod serve` logged into)")
    files = log_files(directory)
    unfinished = sorted(glob.glob(os.path.join(directory, "*" + UNFINISHED_SUFFIX)))
    calls: List[LoggedCall] = []
    skipped: Dict[str, int] = {}
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path):
                call = _call(path, record.numpy())
                if call is None:
                    from tensorflow_serving.apis import prediction_log_pb2

                    kind = prediction_log_pb2.PredictionLog.FromString(
                        record.numpy()).WhichOneof("log_type") or "empty"
                    skipped[kind] = skipped.get(kind, 0) + 1
                    continue
                calls.append(call)
                if limit is not None and len(calls) >= limit:
                    return LogContents(directory, files, calls, unfinished, skipped)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            raise RequestLogError(f"{path}: not a readable TFRecord file of PredictionLogs "
                                  f"({error.message.splitlines()[0]}); move it out of the "
                                  "log directory") from error
        except Exception as error:  # a record that is not a PredictionLog
            if type(error).__name__ != "DecodeError":
                raise
            raise RequestLogError(f"{path}: a record is not a PredictionLog ({error}); move "
                                  "the file out of the log directory") from error
    return LogContents(directory, files, calls, unfinished, skipped)
