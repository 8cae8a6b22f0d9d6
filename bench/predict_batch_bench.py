"""`tfprod predict-batch`'s examples/s against the in-process ceiling, on an IDX image set.

predict-batch (pipeline/batch_predict.py) is timed end to end: the Beam pipeline reads the
IDX files with the task's ExampleGen executor, batches, runs the model's serving_default
and writes the .jsonl file (DirectRunner, the pipeline's runner options from the config).
The ceiling is a plain loop in this process over the same serialized tf.Examples, already in
memory: the same signature called on batches of --batch-size, nothing read or written. The
ratio says what the reading, Beam and the writing cost on top of the model.

    .venv/bin/python -m bench.predict_batch_bench --model-dir OUT/serving/mnist_cnn/<version>
    .venv/bin/python -m bench.predict_batch_bench --tiny-model --examples 200   # smoke run

--model-dir is a pushed mnist_cnn version; --tiny-model builds a linear model with the same
signature contract in a temporary directory (a smoke run: its figures say nothing about a real
model). --examples takes the first N train and N/5 test images of data/mnist_sample (written
as IDX files into a temporary directory). Writes docs/benchmarks/predict_batch_bench.json and
.md (--output-dir elsewhere).
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import machine  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "mnist_sample"
CONFIG = REPO_ROOT / "configs" / "mnist_cnn.yaml"


def build_tiny_model(directory: pathlib.Path) -> str:
    """A linear softmax over the 784 pixels with tfprod's serving_default (serialized tf.Examples in)."""
    import tensorflow as tf

    from tfprod.contract import features

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(tf.random.Generator.from_seed(1).normal([784, 10]) * 0.05)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            parsed = tf.io.parse_example(examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([784], tf.int64)})
            probabilities = tf.nn.softmax(tf.cast(parsed[features.IMAGE_KEY], tf.float32) / 255.0 @ self.weights)
            return {features.PROBABILITIES_OUTPUT: probabilities,
                    features.CLASS_ID_OUTPUT: tf.argmax(probabilities, axis=-1)}

    module = Tiny()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return str(directory)


def write_data(directory: pathlib.Path, train: int, test: int):
    """The first `train`/`test` images of the shipped sample as IDX files; returns their tf.Examples."""
    import numpy as np
    import tensorflow as tf

    from tfprod.contract import features, idx

    train_images, train_labels = idx.read_image_label_pair(str(SAMPLE_DIR / idx.TRAIN_IMAGES),
                                                           str(SAMPLE_DIR / idx.TRAIN_LABELS))
    test_images, test_labels = idx.read_image_label_pair(str(SAMPLE_DIR / idx.TEST_IMAGES),
                                                         str(SAMPLE_DIR / idx.TEST_LABELS))
    directory.mkdir(parents=True)
    for name, values in ((idx.TRAIN_IMAGES, train_images[:train]), (idx.TRAIN_LABELS, train_labels[:train]),
                         (idx.TEST_IMAGES, test_images[:test]), (idx.TEST_LABELS, test_labels[:test])):
        idx.write_idx(str(directory / name), np.asarray(values, np.uint8))
    images = np.concatenate([train_images[:train], test_images[:test]]).reshape(train + test, -1)
    labels = np.concatenate([train_labels[:train], test_labels[:test]])
    return [tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=pixels.astype(np.int64))),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
        .SerializeToString() for pixels, label in zip(images, labels)]


def ceiling(model_dir: str, serialized, batch_size: int) -> dict:
    """The signature called in a plain loop on the examples in memory."""
    import tensorflow as tf

    function = tf.saved_model.load(model_dir).signatures["serving_default"]
    function(examples=tf.constant(serialized[:batch_size]))  # traced and warm
    began = time.perf_counter()
    for start in range(0, len(serialized), batch_size):
        outputs = function(examples=tf.constant(serialized[start:start + batch_size]))
        {name: value.numpy() for name, value in outputs.items()}
    elapsed = time.perf_counter() - began
    return {"seconds": elapsed, "examples_per_second": len(serialized) / elapsed}


def markdown(report: dict) -> str:
    lines = ["# predict-batch against the in-process ceiling", "", f"`{report['command']}`", "",
             f"Model: {report['model']}; {report['examples']} examples (IDX), batch {report['batch_size']}, "
             f"{report['repeats']} repeat(s), medians.", "",
             "| | seconds | examples/s |", "|---|---|---|",
             f"| predict-batch (Beam, end to end) | {report['predict_batch']['median_seconds']:.2f} | "
             f"{report['predict_batch']['median_examples_per_second']:.0f} |",
             f"| in-process ceiling (signature loop) | {report['ceiling']['median_seconds']:.2f} | "
             f"{report['ceiling']['median_examples_per_second']:.0f} |", "",
             f"predict-batch reaches {100 * report['ratio']:.1f}% of the ceiling.", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average at the end "
             f"{report['machine']['load_average_at_end']}.", ""]
    if report.get("smoke"):
        lines.insert(2, "**Smoke run (a tiny model, few examples): these figures are not measurements.**\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_batch_bench",
                                     description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", help="a pushed mnist_cnn SavedModel version directory")
    model.add_argument("--tiny-model", action="store_true", help="a tiny model built here (smoke run)")
    parser.add_argument("--examples", type=int, default=10000, help="train images (and a fifth as many test)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    args = parser.parse_args(argv)

    from tfprod.pipeline import batch_predict, checks, tasks
    from tfprod.pipeline import config as config_lib

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="predict_batch_bench-"))
    model_dir = build_tiny_model(workdir / "model" / "1") if args.tiny_model else args.model_dir
    serialized = write_data(workdir / "data", args.examples, max(1, args.examples // 5))
    experiment = config_lib.load_config(str(CONFIG), [f"data.data_dir={workdir / 'data'}",
                                                      f"runtime.output_dir={workdir / 'out'}"])
    checks.check_experiment(experiment)
    tasks.get_task(experiment).preflight(experiment)
    # Untimed: the first run imports TFX's ExampleGen and starts Beam (tens of seconds, once per process).
    batch_predict.predict_batch(experiment, model_dir, str(workdir / "warm-up.jsonl"), splits=("test",),
                                batch_size=args.batch_size)
    runs, ceilings = [], []
    for repeat in range(args.repeats):  # interleaved: predict-batch, then the ceiling, each repeat
        began = time.perf_counter()
        summary = batch_predict.predict_batch(experiment, model_dir, str(workdir / f"scores-{repeat}.jsonl"),
                                              batch_size=args.batch_size)
        elapsed = time.perf_counter() - began
        assert summary["rows"] == len(serialized), summary
        runs.append({"seconds": elapsed, "examples_per_second": len(serialized) / elapsed})
        ceilings.append(ceiling(model_dir, serialized, args.batch_size))
        print(json.dumps({"repeat": repeat, "predict_batch_examples_per_second": round(runs[-1]["examples_per_second"]),
                          "ceiling_examples_per_second": round(ceilings[-1]["examples_per_second"])}), flush=True)

    def medians(entries):
        return {"median_seconds": statistics.median(entry["seconds"] for entry in entries),
                "median_examples_per_second": statistics.median(entry["examples_per_second"] for entry in entries),
                "runs": entries}

    report = {"command": "python -m bench.predict_batch_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": "tiny (smoke)" if args.tiny_model else args.model_dir, "smoke": bool(args.tiny_model),
              "examples": len(serialized), "batch_size": args.batch_size, "repeats": args.repeats,
              "beam_mode": experiment.runtime.beam_mode.value if hasattr(experiment.runtime.beam_mode, "value")
              else str(experiment.runtime.beam_mode),
              "predict_batch": medians(runs), "ceiling": medians(ceilings), "machine": machine.describe()}
    report["ratio"] = (report["predict_batch"]["median_examples_per_second"]
                       / report["ceiling"]["median_examples_per_second"])
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "predict_batch_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "predict_batch_bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
