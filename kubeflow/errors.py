"""Error classes of the kubeflow package; each message says what to fix.

Each is a tfprod.errors kind, which sets the exit code of `tfprod kubeflow ...`:
CompileError, ParameterError and ManifestError are ConfigErrors (2: the config, a --param
or a manifest is wrong); SubmitError is a RunFailure (1: the Kubeflow Pipelines API
refused a request or could not be reached); LocalRunError is a RunFailure (1: a task of
`run-local` failed or uses what it does not support).
"""

from tfprod import errors


class KubeflowError(errors.TfprodError):
    """Compiling, submitting or validating for Kubeflow failed (only its subclasses are raised)."""


class CompileError(KubeflowError, errors.ConfigError):
    """The experiment cannot be compiled into a Kubeflow Pipelines v2 spec."""


class SubmitError(KubeflowError, errors.RunFailure):
    """The Kubeflow Pipelines API refused a request or could not be reached."""


class ManifestError(KubeflowError, errors.ConfigError):
    """A Kubernetes manifest does not parse or does not match its schema."""


class ParameterError(KubeflowError, errors.ConfigError):
    """A --param is malformed or not a parameter of the pipeline."""


class LocalRunError(KubeflowError, errors.RunFailure):
    """`run-local` cannot run a task of the package, or a task failed."""
