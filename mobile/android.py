"""The Android drop-in folder written beside an image model's TFLite files.

    <tflite dir>/android/
        assets/<mode>.tflite   the recommended mode's model (metadata and labels attached)
        assets/labels.txt      the labels packed in that model
        TfprodClassifier.kt    LiteRT Interpreter and Task Library ImageClassifier variants
        model_contract.json    the constants the Kotlin code assumes
        README.md              Gradle pins, where to copy what, which mode and why

Every constant is read from the .tflite file itself (ai_edge_litert's Interpreter for the
tensors, the packed labels.txt) and every figure from the verification report
(mobile.verify), so neither can drift from what was shipped.
"""

import json
import os
import shutil
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfprod import errors
from tfprod.mobile import android_templates, metadata

ANDROID_DIR = "android"
ASSETS_DIR = "assets"
KOTLIN_FILE = "TfprodClassifier.kt"
CONTRACT_FILE = "model_contract.json"
README_FILE = "README.md"
LABELS_FILE = metadata.ModelMetadataSpec.LABEL_FILE
# Pinned here without network access to check for newer releases (see the README text).
LITERT_VERSION = "1.0.1"
TASK_LIBRARY_VERSION = "0.4.4"  # tflite-support 0.4.4, what tests/test_task_library.py runs
# A mode may lose at most this much test accuracy (points, on LiteRT) to be recommended.
MAX_ACCURACY_DROP_POINTS = 1.0


class AndroidPackageError(errors.RunFailure, ValueError):
    """The Android folder cannot be written for this model; the message says why."""


def _tensor(detail: Mapping[str, Any]) -> Dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "index": int(detail["index"]),
            "shape": [int(size) for size in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def read_contract(model_bytes: bytes, mean: Sequence[float],
                  std: Sequence[float]) -> Dict[str, Any]:
    """What an app must know about the model, read from the file itself.

    Args:
      model_bytes: the .tflite file, metadata attached.
      mean, std: the normalization written into its metadata (mobile.export.metadata_spec).

    Raises:
      AndroidPackageError: not a single-input [1, H, W, C] image classifier with labels.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise AndroidPackageError(
            f"the Android folder is for image classifiers with one [1, H, W, C] input and one "
            f"output; this model has inputs {[list(d['shape']) for d in inputs]} and outputs "
            f"{[list(d['shape']) for d in outputs]}")
    labels = labels_of(model_bytes)
    output = _tensor(outputs[0])
    if len(labels) != output["shape"][-1]:
        raise AndroidPackageError(f"{len(labels)} labels in the model's {LABELS_FILE} for "
                                  f"{output['shape'][-1]} outputs: re-export the model")
    return {"input": _tensor(inputs[0]), "output": output,
            "normalization": {"mean": [float(value) for value in mean],
                              "std": [float(value) for value in std]},
            "label_count": len(labels), "labels_file": LABELS_FILE}


def labels_of(model_bytes: bytes) -> List[str]:
    """The labels packed in the model's zip (mobile.metadata.attach_metadata)."""
    files = metadata.read_associated_files(model_bytes)
    if LABELS_FILE not in files:
        raise AndroidPackageError(f"the model carries no {LABELS_FILE}: attach metadata first")
    return [line for line in files[LABELS_FILE].decode("utf-8").splitlines() if line]


def task_library_problem(contract: Mapping[str, Any]) -> Optional[str]:
    """Why the Task Library's ImageClassifier refuses the file, or None if it takes it.

    Its rules as tests/test_task_library.py observed them with tflite-support 0.4.4.
    """
    if contract["input"]["dtype"] not in ("float32", "uint8"):
        return f"{contract['input']['dtype']} input; it takes float32 or uint8"
    if contract["input"]["shape"][-1] != 3:
        return "a 1-channel input; it takes RGB only"
    return None


def _litert(model: Mapping[str, Any]) -> Mapping[str, Any]:
    return model.get("runtimes", {}).get("litert", {})


def recommend(report: Mapping[str, Any], problems: Mapping[str, Optional[str]]):
    """(model row of the report, reason) for the mode to ship.

    The smallest file among those the Task Library takes whose LiteRT accuracy is within
    MAX_ACCURACY_DROP_POINTS of the SavedModel's (ties: the faster); else the most accurate.
    """
    models = list(report["models"])
    usable = [model for model in models if not problems.get(model["mode"])
              and _litert(model).get("accuracy_drop_points") is not None
              and _litert(model)["accuracy_drop_points"] <= MAX_ACCURACY_DROP_POINTS]
    if usable:
        chosen = min(usable, key=lambda model: (
            model["size_bytes"], _litert(model).get("latency_ms_1_thread", float("inf"))))
        others = ", ".join(model["mode"] for model in usable if model is not chosen)
        reason = (f"`{chosen['mode']}` is the smallest file ({chosen['size_bytes'] / 1024:.1f} KB) "
                  f"among the modes that lose at most {MAX_ACCURACY_DROP_POINTS:g} point of test "
                  f"accuracy against the SavedModel on LiteRT and that the Task Library's "
                  f"ImageClassifier loads" + (f" (also: {others})" if others else "") + ".")
    else:
        chosen = max(models, key=lambda model: _litert(model).get("accuracy", -1.0))
        reason = (f"No mode stays within {MAX_ACCURACY_DROP_POINTS:g} point of the SavedModel's "
                  f"accuracy on LiteRT with a file the Task Library loads; `{chosen['mode']}` is "
                  f"the most accurate. Check the table before shipping it.")
    latency = _litert(chosen).get("latency_ms_1_thread")
    if latency is not None:
        reason += (f" Its median latency was {latency:.3f} ms per image with 1 thread on the "
                   "converting machine, not a phone: measure on your devices.")
    return chosen, reason


def _figure(value, fmt: str) -> str:
    return "missing in the report" if value is None else format(value, fmt)


def _kotlin_float(value: float) -> str:
    """A Kotlin Float literal that parses back to value's float32."""
    return repr(float(np.float32(value))) + "f"


def _render(template: str, **values) -> str:
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)
    environment.filters["kotlin_float"] = _kotlin_float
    return environment.from_string(template).render(**values)


def write_android_folder(tflite_dir: str, model_files: Mapping[str, str],
                         report_path: str, mean: Sequence[float],
                         std: Sequence[float]) -> str:
    """Writes <tflite_dir>/android/ for the models export_tflite wrote; returns its path.

    Args:
      tflite_dir: the folder with <mode>.tflite and report.json.
      model_files: mode -> .tflite path (ExportResult.model_files).
      report_path: the verification report JSON (figures are read from it).
      mean, std: the normalization in the models' metadata.

    Raises:
      AndroidPackageError: a model is not an image classifier with labels, or the report
        names no model.
    """
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)
    if not report.get("models"):
        raise AndroidPackageError(f"{report_path} lists no models: nothing to package")
    contracts, problems = {}, {}
    for mode, path in model_files.items():
        with open(path, "rb") as handle:
            contracts[mode] = read_contract(handle.read(), mean, std)
        problems[mode] = task_library_problem(contracts[mode])
    chosen, reason = recommend(report, problems)
    mode = chosen["mode"]
    model_path = model_files[mode]
    model_file = os.path.basename(model_path)
    contract = dict(contracts[mode], model_file=model_file, mode=mode,
                    model_name=report["model_name"], version=str(report["version"]),
                    task_library_ok=problems[mode] is None,
                    task_library_problem=problems[mode] or "")

    android_dir = os.path.join(tflite_dir, ANDROID_DIR)
    assets_dir = os.path.join(android_dir, ASSETS_DIR)
    if os.path.isdir(android_dir):
        shutil.rmtree(android_dir)  # a re-export replaces the folder, no stale model left
    os.makedirs(assets_dir)
    shutil.copyfile(model_path, os.path.join(assets_dir, model_file))
    with open(model_path, "rb") as handle:
        labels = labels_of(handle.read())
    with open(os.path.join(assets_dir, LABELS_FILE), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{label}\n" for label in labels))
    with open(os.path.join(android_dir, CONTRACT_FILE), "w", encoding="utf-8") as handle:
        json.dump(contract, handle, indent=2)
    with open(os.path.join(android_dir, KOTLIN_FILE), "w", encoding="utf-8") as handle:
        handle.write(_render(android_templates.KOTLIN, **contract))

    rows = []
    for model in report["models"]:
        litert = _litert(model)
        rows.append({
            "mode": model["mode"], "io_type": model.get("io_type", "?"),
            "size_kb": _figure(model.get("size_bytes") and model["size_bytes"] / 1024, ".1f"),
            "accuracy": _figure(litert.get("accuracy"), ".4f"),
            "drop": _figure(litert.get("accuracy_drop_points"), "+.2f"),
            "latency": _figure(litert.get("latency_ms_1_thread"), ".3f"),
            "task_library_ok": not problems.get(model["mode"]),
            "task_library_problem": problems.get(model["mode"]) or "not checked",
            "file": (f"assets/{model_file}" if model["mode"] == mode
                     else f"../{os.path.basename(model['path'])}")})
    readme = _render(
        android_templates.README, **contract, chosen=chosen, reason=reason, rows=rows,
        litert_version=LITERT_VERSION, task_library_version=TASK_LIBRARY_VERSION,
        report_file=f"../{os.path.basename(report_path)}",
        test_examples=report.get("test_examples", "an unknown number of"),
        machine=report.get("machine", "machine not recorded"),
        savedmodel_accuracy=_figure(report.get("savedmodel_accuracy"), ".4f"))
    with open(os.path.join(android_dir, README_FILE), "w", encoding="utf-8") as handle:
        handle.write(readme)
    return android_dir


def write_sequence_folder(tflite_dir: str, model_files: Mapping[str, str],
                          report: Mapping[str, Any], spec: metadata.ModelMetadataSpec) -> str:
    """The Android folder of a text classifier or forecaster: the models, their files, a README.

        android/assets/<mode>.tflite   every converted mode (metadata attached)
        android/assets/vocab.txt       text: line i is token id i
        android/assets/labels.txt      text: line i names class i
        android/README.md              the input and output contract, the verified figures

    There is no Kotlin class for these: the Task Library's NLClassifier and BertNLClassifier
    tokenize with rules of their own (regex or WordPiece), not the Transform graph's, so an
    app tokenizes as the README says and calls the Interpreter itself.
    """
    android_dir = os.path.join(tflite_dir, ANDROID_DIR)
    assets_dir = os.path.join(android_dir, ASSETS_DIR)
    if os.path.isdir(android_dir):
        shutil.rmtree(android_dir)
    os.makedirs(assets_dir)
    for path in model_files.values():
        shutil.copyfile(path, os.path.join(assets_dir, os.path.basename(path)))
    for associated in spec.associated_files():
        with open(os.path.join(assets_dir, associated.name), "wb") as handle:
            handle.write(associated.content)
    metric = report.get("metric", "accuracy")
    change = "accuracy_drop_points" if metric == "accuracy" else "mae_increase"
    lines = [f"# {report['model_name']} version {report['version']} on Android", "",
             spec.description, "",
             f"Input `{spec.input.name}`: {spec.input.description}", "",
             f"Output `{spec.output.name}`: {spec.output.description}", "",
             "Load a model from assets/ with LiteRT's `Interpreter` (the Task Library's text "
             "classifiers tokenize differently, so tokenize as above and feed the ids).", "",
             f"Verified on {report.get('test_examples')} test examples (SavedModel {metric} "
             f"{report.get('savedmodel_' + metric)}), on LiteRT:", "",
             f"| file | size (KB) | {metric} | {change} | latency 1 thread (ms) |",
             "|---|---:|---:|---:|---:|"]
    for model in report["models"]:
        litert = _litert(model)
        lines.append(f"| assets/{os.path.basename(model['path'])} | "
                     f"{model['size_bytes'] / 1024:.1f} | {_figure(litert.get(metric), '.4f')} | "
                     f"{_figure(litert.get(change), '+.4f')} | "
                     f"{_figure(litert.get('latency_ms_1_thread'), '.3f')} |")
    for mode, reason in (report.get("failed_modes") or {}).items():
        lines.append(f"\nNot converted: {mode} ({reason.splitlines()[0][:300]}).")
    with open(os.path.join(android_dir, README_FILE), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return android_dir
