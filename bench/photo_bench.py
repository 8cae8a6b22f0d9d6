"""Photo-folder benchmark: `tfprod run` of configs/caltech101_5_resnet.yaml on real photos.

Two variants of the same data set (by default the shared Caltech-101 subset, 5 classes,
1,648 train / 824 test JPEGs of many sizes):

- ``as_is``: the photos as they are; the pipeline decodes each one, resizes it keeping its
  aspect ratio and center-crops it to the config's size.
- ``square``: every photo first stretched here to one square size (--square-size, default
  256x256, aspect ratio not kept) and re-encoded as JPEG (quality 95) into a temporary copy,
  then the same run. Caltech-101's classes were collected at their own typical sizes and
  aspect ratios (its README: a 1-NN on (width, height) alone gets 99.6%); the center crop
  already removes most of that cue, and this variant removes it entirely, so the gap between
  the two says how much the model leans on it.

For each it records the test accuracy (TFMA, Evaluator, on the test folders), the majority
class's accuracy (the gate's baseline), whether the model was blessed, the fit time (the
Trainer's epochs, without validation), the epochs run, the component wall times, the
command and the machine (with its load average). Results are merged into
docs/benchmarks/photo_bench.json (keyed by variant and label) and
docs/benchmarks/photo_bench.md is rewritten from it.

  python -m bench.photo_bench                                   # both variants
  python -m bench.photo_bench --variants square --square-size 160
  python -m bench.photo_bench --data-dir data/caltech101_sample --results-dir /tmp/smoke \
      --set data.image_height=32 --set data.image_width=32 --set trainer.epochs=1
"""

import argparse
import glob
import json
import os
import pathlib
import sys
import tempfile
from typing import Dict, List, Sequence

from bench import pipeline_run
from bench.machine import describe as describe_machine

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "docs" / "benchmarks"
CONFIG = "configs/caltech101_5_resnet.yaml"
DEFAULT_DATA_DIR = str(REPO_ROOT.parent / "shared" / "data" / "caltech101_5")
VARIANTS = ("as_is", "square")
ACCURACY_GOAL = 0.95
RESULTS_NAME = "photo_bench"


def write_square_copy(data_dir: str, target_dir: str, size: int) -> int:
    """Copies data_dir's train/ and test/ class folders into target_dir, every photo
    stretched to size x size (RGB, JPEG quality 95); returns the number of photos written.

    Files that do not decode are copied unchanged, so the run treats them as it would
    the originals (data.bad_images).
    """
    import tensorflow as tf

    written = 0
    for path in sorted(glob.glob(os.path.join(data_dir, "*", "*", "*"))):
        relative = os.path.relpath(path, data_dir)
        if relative.split(os.sep)[0] not in ("train", "test"):
            continue
        target = os.path.join(target_dir, os.path.splitext(relative)[0] + ".jpg")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(path, "rb") as handle:
            contents = handle.read()
        try:
            image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            with open(os.path.join(target_dir, relative), "wb") as handle:
                handle.write(contents)
            continue
        square = tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True)
        square = tf.cast(tf.round(tf.clip_by_value(square, 0.0, 255.0)), tf.uint8)
        with open(target, "wb") as handle:
            handle.write(tf.io.encode_jpeg(square, quality=95).numpy())
        written += 1
    return written


def run_variant(variant: str, data_dir: str, output_root: str, overrides: Sequence[str],
                label: str) -> Dict:
    """One `tfprod run` of the config on data_dir; returns its figures."""
    key = f"{variant}_{label}" if label else variant
    output_dir = os.path.join(output_root, key)
    run = pipeline_run.run_config(CONFIG, data_dir, output_dir, overrides, key)
    summary, stats = run.summary, run.stats
    epochs = stats.get("epochs", [])
    metrics = summary.get("metrics", {})
    return {
        "key": key,
        "variant": variant,
        "label": label,
        "config": CONFIG,
        "overrides": list(overrides),
        "command": run.display_command({output_dir: "OUT/" + key}),
        "exit_code": run.exit_code,
        "status": summary["status"],
        "started_utc": run.started.isoformat(timespec="seconds"),
        "test_accuracy": metrics.get("accuracy"),
        "baseline_accuracy": metrics.get("baseline_accuracy"),
        "test_examples": metrics.get("example_count"),
        "meets_goal": (metrics.get("accuracy") or 0) >= ACCURACY_GOAL,
        "blessed": summary["blessed"],
        "skipped_inputs": summary.get("skipped_inputs", {}).get("count", 0),
        "train_examples": stats.get("train_examples"),
        "eval_examples": stats.get("eval_examples"),
        "epochs_run": stats.get("epochs_run", len(epochs) or None),
        "fit_seconds": round(sum(epoch.get("seconds", 0.0) for epoch in epochs), 1)
        if epochs else summary.get("component_seconds", {}).get("Trainer"),
        "component_seconds": summary.get("component_seconds", {}),
        "total_seconds": summary.get("total_seconds"),
        "load_average_before": [round(value, 2) for value in run.load_before],
    }


def write_results(results: List[Dict], results_dir: pathlib.Path, data_dir: str,
                  square_size: int) -> None:
    """Merges results into <results_dir>/photo_bench.json and rewrites photo_bench.md."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{RESULTS_NAME}.json"
    stored = json.loads(json_path.read_text()) if json_path.exists() else {"runs": {}}
    for result in results:
        stored["runs"][result["key"]] = result
    stored["machine"] = describe_machine()
    stored["data_dir"] = data_dir
    stored["square_size"] = square_size
    json_path.write_text(json.dumps(stored, indent=1) + "\n")
    lines = [
        "# Photo-folder benchmark (configs/caltech101_5_resnet.yaml)", "",
        f"Data: `{data_dir}`. `as_is`: the photos as they are (the pipeline resizes each "
        "keeping its aspect ratio and center-crops it). `square`: every photo first stretched "
        f"to {square_size}x{square_size} by the benchmark (no aspect-ratio or size cue). "
        f"Goal: test accuracy >= {ACCURACY_GOAL}. Fit time: the Trainer's epochs, without "
        "validation. Times are comparable between rows only at a similar load average "
        "(the last column: the 1-minute load when the run started).", "",
        "| run | test accuracy | majority class | blessed | epochs | fit s | total s | "
        "train/eval/test | command | load before |",
        "|---|---:|---:|---|---:|---:|---:|---|---|---:|",
    ]
    for key, run in sorted(stored["runs"].items()):
        def fmt(value, digits=4):
            return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        lines.append(
            f"| {key} | {fmt(run['test_accuracy'])} | {fmt(run['baseline_accuracy'])} | "
            f"{run['blessed']} | {run['epochs_run']} | {fmt(run['fit_seconds'], 1)} | "
            f"{fmt(run['total_seconds'], 1)} | {run['train_examples']}/{run['eval_examples']}/"
            f"{run['test_examples']} | `{run['command']}` | "
            f"{fmt((run.get('load_average_before') or ['?'])[0], 2)} |")
    machine = stored["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}, "
              f"Python {machine['python']}, TensorFlow {machine['tensorflow']}, GPUs "
              f"{machine['gpus'] or 'none'}; load average at the end "
              f"{machine['load_average_at_end']}.", "",
              "Reproduce: `python -m bench.photo_bench` from the repository root."]
    (results_dir / f"{RESULTS_NAME}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.photo_bench",
        description="Runs configs/caltech101_5_resnet.yaml on a photo folder as it is and "
                    "resized to one square size; writes docs/benchmarks/photo_bench.{json,md}.")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder with train/<class>/ and test/<class>/ (default: the "
                             "shared Caltech-101 subset)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--square-size", type=int, default=256,
                        help="the square variant's size in pixels (default 256)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, passed to tfprod run")
    parser.add_argument("--label", default="", help="a name for runs with overrides")
    parser.add_argument("--output-root", default=None,
                        help="where the runs write (default: a temporary directory)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR),
                        help="where photo_bench.json/.md go (default docs/benchmarks)")
    args = parser.parse_args(argv)
    output_root = args.output_root or tempfile.mkdtemp(prefix="photo_bench_")
    results = []
    for variant in args.variants:
        data_dir = args.data_dir
        if variant == "square":
            data_dir = os.path.join(output_root, f"square_{args.square_size}_data")
            count = write_square_copy(args.data_dir, data_dir, args.square_size)
            print(f"square: {count} photos resized to {args.square_size}x{args.square_size} "
                  f"in {data_dir}", flush=True)
        result = run_variant(variant, data_dir, output_root, args.overrides, args.label)
        print(json.dumps({key: result[key] for key in (
            "key", "status", "test_accuracy", "baseline_accuracy", "blessed", "epochs_run",
            "fit_seconds")}), flush=True)
        results.append(result)
    write_results(results, pathlib.Path(args.results_dir), args.data_dir, args.square_size)
    print(f"Results: {args.results_dir}/{RESULTS_NAME}.md")
    return 0 if all(result["status"] == "succeeded" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
