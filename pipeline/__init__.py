"""The tfprod TFX pipeline: config, components, ingestion, Transform and Trainer code."""
