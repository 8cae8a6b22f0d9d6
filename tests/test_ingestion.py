"""IdxExampleGen: IDX files -> tf.Examples in train/eval/test splits, on real Beam."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from tfprod.contract import features

from tfprod.contract import idx

from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import idx as idx_ingestion


def _read_split(examples_uri, split):
    pattern = os.path.join(examples_uri, f"Split-{split}", "*")
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    return [tf.train.Example.FromString(r.numpy()) for r in records]


def _run_executor(input_base, output_dir, eval_fraction):
    component = idx_ingestion.IdxExampleGen(input_base=str(input_base), eval_fraction=eval_fraction)
    examples = standard_artifacts.Examples()
    examples.uri = str(output_dir)
    # The component stores its proto properties as JSON, as the launcher passes them.
    exec_properties = dict(component.exec_properties)
    exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY] = (
        example_gen_pb2.FORMAT_TF_EXAMPLE)
    idx_ingestion.IdxExampleGenExecutor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]},
                                         exec_properties)
    return examples


def test_executor_writes_all_examples_into_three_splits(tiny_idx_dir, tmp_path, mnist_sample):
    examples = _run_executor(tiny_idx_dir, tmp_path / "examples", eval_fraction=0.2)
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval", "test"]
    train = _read_split(examples.uri, "train")
    evaluation = _read_split(examples.uri, "eval")
    test = _read_split(examples.uri, "test")
    # Every training image lands in exactly one of train/eval; none is lost.
    assert len(train) + len(evaluation) == 500
    assert 0.1 < len(evaluation) / 500 < 0.3
    assert len(test) == 100

    # The test split holds exactly the t10k images and labels, as int64 features.
    _, _, test_images, test_labels = mnist_sample
    expected = {(bytes(image.astype(np.uint8).tobytes()), int(label))
                for image, label in zip(test_images[:100], test_labels[:100])}
    got = set()
    for example in test:
        pixels = np.array(example.features.feature[features.IMAGE_KEY].int64_list.value)
        assert pixels.shape == (784,)
        label = example.features.feature[features.LABEL_KEY].int64_list.value
        assert len(label) == 1
        got.add((pixels.astype(np.uint8).tobytes(), int(label[0])))
    assert got == expected


def test_split_is_stable_across_runs(tiny_idx_dir, tmp_path):
    first = _run_executor(tiny_idx_dir, tmp_path / "first", eval_fraction=0.2)
    second = _run_executor(tiny_idx_dir, tmp_path / "second", eval_fraction=0.2)
    def keys(uri):
        return sorted((tuple(e.features.feature["image"].int64_list.value),
                       e.features.feature["label"].int64_list.value[0])
                      for e in _read_split(uri, "eval"))
    assert keys(first.uri) == keys(second.uri)


def test_corrupt_file_fails_with_the_idx_error(tiny_idx_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in idx.IDX_FILES:
        (broken / name).write_bytes((tiny_idx_dir / name).read_bytes())
    (broken / idx.TEST_IMAGES).write_bytes((tiny_idx_dir / idx.TEST_IMAGES).read_bytes()[:100])
    with pytest.raises(Exception, match=r"cannot decompress|truncated"):
        _run_executor(broken, tmp_path / "out", eval_fraction=0.1)


def test_eval_fraction_travels_in_custom_config():
    packed = idx_ingestion.make_custom_config(0.25)
    settings = ingestion.read_custom_config(
        {standard_component_specs.CUSTOM_CONFIG_KEY: proto_utils.proto_to_json(packed)})
    assert settings == {"eval_fraction": 0.25}


@pytest.mark.e2e
def test_multi_process_beam_gives_the_same_splits(tiny_idx_dir, tmp_path):
    """Beam's DirectRunner with 2 worker processes (runtime.beam_mode=multi_process)."""
    from tfx.dsl.components.base import base_beam_executor

    from tfprod.pipeline import config as config_lib, pipeline as pipeline_lib

    runtime = config_lib.RuntimeConfig(beam_mode=config_lib.BeamMode.MULTI_PROCESS,
                                       beam_workers=2)
    args = pipeline_lib.beam_pipeline_args(runtime)
    assert "--direct_running_mode=multi_processing" in args
    component = idx_ingestion.IdxExampleGen(input_base=str(tiny_idx_dir), eval_fraction=0.2)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "multi")
    exec_properties = dict(component.exec_properties)
    exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY] = (
        example_gen_pb2.FORMAT_TF_EXAMPLE)
    executor = idx_ingestion.IdxExampleGenExecutor(
        base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=args))
    executor.Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    in_process = _run_executor(tiny_idx_dir, tmp_path / "single", eval_fraction=0.2)
    for split in ("train", "eval", "test"):
        multi = sorted(e.SerializeToString(deterministic=True)
                       for e in _read_split(examples.uri, split))
        single = sorted(e.SerializeToString(deterministic=True)
                        for e in _read_split(in_process.uri, split))
        assert multi == single and len(multi) > 0
