"""Prometheus metrics of the server, in the text exposition format (version 0.0.4)."""

import bisect
import threading
from typing import Dict, Iterable, Optional, Sequence, Tuple

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL_LABEL = "_unknown"  # the model label of requests naming a model that is not configured


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Tuple[str, ...], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]):
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: Dict[str, str]) -> Tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def header(self) -> str:
        return f"# HELP {self.name} {self.help_text}\n# TYPE {self.name} {self.kind}\n"


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args):
        super().__init__(*args)
        self._values: Dict[Tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        self.inc_key(self._key(labels), amount)

    def inc_key(self, key: Tuple[str, ...], amount: float = 1.0) -> None:
        """inc() with the label values already in label_names order (the per-request path)."""
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + "".join(
            f"{self.name}{_labels_text(self.label_names, key)} {value:g}\n" for key, value in items)


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str], buckets: Sequence[float]):
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(buckets)
        self._counts: Dict[Tuple[str, ...], list] = {}
        self._sums: Dict[Tuple[str, ...], float] = {}

    def observe(self, value: float, **labels) -> None:
        self.observe_key(self._key(labels), value)

    def observe_key(self, key: Tuple[str, ...], value: float) -> None:
        """observe() with the label values already in label_names order."""
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), []))

    def render(self) -> str:
        lines = [self.header()]
        with self._lock:
            items = sorted((key, list(counts), self._sums[key]) for key, counts in self._counts.items())
        for key, counts, total in items:
            cumulative = 0
            for bound, count in zip(self.buckets + (float("inf"),), counts):
                cumulative += count
                bound_text = "+Inf" if bound == float("inf") else f"{bound:g}"
                labels = _labels_text(self.label_names, key, 'le="' + bound_text + '"')
                lines.append(f"{self.name}_bucket{labels} {cumulative}\n")
            lines.append(f"{self.name}_sum{_labels_text(self.label_names, key)} {total:g}\n")
            lines.append(f"{self.name}_count{_labels_text(self.label_names, key)} {cumulative}\n")
        return "".join(lines)


class ServerMetrics:
    """The metrics the server records; `render()` is the /monitoring/prometheus/metrics body.

    Request metrics are labelled with the model name only for configured models (see
    set_model_names): a client naming thousands of unknown models adds one series, under
    model="_unknown", not thousands.
    """

    def __init__(self):
        self._model_names: Optional[frozenset] = None  # None: every name is labelled as given
        self.request_count = Counter(
            "tfprod_serving_request_count", "Requests by model, version, API, protocol and status.",
            ("model", "version", "api", "protocol", "status"))
        self.request_latency = Histogram(
            "tfprod_serving_request_latency_seconds", "Request latency in seconds.",
            ("model", "version", "api", "protocol", "status"), LATENCY_BUCKETS_SECONDS)
        self.batch_size = Histogram(
            "tfprod_serving_batch_size", "Rows per batch run by the model (before padding).",
            ("model", "version", "signature"), BATCH_SIZE_BUCKETS)
        self.padded_batch_size = Histogram(
            "tfprod_serving_padded_batch_size", "Rows per batch run by the model after padding.",
            ("model", "version", "signature"), BATCH_SIZE_BUCKETS)
        self.load_events = Counter(
            "tfprod_serving_model_load_count", "Model version loads by result (ok or error).",
            ("model", "version", "result"))
        self.unload_events = Counter(
            "tfprod_serving_model_unload_count", "Model version unloads.", ("model", "version"))
        self.available_versions = Gauge(
            "tfprod_serving_available_versions", "Versions currently serving, by model.", ("model",))
        self.request_log_written = Counter(
            "tfprod_serving_request_log_record_count", "Request log records written (--request_log_dir).", ())
        self.request_log_drops = Counter(
            "tfprod_serving_request_log_drop_count",
            "Sampled requests not logged, by reason (queue_full, over_cap, disk_full, write_error, build_error).",
            ("reason",))
        self._all = (self.request_count, self.request_latency, self.batch_size, self.padded_batch_size,
                     self.load_events, self.unload_events, self.available_versions, self.request_log_written,
                     self.request_log_drops)

    def set_model_names(self, names: Iterable[str]) -> None:
        """The configured models, the only names request metrics carry (the model manager sets them)."""
        self._model_names = frozenset(names)

    def record_request(self, model: str, version, api: str, protocol: str, status: str,
                       seconds: float) -> None:
        known = self._model_names
        if model and known is not None and model not in known:
            model, version = UNKNOWN_MODEL_LABEL, None
        key = (model or "", str(version or ""), api, protocol, status)  # the label_names order
        self.request_count.inc_key(key)
        self.request_latency.observe_key(key, seconds)

    def record_log_drop(self, reason: str) -> None:
        """One sampled request the request log dropped (serving.request_log's DROP_* reasons)."""
        self.request_log_drops.inc_key((reason,))

    def record_log_written(self) -> None:
        self.request_log_written.inc_key(())

    def render(self) -> str:
        return "".join(metric.render() for metric in self._all)
