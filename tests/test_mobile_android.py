"""The Android drop-in folder (mobile/android.py): its constants are the file's own.

The folders checked are those the real runs of tests/test_mobile.py write (its pipeline_run
fixture and its `tfprod tflite --int8-io` run call the helper below): nothing here converts a
model again. The Kotlin is not compiled (no Android SDK here); what is checked is every
literal constant it holds, parsed from its text, against the .tflite file read with
ai_edge_litert's Interpreter and tflite-support's metadata schema reader.
"""

import json
import pathlib
import re

import numpy as np

from tfprod.mobile import android, metadata


def kotlin_constant(kotlin: str, name: str) -> str:
    match = re.search(rf"^\s*(?:const )?val {name} = (.+?)\s*(?://.*)?$", kotlin, re.M)
    assert match, f"{name} is not in the Kotlin file"
    return match.group(1)


def kotlin_array(kotlin: str, name: str, kind: str):
    text = kotlin_constant(kotlin, name)
    match = re.fullmatch(rf"{kind}ArrayOf\((.*)\)", text)
    assert match, (name, text)
    return [item.strip() for item in match.group(1).split(",")]


def kotlin_float(literal: str) -> np.float32:
    assert literal.endswith("f"), literal
    return np.float32(float(literal[:-1]))


def assert_android_folder_matches_the_model(tflite_dir: pathlib.Path) -> dict:
    """Checks <tflite_dir>/android against the shipped .tflite and report.json; returns
    the contract."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema

    folder = tflite_dir / "android"
    contract = json.loads((folder / "model_contract.json").read_text())
    kotlin = (folder / "TfprodClassifier.kt").read_text()
    readme = (folder / "README.md").read_text()
    report = json.loads((tflite_dir / "report.json").read_text())
    model_bytes = (folder / "assets" / contract["model_file"]).read_bytes()
    assert model_bytes == (tflite_dir / contract["model_file"]).read_bytes()
    assert kotlin_constant(kotlin, "MODEL_FILE") == f'"{contract["model_file"]}"'

    interpreter = Interpreter(model_content=model_bytes)
    (model_input,) = interpreter.get_input_details()
    (model_output,) = interpreter.get_output_details()
    for prefix, detail in (("INPUT", model_input), ("OUTPUT", model_output)):
        scale, zero_point = detail["quantization"]
        dtype = np.dtype(detail["dtype"]).name
        shape = detail["shape"].tolist()
        written = contract[prefix.lower()]
        assert (written["name"], written["index"], written["shape"], written["dtype"],
                written["zero_point"]) == (detail["name"], detail["index"], shape, dtype,
                                           zero_point)
        assert np.float32(written["scale"]) == np.float32(scale)
        assert kotlin_constant(kotlin, f"{prefix}_NAME") == f'"{detail["name"]}"'
        assert int(kotlin_constant(kotlin, f"{prefix}_INDEX")) == detail["index"]
        assert [int(size) for size in kotlin_array(kotlin, f"{prefix}_SHAPE", "int")] == shape
        assert kotlin_constant(kotlin, f"{prefix}_DTYPE") == f'"{dtype}"'
        assert kotlin_float(kotlin_constant(kotlin, f"{prefix}_SCALE")) == np.float32(scale)
        assert int(kotlin_constant(kotlin, f"{prefix}_ZERO_POINT")) == zero_point
    assert [int(kotlin_constant(kotlin, name)) for name in
            ("INPUT_HEIGHT", "INPUT_WIDTH", "INPUT_CHANNELS")] == model_input["shape"][1:].tolist()

    # The normalization, as the metadata states it (tflite-support's own schema reader).
    buffer = metadata.extract_metadata_buffer(model_bytes)
    model_metadata = schema.ModelMetadataT.InitFromObj(
        schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    (normalization,) = model_metadata.subgraphMetadata[0].inputTensorMetadata[0].processUnits
    for key, values in (("mean", normalization.options.mean), ("std", normalization.options.std)):
        expected = [np.float32(value) for value in values]
        assert [np.float32(value) for value in contract["normalization"][key]] == expected
        assert [kotlin_float(item) for item in
                kotlin_array(kotlin, f"NORMALIZATION_{key.upper()}", "float")] == expected

    labels = metadata.read_associated_files(model_bytes)["labels.txt"].decode().splitlines()
    assert (folder / "assets" / "labels.txt").read_text().splitlines() == labels
    assert int(kotlin_constant(kotlin, "LABEL_COUNT")) == contract["label_count"] == \
        len(labels) == model_output["shape"][-1]

    # The README names the shipped mode with the report's own figures.
    row = next(model for model in report["models"] if model["mode"] == contract["mode"])
    litert = row["runtimes"]["litert"]
    assert f"## Which model to ship: `{contract['model_file']}` ({contract['mode']})" in readme
    assert (f"| {row['mode']} (shipped) | {row['io_type']} | {row['size_bytes'] / 1024:.1f} | "
            f"{litert['accuracy']:.4f} | {litert['accuracy_drop_points']:+.2f} | "
            f"{litert['latency_ms_1_thread']:.3f} |") in readme
    for pin in (f"com.google.ai.edge.litert:litert:{android.LITERT_VERSION}",
                "org.tensorflow:tensorflow-lite-task-vision:0.4.4", 'noCompress "tflite"',
                "app/src/main/assets", "no Android SDK", "without network access"):
        assert pin in readme, pin
    return contract


def _report(*models):
    return {"model_name": "m", "version": "1", "models": [
        {"mode": mode, "io_type": io_type, "path": f"/x/{mode}.tflite", "size_bytes": size,
         "runtimes": {"litert": {"accuracy": 0.9, "accuracy_drop_points": drop,
                                 "latency_ms_1_thread": 1.0}}}
        for mode, io_type, size, drop in models]}


def test_recommend_prefers_the_smallest_accurate_file_the_task_library_takes():
    report = _report(("float32", "float32", 1000, 0.0), ("float16", "float32", 500, 0.2),
                     ("int8", "int8", 250, 0.1), ("dynamic", "float32", 260, 2.5))
    problems = {"int8": "int8 input; it takes float32 or uint8"}
    chosen, reason = android.recommend(report, problems)
    # int8 is refused by the Task Library, dynamic loses 2.5 points: float16 is shipped.
    assert chosen["mode"] == "float16"
    assert "smallest file (0.5 KB)" in reason and "also: float32" in reason
    # When nothing qualifies, the most accurate is shipped, and the reason says to check.
    chosen, reason = android.recommend(_report(("int8", "int8", 250, 5.0)), problems)
    assert chosen["mode"] == "int8" and "Check the table" in reason


def test_task_library_problem_follows_its_input_rules():
    def contract(dtype, channels):
        return {"input": {"dtype": dtype, "shape": [1, 28, 28, channels]}}

    assert android.task_library_problem(contract("float32", 3)) is None
    assert android.task_library_problem(contract("uint8", 3)) is None
    assert "int8 input" in android.task_library_problem(contract("int8", 3))
    assert "RGB only" in android.task_library_problem(contract("float32", 1))
