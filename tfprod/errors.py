"""One error hierarchy for tfprod, and the exit code of each kind of error.

Every error tfprod raises on purpose derives from TfprodError, through one of four kinds:

- ConfigError: what the user asked for cannot be done as asked (a bad config key or value,
  a flag, a path that does not exist or does not hold what it should). Exit code 2.
- InputDataError: the data does not fit (a corrupt file, a ragged row, anomalies against the
  schema). Exit code 3.
- RunFailure: the work itself failed (a component, a conversion, a request). Exit code 1.
- DriftDetected: the work succeeded and its verdict is "drift": `tfprod monitor` found a
  feature (or the prediction distribution) past its threshold. The message names the
  features. Exit code 4, so a cron job or CI step can tell "drift" from "the check could
  not run". (The pipeline's own drift check under `monitor.pipeline_drift: fail` stops a
  run as bad input data, exit 3, like the anomalies gate.)

Each package's error classes derive from one of the kinds (and keep the builtin base their
callers catch, e.g. ValueError). The `tfprod` command (tfprod/cli.py) and the Kubeflow train
worker (kubeflow/train_worker.py) catch TfprodError once, print `error: <message>` and exit
with `exit_code(error)`; no package decides an exit code itself.

Not here: serving/errors.py's ServingError family. Those are per-request gRPC statuses the
server answers to a client; they never end a process, so they have no exit code.

No TensorFlow import here: the CLI maps errors to exit codes before anything heavy loads.
"""

import contextlib
import sys
from typing import Iterator, Optional, TextIO, Tuple, Type


class TfprodError(Exception):
    """The root of every error tfprod raises on purpose."""


class ConfigError(TfprodError, ValueError):
    """A config value, flag or path is wrong; the message names it and says what to do."""


class InputDataError(TfprodError, ValueError):
    """The input data is unreadable or does not fit; the message names the file."""


class RunFailure(TfprodError, RuntimeError):
    """The work failed while running; the message says where."""


class DriftDetected(TfprodError):
    """A drift or skew check crossed its threshold; the message names the features and
    their distances (pipeline.monitor, pipeline.drift_check)."""


# The one table from kind to (exit code, what `error:` says before the message). Order
# matters only for a class that mixes two kinds (none should); the first match wins.
EXIT_CODES: Tuple[Tuple[Type[TfprodError], int, str], ...] = (
    (ConfigError, 2, ""),
    (InputDataError, 3, "bad input data: "),
    (RunFailure, 1, ""),
    (DriftDetected, 4, "drift detected: "),
)
# A TfprodError of no kind (a package's own root, e.g. KubeflowError) exits as a failed run.
EXIT_OTHER = 1


def _entry(error: BaseException) -> Tuple[int, str]:
    for kind, code, heading in EXIT_CODES:
        if isinstance(error, kind):
            return code, heading
    return EXIT_OTHER, ""


def exit_code(error: BaseException) -> int:
    """The process exit code for an error: 2 config, 3 input data, 1 run failure, 4 drift."""
    return _entry(error)[0]


def describe(error: BaseException) -> str:
    """The one line (or paragraph) a command prints for an error, without `error: `."""
    heading = _entry(error)[1]
    message = str(error)
    return message if message.startswith(heading) else heading + message


def handle(error: BaseException, stream: Optional[TextIO] = None) -> int:
    """Prints `error: <message>` (to stderr by default) and returns the exit code."""
    print(f"error: {describe(error)}", file=stream if stream is not None else sys.stderr,
          flush=True)
    return exit_code(error)


@contextlib.contextmanager
def missing_file_is_config_error() -> Iterator[None]:
    """Around the reading of files that flags name (a config, a package): a plain
    FileNotFoundError there is the user's path, so it leaves as a ConfigError (exit 2)."""
    try:
        yield
    except FileNotFoundError as error:
        if isinstance(error, TfprodError):
            raise
        raise ConfigError(str(error)) from error


def exit_code_of_kind(kind: Type[TfprodError]) -> int:
    """The exit code of a kind (for tests and docs): exit_code_of_kind(InputDataError) == 3."""
    for entry_kind, code, _ in EXIT_CODES:
        if issubclass(kind, entry_kind):
            return code
    return EXIT_OTHER
