"""Kubeflow: compile the pipeline for Kubeflow Pipelines v2, submit runs, Kubernetes manifests."""

import os

# Keras 2 (tf-keras) everywhere: must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
