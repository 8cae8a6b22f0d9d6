"""What the console shows: the known-harmless log lines, listed once, and the filters for them.

A run's console shows tfprod's own lines and the warnings that matter; run.log keeps every
line. The lines below are known to be harmless on this stack (TF 2.16, TFX 1.16, Beam 2.59,
Python 3.10); each entry says why. They are dropped from the console only, never from
run.log, and `--verbose` shows them all. Add a line here rather than filtering elsewhere.

No TensorFlow here: the CLI applies these before it imports TensorFlow.
"""

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Callable, Iterator, List, Tuple


@dataclasses.dataclass(frozen=True)
class Harmless:
    """A log line (a regular expression searched in it) and why it can be dropped."""

    pattern: str
    why: str


HARMLESS: Tuple[Harmless, ...] = (
    Harmless(r"Unable to register cu(FFT|DNN|BLAS) factory",
             "TF 2.16's XLA registers its CUDA plugins twice at import and logs the second "
             "registration as an ERROR; nothing fails, on CPU or GPU (fixed upstream in 2.17)"),
    Harmless(r"Could not find cuda drivers on your machine",
             "a CPU-only machine: TensorFlow says it will use the CPU, as intended"),
    Harmless(r"TF-TRT Warning: Could not find TensorRT",
             "TensorRT is optional; tfprod never uses TF-TRT"),
    Harmless(r"oneDNN custom operations are on",
             "an INFO note that oneDNN may change float round-off; results stay within tests' "
             "tolerances"),
    Harmless(r"This TensorFlow binary is optimized to use available CPU instructions",
             "an INFO note on CPU instruction sets the wheel was not built for"),
    Harmless(r"ArtifactQuery\.property_predicate is not supported",
             "TFX 1.16's resolver logs it for every input query on local ML Metadata; the "
             "query still resolves by type and context, which is all tfprod's pipeline uses"),
    Harmless(r"Could not find matching artifact class for type 'ExampleStatistics'",
             "the drift check's Resolver (pipeline/drift_check.py) asks ML Metadata for "
             "statistics by type before the first StatisticsGen has registered the type's "
             "properties; TFX then reads them with a stand-in class of the same type, which "
             "is all the Resolver needs"),
    Harmless(r"SavedModel saved prior to TF 2\.5 detected",
             "TFMA/TF Serving load tf.saved_model exports that carry no Keras metadata; TF "
             "2.16 reads them as written by this TF, so the 'prior to 2.5' guess is wrong"),
    Harmless(r"tf_record_iterator \(from tensorflow\.python\.lib\.io\.tf_record\) is "
             r"deprecated",
             "TFX 1.16's own readers (and TFDV's) still call it; the deprecation is theirs "
             "to fix and the iterator works on TF 2.16"),
    Harmless(r"non-supported Python version .*Google will not post any further updates",
             "google.api_core (pulled in by TFX's GCP extras) warns about Python 3.10 on import; "
             "TFX 1.16 requires Python 3.10 and no Google Cloud client is used locally"),
    Harmless(r"Support for google-cloud-storage < 3\.0\.0 will be removed",
             "google-cloud-aiplatform (pulled in by TFX's Kubeflow extras) warns on import about "
             "the storage client TFX 1.16 pins; nothing local uses either"),
    Harmless(r"Examples artifact does not have payload_format custom property\. Falling back "
             r"to FORMAT_TF_EXAMPLE",
             "tfprod's own ExampleGens write tf.Examples without setting the property, and "
             "tf.Example is exactly the format TFX falls back to"),
    Harmless(r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
             "the TFLite converter's C++ (absl logging) says where its lines go; it is not "
             "itself a warning"),
    Harmless(r"Ignored (output_format|drop_control_dependency)\.",
             "the TFLite converter's C++ notes flags TF 2.16's own Python converter passes and "
             "its MLIR converter no longer uses"),
    Harmless(r"Created TensorFlow Lite XNNPACK delegate for CPU",
             "an INFO line: the TFLite verification runs on XNNPACK, the CPU delegate expected"),
    Harmless(r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: ",
             "TensorFlow's quantizer prints its settings for each integer conversion; the TFLite "
             "report records the modes and their accuracy"),
    Harmless(r"Couldn't find python-snappy so the implementation of _TFRecordUtil\._masked_crc32c",
             "Beam falls back to a pure-Python CRC for TFRecords; only a small speed-up is lost"),
)

_HARMLESS_RE = re.compile("|".join(f"(?:{entry.pattern})" for entry in HARMLESS))


def is_harmless(text: str) -> bool:
    """Whether a log line (or a multi-line record) is one of HARMLESS."""
    return _HARMLESS_RE.search(text) is not None


class HarmlessFilter(logging.Filter):
    """Drops HARMLESS records; put it on console handlers only (run.log keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not is_harmless(record.getMessage())
        except Exception:  # a record whose arguments do not format: let the handler show it
            return True


def filter_lines(lines: List[str]) -> List[str]:
    """The lines without the HARMLESS ones; an indented line right after a dropped line
    (its continuation, e.g. `  warnings.warn(message, FutureWarning)`) goes with it."""
    kept: List[str] = []
    dropping = False
    for line in lines:
        if is_harmless(line):
            dropping = True
            continue
        if dropping and (line.startswith((" ", "\t")) or line.startswith("To enable the")):
            continue
        dropping = False
        kept.append(line)
    return kept


def quiet_tensorflow_env(verbose: bool) -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL=2 (C++ INFO and WARNING lines off) before TensorFlow is
    imported, unless the user set it or asked for --verbose. The environment carries it to
    Beam's and the trainers' worker processes."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


#: What quiet_import captured from standard error: every line, for run.log.
IMPORT_LINES: List[str] = []


@contextlib.contextmanager
def quiet_import(verbose: bool = False) -> Iterator[None]:
    """Runs a heavy import (TensorFlow, TFX) with its standard error held back, then shows
    the lines that are not HARMLESS and keeps all of them in IMPORT_LINES for run.log.

    TensorFlow's C++ writes its start-up lines (the CUDA factory ERRORs above) straight to
    file descriptor 2, which no Python filter sees; so the descriptor itself is pointed at a
    temporary file for the import. With verbose, nothing is held back.
    """
    quiet_tensorflow_env(verbose)
    if verbose:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to hold back (a daemon): import as is
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines()
            IMPORT_LINES.extend(lines)
            for line in filter_lines(lines):
                print(line, file=sys.stderr)
            sys.stderr.flush()


@contextlib.contextmanager
def filtered_stderr(keep: Callable[[str], None], verbose: bool = False) -> Iterator[None]:
    """While it is open, file descriptor 2 goes through a filter: HARMLESS lines (and their
    indented continuations) are handed to keep (the run writes them to run.log) instead of
    the console; every other line reaches the console as before.

    For what C++ writes straight to the descriptor during a run (the TFLite converter's
    absl lines, for one), which no logging filter sees. Python's own log records are
    filtered by HarmlessFilter before they get here. With verbose, nothing is filtered.
    """
    if verbose:
        yield
        return
    sys.stderr.flush()
    try:
        console_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:
        yield
        return
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        dropping = False
        with os.fdopen(read_fd, "rb") as reader:
            for raw in reader:  # ends when every writer (us, and any child) has closed it
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                try:
                    continuation = dropping and (line.startswith((" ", "\t"))
                                                 or line.startswith("To enable the"))
                    dropping = is_harmless(line) or continuation
                    if dropping:
                        keep(line)
                        continue
                except Exception:  # never stop draining the pipe: show the line instead
                    dropping = False
                os.write(console_fd, raw)

    thread = threading.Thread(target=pump, name="tfprod-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console_fd, 2)  # closes our write end of the pipe
        thread.join(timeout=10)  # a worker still holding the pipe keeps it open: let it be
        os.close(console_fd)
