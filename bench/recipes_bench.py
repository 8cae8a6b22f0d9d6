"""Benchmark (not a test): the default training recipe against a tuned one, in one run.

Both recipes train the config's model with the Trainer's own building blocks
(trainer.build_and_compile, recipes.build_callbacks, augmentation.augment_dataset)
on in-memory data, for the same number of epochs, and are scored on the test split.
The TFX pipeline itself is left out (its data components cost the same for both
recipes; see pipeline_bench for them).

    python -m bench.recipes_bench [--config configs/mnist_cnn.yaml]
        [--data-dir ../shared/data/mnist] [--epochs 2]
        [--set KEY=VALUE ...]         # applied to both recipes
        [--tuned-set KEY=VALUE ...]   # the tuned recipe (default: TUNED_RECIPE below)

Writes docs/benchmarks/recipes_bench.json and docs/benchmarks/recipes_bench.md (or
--output-name). Image-classification configs only for now: a text config (SST-2)
needs the text task's in-memory loader (see load_task_data).
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Dict, List

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.machine import describe as describe_machine

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
# AdamW + warmup_cosine + label smoothing + augmentation + clipping.
TUNED_RECIPE = [
    "trainer.optimizer=adamw", "trainer.weight_decay=0.0001",
    "trainer.lr_schedule=warmup_cosine", "trainer.learning_rate=0.002",
    "trainer.schedule.warmup_fraction=0.1", "trainer.schedule.min_learning_rate=0.00001",
    "trainer.label_smoothing=0.1", "trainer.clip_norm=1.0",
    "data.augmentation.translate=0.1", "data.augmentation.rotation_degrees=10",
]


class BenchmarkError(RuntimeError):
    """The benchmark cannot run with these arguments; the message says what to change."""




def load_task_data(experiment, data_dir: str, train_limit: int = 0):
    """(train x, train y, eval x, eval y, test x, test y) as the Transform output would be.

    Image classification: IDX files, pixels scaled by preprocessing.PIXEL_SCALE; the eval
    split is a seeded random eval_fraction of the training files (the pipeline splits by
    a hash of the example instead).
    """
    from tfprod.contract import idx
    from tfprod.pipeline import tasks
    from tfprod.pipeline.tasks.image import preprocessing

    task = tasks.get_task(experiment)
    if task.name != "image_classification":
        raise BenchmarkError(
            f"task {task.name}: only image_classification configs load here so far; add "
            "an in-memory loader for it to load_task_data")
    train_images, train_labels = idx.read_image_label_pair(
        os.path.join(data_dir, idx.TRAIN_IMAGES), os.path.join(data_dir, idx.TRAIN_LABELS))
    test_images, test_labels = idx.read_image_label_pair(
        os.path.join(data_dir, idx.TEST_IMAGES), os.path.join(data_dir, idx.TEST_LABELS))

    def scale(images):
        return images.reshape(images.shape[0], -1).astype(np.float32) / preprocessing.PIXEL_SCALE

    order = np.random.default_rng(experiment.trainer.seed).permutation(len(train_images))
    if train_limit:
        order = order[:train_limit]
    held_out = int(round(experiment.data.eval_fraction * len(order)))
    eval_index, train_index = order[:held_out], order[held_out:]
    x, y = scale(train_images), train_labels.astype(np.int64)
    return (x[train_index], y[train_index], x[eval_index], y[eval_index], scale(test_images),
            test_labels.astype(np.int64))


def train_recipe(name: str, experiment, data, epochs: int) -> Dict[str, Any]:
    """Fits one recipe as run_fn does and scores it on the test split."""
    import tensorflow as tf

    from tfprod.pipeline import config as config_lib, recipes, trainer
    from tfprod.pipeline.tasks.image import augmentation

    train_x, train_y, eval_x, eval_y, test_x, test_y = data
    settings = experiment.trainer
    tf.keras.utils.set_random_seed(settings.seed)
    batch = settings.batch_size
    train = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
             .shuffle(len(train_x), seed=settings.seed, reshuffle_each_iteration=True)
             .batch(batch).prefetch(tf.data.AUTOTUNE))
    train = augmentation.augment_dataset(train, experiment)
    evaluation = tf.data.Dataset.from_tensor_slices((eval_x, eval_y)).batch(512)
    steps_per_epoch = int(np.ceil(len(train_x) / batch))
    model = trainer.build_and_compile(experiment, epochs * steps_per_epoch)
    epoch_times = trainer.ThroughputCallback(batch)
    started = time.perf_counter()
    history = model.fit(train, epochs=epochs, validation_data=evaluation, verbose=2,
                        callbacks=[epoch_times] + recipes.build_callbacks(settings))
    fit_seconds = time.perf_counter() - started
    predictions = np.argmax(model.predict(test_x, batch_size=512, verbose=0), axis=-1)
    return {
        "recipe": name,
        "overrides": config_lib.to_dict(experiment.trainer),
        "augmentation": config_lib.to_dict(experiment.data.augmentation),
        "test_accuracy": float(np.mean(predictions == test_y)),
        "test_examples": int(len(test_y)),
        "fit_seconds": round(fit_seconds, 1),
        "train_seconds_per_epoch": [round(e["seconds"], 1) for e in epoch_times.epochs],
        "epochs_run": len(history.epoch),
        "history": {key: [round(float(v), 5) for v in values]
                    for key, values in history.history.items()},
        "load_average_after": os.getloadavg(),
    }


def write_markdown(result: Dict[str, Any], path: pathlib.Path) -> None:
    machine = result["machine"]
    lines = [
        "# Training recipes: default vs. tuned",
        "",
        f"- Command: `{result['command']}`",
        f"- Date: {result['date']}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {len(machine['gpus'])} GPU(s); "
        f"TensorFlow {machine['tensorflow']}, Python {machine['python']}",
        f"- Load average (1/5/15 min) at start: {result['load_average_at_start']}; the cores "
        "were shared with other jobs, so the times are noisy: compare them within this run.",
        f"- Config: `{result['config']}`; data: {result['data']} ({result['train_examples']:,} "
        f"train / {result['eval_examples']:,} eval / {result['test_examples']:,} test images); "
        f"{result['epochs']} epochs per recipe (a short budget: this machine is small).",
        "- Both recipes use the Trainer's own model, optimizer, callbacks and augmentation "
        "code on in-memory data (not the whole TFX pipeline).",
        f"- Tuned recipe: `{' '.join(result['tuned_overrides'])}`",
        "",
        "| recipe | test accuracy | fit time (s) | train s/epoch | epochs | final val accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['recipe']} | {run['test_accuracy']:.4f} | {run['fit_seconds']:.0f} | "
            f"{', '.join(f'{s:.0f}' for s in run['train_seconds_per_epoch'])} | "
            f"{run['epochs_run']} | {run['history'].get('val_accuracy', [float('nan')])[-1]:.4f} |")
    lines += ["", "## Notes", "", *[f"- {note}" for note in result["notes"]], ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from tfprod.pipeline import config as config_lib

    base = config_lib.load_config(args.config, args.overrides)
    tuned_overrides = args.tuned_overrides or TUNED_RECIPE
    tuned = config_lib.load_config(args.config, list(args.overrides) + list(tuned_overrides))
    for experiment in (base, tuned):
        experiment.trainer.epochs = args.epochs
    data = load_task_data(base, args.data_dir, args.train_limit)
    # Warm-up (discarded): the first fit in a process also pays TensorFlow's start-up costs.
    warm_up = tuple(part[:512] for part in data)
    train_recipe("warm-up", tuned, warm_up, 1)
    load_at_start = os.getloadavg()
    runs = [train_recipe("default", base, data, args.epochs),
            train_recipe("tuned", tuned, data, args.epochs)]
    default, tuned_run = runs
    difference = tuned_run["test_accuracy"] - default["test_accuracy"]
    notes = [
        f"Tuned minus default test accuracy: {difference:+.4f} "
        f"({difference * len(data[5]):+.0f} of {len(data[5]):,} test images).",
        f"Fit time ratio tuned/default: {tuned_run['fit_seconds'] / default['fit_seconds']:.2f} "
        "(augmentation runs in the input pipeline on the same cores).",
        "One seed per recipe: differences of a few tenths of a percent are within "
        "seed-to-seed noise on MNIST.",
    ]
    return {
        "command": "python -m bench.recipes_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "load_average_at_start": [round(v, 2) for v in load_at_start],
        "config": args.config, "data": args.data_dir, "epochs": args.epochs,
        "train_examples": len(data[0]), "eval_examples": len(data[2]),
        "test_examples": len(data[4]),
        "tuned_overrides": list(tuned_overrides), "runs": runs, "notes": notes + args.notes,
    }


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mnist_cnn.yaml")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=0,
                        help="use only this many training images (0 = all; for smoke runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for both recipes")
    parser.add_argument("--tuned-set", dest="tuned_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="the tuned recipe (default: TUNED_RECIPE)")
    parser.add_argument("--output-name", default="recipes_bench")
    parser.add_argument("--note", dest="notes", action="append", default=[],
                        help="a line added to the notes (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{args.output_name}.json"
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_markdown(result, RESULTS_DIR / f"{args.output_name}.md")
    for item in result["runs"]:
        print(f"{item['recipe']}: test accuracy {item['test_accuracy']:.4f}, "
              f"fit {item['fit_seconds']:.0f}s")
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
