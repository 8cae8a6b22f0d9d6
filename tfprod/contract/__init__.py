"""The contract layer: names and file layouts every tfprod package agrees on.

Nothing here imports TensorFlow, TFX or any other tfprod package (NumPy at most), so the
server, the report, the CLI's config checks and the Kubeflow compiler can read these
without paying for a TensorFlow import, and no package has to copy a constant to avoid one.

Modules: features (feature, output and signature names), splits (split names), tasks (task
names), layout (the run directory, component ids, the warm-up file) and idx (the IDX file
format that both ingestion and TFLite calibration read).
"""
