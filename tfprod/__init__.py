"""tfprod: raw data to production models with TFX, Keras, TF Serving, TFLite and Kubeflow.

One import root. The top-level folders of the repository are installed under it
(see setup.py): pipeline/ as tfprod.pipeline, models/ as tfprod.models, serving/ as
tfprod.serving, mobile/ as tfprod.mobile, kubeflow/ as tfprod.kubeflow. This folder
holds what they all stand on: tfprod.contract (names and file layouts, no TensorFlow),
tfprod.errors (the error hierarchy) and tfprod.cli (the `tfprod` command).
"""

import os

__version__ = "0.1.0"

# Keras 2 (tf-keras) everywhere. tensorflow-transform 1.16 works only with Keras 2, and the
# switch must be set before TensorFlow is first imported; every tfprod module is imported
# through this package, so this is the one place that sets it.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def __getattr__(name: str):
    """``tfprod.TFLiteModels``: the custom artifact type, by the path KFP v2 stores for it.

    TFX's Kubeflow V2 compiler writes a custom artifact type as its TYPE_NAME
    (``<namespace>.<Name>``, one dot) and the v2 executor entry point imports that name as a
    class path to rebuild the artifact: ``tfprod.TFLiteModels``. Resolved lazily here so
    that importing tfprod stays light (no TensorFlow).
    """
    if name == "TFLiteModels":
        from tfprod.pipeline.tflite_converter import TFLiteModels

        return TFLiteModels
    raise AttributeError(f"module 'tfprod' has no attribute {name!r}")
