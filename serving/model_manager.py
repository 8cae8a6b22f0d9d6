"""Loads, serves and unloads model versions from base paths in TF Serving layout.

`<base_path>/<version>/saved_model.pb`, where each model's base_path is usually
`<base>/<model_name>`. A polling thread compares the versions on disk with each
model's version policy (latest{N}, all, specific), loads new versions before
unloading old ones (TF Serving's availability-preserving policy), and waits for
a version's in-flight requests to finish before it is unloaded. A version that
fails to load is reported with its error and never replaces a serving one.
"""

import dataclasses
import gc
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfprod.serving import config as config_lib
from tfprod.serving.config import BatchingParameters
from tfprod.serving.errors import InvalidArgumentError, NotFoundError
from tfprod.serving.metrics import ServerMetrics
from tfprod.serving.servable import Servable

LOG = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State

POLL_ERROR_LOG_SECONDS = 60.0  # a polling error that repeats is logged at most this often
VERSION_NAME = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() refuses
MAX_VERSION = 2 ** 63 - 1  # versions are int64 in TF Serving's protos
MAX_RETRY_BACKOFF_SECONDS = 60.0


def freeze_long_lived_objects() -> None:
    """Moves every object alive now out of the garbage collector's reach.

    TensorFlow and a loaded SavedModel leave several hundred thousand long-lived objects; a full
    collection scans them all (about 0.2 s on the 2-core benchmark machine) while holding the GIL,
    which stalls every request in flight. Frozen, they are never scanned.
    """
    gc.freeze()


def collect_unloaded_objects() -> None:
    """After an unload: unfreezes, collects what the version left (cycles included), refreezes."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServableLease:
    """`with manager.servable(name, version, label) as servable:` (a class, not a generator: it runs
    per request)."""

    __slots__ = ("_manager", "_name", "_version", "_label", "_servable")

    def __init__(self, manager: "ModelManager", name: str, version: Optional[int], label: Optional[str]):
        self._manager = manager
        self._name = name
        self._version = version
        self._label = label

    def __enter__(self) -> Servable:
        manager = self._manager
        with manager._lock:
            resolved = manager.resolve_version(self._name, self._version, self._label)
            self._servable = manager._models[self._name][resolved].servable
            self._servable.acquire()
        return self._servable

    def __exit__(self, error_type, error, traceback) -> bool:
        self._servable.release()
        return False


@dataclasses.dataclass
class VersionRecord:
    """What the manager knows about one version of one model."""

    version: int
    path: str
    state: int = State.START
    error: Optional[str] = None
    fingerprint: Tuple = ()
    servable: Optional[Servable] = None
    failures: int = 0  # failed loads in a row
    retry_after: float = 0.0  # time.monotonic() before which a failed version is not tried again


def version_fingerprint(path: str) -> Tuple:
    """(relative path, size, mtime) of every file and directory under a version: it changes when
    any of them is written, added or removed, so a failed load is retried once the files change
    (a version completed in place included), and never in a loop while they stay the same."""
    entries = []
    for directory, subdirectories, files in os.walk(path):
        subdirectories.sort()  # walked in a fixed order
        for name in subdirectories + sorted(files):
            full = os.path.join(directory, name)
            try:
                stat = os.stat(full)
            except OSError:  # removed while we looked: the next poll sees the new state
                continue
            entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def retry_backoff(failures: int, poll_seconds: float) -> float:
    """Seconds before a version that failed `failures` times in a row is loaded again (even if its
    files changed): the poll interval, doubled per failure, at most MAX_RETRY_BACKOFF_SECONDS. A
    version being written in place is then not reloaded (and its error logged) on every poll."""
    return min(poll_seconds * 2 ** max(failures - 1, 0), MAX_RETRY_BACKOFF_SECONDS)


def versions_on_disk(base_path: str, ignored: Optional[Set[str]] = None) -> Dict[int, str]:
    """{version: directory} of the subdirectories of base_path named by ASCII digits (as TF Serving).

    Other directories ("²", "1a", a version beyond int64) are not versions: each is logged once
    (its path is added to `ignored`, when given, so later polls stay quiet). Hidden names (".tmp")
    are skipped silently: pushers stage versions there before renaming them into place.
    """
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(base_path, name)
        if not os.path.isdir(path):
            continue
        if VERSION_NAME.fullmatch(name) and int(name) <= MAX_VERSION:
            found[int(name)] = path
        elif not name.startswith(".") and (ignored is None or path not in ignored):
            LOG.warning("ignoring %r in %s: a version directory is named by a number (ASCII digits 0-9, "
                        "at most %d)", name, base_path, MAX_VERSION)
            if ignored is not None:
                ignored.add(path)
    return found


class ModelManager:
    """Serves the models of a ModelServerConfig.

    Args:
        server_config: TF Serving's ModelServerConfig (model_config_list).
        batching: batching parameters, or None to run each request on its own.
        metrics: where load/unload events and batch sizes are recorded.
        poll_seconds: how often to look for new versions (0: only at start and on reload).
        warm_up: replay assets.extra/tf_serving_warmup_requests after loading.
        servable_factory: builds a Servable (tests may pass one that records calls).
    """

    def __init__(self, server_config: model_server_config_pb2.ModelServerConfig,
                 batching: Optional[BatchingParameters] = None, metrics: Optional[ServerMetrics] = None,
                 poll_seconds: float = 1.0, warm_up: bool = True,
                 servable_factory: Optional[Callable[..., Servable]] = None):
        config_lib.validate_model_server_config(server_config)
        self._config = server_config
        self._batching = batching
        self.metrics = metrics or ServerMetrics()
        self.metrics.set_model_names(model.name for model in server_config.model_config_list.config)
        self._poll_seconds = poll_seconds
        self._warm_up = warm_up
        self._servable_factory = servable_factory or Servable
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll (load/unload pass) at a time
        self._models: Dict[str, Dict[int, VersionRecord]] = {}
        self._ignored_paths: Set[str] = set()  # directories already reported as not versions
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ----- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Loads the configured models once, then polls in the background."""
        self.poll_once()
        if self._poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._thread.start()

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stops polling and unloads every version once its in-flight requests are done."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self._poll_seconds, 1.0) + drain_seconds)
        with self._poll_lock:
            with self._lock:
                records = [(name, record) for name, versions in self._models.items()
                           for record in versions.values() if record.servable is not None]
            for name, record in records:
                self._unload(name, record, drain_seconds)

    def _poll_loop(self) -> None:
        """Polls until stopped. A pass that fails (e.g. "Too many open files" under a connection
        flood) never stops the loop; its traceback is logged once, then repeats of the same error
        at most one line a minute with a count, and the recovery in one line."""
        failures, last_logged, last_error = 0, 0.0, None
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception as error:  # keep polling: one bad pass must not stop hot reloads
                failures += 1
                now = time.monotonic()
                summary = f"{type(error).__name__}: {_first_line(error)}"
                if summary != last_error:
                    LOG.exception("polling the model base paths failed (polling goes on)")
                    last_error, last_logged = summary, now
                elif now - last_logged >= POLL_ERROR_LOG_SECONDS:
                    LOG.error("polling the model base paths still fails (%d failed passes so far): %s",
                              failures, summary)
                    last_logged = now
                continue
            if failures:
                LOG.warning("polling the model base paths works again after %d failed passes", failures)
                failures, last_error = 0, None

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        with self._lock:
            copy = model_server_config_pb2.ModelServerConfig()
            copy.CopyFrom(self._config)
            return copy

    def reload_config(self, server_config: model_server_config_pb2.ModelServerConfig,
                      allow_empty: bool = False) -> None:
        """Switches to a new model list (HandleReloadConfigRequest) and loads it before returning.

        Args:
            server_config: the new models.
            allow_empty: accept a config without models, which unloads every model.

        Raises:
            InvalidArgumentError: the new config is invalid, has no models (unless allow_empty),
                or names a base_path that is not a directory.
        """
        try:
            config_lib.validate_model_server_config(server_config, source="reload request")
        except config_lib.ConfigFileError as error:
            raise InvalidArgumentError(str(error)) from error
        models = server_config.model_config_list.config
        if not models and not allow_empty:
            raise InvalidArgumentError("reload request: the config has no models, which would unload every "
                                       "model; the server refuses it (tfprod serve --allow_empty_model_config)")
        for model in models:
            if not os.path.isabs(model.base_path) or not os.path.isdir(model.base_path):
                raise InvalidArgumentError(f"reload request: model {model.name!r}: base_path {model.base_path!r} "
                                           "is not an existing directory given by an absolute path")
        with self._lock:
            self._config = server_config
        self.metrics.set_model_names(model.name for model in server_config.model_config_list.config)
        self.poll_once()

    # ----- loading ---------------------------------------------------------------------------
    def poll_once(self) -> None:
        """One pass: load the versions each policy wants, then unload the others."""
        with self._poll_lock:
            with self._lock:
                models = {model.name: model for model in self._config.model_config_list.config}
                for name in models:
                    self._models.setdefault(name, {})
            for name, model in models.items():
                if self._stop.is_set() and self._thread is not None:
                    return
                self._sync_model(model)
            for name in list(self._models):
                if name not in models:
                    for record in list(self._models[name].values()):
                        if record.servable is not None:
                            self._unload(name, record)
                    with self._lock:
                        del self._models[name]

    def _sync_model(self, model: model_server_config_pb2.ModelConfig) -> None:
        on_disk = versions_on_disk(model.base_path, self._ignored_paths)
        wanted = config_lib.policy_versions(model, list(on_disk))
        records = self._models[model.name]
        for version in sorted(wanted, reverse=True):  # newest first: it is what "latest" serves
            path = on_disk[version]
            record = records.get(version)
            if record is not None and record.state == State.AVAILABLE:
                continue
            failed = record is not None and record.state == State.END
            if failed and time.monotonic() < record.retry_after:
                continue  # failed recently: back off, even if files changed
            fingerprint = version_fingerprint(path)
            if failed and record.fingerprint == fingerprint:
                continue  # failed before and unchanged since: do not retry in a loop
            record = VersionRecord(version=version, path=path, state=State.LOADING, fingerprint=fingerprint,
                                   error=record.error if record is not None else None,
                                   failures=record.failures if failed else 0)
            with self._lock:
                records[version] = record
            self._load(model.name, record)
        # Unload only what is no longer wanted, after the new versions are up. For each wanted
        # version that failed to load, the newest previously serving version stays (TF Serving's
        # availability-preserving policy): a bad push never takes a model offline.
        missing = sum(1 for version in wanted if records[version].state != State.AVAILABLE)
        fallbacks = sorted((version for version, record in records.items()
                            if version not in wanted and record.state == State.AVAILABLE), reverse=True)[:missing]
        for version, record in list(records.items()):
            if version not in wanted and version not in fallbacks:
                if record.servable is not None:
                    self._unload(model.name, record)
                elif record.state != State.AVAILABLE:
                    with self._lock:
                        records.pop(version, None)
        self._update_available(model.name)

    def _load(self, name: str, record: VersionRecord) -> None:
        started = time.monotonic()
        LOG.info("loading model %s version %d from %s", name, record.version, record.path)
        servable = None
        try:
            servable = self._servable_factory(
                name, record.version, record.path, batching=self._batching,
                on_batch=lambda signature, size, padded, version=record.version: self._record_batch(
                    name, version, signature, size, padded))
            if self._warm_up:
                servable.warm_up()
        except Exception as error:  # any load failure is reported; the old version keeps serving
            if servable is not None:
                servable.close()
            message = f"{type(error).__name__}: {_first_line(error)}"
            failures = record.failures + 1
            backoff = retry_backoff(failures, self._poll_seconds)
            LOG.error("model %s version %d failed to load: %s (retried when its files change, not before "
                      "%.0f s)", name, record.version, message, backoff)
            with self._lock:
                record.state, record.error = State.END, message
                record.failures, record.retry_after = failures, time.monotonic() + backoff
            self.metrics.load_events.inc(model=name, version=str(record.version), result="error")
            return
        freeze_long_lived_objects()
        with self._lock:
            record.servable, record.state, record.error = servable, State.AVAILABLE, None
        self.metrics.load_events.inc(model=name, version=str(record.version), result="ok")
        LOG.info("model %s version %d is available (%.1f s)", name, record.version,
                 time.monotonic() - started)

    def _unload(self, name: str, record: VersionRecord, drain_seconds: float = 60.0) -> None:
        with self._lock:
            record.state = State.UNLOADING  # new requests no longer resolve to it
        servable = record.servable
        if servable is not None:
            if not servable.wait_idle(drain_seconds):
                LOG.warning("model %s version %d still had requests after %.0f s; unloading anyway",
                            name, record.version, drain_seconds)
            servable.close()
        with self._lock:
            record.servable, record.state = None, State.END
            versions = self._models.get(name, {})
            if versions.get(record.version) is record:
                del versions[record.version]
        del servable
        collect_unloaded_objects()
        self.metrics.unload_events.inc(model=name, version=str(record.version))
        LOG.info("model %s version %d unloaded", name, record.version)
        self._update_available(name)

    def _update_available(self, name: str) -> None:
        with self._lock:
            count = sum(1 for record in self._models.get(name, {}).values() if record.state == State.AVAILABLE)
        self.metrics.available_versions.set(count, model=name)

    def _record_batch(self, name: str, version: int, signature: str, size: int, padded: int) -> None:
        self.metrics.batch_size.observe(size, model=name, version=str(version), signature=signature)
        self.metrics.padded_batch_size.observe(padded, model=name, version=str(version), signature=signature)

    # ----- serving ---------------------------------------------------------------------------
    def _model_config(self, name: str) -> model_server_config_pb2.ModelConfig:
        for model in self._config.model_config_list.config:
            if model.name == name:
                return model
        raise NotFoundError(f"Servable not found for request: Latest({name}): no model named "
                            f"'{name}' is configured")

    def resolve_version(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> int:
        """The version a request means; raises NotFoundError if it is not serving."""
        with self._lock:
            model = self._model_config(name)
            records = self._models.get(name, {})
            if label:
                if label not in model.version_labels:
                    raise NotFoundError(f"Unrecognized servable version label: {label} (model {name} "
                                        f"has labels {sorted(model.version_labels)})")
                version = model.version_labels[label]
            if version is None:
                available = [v for v, record in records.items() if record.state == State.AVAILABLE]
                if not available:
                    raise NotFoundError(f"Servable not found for request: Latest({name}): no version "
                                        "is available yet")
                return max(available)
            record = records.get(version)
            if record is None or record.state != State.AVAILABLE:
                raise NotFoundError(f"Servable not found for request: Specific({name}, {version})")
            return version

    def servable(self, name: str, version: Optional[int] = None,
                 label: Optional[str] = None) -> "ServableLease":
        """Holds a serving version for the length of a request (a `with` block); it is not unloaded meanwhile.

        Raises (on entering):
            NotFoundError: no such model, version or label is serving.
        """
        return ServableLease(self, name, version, label)

    def model_names(self) -> List[str]:
        with self._lock:
            return [model.name for model in self._config.model_config_list.config]

    def version_statuses(self, name: str, version: Optional[int] = None,
                         label: Optional[str] = None) -> List[get_model_status_pb2.ModelVersionStatus]:
        """TF Serving's ModelVersionStatus list for a model (newest first), or one version.

        Raises:
            NotFoundError: unknown model, label, or a version the server never saw.
        """
        with self._lock:
            model = self._model_config(name)
            if label:
                if label not in model.version_labels:
                    raise NotFoundError(f"Unrecognized servable version label: {label}")
                version = model.version_labels[label]
            records = dict(self._models.get(name, {}))
            if version is not None:
                if version not in records:
                    raise NotFoundError(f"Could not find version {version} of model {name}")
                records = {version: records[version]}
            if not records:
                raise NotFoundError(f"Could not find any versions of model {name} under "
                                    f"{model.base_path}")
            statuses = []
            for number in sorted(records, reverse=True):
                record = records[number]
                status = get_model_status_pb2.ModelVersionStatus(version=number, state=record.state)
                if record.error:
                    status.status.error_code = 2  # UNKNOWN, as TF Serving reports load failures
                    status.status.error_message = record.error
                statuses.append(status)
            return statuses

    def unavailable_models(self) -> List[str]:
        """One line per configured model with no available version: its name, base path and why
        (the path is missing, it holds no version directory, or each version's load error)."""
        with self._lock:
            configs = list(self._config.model_config_list.config)
            records = {name: dict(versions) for name, versions in self._models.items()}
        lines = []
        for model in configs:
            versions = records.get(model.name, {})
            if any(record.state == State.AVAILABLE for record in versions.values()):
                continue
            if not os.path.isdir(model.base_path):
                why = "the directory does not exist"
            elif not versions:
                why = "it holds no version directory (named by a number, e.g. 1/saved_model.pb)"
            else:
                why = "; ".join(f"version {number} failed: {record.error or 'not loaded'}"
                                for number, record in sorted(versions.items()))
            lines.append(f"model {model.name!r} at {model.base_path}: {why}")
        return lines

    def is_ready(self) -> bool:
        """True once every configured model has at least one available version."""
        with self._lock:
            return all(any(record.state == State.AVAILABLE for record in self._models.get(name, {}).values())
                       for name in (model.name for model in self._config.model_config_list.config))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
