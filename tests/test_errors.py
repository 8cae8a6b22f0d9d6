"""One error hierarchy (tfprod.errors) and one table from its kinds to exit codes.

Every error class of the packages is a TfprodError of one kind (except the server's
per-request statuses), keeps the builtin base its callers catch, and exits with its kind's
code. A Beam DoFn's error reaches the runner's classification through the exception chain:
shown on a real DirectRunner pipeline, in-process (the pipeline's default) and in
multi_processing mode (where only the traceback text crosses the process boundary).
"""

import ast
import importlib

import apache_beam as beam
import pytest

from tfprod import errors
from tfprod.contract import idx
from tests.conftest import REPO_ROOT

CONFIG, DATA, RUN = 2, 3, 1

# Every error class: (module, class) -> (exit code, builtin bases callers and tests rely on).
EXPECTED = {
    ("tfprod.configlib", "ConfigError"): (CONFIG, (ValueError,)),
    ("tfprod.pipeline.config", "ConfigError"): (CONFIG, (ValueError,)),
    ("tfprod.pipeline.distribute", "DistributeError"): (CONFIG, (ValueError,)),
    ("tfprod.pipeline.recovery", "OutputDirInUse"): (CONFIG, (ValueError,)),
    ("tfprod.pipeline.report.run_data", "ReportError"): (CONFIG, (RuntimeError,)),
    ("tfprod.pipeline.ingestion.tfds.dataset", "TfdsSourceError"): (CONFIG, (ValueError,)),
    ("tfprod.pipeline.ingestion.tfds.dataset", "DatasetNotPreparedError"): (CONFIG, ()),
    ("tfprod.pipeline.ingestion.tfds.dataset", "UnknownSplitError"): (CONFIG, ()),
    ("tfprod.pipeline.ingestion.tfds.dataset", "FeatureMismatchError"): (CONFIG, ()),
    ("tfprod.pipeline.ingestion.tfds.mnist_sample", "SourceFilesError"):
        (CONFIG, (FileNotFoundError,)),
    ("tfprod.models.registry", "UnknownModelError"): (CONFIG, (KeyError,)),
    ("tfprod.mobile.data", "DataError"): (CONFIG, (ValueError,)),
    ("tfprod.mobile.export", "ExportError"): (CONFIG, (RuntimeError,)),
    ("tfprod.serving.errors", "ConfigFileError"): (CONFIG, (ValueError,)),
    ("tfprod.serving.errors", "NoServableVersionError"): (CONFIG, ()),
    ("tfprod.kubeflow.errors", "CompileError"): (CONFIG, ()),
    ("tfprod.kubeflow.errors", "ParameterError"): (CONFIG, ()),
    ("tfprod.kubeflow.errors", "ManifestError"): (CONFIG, ()),
    ("tfprod.contract.idx", "IdxFormatError"): (DATA, (ValueError,)),
    ("tfprod.pipeline.ingestion.tsv_format", "TsvFormatError"): (DATA, (ValueError,)),
    ("tfprod.pipeline.ingestion.table_format", "TableFormatError"): (DATA, (ValueError,)),
    ("tfprod.pipeline.ingestion.image_folder", "ImageFolderError"): (DATA, (ValueError,)),
    ("tfprod.pipeline.ingestion.timeseries", "TimeSeriesFormatError"): (DATA, (ValueError,)),
    ("tfprod.pipeline.validation", "DataValidationError"): (DATA, (RuntimeError,)),
    ("tfprod.pipeline.drift_check", "DataDriftError"): (DATA, (RuntimeError,)),
    ("tfprod.pipeline.monitor.reader", "RequestLogError"): (DATA, (ValueError,)),
    ("tfprod.pipeline.local_runner", "PipelineDataError"): (DATA, ()),
    ("tfprod.pipeline.local_runner", "PipelineRunError"): (RUN, (RuntimeError,)),
    ("tfprod.pipeline.multiworker", "MultiWorkerError"): (RUN, (RuntimeError,)),
    ("tfprod.pipeline.infra_validator", "InfraValidationError"): (RUN, ()),
    ("tfprod.kubeflow.errors", "SubmitError"): (RUN, ()),
    ("tfprod.kubeflow.errors", "LocalRunError"): (RUN, ()),
    ("tfprod.mobile.convert", "ConversionError"): (RUN, (RuntimeError,)),
    ("tfprod.mobile.convert", "UnsupportedOpError"): (RUN, ()),
    ("tfprod.mobile.verify", "VerificationError"): (RUN, (RuntimeError,)),
    ("tfprod.mobile.int8_auto", "Int8GateError"): (RUN, ()),
    ("tfprod.mobile.compress", "CompressionError"): (RUN, ()),
    ("tfprod.mobile.metadata", "MetadataError"): (RUN, (ValueError,)),
    ("tfprod.mobile.android", "AndroidPackageError"): (RUN, (ValueError,)),
    ("tfprod.serving.client", "ClientError"): (RUN, ()),
    ("tfprod.serving.client", "ServerUnreachable"): (RUN, ()),
}
# Roots of a package's errors: TfprodErrors of no kind, never raised themselves.
ROOTS = {("tfprod.kubeflow.errors", "KubeflowError")}
# Not TfprodErrors, on purpose: what the server answers to one request (a gRPC status with
# its HTTP status, or an HTTP-level refusal), never a process's end, so with no exit code.
PER_REQUEST = {("tfprod.serving.errors", name) for name in (
    "ServingError", "InvalidArgumentError", "NotFoundError", "FailedPreconditionError",
    "UnavailableError", "DeadlineExceededError", "InternalError", "TensorTooLargeError")} | {
    ("tfprod.serving.http11", "HttpError")}
# The hierarchy itself.
KINDS = {("tfprod.errors", name) for name in (
    "TfprodError", "ConfigError", "InputDataError", "RunFailure", "DriftDetected")}

# tfprod.<package> -> its folder (setup.py's package_dir).
FOLDERS = {"tfprod.pipeline": "pipeline", "tfprod.models": "models", "tfprod.serving": "serving",
           "tfprod.mobile": "mobile", "tfprod.kubeflow": "kubeflow", "tfprod": "tfprod"}


def declared_error_classes():
    """(module, class) of every class in the packages whose name ends in Error/Failure."""
    found = set()
    for package, folder in FOLDERS.items():
        root = REPO_ROOT / folder
        for path in root.rglob("*.py"):
            relative = path.relative_to(root).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            module = ".".join([package] + parts)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found.update((module, node.name) for node in tree.body
                         if isinstance(node, ast.ClassDef)
                         and node.name.endswith(("Error", "Failure")))
    return found


def load(module, name):
    return getattr(importlib.import_module(module), name)


def test_the_table_maps_each_kind_to_its_code():
    assert errors.exit_code(errors.ConfigError("x")) == 2
    assert errors.exit_code(errors.InputDataError("x")) == 3
    assert errors.exit_code(errors.RunFailure("x")) == 1
    assert errors.exit_code(errors.TfprodError("x")) == errors.EXIT_OTHER == 1
    assert [errors.exit_code_of_kind(kind) for kind, _, _ in errors.EXIT_CODES] == [2, 3, 1, 4]
    assert errors.exit_code(errors.DriftDetected("image")) == 4
    assert errors.describe(errors.InputDataError("train.tsv:3: 2 fields")) == (
        "bad input data: train.tsv:3: 2 fields")
    assert errors.describe(errors.ConfigError("trainer.epochs: expected int")) == (
        "trainer.epochs: expected int")


def test_every_error_class_is_listed_here():
    """A new error class must choose its kind (and be added to EXPECTED) or say why not."""
    listed = set(EXPECTED) | ROOTS | PER_REQUEST | KINDS
    assert declared_error_classes() - listed == set()


@pytest.mark.parametrize("module, name", sorted(EXPECTED), ids=lambda value: value)
def test_each_error_class_has_one_kind_and_keeps_its_builtin_bases(module, name):
    cls = load(module, name)
    code, builtins = EXPECTED[(module, name)]
    assert issubclass(cls, errors.TfprodError)
    kinds = [kind for kind, _, _ in errors.EXIT_CODES if issubclass(cls, kind)]
    assert len(kinds) == 1, f"{name} is of {len(kinds)} kinds: {kinds}"
    assert errors.exit_code_of_kind(cls) == code
    for builtin in builtins:
        assert issubclass(cls, builtin), f"{name} is no longer a {builtin.__name__}"


def test_the_servers_per_request_errors_are_not_tfprod_errors():
    for module, name in PER_REQUEST:
        assert not issubclass(load(module, name), errors.TfprodError), name
    for module, name in ROOTS:
        assert issubclass(load(module, name), errors.TfprodError)


def test_a_missing_file_named_by_a_flag_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="config file not found: x.yaml") as raised:
        with errors.missing_file_is_config_error():
            raise FileNotFoundError("config file not found: x.yaml")
    assert isinstance(raised.value.__cause__, FileNotFoundError)
    source_files_error = load("tfprod.pipeline.ingestion.tfds.mnist_sample", "SourceFilesError")
    with pytest.raises(source_files_error):  # already a TfprodError: left as it is
        with errors.missing_file_is_config_error():
            raise source_files_error("missing train-images-idx3-ubyte.gz")


# --- Beam: a DoFn's error, as the runner receives it --------------------------------------

def _read_idx(path):  # the ExampleGen's DoFn raises as pipeline/ingestion/idx.py does
    raise idx.IdxFormatError(f"{path}: truncated: 30 bytes, expected 68")


def _fail(path):
    raise ZeroDivisionError("division by zero")


def _beam_failure(fn, beam_args):
    """Runs Create -> FlatMap(fn) on Beam's DirectRunner; returns what `with` raised."""
    with pytest.raises(Exception) as raised:
        with beam.Pipeline(argv=beam_args) as pipeline:
            _ = (pipeline | "SplitPattern" >> beam.Create(["train-labels-idx1-ubyte"])
                 | "ParseIdx" >> beam.FlatMap(fn))
    return raised.value


def _chain(error):
    from tfprod.pipeline import local_runner

    return local_runner._chain(error)


def in_process_beam_args():
    """The DirectRunner arguments `tfprod run` gives Beam by default (runtime.beam_mode)."""
    from tfprod.pipeline import config as config_lib, pipeline as pipeline_lib

    runtime = config_lib.RuntimeConfig()
    assert runtime.beam_mode == config_lib.BeamMode.IN_PROCESS
    return pipeline_lib.beam_pipeline_args(runtime)


def test_in_process_beam_keeps_the_exception_object_in_the_chain():
    from tfprod.pipeline import local_runner

    error = _beam_failure(_read_idx, in_process_beam_args())
    # Beam re-raises a copy of the same type naming the step; the original is its context.
    chain = _chain(error)
    assert [type(link) for link in chain] == [idx.IdxFormatError, idx.IdxFormatError]
    assert str(chain[0]).endswith("[while running 'ParseIdx']")
    assert str(chain[1]) == "train-labels-idx1-ubyte: truncated: 30 bytes, expected 68"

    failure = local_runner._classify_failure(error, "ImportExampleGen", "/tmp/run.log")
    assert isinstance(failure, local_runner.PipelineDataError)
    assert errors.exit_code(failure) == 3 and failure.component == "ImportExampleGen"
    assert errors.describe(failure) == (
        "bad input data: train-labels-idx1-ubyte: truncated: 30 bytes, expected 68")
    # By the chain, not the text: the same error under a wrapper whose text says nothing.
    try:
        raise RuntimeError("component failed") from error
    except RuntimeError as wrapped:
        assert isinstance(local_runner._classify_failure(wrapped, None, "log"),
                          local_runner.PipelineDataError)


def test_in_process_beam_failure_of_another_kind_is_a_run_failure():
    from tfprod.pipeline import local_runner

    error = _beam_failure(_fail, in_process_beam_args())
    failure = local_runner._classify_failure(error, "Transform", "/tmp/run.log")
    assert isinstance(failure, local_runner.PipelineRunError)
    assert errors.exit_code(failure) == 1
    assert str(failure).startswith("component Transform failed: ZeroDivisionError: ")
    assert "The full log is in /tmp/run.log" in str(failure)


def test_an_error_class_beam_cannot_copy_stays_in_the_chain():
    """Beam copies the exception as type(e)(message + step); when that fails (an __init__
    with other arguments) it raises RuntimeError(text), the original still its __context__."""
    from tfprod.pipeline import local_runner

    error = _beam_failure(_raise_odd_data_error, in_process_beam_args())
    assert type(error) is RuntimeError
    failure = local_runner._classify_failure(error, "ExampleGen", "log")
    assert isinstance(failure, local_runner.PipelineDataError)
    assert str(failure) == "3 columns in row 7"


class OddDataError(errors.InputDataError):
    def __init__(self, columns: int, row: int):
        super().__init__(f"{columns} columns in row {row}")


def _raise_odd_data_error(path):
    raise OddDataError(3, 7)


def test_multi_processing_beam_sends_only_text_and_the_fallback_reads_it():
    """runtime.beam_mode: multi_process runs DoFns in worker processes. The worker answers
    with its traceback as text and the runner raises RuntimeError(text): no IdxFormatError
    is left in the chain, and only the narrow text fallback classifies it."""
    from tfprod.pipeline import config as config_lib, local_runner, pipeline as pipeline_lib

    runtime = config_lib.RuntimeConfig(beam_mode=config_lib.BeamMode.MULTI_PROCESS,
                                       beam_workers=1)
    error = _beam_failure(_read_idx, pipeline_lib.beam_pipeline_args(runtime))
    assert not any(isinstance(link, errors.TfprodError) for link in _chain(error))
    assert "tfprod.contract.idx.IdxFormatError: train-labels-idx1-ubyte: truncated" in str(error)

    failure = local_runner._classify_failure(error, "ImportExampleGen", "log")
    assert isinstance(failure, local_runner.PipelineDataError)
    assert str(failure) == "train-labels-idx1-ubyte: truncated: 30 bytes, expected 68"


def test_the_text_fallback_checks_the_class_not_its_name():
    from tfprod.pipeline import local_runner

    def worker_text(last_line):
        return RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                            + last_line)

    data = worker_text("tfprod.pipeline.ingestion.tsv.TsvFormatError: train.tsv:4: 3 fields "
                       "[while running 'ParseTsv']")
    assert str(local_runner._classify_failure(data, None, "log")) == "train.tsv:4: 3 fields"
    other_kind = worker_text("tfprod.mobile.convert.ConversionError: IdxFormatError: no")
    assert isinstance(local_runner._classify_failure(other_kind, None, "log"),
                      local_runner.PipelineRunError)
    not_ours = worker_text("somewhere.IdxFormatError: looks like one")
    assert isinstance(local_runner._classify_failure(not_ours, None, "log"),
                      local_runner.PipelineRunError)
