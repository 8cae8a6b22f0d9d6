"""Error classes of the kubeflow package; each message says what to fix."""


class KubeflowError(RuntimeError):
    """Compiling, submitting or validating for Kubeflow failed."""


class CompileError(KubeflowError):
    """The experiment cannot be compiled into a Kubeflow Pipelines v2 spec."""


class SubmitError(KubeflowError):
    """The Kubeflow Pipelines API refused a request or could not be reached."""


class ManifestError(KubeflowError):
    """A Kubernetes manifest does not parse or does not match its schema."""


class ParameterError(KubeflowError):
    """A --param is malformed or not a parameter of the pipeline."""
