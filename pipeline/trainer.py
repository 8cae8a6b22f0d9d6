"""The Trainer's run_fn: builds the registered model, fits it, exports the SavedModel.

TFX calls run_fn(fn_args) with the transformed examples, the Transform graph
and the experiment config (in fn_args.custom_config, as config.to_dict wrote it). The
config was validated and checked before the pipeline was built; here it is parsed once.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.contract import layout
from tfprod.models import registry
from tfprod.pipeline import keras_progress, recipes, tuning
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import distribute
from tfprod.pipeline import tasks
from tfprod.pipeline.tasks import image as image_task
from tfprod.serving import warmup

EXPERIMENT_CONFIG_KEY = "experiment"
TRAINING_STATS_FILE = layout.TRAINING_STATS_FILE
# The config the Trainer trained with (the Tuner's best values applied), in model_run.
EFFECTIVE_CONFIG_FILE = layout.EFFECTIVE_CONFIG_FILE
EFFECTIVE_CONFIG_HEADER = (
    "# The experiment config the Trainer trained with, the Tuner's best values applied.\n"
    "# trainer.batch_size and trainer.learning_rate are per replica, as in the config you\n"
    "# wrote: `tfprod run --config` runs this file as it is, on any number of replicas.\n"
    "# The `distribution:` block records what this run made of them on its replicas\n"
    "# (global batch, scaled learning rate); loading the file skips it.\n")


class ThroughputCallback(tf.keras.callbacks.Callback):
    """Records the wall time and example count of each epoch's training (not validation)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.epochs: List[Dict[str, float]] = []
        self._start = 0.0
        self._steps = 0
        self._validation_seconds = 0.0
        self._validation_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._steps = 0
        self._validation_seconds = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_test_begin(self, logs=None):
        self._validation_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._validation_seconds += time.perf_counter() - self._validation_start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start - self._validation_seconds
        examples = self._steps * self.batch_size
        self.epochs.append({"epoch": epoch, "steps": self._steps, "examples": examples,
                            "seconds": seconds, "examples_per_second": examples / seconds})

    def steady_examples_per_second(self) -> Optional[float]:
        """Throughput after the first epoch (which also traces graphs and fills caches)."""
        later = self.epochs[1:] or self.epochs
        if not later:
            return None
        return sum(e["examples"] for e in later) / sum(e["seconds"] for e in later)


def count_records(file_pattern: List[str]) -> int:
    files = tf.io.gfile.glob(file_pattern) if isinstance(file_pattern, str) else [
        path for pattern in file_pattern for path in tf.io.gfile.glob(pattern)]
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1).numpy())


def make_dataset(file_pattern: List[str], tf_transform_output: tft.TFTransformOutput,
                 batch_size: int, shuffle: bool, seed: int, shuffle_buffer: int,
                 repeat: bool, task: Optional[tasks.Task] = None) -> tf.data.Dataset:
    """Transformed tf.Examples -> (model input, label) batches.

    The serialized records are cached in memory after the first pass, shuffled
    per epoch, then parsed a whole batch at a time; task.features_and_label picks
    the model's input and the label (default: the image task's).
    """
    task = task or image_task.ImageClassificationTask()
    files = [path for pattern in file_pattern for path in tf.io.gfile.glob(pattern)]
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_pattern}")
    feature_spec = tf_transform_output.transformed_feature_spec()
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP",
                                      num_parallel_reads=tf.data.AUTOTUNE).cache()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size)

    def parse(serialized):
        return task.features_and_label(tf.io.parse_example(serialized, feature_spec))

    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def build_and_compile(experiment: config_lib.ExperimentConfig,
                      total_steps: Optional[int] = None) -> tf.keras.Model:
    """The registered model, compiled with the trainer's recipe and the task's loss.

    total_steps (the run's optimizer steps) sizes the learning-rate schedule; it is
    needed for every schedule but constant, step and plateau.
    """
    task = tasks.get_task(experiment)
    model = registry.build_model(recipes.effective_model_config(experiment.model),
                                 task.model_inputs(experiment))
    optimizer = recipes.build_optimizer(experiment.trainer, total_steps or 1)
    task.compile_model(model, experiment, optimizer=optimizer)
    return model


def training_schedule(num_examples: int, trainer: config_lib.TrainerConfig) -> Dict[str, int]:
    """Epochs and steps per epoch, honouring trainer.max_steps."""
    steps_per_epoch = max(1, math.ceil(num_examples / trainer.batch_size))
    epochs = trainer.epochs
    if trainer.max_steps is not None and trainer.max_steps < steps_per_epoch * epochs:
        steps_per_epoch = min(steps_per_epoch, trainer.max_steps)
        epochs = math.ceil(trainer.max_steps / steps_per_epoch)
    return {"epochs": epochs, "steps_per_epoch": steps_per_epoch}


def experiment_from_custom_config(custom_config: Dict[str, Any]) -> config_lib.ExperimentConfig:
    """The experiment create_pipeline serialized into the Trainer's (and Tuner's) custom_config.

    Parsed once, types checked; not validated again: it was validated when it was loaded
    and checked (pipeline.checks) before the pipeline was built.
    """
    return config_lib.from_dict(custom_config[EXPERIMENT_CONFIG_KEY], validate=False)


def effective_config_yaml(experiment: config_lib.ExperimentConfig,
                          plan: distribute.Distribution) -> str:
    """effective_config.yaml: the per-replica config, then the `distribution:` record."""
    return config_lib.config_yaml(
        experiment, records={config_lib.DISTRIBUTION_KEY: plan.to_dict()},
        header=EFFECTIVE_CONFIG_HEADER)


def write_effective_config(experiment: config_lib.ExperimentConfig,
                           plan: distribute.Distribution, model_run_dir: str) -> str:
    """Writes <model_run_dir>/effective_config.yaml (any filesystem TensorFlow opens).

    Args:
      experiment: the config as the user wrote it (per-replica batch size and learning
        rate), the Tuner's values applied; not the one scaled for the replicas.
      plan: what the run made of it on its replicas.
      model_run_dir: the Trainer's model_run directory.

    Returns:
      The file's path.
    """
    tf.io.gfile.makedirs(model_run_dir)
    path = os.path.join(model_run_dir, EFFECTIVE_CONFIG_FILE)
    with tf.io.gfile.GFile(path, "w") as out:
        out.write(effective_config_yaml(experiment, plan))
    return path


def run_fn(fn_args: Any) -> None:
    """TFX Trainer entry point (GenericExecutor).

    Trains under the strategy runtime.strategy names (pipeline.distribute), or under the
    one already in scope (kubeflow.train_worker, pipeline.multiworker workers). For local
    multi-worker training it starts runtime.num_workers worker processes and waits.
    """
    train(fn_args, experiment_from_custom_config(fn_args.custom_config))


def train(fn_args: Any, experiment: config_lib.ExperimentConfig) -> None:
    """run_fn on an experiment already parsed (a multi-worker worker parses job.json once).

    Args:
      fn_args: TFX's FnArgs, or anything with the multiworker.JobFnArgs fields.
      experiment: the experiment of fn_args.custom_config, before the Tuner's values.
    """
    # The Tuner's best values (Trainer(hyperparameters=...)), applied to the config.
    hyperparameters = tuning.hyperparameter_values(getattr(fn_args, "hyperparameters", None))
    experiment = tuning.apply_hyperparameters(experiment, hyperparameters)
    if distribute.needs_local_workers(experiment.runtime):
        from tfprod.pipeline import multiworker

        multiworker.run_local_job(fn_args, experiment)
        return
    strategy = distribute.current_strategy(experiment.runtime)
    task = tasks.get_task(experiment)
    runtime = experiment.runtime
    worker = distribute.strategy_task(strategy)
    replicas = strategy.num_replicas_in_sync
    num_workers = distribute.num_workers_of(strategy)
    # trainer.batch_size is per replica: batch with the global batch, scale the rate. The
    # per-replica config (user_experiment) is what effective_config.yaml keeps.
    plan = distribute.plan_distribution(experiment.trainer, replicas,
                                        runtime.learning_rate_scaling, workers=num_workers,
                                        strategy=type(strategy).__name__)
    trainer = plan.scaled(experiment.trainer)
    user_experiment = experiment
    experiment = dataclasses.replace(experiment, trainer=trainer)
    dirs = distribute.worker_dirs(fn_args.serving_model_dir, fn_args.model_run_dir,
                                  worker["chief"])
    tf.keras.utils.set_random_seed(trainer.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    num_train = count_records(fn_args.train_files)
    num_eval = count_records(fn_args.eval_files)
    schedule = training_schedule(num_train, trainer)
    train_dataset = make_dataset(fn_args.train_files, tf_transform_output, trainer.batch_size,
                                 shuffle=True, seed=trainer.seed,
                                 shuffle_buffer=trainer.shuffle_buffer, repeat=True, task=task)
    train_dataset = task.augment_dataset(train_dataset, experiment)  # training only
    eval_dataset = make_dataset(fn_args.eval_files, tf_transform_output, trainer.batch_size,
                                shuffle=False, seed=trainer.seed,
                                shuffle_buffer=trainer.shuffle_buffer, repeat=False, task=task)
    train_dataset = train_dataset.with_options(distribute.shard_options(
        len(distribute.list_files(fn_args.train_files)), num_workers))
    eval_dataset = eval_dataset.with_options(distribute.shard_options(
        len(distribute.list_files(fn_args.eval_files)), num_workers))

    throughput = ThroughputCallback(trainer.batch_size)
    # BackupAndRestore uses the real model_run_dir on every worker (the chief's backup).
    callbacks = distribute.training_callbacks(runtime, fn_args.model_run_dir, worker)
    callbacks.append(throughput)
    if worker["chief"]:  # only the chief writes TensorBoard logs
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=dirs.model_run_dir,
                                                        update_freq="epoch"))
    callbacks += recipes.build_callbacks(trainer)
    if worker["chief"]:  # a bar (terminal) or periodic lines (logs) inside each epoch
        callbacks.append(keras_progress.EpochProgress(schedule["epochs"],
                                                      schedule["steps_per_epoch"]))
    print(f"training on {replicas} replica(s) ({type(strategy).__name__}, task "
          f"{distribute.task_label(worker)}): global batch {trainer.batch_size}, "
          f"learning rate {trainer.learning_rate:g}", flush=True)
    with distribute.mixed_precision_policy(runtime) as policy:
        with strategy.scope():
            model = build_and_compile(experiment,
                                      schedule["epochs"] * schedule["steps_per_epoch"])
            if policy:
                distribute.check_float32_outputs(model)
            history = model.fit(train_dataset, epochs=schedule["epochs"],
                                steps_per_epoch=schedule["steps_per_epoch"],
                                validation_data=eval_dataset, callbacks=callbacks, verbose=0)
            # With EMA: export the better of the averaged and the raw weights (every worker
            # evaluates, so all keep the same).
            ema_choice = recipes.keep_better_weights(model, eval_dataset, trainer)
        if ema_choice is not None and worker["chief"]:
            print(f"  {recipes.describe_choice(ema_choice)}", flush=True)
        # Every worker saves (saving is collective); only the chief's copy is kept. Outside
        # the scope, with signatures traced as save() traces (distribute.export_tracing).
        export_started = time.perf_counter()
        if worker["chief"]:
            print("  exporting the SavedModel (serving signatures) ...", flush=True)
        with distribute.export_tracing():
            signatures = task.serving_signatures(model, tf_transform_output, experiment)
        tf.saved_model.save(model, dirs.serving_model_dir, signatures=signatures)
        if worker["chief"]:
            print(f"  exported in {time.perf_counter() - export_started:.1f}s", flush=True)
    if not worker["chief"]:
        dirs.cleanup()
        return
    # TF Serving (and tfprod serve) replay these on load, so the first request is not slow.
    requests = task.warmup_requests(experiment)
    if requests:
        warmup.write_warmup_requests(fn_args.serving_model_dir, requests)

    stats = {
        "train_examples": num_train,
        "eval_examples": num_eval,
        "batch_size": trainer.batch_size,
        "replicas": replicas,
        "workers": num_workers,
        "strategy": type(strategy).__name__,
        "learning_rate": trainer.learning_rate,
        "mixed_precision": runtime.mixed_precision.value,
        "epochs_run": len(history.epoch),
        "steps_per_epoch": schedule["steps_per_epoch"],
        "epochs": throughput.epochs,
        "steady_examples_per_second": throughput.steady_examples_per_second(),
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
        "hyperparameters": hyperparameters,
        "effective_config": config_lib.to_dict(user_experiment),  # per replica
        "distribution": plan.to_dict(),
    }
    if ema_choice is not None:
        stats["ema"] = ema_choice
    write_effective_config(user_experiment, plan, fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TRAINING_STATS_FILE), "w") as out:
        json.dump(stats, out, indent=2)
