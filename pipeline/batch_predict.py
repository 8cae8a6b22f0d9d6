"""`tfprod predict-batch`: score a whole data directory with a pushed model, on Beam.

The data is read exactly as the run read it: the task's own ExampleGen executor
(pipeline/ingestion/) turns the data directory into its train, eval and test splits of
serialized tf.Examples, on the same Beam runner options as the pipeline
(pipeline.beam_pipeline_args: DirectRunner, in-process or multi-process per
runtime.beam_mode). Each batch goes through the model's `serving_default` signature (the
one `tfprod serve` answers: serialized tf.Examples in, the task's outputs out), and every
example becomes one row of the output:

  .jsonl  {"split": "test", "key": "5f2c...", "label": 7, "class_id": 7, "class_name": "7",
           "probabilities": [...]}            (whatever outputs the task's signature has)
  .csv    split,key,label,class_id,class_name,probabilities_0,...,probabilities_9

`split` is the ExampleGen split the example fell in; `key` is the first 16 hex digits of the
SHA-1 of the tf.Example serialized deterministically (stable across runs and processes, the
same for identical examples);
`label` is the example's label feature where the data carries one. Rows are in no particular
order (Beam's): sort or join on (split, key).

Which data format, which columns, which model: the experiment config says. Give either
`--run OUTPUT_DIR` (a finished run: its config.yaml, and by default its pushed model
OUTPUT_DIR/serving/<export.model_name>) or `--config CONFIG.yaml` as for `tfprod run`.
`--model-dir` is a SavedModel version directory, or a base directory of numbered versions
(the highest is used), as `tfprod serve --model_base_path` takes.
"""

import csv
import hashlib
import io
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tfprod import errors
from tfprod.contract import features
from tfprod.pipeline.ingestion import timeseries

OUTPUT_FORMATS = (".jsonl", ".csv")
SPLITS = ("train", "eval", "test")
DEFAULT_BATCH_SIZE = 256


def resolve_model_dir(model_dir: str) -> str:
    """The SavedModel directory: model_dir itself, or its highest numbered version.

    Raises:
        ConfigError: no SavedModel there (the message names --model-dir and what was found).
    """
    if not os.path.isdir(model_dir):
        raise errors.ConfigError(f"--model-dir {model_dir}: directory not found (give a pushed model: "
                                 "<output_dir>/serving/<model_name> or one of its version directories)")
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = [name for name in os.listdir(model_dir)
                if name.isdigit() and os.path.isfile(os.path.join(model_dir, name, "saved_model.pb"))]
    if not versions:
        raise errors.ConfigError(
            f"--model-dir {model_dir}: no SavedModel (saved_model.pb) there nor in a numbered version "
            f"directory below it; found {sorted(os.listdir(model_dir))[:10]}")
    return os.path.join(model_dir, max(versions, key=int))


def check_output_path(path: str) -> str:
    """The output's format (".jsonl" or ".csv") from its name.

    Raises:
        ConfigError: another suffix, or the output's directory does not exist.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in OUTPUT_FORMATS:
        raise errors.ConfigError(f"--output {path}: name a .jsonl or .csv file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise errors.ConfigError(f"--output {path}: directory not found: {parent}")
    return suffix


def serving_signature(saved_model_dir: str):
    """serving_default's SignatureDef, read from saved_model.pb (no model is loaded).

    Raises:
        ConfigError: no serving_default over serialized tf.Examples (input "examples").
    """
    from tensorflow.core.protobuf import saved_model_pb2

    from tfprod.pipeline.tasks.signatures import EXAMPLES_INPUT

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            signature = meta_graph.signature_def.get(features.SERVING_DEFAULT_SIGNATURE)
            if signature is not None and list(signature.inputs) == [EXAMPLES_INPUT]:
                return signature
            found = sorted(meta_graph.signature_def)
            raise errors.ConfigError(
                f"--model-dir {saved_model_dir}: its {features.SERVING_DEFAULT_SIGNATURE} signature does not take "
                f"serialized tf.Examples (input '{EXAMPLES_INPUT}'); signatures: {found}. Score a model "
                "pushed by tfprod run")
    raise errors.ConfigError(f"--model-dir {saved_model_dir}: the SavedModel has no 'serve' graph")


def csv_columns(signature) -> List[Tuple[str, Optional[int]]]:
    """(output name, width or None) in column order; a vector output of known width spreads over columns."""
    columns = []
    for name in sorted(signature.outputs):
        dims = [dim.size for dim in signature.outputs[name].tensor_shape.dim]
        columns.append((name, dims[1] if len(dims) == 2 and dims[1] > 0 else None))
    return columns


def csv_header(columns: Sequence[Tuple[str, Optional[int]]]) -> List[str]:
    header = ["split", "key", "label"]
    for name, width in columns:
        header.extend([f"{name}_{index}" for index in range(width)] if width else [name])
    return header


def _plain(value: Any) -> Any:
    """A numpy value as JSON's: bytes decoded, arrays as lists."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OS":
            return [_plain(item) for item in value.tolist()]
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def example_key_and_label(serialized: bytes) -> Tuple[str, Any]:
    """The row's key and label.

    key: the first 16 hex digits of the SHA-1 of the tf.Example serialized deterministically
    (a proto's map, as Features is, serializes in no fixed order otherwise: the same example
    may come out as different bytes in two processes). label: the example's label feature (a
    number or a string; a list for a multi-valued label such as a forecast window), or None when it
    carries none.
    """
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    key = hashlib.sha1(example.SerializeToString(deterministic=True)).hexdigest()[:16]
    found = example.features.feature
    feature = found.get(features.LABEL_KEY) or found.get(timeseries.LABEL_KEY)
    if feature is None:
        return key, None
    kind = feature.WhichOneof("kind")
    values = [value.decode("utf-8", "replace") if isinstance(value, bytes) else value
              for value in (getattr(feature, kind).value if kind else [])]
    if not values:
        return key, None
    return key, values[0] if len(values) == 1 else values  # a forecast window's targets: a list


def example_key(serialized: bytes) -> str:
    """The row's key for a serialized tf.Example (example_key_and_label)."""
    return example_key_and_label(serialized)[0]


def format_row(row: Dict[str, Any], suffix: str, columns: Sequence[Tuple[str, Optional[int]]]) -> str:
    """One output line (without its newline)."""
    if suffix == ".jsonl":
        return json.dumps(row, sort_keys=False)
    label = row["label"]
    cells: List[Any] = [row["split"], row["key"],
                        "" if label is None else json.dumps(label) if isinstance(label, list) else label]
    for name, width in columns:
        value = row.get(name)
        if width:
            cells.extend(value if isinstance(value, list) and len(value) == width else [""] * width)
        else:
            cells.append(json.dumps(value) if isinstance(value, list) else value)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


class Scorer:
    """Runs serving_default on batches of serialized tf.Examples; loads the model once per worker."""

    def __init__(self, saved_model_dir: str):
        self.saved_model_dir = saved_model_dir
        self._function = None

    def load(self) -> None:
        import tensorflow as tf

        loaded = tf.saved_model.load(self.saved_model_dir)
        self._loaded = loaded  # keeps the variables alive
        self._function = loaded.signatures[features.SERVING_DEFAULT_SIGNATURE]

    def score(self, batch: Sequence[Tuple[str, bytes]]) -> Iterable[Dict[str, Any]]:
        """(split, serialized tf.Example) pairs -> one row each."""
        import tensorflow as tf

        from tfprod.pipeline.tasks.signatures import EXAMPLES_INPUT

        if self._function is None:
            self.load()
        outputs = self._function(**{EXAMPLES_INPUT: tf.constant([serialized for _, serialized in batch])})
        arrays = {name: value.numpy() for name, value in outputs.items()}
        for index, (split, serialized) in enumerate(batch):
            key, label = example_key_and_label(serialized)
            row = {"split": split, "key": key, "label": label}
            for name in sorted(arrays):
                row[name] = _plain(arrays[name][index])
            yield row


_SCORERS: Dict[str, Scorer] = {}  # one loaded model per worker process and model directory


def _score_lines(batch, saved_model_dir: str, suffix: str, columns) -> Iterable[str]:
    """A batch of (split, serialized tf.Example) -> output lines (a Beam FlatMap; the model loads once)."""
    scorer = _SCORERS.get(saved_model_dir)
    if scorer is None:
        scorer = _SCORERS[saved_model_dir] = Scorer(saved_model_dir)
        scorer.load()
    for row in scorer.score(batch):
        yield format_row(row, suffix, columns)


def _example_gen_splits(pipeline, experiment, data_dir: str) -> Dict[str, Any]:
    """The task's ExampleGen executor's splits of serialized tf.Examples, as PCollections on `pipeline`."""
    from google.protobuf import message
    from tfx.utils import proto_utils

    from tfprod.pipeline import tasks

    component = tasks.get_task(experiment).example_gen(experiment, data_dir)
    executor_class = component.EXECUTOR_SPEC.executor_class
    exec_properties = {}
    for name, value in component.exec_properties.items():
        exec_properties[name] = proto_utils.proto_to_json(value) if isinstance(value, message.Message) else value
    executor = executor_class()
    return executor.GenerateExamplesByBeam(pipeline, exec_properties)


def _tagged(example, split: str) -> Tuple[str, bytes]:
    """(split, serialized tf.Example): an executor may yield tf.Example protos or their bytes."""
    return split, example if isinstance(example, bytes) else example.SerializeToString()


def predict_batch(experiment, model_dir: str, output: str, splits: Sequence[str] = SPLITS,
                  batch_size: int = DEFAULT_BATCH_SIZE, beam_args: Optional[List[str]] = None) -> Dict[str, Any]:
    """Scores experiment.data's splits with the model in model_dir; writes output. Returns a summary.

    Args:
        experiment: the checked ExperimentConfig (its data section says where and what the data is).
        model_dir: a SavedModel version directory or a base directory of numbered versions.
        output: the .jsonl or .csv file to write.
        splits: which ExampleGen splits to score.
        batch_size: the largest batch the signature is called with.
        beam_args: Beam pipeline options (default: the pipeline's, from experiment.runtime).

    Raises:
        ConfigError: a missing model, a model without tfprod's serving_default, a bad output name.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from tfprod.pipeline.pipeline import beam_pipeline_args

    suffix = check_output_path(output)
    saved_model_dir = resolve_model_dir(model_dir)
    signature = serving_signature(saved_model_dir)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise errors.ConfigError(f"--split: choose among {', '.join(SPLITS)}, got {', '.join(splits) or 'none'}")
    columns = csv_columns(signature)
    if beam_args is None:
        beam_args = beam_pipeline_args(experiment.runtime)

    output = os.path.abspath(output)
    try:
        _run(beam, PipelineOptions(list(beam_args)), experiment, splits, batch_size, saved_model_dir, suffix,
             columns, output)
    except errors.TfprodError:
        raise
    except Exception as error:  # Beam wraps a step's error: its own kind, if any, is in the cause chain
        cause = error
        while cause is not None:
            if isinstance(cause, errors.TfprodError):
                raise cause from error
            cause = cause.__cause__ or cause.__context__
        raise errors.RunFailure(
            f"predict-batch failed while scoring {experiment.data.describe_source()} with {saved_model_dir}: "
            f"{_gist(error)} (is it a model of this task, trained on data of this format?)") from error
    with open(output, encoding="utf-8") as handle:
        rows = sum(1 for _ in handle) - (1 if suffix == ".csv" else 0)
    return {"output": output, "rows": rows, "model": saved_model_dir, "splits": list(splits)}


def _gist(error: BaseException) -> str:
    """The telling line of a (TensorFlow) error: its last line that is not blank or a graph node."""
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("[[") and not line.startswith("Detected at")]
    return lines[-1][:400] if lines else type(error).__name__


def _run(beam, options, experiment, splits, batch_size: int, saved_model_dir: str, suffix: str, columns,
         output: str) -> None:
    """The Beam pipeline: the task's ExampleGen splits -> batches -> serving_default -> one text file."""
    with beam.Pipeline(options=options) as pipeline:
        by_split = _example_gen_splits(pipeline, experiment, experiment.data.data_dir)
        tagged = [by_split[split] | f"Tag{split}" >> beam.Map(_tagged, split) for split in splits]
        (tagged
         | "AllSplits" >> beam.Flatten()
         | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
         | "Score" >> beam.FlatMap(_score_lines, saved_model_dir, suffix, [tuple(column) for column in columns])
         | "Write" >> beam.io.WriteToText(output, shard_name_template="", num_shards=1,
                                          header=",".join(csv_header(columns)) if suffix == ".csv" else None))
