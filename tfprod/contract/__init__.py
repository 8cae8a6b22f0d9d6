"""The contract layer: names and file layouts every tfprod package agrees on.

Nothing here imports TensorFlow, TFX or any other tfprod package, so the server, the
report, the CLI's config checks and the Kubeflow compiler can read these without paying
for a TensorFlow import, and no package has to copy a constant to avoid one.
"""
