"""Tables: reading a CSV directory and inferring its spec (column types, labels), without
TensorFlow.

The ExampleGen (pipeline.ingestion.table) writes the tf.Examples with these; the table
task's preflight checks the whole directory with check_table_dir before TensorFlow is
imported (local files through pipeline.ingestion.files). The rules of the format are in
pipeline.ingestion.table's docstring.
"""

import csv
import dataclasses
import math
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from tfprod import configlib, errors
from tfprod.contract import features
from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import files

TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"
EVAL_FILE = "eval.csv"
MISSING_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL"})

NUMERIC = "numeric"
CATEGORICAL = "categorical"
# How a feature is stored in the tf.Examples (and taken by serving_raw).
FLOAT = "float"  # numeric columns
INT = "int"  # categorical columns whose values are all integers
STRING = "string"  # other categorical columns

CLASSIFICATION = "classification"
REGRESSION = "regression"

# A TF signature input name (serving_raw takes one input per feature).
_INPUT_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_RESERVED_KEYS = frozenset({features.LABEL_KEY})


class TableFormatError(errors.InputDataError):
    """A table file is not as expected; the message names the file, line and column."""


@dataclasses.dataclass
class Column:
    """One feature column of the table, as decided from train.csv."""

    name: str  # as in the header
    key: str  # the tf.Example feature and serving_raw input name
    type: str  # NUMERIC or CATEGORICAL
    kind: str  # FLOAT, INT or STRING
    reason: str  # why it has that type (for the report)
    distinct: int  # distinct present values in train.csv
    missing_rate: float  # missing cells / rows in train.csv


@dataclasses.dataclass
class TableSpec:
    """What the ExampleGen, Transform, the model and the signatures agree on."""

    label_column: str
    problem: str  # CLASSIFICATION or REGRESSION
    problem_reason: str
    columns: List[Column]
    label_names: List[str]  # classification: class id i is label_names[i]
    label_mean: float = 0.0  # regression: over the train split's rows
    label_std: float = 1.0
    has_eval_file: bool = False
    eval_fraction: float = 0.1
    train_rows: int = 0
    dropped: Dict[str, str] = dataclasses.field(default_factory=dict)  # column -> why

    @property
    def numeric(self) -> List[Column]:
        return [column for column in self.columns if column.type == NUMERIC]

    @property
    def categorical(self) -> List[Column]:
        return [column for column in self.columns if column.type == CATEGORICAL]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TableSpec":
        values = dict(values)
        values["columns"] = [Column(**{**column, "distinct": int(column["distinct"])})
                             for column in values["columns"]]
        values["train_rows"] = int(values.get("train_rows", 0))
        return cls(**values)


# --------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------


def _open_text(path: str):
    if not files.exists(path):
        raise TableFormatError(f"{path}: file not found (a table directory needs {TRAIN_FILE} "
                               f"and {TEST_FILE}, optionally {EVAL_FILE})")
    # Text mode: lines decoded as UTF-8 (a bad byte raises UnicodeDecodeError).
    return files.open_text(path)


def read_csv(path: str) -> Tuple[List[str], Iterator[Tuple[int, List[str]]]]:
    """(header, rows): each row is (line number, stripped fields); blank lines are skipped.

    Raises:
      TableFormatError: a missing or empty file, invalid UTF-8, an empty or repeated
        column name, or a row with another number of fields than the header (the row's
        line and the counts).
    """
    handle = _open_text(path)
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise TableFormatError(f"{path}: the file is empty; expected a header row") from None
    except UnicodeDecodeError as error:
        handle.close()
        raise TableFormatError(f"{path}:1: not valid UTF-8 ({error.reason})") from None
    # A byte-order mark (as spreadsheet exports write) is not part of the first name.
    header = [name.strip() for name in header]
    header[0] = header[0].lstrip("\ufeff").strip()
    for position, name in enumerate(header, start=1):
        if not name:
            raise TableFormatError(f"{path}:1: column {position} has no name in the header")
        if header.index(name) != position - 1:
            raise TableFormatError(f"{path}:1: column {position} repeats the name {name!r}")

    def rows() -> Iterator[Tuple[int, List[str]]]:
        with handle:
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError as error:
                    raise TableFormatError(f"{path}:{reader.line_num + 1}: not valid UTF-8 "
                                           f"({error.reason})") from None
                except csv.Error as error:
                    raise TableFormatError(f"{path}:{reader.line_num}: {error}") from None
                if not fields or fields == [""] * len(fields) and len(fields) <= 1:
                    continue
                if len(fields) != len(header):
                    raise TableFormatError(
                        f"{path}:{reader.line_num}: ragged row: {len(fields)} fields, but the "
                        f"header has {len(header)} columns ({', '.join(header[:12])}"
                        f"{', ...' if len(header) > 12 else ''}); quote fields that hold commas")
                yield reader.line_num, [field.strip() for field in fields]

    return header, rows()


def is_missing(value: str) -> bool:
    return value in MISSING_TOKENS


def _where(path: str, line: int, header: Sequence[str], index: int) -> str:
    return f"{path}:{line}: column {index + 1} ({header[index]!r})"


def feature_key(column: str) -> str:
    """The feature name of a column: the column name, or with characters a TF signature
    input cannot hold replaced by `_`."""
    if _INPUT_NAME.match(column):
        return column
    key = re.sub(r"[^A-Za-z0-9_.\-/]", "_", column)
    return key if _INPUT_NAME.match(key) else "c" + key


def _sort_labels(labels) -> List[str]:
    unique = sorted(set(labels))
    if all(_INTEGER.match(label) for label in unique):
        return sorted(unique, key=int)
    return unique


def content_key(fields: Sequence[str]) -> bytes:
    """What the train/eval hash split hashes: the row's fields as read."""
    return "\x1f".join(fields).encode("utf-8")


# --------------------------------------------------------------------------
# The spec: one pass over train.csv.
# --------------------------------------------------------------------------


def infer_spec(data_dir: str, table, eval_fraction: float) -> TableSpec:
    """Reads train.csv once and decides each column's type, the problem and the labels.

    Args:
      data_dir: the table directory.
      table: the experiment's data.table section (TableDataConfig).
      eval_fraction: data.eval_fraction (the hash split, when there is no eval.csv).

    Raises:
      TableFormatError: bad rows (see read_csv), no label column, an empty label, a
        non-number in a numeric column or (regression) in the label column.
      ConfigError: data.table lists a column the header does not have.
    """
    path = os.path.join(data_dir, TRAIN_FILE)
    header, rows = read_csv(path)
    label = table.label_column
    if label not in header:
        raise TableFormatError(
            f"{path}:1: no label column {label!r}; the header has {', '.join(header)} (pass "
            f"--set data.table.label_column=NAME)")
    for key in ("drop_columns", "categorical_columns", "numeric_columns"):
        unknown = [name for name in getattr(table, key) if name not in header]
        if unknown:
            raise configlib.ConfigError(
                f"data.table.{key}: {unknown} are not columns of {path} (its header: "
                f"{', '.join(header)})", key=f"data.table.{key}")
    label_index = header.index(label)
    feature_indices = [i for i, name in enumerate(header)
                       if i != label_index and name not in table.drop_columns]
    values: Dict[int, List[str]] = {i: [] for i in feature_indices}
    lines: List[int] = []
    labels: List[str] = []
    keys: List[bytes] = []
    for line, fields in rows:
        if is_missing(fields[label_index]):
            raise TableFormatError(f"{_where(path, line, header, label_index)}: the label is "
                                   "missing (every row needs one; remove the row or fill it)")
        labels.append(fields[label_index])
        lines.append(line)
        keys.append(content_key(fields))
        for i in feature_indices:
            values[i].append(fields[i])
    if not labels:
        raise TableFormatError(f"{path}: no data rows after the header")
    has_eval_file = files.exists(os.path.join(data_dir, EVAL_FILE))
    in_train = [has_eval_file or not ingestion.is_eval(key, eval_fraction) for key in keys]

    columns, dropped, seen_keys = [], {}, {}
    for i in feature_indices:
        column = _infer_column(path, header, i, values[i], lines, table)
        if column is None:
            dropped[header[i]] = f"no value in {TRAIN_FILE}"
            continue
        if column.key in _RESERVED_KEYS or column.key in seen_keys:
            other = seen_keys.get(column.key, "the label")
            raise TableFormatError(
                f"{path}:1: column {i + 1} ({header[i]!r}) would be the feature {column.key!r}, "
                f"as {other} is; rename the column or pass "
                f"--set data.table.drop_columns=[{header[i]}]")
        seen_keys[column.key] = repr(header[i])
        columns.append(column)
    for name in table.drop_columns:
        dropped[name] = "data.table.drop_columns"

    problem, reason = _infer_problem(labels, table)
    spec = TableSpec(label_column=label, problem=problem, problem_reason=reason,
                     columns=columns, label_names=[], has_eval_file=has_eval_file,
                     eval_fraction=eval_fraction, train_rows=len(labels), dropped=dropped)
    if problem == CLASSIFICATION:
        spec.label_names = _sort_labels(labels)
        if len(spec.label_names) < 2:
            raise TableFormatError(f"{path}: the label column {label!r} has only "
                                   f"{spec.label_names} (a classifier needs 2 classes or more)")
    else:
        targets = []
        for line, value, train in zip(lines, labels, in_train):
            number = _parse_number(value)
            if number is None:
                raise TableFormatError(
                    f"{_where(path, line, header, label_index)}: {value!r} is not a number, "
                    "but the label is numeric (data.table.problem regression); pass "
                    "--set data.table.problem=classification for classes")
            if train:
                targets.append(number)
        if not targets:
            raise TableFormatError(f"{path}: no row falls into the train split")
        mean = sum(targets) / len(targets)
        std = math.sqrt(sum((t - mean) ** 2 for t in targets) / len(targets))
        spec.label_mean, spec.label_std = mean, std if std > 0 else 1.0
    if not columns:
        raise TableFormatError(f"{path}: no feature columns besides the label {label!r} "
                               f"(dropped: {dropped})")
    return spec


def _parse_number(value: str) -> Optional[float]:
    if not _NUMBER.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _infer_column(path: str, header: Sequence[str], index: int, cells: List[str],
                  lines: List[int], table) -> Optional[Column]:
    name = header[index]
    present = [(line, cell) for line, cell in zip(lines, cells) if not is_missing(cell)]
    if not present:
        return None
    missing_rate = 1.0 - len(present) / len(cells)
    distinct = len({cell for _, cell in present})
    numbers = all(_parse_number(cell) is not None for _, cell in present)
    integers = all(_INTEGER.match(cell) for _, cell in present)
    limit = table.max_integer_categories

    def column(type_: str, kind: str, reason: str) -> Column:
        return Column(name=name, key=feature_key(name), type=type_, kind=kind, reason=reason,
                      distinct=distinct, missing_rate=round(missing_rate, 6))

    if name in table.numeric_columns:
        for line, cell in present:
            if _parse_number(cell) is None:
                raise TableFormatError(
                    f"{_where(path, line, header, index)}: {cell!r} is not a number, but the "
                    "column is in data.table.numeric_columns")
        return column(NUMERIC, FLOAT, "data.table.numeric_columns")
    if name in table.categorical_columns:
        return column(CATEGORICAL, INT if integers else STRING, "data.table.categorical_columns")
    if numbers and integers and distinct <= limit:
        return column(CATEGORICAL, INT, f"integers with {distinct} distinct values "
                      f"(<= data.table.max_integer_categories={limit})")
    if numbers:
        return column(NUMERIC, FLOAT, "integers with {} distinct values".format(distinct)
                      if integers else "numbers")
    example = next(cell for _, cell in present if _parse_number(cell) is None)
    return column(CATEGORICAL, STRING, f"strings (e.g. {example[:40]!r})")


def _infer_problem(labels: List[str], table) -> Tuple[str, str]:
    problem, reason = _problem_from_labels(labels, table)
    if table.problem is None:
        return problem, reason
    chosen = str(getattr(table.problem, "value", table.problem))
    if chosen == problem:
        return problem, reason
    return chosen, f"data.table.problem (the labels alone would make it {problem}: {reason})"


def _problem_from_labels(labels: List[str], table) -> Tuple[str, str]:
    distinct = len(set(labels))
    if not all(_parse_number(label) is not None for label in labels):
        return CLASSIFICATION, "the labels are strings"
    if all(_INTEGER.match(label) for label in labels) and distinct <= table.max_integer_classes:
        return CLASSIFICATION, (f"integer labels with {distinct} distinct values (<= "
                                f"data.table.max_integer_classes={table.max_integer_classes})")
    return REGRESSION, f"numeric labels with {distinct} distinct values"


# --------------------------------------------------------------------------
# Rows -> tf.Examples, with the checks of test.csv and eval.csv.
# --------------------------------------------------------------------------


def read_rows(path: str, spec: TableSpec) -> Iterator[Tuple[int, List[Any], Any, bytes]]:
    """Yields (line, feature values in spec.columns order (None = missing), label, content key).

    Values are float (numeric), int (INT) or str (STRING); the label is the class id or
    the target value.

    Raises:
      TableFormatError: a bad row (read_csv), no label column or a spec column missing
        from the header, an empty label, a label never seen in train.csv, a value that is
        not a number in a numeric column (or not an integer in an integer one).
    """
    header, rows = read_csv(path)
    needed = [spec.label_column] + [column.name for column in spec.columns]
    absent = [name for name in needed if name not in header]
    if absent:
        what = ("no label column" if spec.label_column in absent else "no column")
        raise TableFormatError(f"{path}:1: {what} {', '.join(map(repr, absent))} ({TRAIN_FILE} "
                               f"has it); the header has {', '.join(header)}")
    label_index = header.index(spec.label_column)
    indices = [header.index(column.name) for column in spec.columns]
    class_ids = {name: i for i, name in enumerate(spec.label_names)}
    for line, fields in rows:
        raw_label = fields[label_index]
        if is_missing(raw_label):
            raise TableFormatError(f"{_where(path, line, header, label_index)}: the label is "
                                   "missing (every row needs one; remove the row or fill it)")
        if spec.problem == CLASSIFICATION:
            if raw_label not in class_ids:
                raise TableFormatError(
                    f"{_where(path, line, header, label_index)}: label {raw_label!r} never "
                    f"occurs in {TRAIN_FILE} (its labels: {spec.label_names[:20]})")
            label: Any = class_ids[raw_label]
        else:
            label = _parse_number(raw_label)
            if label is None:
                raise TableFormatError(f"{_where(path, line, header, label_index)}: "
                                       f"{raw_label!r} is not a number (regression label)")
        values: List[Any] = []
        for column, index in zip(spec.columns, indices):
            cell = fields[index]
            if is_missing(cell):
                values.append(None)
            elif column.kind == FLOAT:
                number = _parse_number(cell)
                if number is None:
                    raise TableFormatError(
                        f"{_where(path, line, header, index)}: {cell!r} is not a number, but "
                        f"the column is numeric in {TRAIN_FILE}; fix the cell, or make the "
                        f"column categorical with --set data.table.categorical_columns="
                        f"[{column.name}]")
                values.append(number)
            elif column.kind == INT:
                if not _INTEGER.match(cell):
                    raise TableFormatError(
                        f"{_where(path, line, header, index)}: {cell!r} is not an integer, but "
                        f"the column's values in {TRAIN_FILE} are integers; fix the cell")
                values.append(int(cell))
            else:
                values.append(cell)
        yield line, values, label, content_key(fields)


def check_file(path: str, spec: TableSpec) -> int:
    """Reads a whole file as the ExampleGen will; returns its row count (raises on bad rows)."""
    count = 0
    for _ in read_rows(path, spec):
        count += 1
    if count == 0:
        raise TableFormatError(f"{path}: no data rows after the header")
    return count


def read_labels(path: str, spec: TableSpec) -> List[Any]:
    """The labels of a file (class ids or values), checked as read_rows does."""
    return [row[2] for row in read_rows(path, spec)]


def train_split_labels(data_dir: str, spec: TableSpec) -> Tuple[List[Any], List[Any]]:
    """(labels of the train split, labels of the eval split), as the ExampleGen splits them."""
    train, evaluation = [], []
    for _, _, label, key in read_rows(os.path.join(data_dir, TRAIN_FILE), spec):
        if not spec.has_eval_file and ingestion.is_eval(key, spec.eval_fraction):
            evaluation.append(label)
        else:
            train.append(label)
    if spec.has_eval_file:
        evaluation = read_labels(os.path.join(data_dir, EVAL_FILE), spec)
    return train, evaluation


def check_table_dir(data_dir: str, table, eval_fraction: float) -> TableSpec:
    """The spec of a table directory, every file checked as the ExampleGen reads it."""
    spec = infer_spec(data_dir, table, eval_fraction)
    check_file(os.path.join(data_dir, TEST_FILE), spec)
    if spec.has_eval_file:
        check_file(os.path.join(data_dir, EVAL_FILE), spec)
    return spec


