"""Charts as data URIs (matplotlib's SVG, or PNG for pixel images), for an offline page.

Every function returns a ``data:`` URI to put in an <img src>; nothing refers to
a file or the network. matplotlib runs on the Agg backend (no display needed).
"""

import base64
import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SVG = "image/svg+xml"
PNG = "image/png"
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    # Text stays text in the SVG (smaller files); the browser draws it with a local font.
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "tfprod"  # stable ids: the same run, the same file
    import matplotlib.pyplot as pyplot

    return pyplot


def _data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def figure_to_uri(figure, mime: str = SVG) -> str:
    """Renders a matplotlib figure to a data URI and closes it."""
    pyplot = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg" if mime == SVG else "png", bbox_inches="tight",
                   metadata={"Date": None} if mime == SVG else None)
    pyplot.close(figure)
    return _data_uri(buffer.getvalue(), mime)


def fitted_limits(values: Sequence[Optional[float]], margin: float = 0.15
                  ) -> Optional[Tuple[float, float]]:
    """Axis limits around the values' range with a margin (a 0.92-0.99 spread stays visible,
    where an axis from 0 would flatten it); None without a finite value."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    span = high - low
    if span <= 0:  # all equal: a small window around the value
        span = max(abs(high) * 0.05, 1e-3)
    return low - margin * span, high + margin * span


def bar_chart(labels: Sequence[str], series: Dict[str, Sequence[float]], title: str,
              ylabel: str, horizontal: bool = False, value_format: Optional[str] = None,
              fit_range: bool = False) -> str:
    """Grouped bars: one group per label, one bar per series.

    fit_range: the value axis spans the data's range (with a margin) instead of starting at
    zero, for values that differ little (per-slice accuracies).
    """
    pyplot = _pyplot()
    count = max(len(labels), 1)
    size = (7, max(2.0, 0.32 * count + 1)) if horizontal else (max(5.0, 0.5 * count + 2), 3.2)
    figure, axes = pyplot.subplots(figsize=size)
    positions = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for number, (name, values) in enumerate(series.items()):
        offsets = positions + (number - (len(series) - 1) / 2) * width
        values = [np.nan if value is None else value for value in values]
        draw = axes.barh if horizontal else axes.bar
        bars = draw(offsets, values, width, label=name, color=COLORS[number % len(COLORS)])
        if value_format:
            axes.bar_label(bars, labels=[("" if np.isnan(v) else format(v, value_format))
                                         for v in values], fontsize=7, padding=2)
    if horizontal:
        axes.set_yticks(positions, labels)
        axes.invert_yaxis()
        axes.set_xlabel(ylabel)
    else:
        crowded = sum(len(label) for label in labels) > 40
        axes.set_xticks(positions, labels, rotation=45 if crowded else 0,
                        ha="right" if crowded else "center")
        axes.set_ylabel(ylabel)
    limits = fitted_limits([value for values in series.values() for value in values]) \
        if fit_range else None
    if limits:
        (axes.set_xlim if horizontal else axes.set_ylim)(*limits)
    axes.set_title(title)
    if len(series) > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="x" if horizontal else "y", alpha=0.3)
    return figure_to_uri(figure)


def line_chart(series: Dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str) -> str:
    """One line per series over 1..n (epochs), with markers so a single epoch shows."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(5, 3.2))
    for number, (name, values) in enumerate(series.items()):
        axes.plot(np.arange(1, len(values) + 1), values, marker="o", label=name,
                  color=COLORS[number % len(COLORS)])
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    longest = max((len(values) for values in series.values()), default=1)
    axes.set_xticks(np.arange(1, longest + 1, max(1, longest // 10)))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure_to_uri(figure)


def forecast_chart(window: Dict[str, Sequence[float]], title: str) -> str:
    """The target's history (steps -lookback..-1), then actual and forecasts (1..horizon)."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 3.4))
    history = window["history"]
    axes.plot(np.arange(-len(history) + 1, 1), history, color="#888888", label="history")
    ahead = np.arange(1, len(window["actual"]) + 1)
    for number, (name, label) in enumerate((("actual", "actual"), ("forecast", "model"),
                                            ("persistence", "persistence"),
                                            ("seasonal_naive", "seasonal naive"))):
        axes.plot(ahead, window[name], label=label, color=COLORS[number % len(COLORS)],
                  linestyle="-" if number < 2 else "--", linewidth=2 if number < 2 else 1.2)
    axes.axvline(0.5, color="#bbbbbb", linewidth=1)
    axes.set_title(title)
    axes.set_xlabel("step (0 = last observed)")
    axes.set_ylabel("value")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=5)
    return figure_to_uri(figure)


def histogram_chart(per_split: Dict[str, List[tuple]], title: str, xlabel: str) -> str:
    """TFDV histograms (buckets of (low, high, count)), one outline per split, as fractions."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(5, 3))
    for number, (split, buckets) in enumerate(per_split.items()):
        total = sum(count for _, _, count in buckets) or 1.0
        edges = [low for low, _, _ in buckets] + [buckets[-1][1]]
        axes.stairs([count / total for _, _, count in buckets], edges, label=split,
                    color=COLORS[number % len(COLORS)], linewidth=1.5)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of values")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure_to_uri(figure)


def confusion_matrix_chart(matrix: np.ndarray, labels: Sequence[str], title: str) -> str:
    """A heat map of counts (rows: true class, columns: predicted), annotated when small."""
    pyplot = _pyplot()
    size = min(9.0, 2.5 + 0.5 * len(labels))
    figure, axes = pyplot.subplots(figsize=(size, size * 0.85))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    positions = np.arange(len(labels))
    axes.set_xticks(positions, labels)
    axes.set_yticks(positions, labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if len(labels) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                axes.text(column, row, str(matrix[row, column]), ha="center", va="center",
                          fontsize=7, color="white" if matrix[row, column] > threshold else "black")
    return figure_to_uri(figure)


def image_grid(images_by_class: Dict[int, np.ndarray], scale: int = 2) -> str:
    """A PNG: one row per class of uint8 images, 2 px gaps, upscaled by scale.

    Grayscale images ([n, height, width] or [..., 1]) are drawn dark on white, as digits
    are; colour images ([n, height, width, 3], photos) as they are, on white.
    """
    pyplot = _pyplot()
    rows = sorted(images_by_class)
    first = next(iter(images_by_class.values()))
    height, width = first.shape[1:3]
    colour = first.ndim == 4 and first.shape[-1] == 3
    columns = max(len(images) for images in images_by_class.values())
    gap = 2
    canvas = np.full((len(rows) * (height + gap) + gap, columns * (width + gap) + gap)
                     + ((3,) if colour else ()), 255, np.uint8)
    for row, label in enumerate(rows):
        for column, image in enumerate(images_by_class[label]):
            top, left = gap + row * (height + gap), gap + column * (width + gap)
            if colour:
                canvas[top:top + height, left:left + width] = image
            else:  # dark digits on white
                canvas[top:top + height, left:left + width] = 255 - image.reshape(height, width)
    block = np.ones((scale, scale) + ((1,) if colour else ()), np.uint8)
    canvas = np.kron(canvas, block)
    buffer = io.BytesIO()
    if colour:
        pyplot.imsave(buffer, canvas, format="png")
    else:
        pyplot.imsave(buffer, canvas, cmap="gray", vmin=0, vmax=255, format="png")
    return _data_uri(buffer.getvalue(), PNG)
