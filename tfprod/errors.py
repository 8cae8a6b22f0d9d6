"""One error hierarchy for tfprod, and the exit code of each kind of error.

Every error tfprod raises on purpose derives from TfprodError, through one of three kinds:

- ConfigError: what the user asked for cannot be done as asked (a bad config key or value,
  a path that does not exist, a flag that contradicts another). Exit code 2.
- InputDataError: the data does not fit (a corrupt file, a ragged row, anomalies against the
  schema). Exit code 3.
- RunFailure: the work itself failed (a component, a conversion, a request). Exit code 1.

No TensorFlow import here: the CLI maps errors to exit codes before anything heavy loads.
"""


class TfprodError(Exception):
    """The root of every error tfprod raises on purpose."""


class ConfigError(TfprodError, ValueError):
    """A config value, flag or path is wrong; the message names it and says what to do."""


class InputDataError(TfprodError, ValueError):
    """The input data is unreadable or does not fit; the message names the file."""


class RunFailure(TfprodError, RuntimeError):
    """The work failed while running; the message says where."""
