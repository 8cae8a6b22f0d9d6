"""`tfprod monitor`: drift and skew of served requests against a run's training data.

The loop (docs/monitoring.md): `tfprod serve --request_log_dir DIR` logs sampled requests and
responses as TF Serving's PredictionLog protos; `tfprod monitor --request-logs DIR --run
OUTPUT_DIR` reads them back (reader), turns them into the raw features the run's
statistics describe (features), computes TFDV statistics of them and compares them with
the run's training statistics and schema with TFDV's skew comparators, and the served
predictions with the model's own predictions on the run's test data (compare). It writes
monitor.json and monitor.html (report), optionally a Prometheus textfile, and exits 4
(tfprod.errors.DriftDetected) when a threshold is crossed (cli).
"""
