"""pipeline.distribute: strategy factory, TF_CONFIG, the batch/LR rule, sharding, precision.

In-process tests; the multi-process ones are in tests/test_distribute_multiworker.py.
"""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfprod.pipeline import config as config_lib
from tfprod.pipeline import distribute
from tfprod.pipeline.distribute import DistributeError

Strategy = config_lib.StrategyName


def runtime(**values):
    config = config_lib.RuntimeConfig(**values)
    config.validate()
    return config


def environ_with(tf_config):
    return {distribute.TF_CONFIG: json.dumps(tf_config)}


TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
               "task": {"type": "worker", "index": 1}}
PS_CLUSTER = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"], "ps": ["p0:1"]},
              "task": {"type": "chief", "index": 0}}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("override, message", [
    ("runtime.strategy=gpus", "runtime.strategy: expected one of"),
    ("runtime.num_workers=0", "runtime.num_workers: expected an integer >= 1"),
    ("runtime.num_workers=2", "1 unless runtime.strategy is multi_worker_mirrored"),
    ("runtime.mixed_precision=half", "runtime.mixed_precision: expected one of"),
    ("runtime.worker_restarts=-1", "runtime.worker_restarts"),
])
def test_bad_runtime_settings_are_refused(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(None, [override])


def test_float16_on_tpu_is_refused():
    with pytest.raises(config_lib.ConfigError, match="mixed_bfloat16 or none on TPU"):
        config_lib.load_config(None, ["runtime.strategy=tpu",
                                      "runtime.mixed_precision=mixed_float16"])


def test_local_multi_worker_settings_load():
    experiment = config_lib.load_config(None, ["runtime.strategy=multi_worker_mirrored",
                                               "runtime.num_workers=2"])
    assert experiment.runtime.strategy == Strategy.MULTI_WORKER_MIRRORED
    assert distribute.needs_local_workers(experiment.runtime, environ={})
    # On a cluster TF_CONFIG is set and the scheduler has started the workers.
    assert not distribute.needs_local_workers(experiment.runtime,
                                              environ=environ_with(TWO_WORKERS))


# ---------------------------------------------------------------- TF_CONFIG


def test_tf_config_is_parsed_and_the_chief_found():
    tf_config = distribute.read_tf_config(environ_with(TWO_WORKERS))
    assert not distribute.is_chief(tf_config)
    assert distribute.is_chief(dict(TWO_WORKERS, task={"type": "worker", "index": 0}))
    assert distribute.is_chief(distribute.read_tf_config(environ_with(PS_CLUSTER),
                                                         allow_ps=True))
    assert not distribute.is_chief({"cluster": {"chief": ["c:1"], "worker": ["w:1"]},
                                    "task": {"type": "worker", "index": 0}})
    assert distribute.is_chief(None)
    assert distribute.read_tf_config({}, required=False) is None


@pytest.mark.parametrize("text, message", [
    (None, "TF_CONFIG is not set"),
    ("{not json", "not JSON"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "'task' mapping"),
    (json.dumps({"cluster": {"master": ["a:1"]}, "task": {"type": "master", "index": 0}}),
     "unknown task type 'master'"),
    (json.dumps(PS_CLUSTER), "ParameterServerStrategy"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}),
     "not one of the cluster's tasks"),
    (json.dumps({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}),
     "list of host:port"),
])
def test_bad_tf_config_is_refused(text, message):
    environ = {} if text is None else {distribute.TF_CONFIG: text}
    with pytest.raises(DistributeError, match=message):
        distribute.read_tf_config(environ)


def test_local_tf_config_names_every_worker():
    tf_config = distribute.local_tf_config([5001, 5002], 1)
    assert tf_config == TWO_WORKERS | {"cluster": {"worker": ["127.0.0.1:5001",
                                                              "127.0.0.1:5002"]}}
    assert distribute.read_tf_config(environ_with(tf_config))["task"]["index"] == 1


# ---------------------------------------------------------------- factory


def test_auto_picks_mirrored_only_with_several_gpus():
    assert distribute.resolve_auto(0) == Strategy.ONE_DEVICE
    assert distribute.resolve_auto(1) == Strategy.ONE_DEVICE
    assert distribute.resolve_auto(2) == Strategy.MIRRORED


def test_one_device_mirrored_and_auto_on_this_machine():
    strategy = distribute.create_strategy(runtime(strategy=Strategy.ONE_DEVICE))
    # The default strategy: one replica, which Keras' BackupAndRestore accepts
    # (it refuses OneDeviceStrategy).
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
    assert distribute.strategy_task(strategy) == {"type": None, "index": None, "chief": True}
    mirrored = distribute.create_strategy(runtime(strategy=Strategy.MIRRORED))
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == max(1, len(tf.config.list_physical_devices("GPU")))
    auto = distribute.create_strategy(runtime())
    expected = (tf.distribute.MirroredStrategy if len(tf.config.list_physical_devices("GPU")) > 1
                else type(tf.distribute.get_strategy()))
    assert isinstance(auto, expected)


def test_one_device_training_runs_with_backup_and_restore(tmp_path):
    strategy = distribute.create_strategy(runtime(strategy=Strategy.ONE_DEVICE))
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
        model.compile(optimizer="sgd", loss="mse")
    callbacks = distribute.training_callbacks(runtime(strategy=Strategy.ONE_DEVICE),
                                              str(tmp_path), distribute.strategy_task(strategy))
    history = model.fit(np.ones((8, 2), np.float32), np.ones((8, 1), np.float32), epochs=2,
                        batch_size=4, callbacks=callbacks, verbose=0)
    assert len(history.history["loss"]) == 2


def test_multi_worker_without_tf_config_says_how_to_fix_it():
    with pytest.raises(DistributeError, match="runtime.num_workers=N"):
        distribute.create_strategy(runtime(strategy=Strategy.MULTI_WORKER_MIRRORED), environ={})


def test_tpu_without_an_address_is_refused():
    with pytest.raises(DistributeError, match="runtime.tpu_address"):
        distribute.create_strategy(runtime(strategy=Strategy.TPU), environ={})
    assert distribute.tpu_address(runtime(strategy=Strategy.TPU),
                                  {"TPU_NAME": "my-tpu"}) == "my-tpu"
    assert distribute.tpu_address(runtime(strategy=Strategy.TPU, tpu_address="grpc://h:8470"),
                                  {"TPU_NAME": "x"}) == "grpc://h:8470"


def test_unreachable_tpu_gives_a_clear_error():
    """A fake TPU cluster resolver, because no TPU exists here: it fails the way
    TPUClusterResolver does when a TPU name cannot be looked up; the factory must say
    which TPU it could not reach."""
    addresses = []

    def fake_resolver(address):
        addresses.append(address)
        raise ValueError("Could not lookup TPU metadata from name 'lost-tpu'")

    with pytest.raises(DistributeError, match="TPU at 'lost-tpu' cannot be reached"):
        distribute.create_strategy(runtime(strategy=Strategy.TPU, tpu_address="lost-tpu"),
                                   environ={}, tpu_resolver_factory=fake_resolver)
    assert addresses == ["lost-tpu"]


def test_parameter_server_needs_ps_tasks():
    with pytest.raises(DistributeError, match="TF_CONFIG is not set"):
        distribute.create_strategy(runtime(strategy=Strategy.PARAMETER_SERVER), environ={})
    with pytest.raises(DistributeError, match="no ps tasks"):
        distribute.create_strategy(
            runtime(strategy=Strategy.PARAMETER_SERVER),
            environ=environ_with({"cluster": {"chief": ["c:1"], "worker": ["w:1"]},
                                  "task": {"type": "chief", "index": 0}}))


def test_parameter_server_wiring_with_a_fake_strategy():
    """A fake ParameterServerStrategy (no ps cluster exists here): checks that the factory
    hands it a cluster resolver with TF_CONFIG's chief, workers and ps tasks, as the
    coordinator (the chief) would use them."""
    received = []
    strategy = distribute.create_strategy(
        runtime(strategy=Strategy.PARAMETER_SERVER), environ=environ_with(PS_CLUSTER),
        parameter_server_factory=lambda resolver: received.append(resolver) or "strategy")
    assert strategy == "strategy"
    (resolver,) = received
    assert resolver.cluster_spec().as_dict() == PS_CLUSTER["cluster"]
    assert (resolver.task_type, resolver.task_id) == ("chief", 0)
    assert resolver.master("chief", 0) == "grpc://c:1"
    assert resolver.rpc_layer == "grpc"


# ---------------------------------------------------------------- batch and learning rate


def test_global_batch_and_linear_learning_rate_rule():
    trainer = config_lib.TrainerConfig(batch_size=64, learning_rate=1e-3)
    scaled = distribute.scaled_trainer(trainer, 4, config_lib.LearningRateScaling.LINEAR)
    assert scaled.batch_size == 256 and scaled.learning_rate == pytest.approx(4e-3)
    same = distribute.scaled_trainer(trainer, 4, config_lib.LearningRateScaling.NONE)
    assert same.batch_size == 256 and same.learning_rate == pytest.approx(1e-3)
    one = distribute.scaled_trainer(trainer, 1, config_lib.LearningRateScaling.LINEAR)
    assert (one.batch_size, one.learning_rate) == (64, 1e-3)
    assert trainer.batch_size == 64  # the original is not changed


def test_the_distribution_plan_records_what_scaling_did():
    trainer = config_lib.TrainerConfig(batch_size=32, learning_rate=1e-3)
    plan = distribute.plan_distribution(trainer, 2, config_lib.LearningRateScaling.LINEAR,
                                        workers=2, strategy="MultiWorkerMirroredStrategy")
    assert plan.to_dict() == {
        "replicas": 2, "per_replica_batch_size": 32, "global_batch_size": 64,
        "base_learning_rate": 1e-3, "learning_rate": pytest.approx(2e-3),
        "learning_rate_scaling": "linear", "workers": 2,
        "strategy": "MultiWorkerMirroredStrategy"}
    scaled = plan.scaled(trainer)
    assert (scaled.batch_size, scaled.learning_rate) == (64, pytest.approx(2e-3))


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_rerunning_effective_config_on_n_replicas_scales_once(tmp_path, replicas):
    """effective_config.yaml keeps the per-replica values; the distribution is a record."""
    from tfprod.pipeline import trainer as trainer_lib

    experiment = config_lib.load_config(None, ["trainer.batch_size=32",
                                               "trainer.learning_rate=0.001"])
    rule = experiment.runtime.learning_rate_scaling  # linear
    # What run_fn does: plan for the replicas, train with plan.scaled, save the user's config.
    plan = distribute.plan_distribution(experiment.trainer, replicas, rule)
    path = trainer_lib.write_effective_config(experiment, plan, str(tmp_path / "model_run"))
    assert path.endswith(trainer_lib.EFFECTIVE_CONFIG_FILE)
    record = yaml.safe_load(open(path, encoding="utf-8"))
    assert record["trainer"]["batch_size"] == 32
    assert record["trainer"]["learning_rate"] == pytest.approx(1e-3)
    assert record[config_lib.DISTRIBUTION_KEY]["global_batch_size"] == 32 * replicas
    assert record[config_lib.DISTRIBUTION_KEY]["learning_rate"] == pytest.approx(
        1e-3 * replicas)

    # Run the file again, on the same number of replicas: the same training, not N x N.
    reloaded = config_lib.load_config(path)
    assert reloaded == experiment
    again = distribute.plan_distribution(reloaded.trainer, replicas, rule)
    assert again == plan
    assert again.scaled(reloaded.trainer).batch_size == 32 * replicas
    assert again.scaled(reloaded.trainer).learning_rate == pytest.approx(1e-3 * replicas)


# ---------------------------------------------------------------- sharding


def write_records(path, values):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for value in values:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))})
            ).SerializeToString())


def shard_for_worker(dataset, num_workers, index):
    # What tf.distribute applies to a dataset on each worker (input_lib's auto-sharding).
    from tensorflow.python.data.experimental.ops import distribute as data_distribute

    return data_distribute._AutoShardDataset(dataset, num_workers, index, num_workers)


def read_values(dataset):
    spec = {"x": tf.io.FixedLenFeature([1], tf.int64)}
    return sorted(int(v) for batch in dataset
                  for v in tf.io.parse_example(batch, spec)["x"].numpy().ravel())


def test_single_file_is_sharded_by_data_so_every_worker_gets_a_distinct_part(tmp_path):
    path = tmp_path / "data.gz"
    write_records(path, range(40))
    options = distribute.shard_options(1, 2)
    assert (options.experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.DATA)
    dataset = tf.data.TFRecordDataset([str(path)], compression_type="GZIP").batch(4)
    parts = [read_values(shard_for_worker(dataset.with_options(options), 2, index))
             for index in (0, 1)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(40))
    # FILE sharding cannot split one file over two workers: TF refuses it.
    file_options = tf.data.Options()
    file_options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE)
    with pytest.raises(tf.errors.InvalidArgumentError):
        read_values(shard_for_worker(dataset.with_options(file_options), 2, 0))


def test_several_files_are_sharded_by_file(tmp_path):
    paths = [tmp_path / f"part-{index}.gz" for index in range(4)]
    for index, path in enumerate(paths):
        write_records(path, range(index * 10, index * 10 + 10))
    assert (distribute.shard_policy(4, 2) == tf.data.experimental.AutoShardPolicy.FILE)
    assert (distribute.shard_policy(4, 1) == tf.data.experimental.AutoShardPolicy.DATA)
    dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).interleave(
        lambda name: tf.data.TFRecordDataset(name, compression_type="GZIP")).batch(5)
    dataset = dataset.with_options(distribute.shard_options(4, 2))
    first = read_values(shard_for_worker(dataset, 2, 0))
    second = read_values(shard_for_worker(dataset, 2, 1))
    assert len(first) == len(second) == 20 and not set(first) & set(second)


# ---------------------------------------------------------------- precision, dirs


def test_mixed_float16_without_a_gpu_is_refused():
    mixed = runtime(mixed_precision=config_lib.MixedPrecision.MIXED_FLOAT16)
    with pytest.raises(DistributeError, match="mixed_float16 needs a GPU"):
        distribute.check_mixed_precision(mixed, gpu_count=0)
    distribute.check_mixed_precision(mixed, gpu_count=1)


def test_bfloat16_policy_keeps_the_cnn_output_float32_and_is_restored():
    from tfprod.models import registry

    before = tf.keras.mixed_precision.global_policy().name
    bfloat16 = runtime(mixed_precision=config_lib.MixedPrecision.MIXED_BFLOAT16)
    try:
        with distribute.mixed_precision_policy(bfloat16) as policy:
            assert policy == "mixed_bfloat16"
            model = registry.build_model(
                config_lib.ModelConfig(cnn=config_lib.CnnConfig(filters=[4], dense_units=8)),
                registry.ModelInputs("image_xf", (784,), 10))
            assert model.get_layer("block0_conv0").compute_dtype == "bfloat16"
            assert model.get_layer("block0_conv0").variable_dtype == "float32"
            distribute.check_float32_outputs(model)
            outputs = model(np.random.rand(2, 784).astype(np.float32))
            assert outputs.dtype == tf.float32
            np.testing.assert_allclose(outputs.numpy().sum(axis=1), 1.0, rtol=1e-2)
            low = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
            with pytest.raises(DistributeError, match="dtype='float32'"):
                distribute.check_float32_outputs(low)
    finally:
        tf.keras.mixed_precision.set_global_policy(before)
    assert tf.keras.mixed_precision.global_policy().name == before


def test_only_the_chief_writes_to_the_real_dirs(tmp_path):
    chief = distribute.worker_dirs(str(tmp_path / "serving"), str(tmp_path / "run"), chief=True)
    assert (chief.serving_model_dir, chief.model_run_dir) == (str(tmp_path / "serving"),
                                                              str(tmp_path / "run"))
    other = distribute.worker_dirs(str(tmp_path / "serving"), str(tmp_path / "run"), chief=False)
    assert not other.serving_model_dir.startswith(str(tmp_path))
    assert other.temporary and other.serving_model_dir.startswith(other.temporary)
    other.cleanup()
    assert not tf.io.gfile.exists(other.temporary)
    assert distribute.backup_dir(runtime(), "/r/model_run") == "/r/model_run/backup"
    assert distribute.backup_dir(runtime(backup_dir="/b"), "/r/model_run") == "/b"


def test_a_local_worker_parses_the_job_file_once(tmp_path, monkeypatch):
    """job.json carries the Trainer's custom_config as TFX gave it; a worker parses it once
    and trains with that object (no second parse or validation in run_fn)."""
    from tfprod.pipeline import multiworker

    experiment = config_lib.load_config(None, ["runtime.strategy=multi_worker_mirrored",
                                               "runtime.num_workers=2"])
    job = multiworker.JobFnArgs(
        train_files=["t"], eval_files=["e"], transform_output="g", serving_model_dir="s",
        model_run_dir="m",
        custom_config={"experiment": config_lib.to_dict(experiment, compact=True)})
    path = tmp_path / "job.json"
    path.write_text(json.dumps(dataclasses.asdict(job)))
    received = []
    monkeypatch.setattr(multiworker, "run_worker", lambda *args: received.append(args))
    monkeypatch.setenv(distribute.TF_CONFIG, json.dumps(TWO_WORKERS))
    assert multiworker.main(["--job", str(path)]) == 0
    ((worker_job, parsed),) = received
    assert worker_job == job and parsed == experiment
