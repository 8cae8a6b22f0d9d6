"""Benchmark (not a test): an ablation of the training recipes, on MNIST and SST-2.

For each data set it trains the config's model with the default recipe, then with each
technique added alone (AdamW, each learning-rate schedule, label smoothing, clipping,
EMA with and without its warm-up, each image augmentation, mixup, cutmix) and with the
full combination, for --seeds seeds each, and scores every run on the test split. The
Trainer's own building blocks do the work (trainer.build_and_compile, recipes.build_callbacks,
the task's augment_dataset, recipes.keep_better_weights for EMA, as run_fn uses them) on
in-memory data; the TFX pipeline is left out (its data components cost the same for every
recipe; see pipeline_bench and text_bench for them).

    python -m bench.recipes_bench                 # the full ablation (see below for its time)
    python -m bench.recipes_bench --smoke         # every variant once on a few hundred examples
        [--datasets mnist sst2] [--seeds 3] [--only default ema ...] [--skip aug_flip ...]
        [--mnist-train 4000] [--mnist-epochs 2] [--sst2-train 0] [--sst2-epochs 2]
        [--ema-decay 0.999] [--set KEY=VALUE ...]   # --set applies to every variant

Each variant's --set keys come after the common ones. A subset of each data set's training
file is used (--mnist-train / --sst2-train, 0 = all): 10% of it is held out as the eval
split (EMA's choice, early stopping, plateau); the test split is always whole, unless
--test-limit. Seeds vary the model's initialization, dropout and data order
(trainer.seed); the data subset and split stay the same.

Time: 18 MNIST and 11 SST-2 variants (plateau is skipped below 3 epochs: it cannot act) at
2 seeds is 58 fits. Measured beside other jobs (load average 5-8 on 2 cores), one fit took
about 65 s on 5,400 MNIST images x 2 epochs and about 110 s on SST-2 (of which ~65 s is the
LSTM's first-epoch tracing, whatever the data size); alone on the machine that should be
roughly 2.5x faster, about 20-30 minutes in all. --skip (e.g. aug_flip) and --seeds trim it;
--smoke took 12 min wall (6 min CPU) beside other jobs.

Writes docs/benchmarks/recipes_bench.json and .md (--output-name; --smoke writes
recipes_bench_smoke.*): the command, the machine and its load average, and per data set and
variant the test accuracy (mean ± standard deviation over the seeds, min and max), its
difference from the default and whether it is outside the seeds' spread, and the fit time.
"""

import argparse
import collections
import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.machine import describe as describe_machine  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"

# Overrides: a list of KEY=VALUE, or a function of the run's total optimizer steps (for the
# step schedule's boundary, which must fall inside the run).
Overrides = Union[List[str], Callable[[int], List[str]]]


class Variant:
    """One recipe of the ablation: the default config plus `overrides`."""

    def __init__(self, name: str, overrides: Overrides, what: str, images_only: bool = False):
        self.name = name
        self.overrides = overrides
        self.what = what
        self.images_only = images_only

    def overrides_for(self, total_steps: int) -> List[str]:
        if callable(self.overrides):
            return list(self.overrides(total_steps))
        return list(self.overrides)


def _step_schedule(total_steps: int) -> List[str]:
    # One drop by 10x after two thirds of the run.
    return ["trainer.lr_schedule=step",
            f"trainer.schedule.step_boundaries=[{max(1, (2 * total_steps) // 3)}]"]


AUGMENTATION = ["data.augmentation.translate=0.1", "data.augmentation.rotation_degrees=10"]


def variants(ema_decay: float) -> List[Variant]:
    """The ablation: the default, each technique alone, the full combination."""
    ema = f"trainer.ema_decay={ema_decay}"
    full = ["trainer.optimizer=adamw", "trainer.lr_schedule=warmup_cosine",
            "trainer.label_smoothing=0.1", "trainer.clip_norm=1.0", ema]
    return [
        Variant("default", [], "the config as it is (with the command's --set, if any)"),
        Variant("adamw", ["trainer.optimizer=adamw"],
                "AdamW with its default weight decay (0.004)"),
        Variant("sched_step", _step_schedule, "step schedule: x0.1 after 2/3 of the steps"),
        Variant("sched_cosine", ["trainer.lr_schedule=cosine"], "cosine decay to 0"),
        Variant("sched_warmup_cosine", ["trainer.lr_schedule=warmup_cosine"],
                "linear warm-up over 10% of the steps, then cosine"),
        Variant("sched_one_cycle", ["trainer.lr_schedule=one_cycle"], "one cycle"),
        Variant("sched_plateau", ["trainer.lr_schedule=plateau"],
                "x0.5 when val_loss stalls for an epoch"),
        Variant("label_smoothing", ["trainer.label_smoothing=0.1"], "label smoothing 0.1"),
        Variant("clip_norm", ["trainer.clip_norm=1.0"], "gradients clipped to global norm 1"),
        Variant("ema", [ema], f"EMA {ema_decay} with warm-up, better of EMA/raw exported"),
        Variant("ema_no_warmup", [ema, "trainer.ema_warmup=false"],
                f"EMA {ema_decay} from the first step (before issue 22), better of EMA/raw"),
        Variant("aug_translate", ["data.augmentation.translate=0.1"], "random shifts of 10%",
                images_only=True),
        Variant("aug_rotation", ["data.augmentation.rotation_degrees=10"],
                "random rotations of up to 10 degrees", images_only=True),
        Variant("aug_contrast", ["data.augmentation.contrast=0.2"], "random contrast ±20%",
                images_only=True),
        Variant("aug_flip", ["data.augmentation.horizontal_flip=true"],
                "random left-right flips (digits are not mirror-symmetric)", images_only=True),
        Variant("mixup", ["data.augmentation.mixup_alpha=0.2"], "mixup, alpha 0.2",
                images_only=True),
        Variant("cutmix", ["data.augmentation.cutmix_alpha=1.0"], "cutmix, alpha 1.0",
                images_only=True),
        Variant("full", full, "adamw + warmup_cosine + label smoothing + clipping + EMA"),
        Variant("full_augmented", full + AUGMENTATION,
                "full + translate 0.1 + rotation 10", images_only=True),
    ]


class Dataset:
    """A data set of the ablation: its config, where its data is, and how it loads."""

    def __init__(self, name: str, config: str, default_dir: pathlib.Path, images: bool):
        self.name = name
        self.config = config
        self.default_dir = default_dir
        self.images = images


DATASETS = {
    "mnist": Dataset("mnist", "configs/mnist_cnn.yaml", SHARED_DATA / "mnist", images=True),
    "sst2": Dataset("sst2", "configs/sst2_lstm.yaml", SHARED_DATA / "sst2", images=False),
}

# (train x, train y, eval x, eval y, test x, test y)
Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class BenchmarkError(RuntimeError):
    """The benchmark cannot run with these arguments; the message says what to change."""


def _split(count: int, limit: int, eval_fraction: float,
           seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of `limit` of `count` examples (0 = all), split into
    (eval indices, train indices) by eval_fraction (the pipeline splits by a hash instead)."""
    order = np.random.default_rng(seed).permutation(count)
    if limit:
        order = order[:limit]
    held_out = int(round(eval_fraction * len(order)))
    return order[:held_out], order[held_out:]


def load_images(experiment, data_dir: str, train_limit: int, test_limit: int,
                seed: int) -> Arrays:
    """IDX images as the Transform output has them: flat, scaled by PIXEL_SCALE."""
    from tfprod.contract import idx
    from tfprod.pipeline.tasks.image import preprocessing

    train_images, train_labels = idx.read_image_label_pair(
        os.path.join(data_dir, idx.TRAIN_IMAGES), os.path.join(data_dir, idx.TRAIN_LABELS))
    test_images, test_labels = idx.read_image_label_pair(
        os.path.join(data_dir, idx.TEST_IMAGES), os.path.join(data_dir, idx.TEST_LABELS))

    def scale(images):
        return images.reshape(images.shape[0], -1).astype(np.float32) / preprocessing.PIXEL_SCALE

    eval_index, train_index = _split(len(train_images), train_limit,
                                     experiment.data.eval_fraction, seed)
    x, y = scale(train_images), train_labels.astype(np.int64)
    test_x, test_y = scale(test_images), test_labels.astype(np.int64)
    if test_limit:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    return x[train_index], y[train_index], x[eval_index], y[eval_index], test_x, test_y


def load_texts(experiment, data_dir: str, train_limit: int, test_limit: int,
               seed: int) -> Arrays:
    """train.tsv/test.tsv as the text task's Transform makes them: tokenized with its own
    tokenize, the data.text.vocab_size most frequent training tokens as ids 1..V, other
    tokens in num_oov_buckets buckets after them (hashed with CRC32 here, not Transform's
    fingerprint), padded with 0 to max_len. Sets data.num_classes from the labels."""
    import tensorflow as tf

    from tfprod.pipeline.ingestion import tsv_format
    from tfprod.pipeline.tasks.text import preprocessing

    text = experiment.data.text

    def read(name):
        rows = list(tsv_format.read_rows(os.path.join(data_dir, name), text.text_column,
                                         text.label_column))
        return [row[2] for row in rows], [row[3] for row in rows]

    train_texts, train_labels = read(tsv_format.TRAIN_FILE)
    test_texts, test_labels = read(tsv_format.TEST_FILE)
    vocabulary = tsv_format.sort_labels(train_labels)
    experiment.data.num_classes = len(vocabulary)
    label_ids = {label: index for index, label in enumerate(vocabulary)}

    def tokens(texts):
        return [[token.decode("utf-8") for token in row] for row in
                preprocessing.tokenize(tf.constant(texts), text.max_len).to_list()]

    eval_index, train_index = _split(len(train_texts), train_limit,
                                     experiment.data.eval_fraction, seed)
    all_tokens = tokens(train_texts)
    counts = collections.Counter(token for i in train_index for token in all_tokens[i])
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:text.vocab_size]
    ids = {token: rank + 1 for rank, token in enumerate(ranked)}
    oov_start = len(ranked) + 1

    def encode(rows):
        out = np.zeros((len(rows), text.max_len), np.int64)  # 0 = padding
        for i, row in enumerate(rows):
            for j, token in enumerate(row):
                out[i, j] = ids.get(token) or (
                    oov_start + zlib.crc32(token.encode("utf-8")) % text.num_oov_buckets)
        return out

    x = encode(all_tokens)
    y = np.array([label_ids[label] for label in train_labels], np.int64)
    if test_limit:
        test_texts, test_labels = test_texts[:test_limit], test_labels[:test_limit]
    test_x = encode(tokens(test_texts))
    test_y = np.array([label_ids[label] for label in test_labels], np.int64)
    return x[train_index], y[train_index], x[eval_index], y[eval_index], test_x, test_y


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    predictions = np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1)
    return float(np.mean(predictions == y))


def train_variant(experiment, data: Arrays, epochs: int) -> Dict[str, Any]:
    """Fits one recipe as run_fn does (augmentation in tf.data, its callbacks, EMA's choice
    of weights on the eval split) and scores it on the test split."""
    import tensorflow as tf

    from tfprod.pipeline import recipes, tasks, trainer

    train_x, train_y, eval_x, eval_y, test_x, test_y = data
    settings = experiment.trainer
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(settings.seed)
    batch = settings.batch_size
    train = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
             .shuffle(len(train_x), seed=settings.seed, reshuffle_each_iteration=True)
             .batch(batch).prefetch(tf.data.AUTOTUNE))
    train = tasks.get_task(experiment).augment_dataset(train, experiment)
    evaluation = tf.data.Dataset.from_tensor_slices((eval_x, eval_y)).batch(512)
    steps_per_epoch = int(np.ceil(len(train_x) / batch))
    model = trainer.build_and_compile(experiment, epochs * steps_per_epoch)
    epoch_times = trainer.ThroughputCallback(batch)
    started = time.perf_counter()
    history = model.fit(train, epochs=epochs, validation_data=evaluation, verbose=0,
                        callbacks=[epoch_times] + recipes.build_callbacks(settings))
    fit_seconds = time.perf_counter() - started
    # fit_seconds includes tracing (most of the first epoch for the LSTM) and validation;
    # the per-epoch figures are training only.
    result: Dict[str, Any] = {
        "fit_seconds": round(fit_seconds, 2), "epochs_run": len(history.epoch),
        "train_seconds_per_epoch": [round(e["seconds"], 2) for e in epoch_times.epochs],
        "final_val_accuracy": float(history.history.get("val_accuracy", [float("nan")])[-1])}
    if settings.ema_decay is not None:
        # Test accuracy of both sets of weights, then the export's choice (on eval).
        ema_accuracy = _accuracy(model, test_x, test_y)
        choice = recipes.keep_better_weights(model, evaluation, settings)
        raw = model.optimizer.raw_weights_at_end
        kept = [v.numpy() for v in raw.variables]
        for variable, value in zip(raw.variables, raw.values):
            variable.assign(value)
        raw_accuracy = _accuracy(model, test_x, test_y)
        for variable, value in zip(raw.variables, kept):
            variable.assign(value)
        result["ema"] = dict(choice, test_accuracy_ema=ema_accuracy,
                             test_accuracy_raw=raw_accuracy)
    result["test_accuracy"] = _accuracy(model, test_x, test_y)
    return result


def _summary(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def run_dataset(dataset: Dataset, args: argparse.Namespace,
                chosen: List[Variant]) -> Dict[str, Any]:
    from tfprod.pipeline import checks

    data_dir = getattr(args, f"{dataset.name}_dir") or str(dataset.default_dir)
    train_limit = getattr(args, f"{dataset.name}_train")
    epochs = getattr(args, f"{dataset.name}_epochs")
    base = checks.load_experiment(str(REPO_ROOT / dataset.config), args.overrides)
    loader = load_images if dataset.images else load_texts
    data = loader(base, data_dir, train_limit, args.test_limit, base.trainer.seed)
    num_classes = base.data.num_classes
    steps = epochs * int(np.ceil(len(data[0]) / base.trainer.batch_size))
    seeds = [base.trainer.seed + index for index in range(args.seeds)]
    # Warm-up (discarded): the first fit in a process pays TensorFlow's start-up costs.
    warm = checks.load_experiment(str(REPO_ROOT / dataset.config), args.overrides)
    warm.data.num_classes = num_classes
    train_variant(warm, tuple(part[:256] for part in data), 1)
    load_at_start = os.getloadavg()
    results = []
    skipped = []
    for variant in chosen:
        if variant.images_only and not dataset.images:
            continue
        if variant.name == "sched_plateau" and epochs < 3:
            # Patience 1 acts after epoch 2 at the earliest: the same run as the default.
            skipped.append(f"sched_plateau: cannot act in {epochs} epoch(s) (needs 3+)")
            continue
        overrides = list(args.overrides) + variant.overrides_for(steps)
        runs = []
        for seed in seeds:
            experiment = checks.load_experiment(str(REPO_ROOT / dataset.config),
                                                overrides + [f"trainer.seed={seed}"])
            experiment.trainer.epochs = epochs
            experiment.data.num_classes = num_classes
            run = dict(train_variant(experiment, data, epochs), seed=seed)
            runs.append(run)
            print(f"{dataset.name} {variant.name} seed {seed}: test accuracy "
                  f"{run['test_accuracy']:.4f}, fit {run['fit_seconds']:.1f}s"
                  + (f", EMA kept {run['ema']['kept']} (test EMA "
                     f"{run['ema']['test_accuracy_ema']:.4f}, raw "
                     f"{run['ema']['test_accuracy_raw']:.4f})" if "ema" in run else ""),
                  flush=True)
        results.append({
            "variant": variant.name, "what": variant.what,
            "overrides": variant.overrides_for(steps),
            "test_accuracy": _summary([run["test_accuracy"] for run in runs]),
            "fit_seconds": _summary([run["fit_seconds"] for run in runs]),
            "runs": runs,
        })
    default = next((item for item in results if item["variant"] == "default"), None)
    for item in results:
        if default is None or item is default:
            continue
        accuracy, reference = item["test_accuracy"], default["test_accuracy"]
        item["difference_from_default"] = accuracy["mean"] - reference["mean"]
        # Outside the noise when the two sets of seeds do not overlap at all.
        item["outside_seed_spread"] = (len(seeds) > 1 and (
            accuracy["min"] > reference["max"] or accuracy["max"] < reference["min"]))
    return {
        "dataset": dataset.name, "config": dataset.config, "data": data_dir,
        "train_examples": len(data[0]), "eval_examples": len(data[2]),
        "test_examples": len(data[4]), "epochs": epochs, "optimizer_steps": steps,
        "seeds": seeds, "load_average_at_start": [round(v, 2) for v in load_at_start],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "variants": results, "skipped": skipped,
    }


def write_markdown(result: Dict[str, Any], path: pathlib.Path) -> None:
    machine = result["machine"]
    lines = [
        "# Training recipes: an ablation (each technique alone, then all together)",
        "",
        f"- Command: `{result['command']}`",
        f"- Date: {result['date']}; total wall time {result['wall_seconds'] / 60:.1f} min",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {len(machine['gpus'])} GPU(s); "
        f"TensorFlow {machine['tensorflow']}, Python {machine['python']}; load average "
        f"(1/5/15 min) at the end {machine['load_average_at_end']}",
        "- Each recipe trains the config's model with the Trainer's own code (model, "
        "optimizer, schedules, callbacks, augmentation, EMA's choice of weights) on "
        "in-memory data, not the whole TFX pipeline; accuracy is on the whole test split "
        "unless the command says otherwise.",
        "- Accuracy: mean ± standard deviation over the seeds (min-max in the JSON). "
        "\"outside spread\" = every seed of the variant is above (or below) every seed of the "
        "default; otherwise the difference is within seed-to-seed noise.",
    ]
    if result["common_overrides"]:
        lines.append("- Every variant, the default included, runs with `--set "
                     + " --set ".join(result["common_overrides"]) + "`.")
    if result["smoke"]:
        lines.append("- **Smoke run** (a few hundred examples, one epoch): proves the "
                     "variants run; the figures mean nothing.")
    for block in result["datasets"]:
        lines += [
            "",
            f"## {block['dataset']}: `{block['config']}`",
            "",
            f"{block['train_examples']:,} train / {block['eval_examples']:,} eval / "
            f"{block['test_examples']:,} test examples; {block['epochs']} epoch(s) = "
            f"{block['optimizer_steps']} optimizer steps; seeds {block['seeds']}; load "
            f"average at start {block['load_average_at_start']}, at end "
            f"{block['load_average_at_end']}.",
            "",
            *[f"Skipped: {reason}." for reason in block["skipped"]],
            "",
            "| variant | what | test accuracy | vs default | fit time (s) | EMA kept |",
            "|---|---|---|---|---|---|",
        ]
        for item in block["variants"]:
            accuracy, fit = item["test_accuracy"], item["fit_seconds"]
            difference = item.get("difference_from_default")
            versus = "" if difference is None else (
                f"{difference:+.4f}" + (" (outside spread)" if item["outside_seed_spread"]
                                        else ""))
            kept = ", ".join(
                f"{run['ema']['kept']} (EMA {run['ema']['test_accuracy_ema']:.3f} / raw "
                f"{run['ema']['test_accuracy_raw']:.3f})" for run in item["runs"]
                if "ema" in run)
            lines.append(f"| {item['variant']} | {item['what']} | {accuracy['mean']:.4f} ± "
                         f"{accuracy['sd']:.4f} | {versus} | {fit['mean']:.1f} | {kept} |")
    if result["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in result["notes"]]]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


SMOKE = {"mnist_train": 400, "mnist_epochs": 1, "sst2_train": 400, "sst2_epochs": 1,
         "test_limit": 300, "seeds": 1}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS),
                        default=["mnist", "sst2"])
    parser.add_argument("--seeds", type=int, default=2,
                        help="seeds per variant (trainer.seed, seed+1, ...)")
    parser.add_argument("--only", nargs="+", default=[], metavar="VARIANT",
                        help="run only these variants (the default is always run first)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="VARIANT")
    parser.add_argument("--mnist-dir", default="")
    parser.add_argument("--mnist-train", type=int, default=4000,
                        help="training images used, eval split included (0 = all 60,000)")
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--sst2-dir", default="")
    parser.add_argument("--sst2-train", type=int, default=0,
                        help="training sentences used, eval split included (0 = all 6,920)")
    parser.add_argument("--sst2-epochs", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=0,
                        help="score on the first N test examples only (0 = all)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="trainer.ema_decay of the EMA variants and the full recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for every variant")
    parser.add_argument("--smoke", action="store_true",
                        help="every variant once on a few hundred examples, one epoch")
    parser.add_argument("--output-name", default="")
    parser.add_argument("--note", dest="notes", action="append", default=[],
                        help="a line added to the notes (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.output_name = args.output_name or ("recipes_bench_smoke" if args.smoke
                                            else "recipes_bench")
    return args


def choose_variants(args: argparse.Namespace) -> List[Variant]:
    every = variants(args.ema_decay)
    names = [variant.name for variant in every]
    unknown = [name for name in args.only + args.skip if name not in names]
    if unknown:
        raise BenchmarkError(f"unknown variant(s) {', '.join(unknown)}; the variants are "
                             f"{', '.join(names)}")
    return [variant for variant in every
            if (variant.name == "default" or not args.only or variant.name in args.only)
            and variant.name not in args.skip]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        chosen = choose_variants(args)
        blocks = [run_dataset(DATASETS[name], args, chosen) for name in args.datasets]
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {
        "command": "python -m bench.recipes_bench " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": describe_machine(),
        "smoke": args.smoke, "ema_decay": args.ema_decay, "common_overrides": args.overrides,
        "datasets": blocks, "notes": args.notes,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{args.output_name}.json"
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_markdown(result, RESULTS_DIR / f"{args.output_name}.md")
    print(f"wrote {json_path} and its .md ({result['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
