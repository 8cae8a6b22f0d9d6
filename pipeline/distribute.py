"""tf.distribute for the Trainer: strategy factory, TF_CONFIG, chief, batch/LR rule, sharding.

Everything the Trainer needs to train the same model code on one device, on the GPUs of one
machine, on several workers, on a TPU or with parameter servers (docs/distributed.md):

- ``create_strategy(runtime)`` builds the strategy that ``runtime.strategy`` names.
- ``read_tf_config`` / ``is_chief`` parse and check ``TF_CONFIG`` (the cluster description
  the Kubeflow training operator, Vertex AI and ``pipeline.multiworker`` write).
- ``global_batch_size`` / ``scaled_learning_rate``: ``trainer.batch_size`` is per replica;
  the global batch is ``batch_size x replicas`` and, under the linear rule, so is the
  learning rate.
- ``shard_options``: the tf.data auto-shard policy (DATA for a single file).
- ``mixed_precision_policy``: the Keras policy, checked against the hardware.
- ``worker_dirs`` / ``training_callbacks``: only the chief writes the SavedModel and the
  TensorBoard logs; BackupAndRestore lets a preempted job resume.

TensorFlow is imported inside the functions, so that TF_CONFIG can be checked (and a
clear error printed) before TensorFlow starts.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from tfprod import errors
from tfprod.pipeline import config as config_lib

TF_CONFIG = "TF_CONFIG"
CLUSTER_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
# Where TPUClusterResolver finds the TPU when runtime.tpu_address is null.
TPU_ADDRESS_ENVIRONMENT = ("TPU_NAME", "TPU_ADDRESS")
PROGRESS_FILE_PATTERN = "progress-{task}.json"
BACKUP_SUBDIR = "backup"

Strategy = config_lib.StrategyName


class DistributeError(errors.ConfigError):
    """The distribution setup is wrong; the message says what to change."""


# --------------------------------------------------------------------------
# TF_CONFIG
# --------------------------------------------------------------------------


def read_tf_config(environ: Mapping[str, str] = os.environ, allow_ps: bool = False,
                   required: bool = True) -> Optional[Dict[str, Any]]:
    """Parses and checks TF_CONFIG.

    Args:
      environ: where to read TF_CONFIG from.
      allow_ps: whether 'ps' tasks may appear (ParameterServerStrategy) or not
        (MultiWorkerMirroredStrategy takes only chief and worker tasks).
      required: when False, a missing TF_CONFIG returns None instead of raising.

    Raises:
      DistributeError: TF_CONFIG is missing (and required), not JSON, or does not describe
        a cluster this process is a task of.
    """
    text = environ.get(TF_CONFIG)
    if not text:
        if not required:
            return None
        raise DistributeError(
            "TF_CONFIG is not set: multi-worker training needs the cluster description (a "
            "TFJob or Vertex AI sets it); locally, set runtime.num_workers=N to let the "
            "Trainer start N workers on 127.0.0.1, or set TF_CONFIG by hand")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise DistributeError(f"TF_CONFIG is not JSON: {error}") from error
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise DistributeError("TF_CONFIG needs a 'cluster' mapping and a 'task' mapping")
    unknown = sorted(set(cluster) - set(CLUSTER_TASK_TYPES))
    if unknown:
        raise DistributeError(f"TF_CONFIG cluster has unknown task type '{unknown[0]}' "
                              f"(allowed: {', '.join(CLUSTER_TASK_TYPES)})")
    if "ps" in cluster and not allow_ps:
        raise DistributeError("TF_CONFIG has 'ps' tasks: that is ParameterServerStrategy "
                              "(runtime.strategy=parameter_server); MultiWorkerMirroredStrategy "
                              "takes only chief and worker replicas")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise DistributeError("TF_CONFIG cluster has no worker or chief addresses")
    for task_type, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise DistributeError(f"TF_CONFIG cluster '{task_type}' must be a list of host:port")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster or not isinstance(index, int) or not (
            0 <= index < len(cluster[task_type])):
        raise DistributeError(f"TF_CONFIG task {task} is not one of the cluster's tasks")
    return tf_config


def is_chief(tf_config: Optional[Dict[str, Any]]) -> bool:
    """The chief writes the model: the 'chief' task, or worker 0 when there is no chief.

    Without TF_CONFIG (one machine) the only process is the chief.
    """
    if tf_config is None:
        return True
    return is_chief_task(tf_config["task"]["type"], tf_config["task"]["index"],
                         has_chief="chief" in tf_config["cluster"])


def is_chief_task(task_type: Optional[str], task_index: Optional[int], has_chief: bool) -> bool:
    """Chief rule for a (task_type, index) pair; task_type None means a single process."""
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return not has_chief and task_type == "worker" and task_index == 0


def local_tf_config(ports: Sequence[int], index: int, host: str = "127.0.0.1") -> Dict[str, Any]:
    """TF_CONFIG of worker `index` of a local cluster of len(ports) workers."""
    return {"cluster": {"worker": [f"{host}:{port}" for port in ports]},
            "task": {"type": "worker", "index": index}}


# --------------------------------------------------------------------------
# The strategy factory
# --------------------------------------------------------------------------


def visible_gpus() -> List[Any]:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def resolve_auto(gpu_count: int) -> Strategy:
    """`auto`: mirrored over more than one GPU, otherwise one device."""
    return Strategy.MIRRORED if gpu_count > 1 else Strategy.ONE_DEVICE


def tpu_address(runtime: config_lib.RuntimeConfig,
                environ: Mapping[str, str] = os.environ) -> str:
    """runtime.tpu_address, else $TPU_NAME / $TPU_ADDRESS; raises when none is set."""
    if runtime.tpu_address:
        return runtime.tpu_address
    for name in TPU_ADDRESS_ENVIRONMENT:
        if environ.get(name):
            return environ[name]
    raise DistributeError("runtime.strategy is tpu but no TPU is named: set runtime.tpu_address "
                          "(a TPU name or grpc://host:8470, or 'local' on a TPU VM) or $TPU_NAME")


def parameter_server_resolver(environ: Mapping[str, str] = os.environ):
    """A TFConfigClusterResolver for ParameterServerStrategy, after checking TF_CONFIG.

    Raises:
      DistributeError: TF_CONFIG is missing or lacks the chief, worker and ps tasks.
    """
    import tensorflow as tf

    tf_config = read_tf_config(environ, allow_ps=True)
    cluster = tf_config["cluster"]
    missing = [task for task in ("chief", "worker", "ps") if not cluster.get(task)]
    if missing:
        raise DistributeError(
            f"runtime.strategy is parameter_server but TF_CONFIG has no {', '.join(missing)} "
            "tasks: ParameterServerStrategy needs a chief (the coordinator that runs the "
            "Trainer), workers and ps tasks")
    # TFConfigClusterResolver reads os.environ; pass the checked config explicitly.
    spec = tf.train.ClusterSpec(cluster)
    task = tf_config["task"]
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=task["type"], task_id=task["index"], rpc_layer="grpc")


def create_strategy(runtime: config_lib.RuntimeConfig, environ: Mapping[str, str] = os.environ,
                    tpu_resolver_factory: Optional[Callable[[str], Any]] = None,
                    parameter_server_factory: Optional[Callable[[Any], Any]] = None):
    """The tf.distribute strategy runtime.strategy names.

    Multi-worker strategies must be created before TensorFlow runs any op in the process.

    Args:
      runtime: the run's runtime section.
      environ: where TF_CONFIG and the TPU variables are read.
      tpu_resolver_factory: builds the TPU cluster resolver from an address (default
        TPUClusterResolver); tests pass a fake, since no TPU exists there.
      parameter_server_factory: builds the strategy from a cluster resolver (default
        ParameterServerStrategy); tests pass a fake, since no ps cluster exists there.

    Raises:
      DistributeError: the strategy cannot be built here (no TF_CONFIG, no TPU, ...).
    """
    import tensorflow as tf

    name = runtime.strategy
    if name == Strategy.AUTO:
        name = resolve_auto(len(visible_gpus()))
    if name == Strategy.ONE_DEVICE:
        # TF's default strategy: one replica on the default device (the first GPU, else
        # the CPU). Not OneDeviceStrategy, which Keras' BackupAndRestore refuses.
        return tf.distribute.get_strategy()
    if name == Strategy.MIRRORED:
        return tf.distribute.MirroredStrategy()
    if name == Strategy.MULTI_WORKER_MIRRORED:
        read_tf_config(environ)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == Strategy.TPU:
        address = tpu_address(runtime, environ)
        factory = tpu_resolver_factory or (
            lambda tpu: tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu))
        try:
            resolver = factory(address)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise DistributeError(f"the TPU at {address!r} cannot be reached ({error}); check "
                                  "runtime.tpu_address and that this VM may use it") from error
        return tf.distribute.TPUStrategy(resolver)
    if name == Strategy.PARAMETER_SERVER:
        resolver = parameter_server_resolver(environ)
        factory = parameter_server_factory or tf.distribute.experimental.ParameterServerStrategy
        return factory(resolver)
    raise DistributeError(f"runtime.strategy: unknown strategy {name!r}")


_WORKER_STRATEGY: List[Any] = []


def use_strategy(strategy) -> None:
    """Makes run_fn train under strategy (a worker creates it first, then calls run_fn)."""
    _WORKER_STRATEGY[:] = [strategy]


def current_strategy(runtime: config_lib.RuntimeConfig):
    """The strategy run_fn trains under: the one set by use_strategy, else the one whose
    scope is open, else a new one from runtime.strategy."""
    import tensorflow as tf

    if _WORKER_STRATEGY:
        return _WORKER_STRATEGY[0]
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    return create_strategy(runtime)


def strategy_task(strategy) -> Dict[str, Any]:
    """This process's task: {'type', 'index', 'chief'} (type None on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    task_index = getattr(resolver, "task_id", None) if resolver is not None else None
    has_chief = False
    if task_type is not None:
        has_chief = "chief" in resolver.cluster_spec().as_dict()
    return {"type": task_type, "index": task_index,
            "chief": is_chief_task(task_type, task_index, has_chief)}


def needs_local_workers(runtime: config_lib.RuntimeConfig,
                        environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the Trainer must start runtime.num_workers local worker processes.

    True for multi_worker_mirrored with num_workers > 1 and no TF_CONFIG (on a cluster,
    the scheduler starts the workers and sets TF_CONFIG instead).
    """
    return (runtime.strategy == Strategy.MULTI_WORKER_MIRRORED and runtime.num_workers > 1
            and not environ.get(TF_CONFIG))


# --------------------------------------------------------------------------
# Batch size, learning rate, sharding
# --------------------------------------------------------------------------


def global_batch_size(per_replica_batch_size: int, num_replicas: int) -> int:
    """The batch the dataset is batched with; the strategy splits it over the replicas."""
    return per_replica_batch_size * num_replicas


def scaled_learning_rate(learning_rate: float, num_replicas: int,
                         rule: config_lib.LearningRateScaling) -> float:
    """The linear scaling rule (Goyal et al. 2017): the rate grows with the global batch.

    trainer.learning_rate is tuned for trainer.batch_size examples per step; with N replicas
    each step sees N times as many examples, so the rate is multiplied by N.
    """
    if rule == config_lib.LearningRateScaling.LINEAR:
        return learning_rate * num_replicas
    return learning_rate


@dataclasses.dataclass(frozen=True)
class Distribution:
    """What a run made of the per-replica trainer settings on its replicas.

    The config keeps trainer.batch_size and trainer.learning_rate per replica, as the user
    wrote them; this is recorded beside it (effective_config.yaml's `distribution:` block,
    training_stats.json), so that running a saved config again scales it once.
    """

    replicas: int
    per_replica_batch_size: int  # trainer.batch_size
    global_batch_size: int  # the batch the dataset is batched with
    base_learning_rate: float  # trainer.learning_rate
    learning_rate: float  # the rate training used: scaled by learning_rate_scaling
    learning_rate_scaling: str
    workers: int = 1
    strategy: str = ""

    def scaled(self, trainer: config_lib.TrainerConfig) -> config_lib.TrainerConfig:
        """trainer with the global batch size and the scaled learning rate (for training;
        never to save as a config)."""
        return dataclasses.replace(trainer, batch_size=self.global_batch_size,
                                   learning_rate=self.learning_rate)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def plan_distribution(trainer: config_lib.TrainerConfig, num_replicas: int,
                      rule: config_lib.LearningRateScaling, workers: int = 1,
                      strategy: str = "") -> Distribution:
    """The global batch and the learning rate for trainer's per-replica settings.

    Args:
      trainer: the trainer section as configured (batch_size per replica).
      num_replicas: the strategy's replicas in sync.
      rule: runtime.learning_rate_scaling.
      workers: worker processes taking part (recorded only).
      strategy: the strategy's class name (recorded only).
    """
    return Distribution(
        replicas=num_replicas, per_replica_batch_size=trainer.batch_size,
        global_batch_size=global_batch_size(trainer.batch_size, num_replicas),
        base_learning_rate=trainer.learning_rate,
        learning_rate=scaled_learning_rate(trainer.learning_rate, num_replicas, rule),
        learning_rate_scaling=config_lib.LearningRateScaling(rule).value, workers=workers,
        strategy=strategy)


def scaled_trainer(trainer: config_lib.TrainerConfig, num_replicas: int,
                   rule: config_lib.LearningRateScaling) -> config_lib.TrainerConfig:
    """trainer with the global batch size and the scaled learning rate."""
    return plan_distribution(trainer, num_replicas, rule).scaled(trainer)


def list_files(file_patterns: Sequence[str]) -> List[str]:
    """The files matching the patterns (TFX passes split patterns like Split-train/*)."""
    import tensorflow as tf

    if isinstance(file_patterns, str):
        file_patterns = [file_patterns]
    return [path for pattern in file_patterns for path in tf.io.gfile.glob(pattern)]


def shard_policy(num_files: int, num_workers: int):
    """FILE when every worker gets at least one file, else DATA (e.g. a single file)."""
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if num_files >= num_workers > 1 else policy.DATA


def shard_options(num_files: int, num_workers: int):
    """tf.data.Options with the auto-shard policy for num_files input files."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = shard_policy(num_files, num_workers)
    return options


def num_workers_of(strategy) -> int:
    """Worker processes taking part in the strategy (1 on one machine)."""
    extended = getattr(strategy, "extended", None)
    return int(getattr(extended, "_num_workers", 1) or 1)


# --------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------


def check_mixed_precision(runtime: config_lib.RuntimeConfig, gpu_count: int) -> None:
    """mixed_float16 needs a GPU; the alternative on CPUs and TPUs is mixed_bfloat16."""
    if runtime.mixed_precision == config_lib.MixedPrecision.MIXED_FLOAT16 and gpu_count == 0:
        raise DistributeError(
            "runtime.mixed_precision: mixed_float16 needs a GPU and none is visible; use "
            "mixed_bfloat16 (CPUs, TPUs) or none")


@contextlib.contextmanager
def mixed_precision_policy(runtime: config_lib.RuntimeConfig) -> Iterator[Optional[str]]:
    """Sets the Keras global policy for the block and restores the previous one after.

    Models built inside compute in float16/bfloat16 with float32 variables; Keras wraps
    the optimizer in a LossScaleOptimizer under mixed_float16.
    """
    import tensorflow as tf

    if runtime.mixed_precision == config_lib.MixedPrecision.NONE:
        yield None
        return
    check_mixed_precision(runtime, len(visible_gpus()))
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(runtime.mixed_precision.value)
    try:
        yield runtime.mixed_precision.value
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def check_float32_outputs(model) -> None:
    """Under a mixed policy the model's outputs must be float32 (a stable softmax and loss).

    Raises:
      DistributeError: an output is float16/bfloat16: give the model's last layer
        dtype="float32" (as models/cnn.py does).
    """
    for output in model.outputs:
        if output.dtype.name != "float32":
            raise DistributeError(
                f"model {model.name!r} outputs {output.dtype.name} under mixed precision: "
                "build its output layer with dtype='float32'")


@contextlib.contextmanager
def export_tracing() -> Iterator[None]:
    """Traces serving signatures the way tf.saved_model.save traces its own functions.

    A Task's serving_signatures returns concrete functions, traced when it is called. Under
    MultiWorkerMirroredStrategy, reading a sync-on-read variable (BatchNorm's moving
    statistics) outside save() all-reduces it across workers, and TensorFlow refuses to
    save a function that contains a collective. Inside save()'s context (variable policy
    NONE) the functions read the variables directly instead; save() still writes the
    variables' aggregated values. Outside a strategy this changes nothing.
    """
    import tensorflow as tf
    from tensorflow.python.saved_model import save_context  # no public equivalent

    with save_context.save_context(tf.saved_model.SaveOptions()):
        yield


# --------------------------------------------------------------------------
# Output directories and callbacks
# --------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerDirs:
    """Where this worker writes; non-chief dirs are temporary and removed by cleanup()."""

    serving_model_dir: str
    model_run_dir: str
    chief: bool
    temporary: Optional[str] = None

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.temporary, ignore_errors=True)


def worker_dirs(serving_model_dir: str, model_run_dir: str, chief: bool) -> WorkerDirs:
    """The chief writes to the real dirs; the others to a temp dir (saving is collective,
    so every worker must save, but only the chief's copy is kept)."""
    if chief:
        return WorkerDirs(serving_model_dir, model_run_dir, chief=True)
    temporary = tempfile.mkdtemp(prefix="tfprod-worker-")
    return WorkerDirs(os.path.join(temporary, "serving_model"),
                      os.path.join(temporary, "model_run"), chief=False, temporary=temporary)


def backup_dir(runtime: config_lib.RuntimeConfig, model_run_dir: str) -> str:
    """BackupAndRestore's dir: runtime.backup_dir, else <model_run_dir>/backup.

    Every worker must get the same path (the chief's real model_run_dir, not a worker's
    temporary one): Keras writes the chief's backup there and restores all workers from it.
    """
    return runtime.backup_dir or os.path.join(model_run_dir, BACKUP_SUBDIR)


def task_label(task: Dict[str, Any]) -> str:
    if task.get("type") is None:
        return "single"
    return f"{task['type']}-{task['index']}"


def progress_dir(runtime: config_lib.RuntimeConfig, model_run_dir: str) -> str:
    """Beside the backup dir (which BackupAndRestore deletes when training completes)."""
    return os.path.normpath(os.path.join(backup_dir(runtime, model_run_dir), os.pardir,
                                         "progress"))


def progress_callback(directory: str, task: Dict[str, Any]):
    """A callback writing <directory>/progress-<task>.json: each (re)start and finished epoch.

    Placed after BackupAndRestore, so the first epoch it sees is the restored one:
    a resumed job records initial_epoch > 0 and initial_step > 0.
    """
    import tensorflow as tf

    label = task_label(task)
    path = os.path.join(directory, PROGRESS_FILE_PATTERN.format(task=label))

    def write(record: Dict[str, Any]) -> None:
        os.makedirs(directory, exist_ok=True)
        partial = path + ".tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(partial, path)

    class Progress(tf.keras.callbacks.Callback):
        """Records where training starts (after any restore) and each finished epoch."""

        def __init__(self):
            super().__init__()
            self.record: Dict[str, Any] = {}
            self.started = False

        def on_train_begin(self, logs=None):
            self.started = False

        def on_epoch_begin(self, epoch, logs=None):
            # The first epoch fit runs: Keras starts after the epoch BackupAndRestore
            # restored, and the optimizer's step counter was restored with the weights.
            if self.started:
                return
            self.started = True
            previous: Dict[str, Any] = {}
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    previous = json.load(handle)
            step = int(self.model.optimizer.iterations.numpy())
            starts = previous.get("starts", []) + [
                {"initial_epoch": int(epoch), "initial_step": step, "pid": os.getpid()}]
            self.record = {"task": label, "starts": starts,
                           "epochs_done": previous.get("epochs_done", [])}
            write(self.record)
            print(f"[{label}] training starts at epoch {epoch}, step {step}", flush=True)

        def on_epoch_end(self, epoch, logs=None):
            self.record["epochs_done"].append(
                {"epoch": int(epoch), "step": int(self.model.optimizer.iterations.numpy()),
                 "pid": os.getpid()})
            write(self.record)

    return Progress()


def training_callbacks(runtime: config_lib.RuntimeConfig, model_run_dir: str,
                       task: Dict[str, Any]) -> List[Any]:
    """BackupAndRestore (in backup_dir) then the progress record beside it."""
    import tensorflow as tf

    directory = backup_dir(runtime, model_run_dir)
    return [tf.keras.callbacks.BackupAndRestore(directory, save_freq="epoch",
                                                delete_checkpoint=True),
            progress_callback(progress_dir(runtime, model_run_dir), task)]


def read_progress(model_run_dir: str, runtime: Optional[config_lib.RuntimeConfig] = None
                  ) -> Dict[str, Dict[str, Any]]:
    """The progress records of every task, keyed by task label."""
    directory = progress_dir(runtime or config_lib.RuntimeConfig(), model_run_dir)
    records = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    record = json.load(handle)
                records[record["task"]] = record
    return records
