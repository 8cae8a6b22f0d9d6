"""Kubeflow: compile the pipeline for Kubeflow Pipelines v2, submit runs, Kubernetes manifests."""
