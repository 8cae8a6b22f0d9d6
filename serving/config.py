"""Server configuration in TF Serving's own file formats.

- models.config: a `ModelServerConfig` text proto (tensorflow_serving.config).
- the batching parameters file: a `BatchingParameters` text proto
  (max_batch_size { value: 32 }, allowed_batch_sizes: 8, ...).
- the monitoring config file: a `MonitoringConfig` text proto
  (prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }).
"""

import dataclasses
import os
from typing import List, Optional, Tuple

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfprod.serving import textproto
from tfprod.serving.errors import ConfigFileError

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise ConfigFileError(f"cannot read the {what} {path!r}: {error.strerror}") from error


def model_config_from_flags(model_name: str, model_base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config `--model_name NAME --model_base_path PATH` stands for (policy latest{1})."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = os.path.abspath(model_base_path)
    model.model_platform = "tensorflow"
    return config


def load_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Reads a TF Serving models.config file.

    Raises:
        ConfigFileError: unreadable, not valid text format, or a model without name/base_path.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(_read(path, "model config file"), config)
    except text_format.ParseError as error:
        raise ConfigFileError(f"{path}: not a valid ModelServerConfig text proto: {error}") from error
    validate_model_server_config(config, source=path)
    # Relative base paths are relative to the config file, like a mounted volume.
    for model in config.model_config_list.config:
        if not os.path.isabs(model.base_path):
            model.base_path = os.path.join(os.path.dirname(os.path.abspath(path)), model.base_path)
    return config


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig,
                                 source: str = "model config") -> None:
    """Checks what the server needs of a config; raises ConfigFileError naming the problem."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigFileError(f"{source}: custom_model_config is not supported; use model_config_list")
    names = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigFileError(f"{source}: every model config needs a name")
        if not model.base_path:
            raise ConfigFileError(f"{source}: model {model.name!r} needs a base_path")
        if model.name in names:
            raise ConfigFileError(f"{source}: model {model.name!r} is configured twice")
        if model.model_platform and model.model_platform != "tensorflow":
            raise ConfigFileError(f"{source}: model {model.name!r}: only model_platform "
                                  f"\"tensorflow\" is supported, not {model.model_platform!r}")
        names.add(model.name)


@dataclasses.dataclass
class BatchingParameters:
    """TF Serving's batching parameters (the subset that shapes batches), with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def validate(self, source: str = "batching parameters") -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ConfigFileError(f"{source}: max_batch_size, num_batch_threads and "
                                  "max_enqueued_batches must be at least 1")
        if self.batch_timeout_micros < 0:
            raise ConfigFileError(f"{source}: batch_timeout_micros must not be negative")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
                raise ConfigFileError(f"{source}: allowed_batch_sizes must increase strictly")
            if sizes[-1] != self.max_batch_size:
                raise ConfigFileError(f"{source}: the last allowed_batch_sizes entry ({sizes[-1]}) "
                                      f"must equal max_batch_size ({self.max_batch_size})")


_WRAPPED_INT_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                       "num_batch_threads")
_KNOWN_BATCHING_FIELDS = set(_WRAPPED_INT_FIELDS) | {
    "allowed_batch_sizes", "pad_variable_length_inputs", "thread_pool_name",
    "enable_large_batch_splitting", "max_execution_batch_size", "batch_padding_policy",
    "num_batch_threads_per_model", "enable_priority_queue"}


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    """Parses a BatchingParameters text proto (scalar fields wrapped as `{ value: N }`)."""
    fields = textproto.parse(text, source)
    unknown = set(fields) - _KNOWN_BATCHING_FIELDS
    if unknown:
        raise ConfigFileError(f"{source}: unknown batching parameter(s) {sorted(unknown)}; known: "
                              f"{sorted(_KNOWN_BATCHING_FIELDS)}")
    parameters = BatchingParameters()
    for name in _WRAPPED_INT_FIELDS:
        if name in fields:
            wrapper = fields[name][-1]
            if not isinstance(wrapper, dict) or not isinstance(wrapper.get("value", [None])[-1], int):
                raise ConfigFileError(f"{source}: write {name} as `{name} {{ value: N }}`")
            setattr(parameters, name, wrapper["value"][-1])
    if "allowed_batch_sizes" in fields:
        parameters.allowed_batch_sizes = tuple(int(size) for size in fields["allowed_batch_sizes"])
    if "pad_variable_length_inputs" in fields:
        parameters.pad_variable_length_inputs = bool(fields["pad_variable_length_inputs"][-1])
    parameters.validate(source)
    return parameters


def load_batching_parameters(path: Optional[str]) -> BatchingParameters:
    """The batching parameters file, or TF Serving's defaults when path is None."""
    if path is None:
        return BatchingParameters()
    return parse_batching_parameters(_read(path, "batching parameters file"), path)


@dataclasses.dataclass
class MonitoringConfig:
    """Where Prometheus metrics are served; TF Serving's MonitoringConfig."""

    prometheus_enabled: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


def load_monitoring_config(path: Optional[str]) -> MonitoringConfig:
    """Reads `prometheus_config { enable: true path: "..." }`; None means metrics off (as in TF Serving)."""
    if path is None:
        return MonitoringConfig()
    fields = textproto.parse(_read(path, "monitoring config file"), path)
    unknown = set(fields) - {"prometheus_config"}
    if unknown:
        raise ConfigFileError(f"{path}: unknown field(s) {sorted(unknown)}; expected prometheus_config")
    prometheus = fields.get("prometheus_config", [{}])[-1]
    path_value = prometheus.get("path", [DEFAULT_PROMETHEUS_PATH])[-1] or DEFAULT_PROMETHEUS_PATH
    if not str(path_value).startswith("/"):
        raise ConfigFileError(f"{path}: prometheus_config.path must start with '/'")
    return MonitoringConfig(prometheus_enabled=bool(prometheus.get("enable", [False])[-1]),
                            prometheus_path=str(path_value))


def policy_versions(model: model_server_config_pb2.ModelConfig, on_disk: List[int]) -> List[int]:
    """The versions the policy wants served, given the versions found on disk."""
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    ordered = sorted(on_disk)
    if kind == "all":
        return ordered
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return [version for version in ordered if version in wanted]
    count = policy.latest.num_versions or 1
    return ordered[-count:]
