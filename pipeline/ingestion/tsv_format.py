"""TSV text directories: reading and checking train.tsv and test.tsv, without TensorFlow.

The ExampleGen (pipeline.ingestion.tsv) reads rows with these functions, and the text
task's preflight checks the whole directory with check_tsv_dir before TensorFlow is
imported; local files are read with the standard library (pipeline.ingestion.files).
"""

import os
from typing import Iterator, List, Optional, Tuple

from tfprod import errors
from tfprod.pipeline.ingestion import files

TEXT_KEY = "text"
LABEL_NAME_KEY = "label_name"
TRAIN_FILE = "train.tsv"
TEST_FILE = "test.tsv"

# One parsed row: (file path, 1-based line number, text, label as written).
Row = Tuple[str, int, str, str]


class TsvFormatError(errors.InputDataError):
    """A TSV file does not have the expected layout; the message names the file and line."""


def read_rows(path: str, text_column: str, label_column: str) -> Iterator[Row]:
    """Yields the data rows of a TSV file after checking its header.

    Raises:
      TsvFormatError: a missing file, a wrong header, a row without exactly two
        tab-separated fields, or an empty text or label.
    """
    if not files.exists(path):
        raise TsvFormatError(f"{path}: file not found (a text directory needs {TRAIN_FILE} "
                             f"and {TEST_FILE})")
    expected_header = [text_column, label_column]
    line_number = 0
    with files.open_binary(path) as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise TsvFormatError(f"{path}:{line_number}: not valid UTF-8 ({error})") from None
            fields = line.split("\t")
            if line_number == 1:
                if fields != expected_header:
                    raise TsvFormatError(
                        f"{path}:1: header is {fields!r}; expected {expected_header!r} "
                        "(set data.text.text_column and data.text.label_column to the "
                        "file's column names)")
                continue
            if len(fields) != 2:
                raise TsvFormatError(f"{path}:{line_number}: expected 2 tab-separated fields "
                                     f"({text_column}, {label_column}), found {len(fields)}")
            text, label = fields[0], fields[1].strip()
            if not text.strip():
                raise TsvFormatError(f"{path}:{line_number}: the {text_column} is empty")
            if not label:
                raise TsvFormatError(f"{path}:{line_number}: the {label_column} is empty")
            yield path, line_number, text, label
    if line_number == 0:
        raise TsvFormatError(f"{path}: the file is empty; expected the header "
                             f"{text_column!r} TAB {label_column!r}")


def sort_labels(labels: List[str]) -> List[str]:
    """The label vocabulary: integers in numeric order if every label is one, else sorted strings."""
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=int)
    except ValueError:
        return unique


def check_label_vocabulary(labels: List[str], num_classes: Optional[int], path: str
                           ) -> List[str]:
    """Sorted label vocabulary of the training file, checked against data.num_classes.

    Args:
      labels: the training labels as written (repeats allowed).
      num_classes: data.num_classes; None takes the count from the labels.
      path: the training file, for the message.
    """
    vocabulary = sort_labels(labels)
    if len(vocabulary) < 2:
        raise TsvFormatError(f"{path}: needs at least 2 distinct labels, found {vocabulary}")
    if num_classes is not None and len(vocabulary) != num_classes:
        raise TsvFormatError(
            f"{path}: has {len(vocabulary)} distinct labels {vocabulary[:20]}, but "
            f"data.num_classes is {num_classes} (pass --set data.num_classes={len(vocabulary)}, "
            "or --set data.num_classes=null to take the count from the labels)")
    return vocabulary


def read_labels(data, path: str) -> List[str]:
    """Every label of a TSV file as written, in file order (the file checked as read_rows does)."""
    return [row[3] for row in read_rows(path, data.text.text_column, data.text.label_column)]


def check_tsv_dir(data) -> List[str]:
    """Reads a text directory as the ExampleGen will (before the run starts); returns the labels.

    Args:
      data: the experiment's DataConfig (data_dir, num_classes, text.*). A null
        num_classes is not checked: the caller takes len(vocabulary).

    Raises:
      TsvFormatError: a missing file, a bad header or row, a label count other than
        data.num_classes, or a test label that train.tsv does not have.
    """
    train_path = os.path.join(data.data_dir, TRAIN_FILE)
    test_path = os.path.join(data.data_dir, TEST_FILE)
    vocabulary = check_label_vocabulary(read_labels(data, train_path), data.num_classes,
                                        train_path)
    known = set(vocabulary)
    for row in read_rows(test_path, data.text.text_column, data.text.label_column):
        if row[3] not in known:
            label_id(row, vocabulary)  # raises, naming the file and line
    return vocabulary


def label_id(row: Row, label_vocabulary: List[str]) -> int:
    """The id of a row's label; a label train.tsv does not have raises TsvFormatError."""
    path, line_number, _, label = row
    try:
        return label_vocabulary.index(label)
    except ValueError:
        raise TsvFormatError(
            f"{path}:{line_number}: label {label!r} never occurs in {TRAIN_FILE} (its labels "
            f"are {label_vocabulary[:20]})") from None
