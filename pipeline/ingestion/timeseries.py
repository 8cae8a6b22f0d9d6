"""Time series CSVs: reading, checking, chronological splits and (lookback -> horizon) windows.

Pure Python (pandas and NumPy; TensorFlow only for files behind a URL), so it is unit-tested
without Beam; the ExampleGen (pipeline.ingestion.timeseries_example_gen), the forecasting task's
preflight check and the run report call it.

A CSV has a header, one timestamp column and numeric columns. The rows must be in
time order, one per step: duplicates, disorder, gaps, unparseable timestamps,
missing values and non-numeric values are each an error (TimeSeriesFormatError)
that names the CSV lines, so no row is ever dropped silently.

The series is split chronologically (train, then eval, then test); each split is
windowed on its own, so no window (input or target) crosses a split boundary.
"""

import dataclasses
import logging
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from tfprod import errors
from tfprod.contract.splits import EVAL as EVAL_SPLIT
from tfprod.contract.splits import TEST as TEST_SPLIT
from tfprod.contract.splits import TRAIN as TRAIN_SPLIT

# Raw tf.Example features besides one float list per column (named by feature_name()).
LABEL_KEY = "forecast_label"  # float [horizon]: the target's next `horizon` values
WINDOW_END_KEY = "window_end_timestamp"  # int64 [1]: unix seconds of the last observed step
RESERVED_KEYS = (LABEL_KEY, WINDOW_END_KEY)

# How many offending lines an error message lists.
_LINES_SHOWN = 5
# CSV line of data row 0: the header is line 1.
_FIRST_DATA_LINE = 2


class TimeSeriesFormatError(errors.InputDataError):
    """The CSV cannot be used as a time series; the message names the lines and columns."""


@dataclasses.dataclass(frozen=True)
class SeriesSpec:
    """What to read from the CSV and how to cut it (the data.time_series config, plain)."""

    timestamp_column: str
    target_column: str
    feature_columns: Optional[Sequence[str]]  # None or empty: every column but the timestamp
    lookback: int
    horizon: int
    frequency: str = "infer"  # a pandas offset alias (h, D, MS, ...) or "infer"
    train_fraction: float = 0.7
    eval_fraction: float = 0.1
    window_stride: int = 1

    @classmethod
    def from_config(cls, time_series) -> "SeriesSpec":
        """From a config_lib.TimeSeriesConfig."""
        return cls(timestamp_column=time_series.timestamp_column,
                   target_column=time_series.target_column,
                   feature_columns=tuple(time_series.feature_columns or ()) or None,
                   lookback=time_series.lookback, horizon=time_series.horizon,
                   frequency=time_series.frequency,
                   train_fraction=time_series.train_fraction,
                   eval_fraction=time_series.eval_fraction,
                   window_stride=time_series.window_stride)


@dataclasses.dataclass
class Series:
    """A checked series: timestamps (datetime64[ns]) and values [rows, columns] (float32)."""

    timestamps: np.ndarray
    values: np.ndarray
    columns: List[str]  # CSV column names, in values' column order
    target_index: int
    step: str  # the step the timestamps were checked against (offset alias or timedelta)

    def __len__(self) -> int:
        return len(self.timestamps)


# The pattern data.time_series.file: null stands for: the directory's one CSV.
ANY_CSV = "*.csv"

logger = logging.getLogger(__name__)


def find_csv(input_base: str, pattern: Optional[str]) -> str:
    """The CSV that data.time_series.file names in input_base, or the directory's only one.

    A config names the file of the data it was written for (e.g. ETTh1.csv); another
    station's data comes in another file. So when the pattern matches nothing (or is
    None) and the directory holds exactly one CSV, that CSV is the series; a warning
    says which file is used instead of the one named.

    Raises:
      TimeSeriesFormatError: the pattern matches several files; or it matches nothing
        and the directory holds no CSV, or several (the message lists them and the
        --set that picks one).
    """
    from tfprod.pipeline.ingestion import files

    if pattern:
        matched = sorted(files.glob(os.path.join(input_base, pattern)))
        if len(matched) == 1:
            return matched[0]
        if len(matched) > 1:
            raise TimeSeriesFormatError(
                f"data.time_series.file {pattern!r} matches {len(matched)} files in "
                f"{input_base}: {', '.join(os.path.basename(m) for m in matched)}; name one "
                f"with --set data.time_series.file=NAME")
    csvs = sorted(path for path in files.glob(os.path.join(input_base, "*"))
                  if path.lower().endswith(".csv") and not files.isdir(path))
    named = f"data.time_series.file {pattern!r} matched nothing in {input_base}" if pattern \
        else f"data.time_series.file is null (the one CSV in {input_base})"
    if len(csvs) == 1:
        if pattern:
            logger.warning("%s; using its only CSV, %s", named, os.path.basename(csvs[0]))
        return csvs[0]
    if not csvs:
        raise TimeSeriesFormatError(f"{named}, and the directory holds no .csv file; "
                                    "pass --data-dir DIR with the series' CSV in it")
    names = [os.path.basename(path) for path in csvs]
    raise TimeSeriesFormatError(
        f"{named}, and the directory holds {len(csvs)} CSVs ({', '.join(names)}); pick one "
        f"with --set data.time_series.file={names[0]} (or another of them)")


def feature_name(column: str) -> str:
    """The tf.Example feature name of a CSV column (letters, digits and underscores)."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", column.strip())
    return name if name and not name[0].isdigit() else f"column_{name}"


def _lines(rows: Sequence[int]) -> str:
    shown = ", ".join(str(row + _FIRST_DATA_LINE) for row in rows[:_LINES_SHOWN])
    more = f" and {len(rows) - _LINES_SHOWN} more" if len(rows) > _LINES_SHOWN else ""
    return f"line{'s' if len(rows) > 1 else ''} {shown}{more}"


def _select_columns(header: List[str], spec: SeriesSpec, source: str) -> List[str]:
    if spec.timestamp_column not in header:
        raise TimeSeriesFormatError(
            f"{source}: no timestamp column {spec.timestamp_column!r} (the header has "
            f"{', '.join(header)}); set data.time_series.timestamp_column")
    columns = list(spec.feature_columns) if spec.feature_columns else [
        column for column in header if column != spec.timestamp_column]
    missing = [column for column in columns if column not in header]
    if missing:
        raise TimeSeriesFormatError(
            f"{source}: feature column(s) {', '.join(missing)} not in the header "
            f"({', '.join(header)}); fix data.time_series.feature_columns")
    if spec.target_column not in header:
        raise TimeSeriesFormatError(
            f"{source}: no target column {spec.target_column!r} (the header has "
            f"{', '.join(header)}); set data.time_series.target_column")
    if spec.target_column not in columns:
        columns.append(spec.target_column)
    if spec.timestamp_column in columns:
        raise TimeSeriesFormatError(
            f"{source}: the timestamp column {spec.timestamp_column!r} cannot be a feature column")
    names = [feature_name(column) for column in columns]
    clashes = sorted({name for name in names if names.count(name) > 1 or name in RESERVED_KEYS})
    if clashes:
        raise TimeSeriesFormatError(
            f"{source}: columns map to clashing or reserved feature names {clashes}; "
            "rename the columns or choose data.time_series.feature_columns")
    return columns


def _parse_values(frame, columns: List[str], source: str) -> np.ndarray:
    import pandas as pd

    values = np.empty((len(frame), len(columns)), np.float32)
    for position, column in enumerate(columns):
        text = frame[column]
        missing = text.isna() | (text.str.strip() == "")
        if missing.any():
            rows = np.flatnonzero(missing.to_numpy()).tolist()
            raise TimeSeriesFormatError(
                f"{source}: column {column!r} has {len(rows)} missing value(s) at {_lines(rows)}; "
                "fill or remove them (every step needs every value)")
        numbers = pd.to_numeric(text, errors="coerce")
        bad = numbers.isna() | ~np.isfinite(numbers.to_numpy(np.float64, na_value=np.nan))
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy()).tolist()
            raise TimeSeriesFormatError(
                f"{source}: column {column!r} has {len(rows)} non-numeric value(s) at "
                f"{_lines(rows)} (first: {text.iloc[rows[0]]!r}); fix them, or leave the column "
                "out of data.time_series.feature_columns")
        values[:, position] = numbers.to_numpy(np.float32)
    return values


def _parse_timestamps(frame, column: str, source: str) -> np.ndarray:
    import pandas as pd

    text = frame[column]
    parsed = pd.to_datetime(text, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy()).tolist()
        raise TimeSeriesFormatError(
            f"{source}: {len(rows)} timestamp(s) in column {column!r} cannot be parsed, at "
            f"{_lines(rows)} (first: {text.iloc[rows[0]]!r})")
    return parsed.to_numpy("datetime64[ns]")


def _check_order(timestamps: np.ndarray, source: str) -> None:
    differences = np.diff(timestamps)
    zero = np.timedelta64(0, "ns")
    duplicates = np.flatnonzero(differences == zero) + 1
    if duplicates.size:
        raise TimeSeriesFormatError(
            f"{source}: {duplicates.size} duplicate timestamp(s) at {_lines(duplicates.tolist())} "
            f"(first: {timestamps[duplicates[0]]}); keep one row per timestamp")
    backwards = np.flatnonzero(differences < zero) + 1
    if backwards.size:
        raise TimeSeriesFormatError(
            f"{source}: timestamps go backwards at {_lines(backwards.tolist())}; sort the rows "
            "by time")


def _check_step(timestamps: np.ndarray, frequency: str, source: str) -> str:
    """Checks that consecutive timestamps are one step apart; returns the step's name."""
    import pandas as pd

    if len(timestamps) < 3:
        raise TimeSeriesFormatError(f"{source}: only {len(timestamps)} rows")
    index = pd.DatetimeIndex(timestamps)
    if frequency == "infer":
        inferred = pd.infer_freq(index)
        if inferred is None:
            differences = np.diff(timestamps)
            values, counts = np.unique(differences, return_counts=True)
            common = values[np.argmax(counts)]
            irregular = (np.flatnonzero(differences != common) + 1).tolist()
            raise TimeSeriesFormatError(
                f"{source}: the timestamps are not evenly spaced: against the most common step "
                f"({pd.Timedelta(common)}) there are gaps or uneven steps at {_lines(irregular)}. "
                "Fill the gaps, or set data.time_series.frequency (a pandas offset alias such "
                "as h, D or MS) if the step is a calendar unit")
        return inferred
    try:
        offset = pd.tseries.frequencies.to_offset(frequency)
    except ValueError as error:
        raise TimeSeriesFormatError(
            f"data.time_series.frequency: {frequency!r} is not a pandas offset alias "
            f"(h, D, W, MS, ...) nor 'infer': {error}") from None
    expected_next = (index[:-1] + offset).to_numpy("datetime64[ns]")
    off_step = (np.flatnonzero(expected_next != timestamps[1:]) + 1).tolist()
    if off_step:
        first = off_step[0]
        raise TimeSeriesFormatError(
            f"{source}: {len(off_step)} step(s) differ from the expected step {frequency!r} "
            f"(gaps or uneven spacing) at {_lines(off_step)} (first: {timestamps[first - 1]} -> "
            f"{timestamps[first]}); fill the gaps or fix data.time_series.frequency")
    return frequency


def read_series(path: str, spec: SeriesSpec) -> Series:
    """Reads and checks a time series CSV.

    Raises:
      TimeSeriesFormatError: a missing column, an unparseable, duplicate, backwards or
        off-step timestamp, or a missing or non-numeric value (naming the lines).
    """
    import pandas as pd

    from tfprod.pipeline.ingestion import files

    try:
        with files.open_text(path) as handle:
            frame = pd.read_csv(handle, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise TimeSeriesFormatError(f"{path}: not a readable CSV ({error})") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    columns = _select_columns(list(frame.columns), spec, path)
    timestamps = _parse_timestamps(frame, spec.timestamp_column, path)
    _check_order(timestamps, path)
    step = _check_step(timestamps, spec.frequency, path)
    values = _parse_values(frame, columns, path)
    return Series(timestamps=timestamps, values=values, columns=columns,
                  target_index=columns.index(spec.target_column), step=step)


def split_bounds(num_rows: int, spec: SeriesSpec) -> Dict[str, range]:
    """Row ranges of the chronological train, eval and test splits.

    Raises:
      TimeSeriesFormatError: a split too short for one (lookback + horizon) window.
    """
    train_end = int(round(num_rows * spec.train_fraction))
    eval_end = int(round(num_rows * (spec.train_fraction + spec.eval_fraction)))
    bounds = {TRAIN_SPLIT: range(0, train_end), EVAL_SPLIT: range(train_end, eval_end),
              TEST_SPLIT: range(eval_end, num_rows)}
    needed = spec.lookback + spec.horizon
    for name, rows in bounds.items():
        if len(rows) < needed:
            raise TimeSeriesFormatError(
                f"the {name} split has {len(rows)} rows (of {num_rows}); a window needs "
                f"lookback + horizon = {needed}. Use a longer series, a shorter lookback or "
                "horizon, or other data.time_series.train_fraction/eval_fraction")
    return bounds


@dataclasses.dataclass(frozen=True)
class Window:
    """One example: rows [start, start + lookback) in, the target's next horizon values out."""

    start: int  # first input row (of the whole series)
    inputs: np.ndarray  # [lookback, columns]
    label: np.ndarray  # [horizon]
    window_end: np.datetime64  # timestamp of the last input row


def windows(series: Series, rows: range, spec: SeriesSpec) -> Iterator[Window]:
    """Every window whose input and target rows all lie in `rows` (one split)."""
    last_start = rows.stop - spec.lookback - spec.horizon
    for start in range(rows.start, last_start + 1, spec.window_stride):
        end = start + spec.lookback
        yield Window(start=start, inputs=series.values[start:end],
                     label=series.values[end:end + spec.horizon, series.target_index],
                     window_end=series.timestamps[end - 1])


def to_example(window: Window, columns: Sequence[str]):
    """A window as a tf.train.Example: one float list [lookback] per column, the label
    (float [horizon]) and the window's last timestamp (int64 unix seconds)."""
    import tensorflow as tf

    feature = {
        feature_name(column): tf.train.Feature(
            float_list=tf.train.FloatList(value=window.inputs[:, position]))
        for position, column in enumerate(columns)}
    feature[LABEL_KEY] = tf.train.Feature(float_list=tf.train.FloatList(value=window.label))
    seconds = int(window.window_end.astype("datetime64[s]").astype(np.int64))
    feature[WINDOW_END_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[seconds]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def split_examples(path: str, spec: SeriesSpec) -> Dict[str, List[bytes]]:
    """Reads, checks, splits and windows a CSV: split name -> serialized tf.Examples."""
    series = read_series(path, spec)
    bounds = split_bounds(len(series), spec)
    return {name: [to_example(window, series.columns).SerializeToString()
                   for window in windows(series, rows, spec)]
            for name, rows in bounds.items()}


def baseline_targets(series: Series, spec: SeriesSpec):
    """(the target over the train rows, the labels of every test window [windows, horizon]).

    What the mean-predictor baseline needs: its forecast is the train split's mean of the
    target, scored on the same test windows TFMA scores the model on.
    """
    bounds = split_bounds(len(series), spec)
    train = series.values[bounds[TRAIN_SPLIT].start:bounds[TRAIN_SPLIT].stop,
                          series.target_index]
    labels = [window.label for window in windows(series, bounds[TEST_SPLIT], spec)]
    return train, np.stack(labels)
