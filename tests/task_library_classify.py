"""Classifies images with the TFLite Task Library's ImageClassifier (run in .venv-tasklib).

tflite-support 0.4.4 cannot be imported beside TensorFlow (a pybind11 clash, see
../shared/docs/STACK.md), so tests/test_task_library.py runs this file with the Python
of its own virtualenv (`make task-library-venv`). It imports nothing of tfprod.

    python tests/task_library_classify.py IMAGES.npy MODEL.tflite [MODEL.tflite ...]

IMAGES.npy holds uint8 images [N, height, width, 3] (RGB, as an app's bitmap). For each
model it prints one JSON line: {"model": path, "labels": [class names from the model's
metadata], "top1": [{"index", "label", "score"} per image]} or {"model": path, "error": ...}
when the Task Library refuses the model (the test shows the error).
"""

import json
import sys

import numpy as np
from tflite_support.task import core, processor, vision


def classify(model_path: str, images: np.ndarray) -> dict:
    """The Task Library's top-1 for each image, and every label it read from the metadata."""
    options = vision.ImageClassifierOptions(
        base_options=core.BaseOptions(file_name=model_path, num_threads=1),
        # All classes: the label list is then every label the metadata's labels.txt gives.
        classification_options=processor.ClassificationOptions(max_results=-1))
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except (ValueError, RuntimeError) as error:
        return {"model": model_path, "error": str(error)}
    top1, labels = [], None
    for image in images:
        result = classifier.classify(vision.TensorImage.create_from_array(image))
        categories = result.classifications[0].categories
        if labels is None:
            labels = [name for _, name in sorted((c.index, c.category_name) for c in categories)]
        best = categories[0]
        top1.append({"index": int(best.index), "label": best.category_name,
                     "score": float(best.score)})
    return {"model": model_path, "labels": labels, "top1": top1}


def main(argv) -> int:
    images = np.load(argv[1])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        print(f"error: expected uint8 [N, height, width, 3] images, got {images.dtype} "
              f"{images.shape}", file=sys.stderr)
        return 2
    for model_path in argv[2:]:
        print(json.dumps(classify(model_path, images)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
