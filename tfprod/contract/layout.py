"""Where a run writes: the run directory's layout, the ids of the pipeline's components, and
where a SavedModel keeps its TF Serving warm-up requests.

The pipeline writes these, and the report, the run summary, the server, the Kubeflow compiler
and the tests read them; all of them take the names from here.
"""

import dataclasses
import os

# Files at the top of a run's output directory.
METADATA_FILE = "metadata.sqlite"  # ML Metadata (SQLite) of the local runs
SUMMARY_FILE = "run_summary.json"  # pipeline.summary.RunSummary, written at the end of a run
CONFIG_FILE = "config.yaml"  # the experiment config the run used
# The config of the run in progress; renamed to CONFIG_FILE when the run ends (with
# SUMMARY_FILE and REPORT_FILE), so the three always describe the same, last finished run.
# Left behind, it is the config of a run that was killed. Locked while the run holds the
# directory.
RUNNING_CONFIG_FILE = "config.yaml.running"
LOG_FILE = "run.log"  # the full TFX/Beam/TensorFlow log of the run
REPORT_FILE = "report.html"  # the run report (pipeline.report)
PIPELINE_ROOT_DIR = "pipeline"  # TFX artifacts, one folder per component
SERVING_DIR = "serving"  # pushed models, <serving>/<model_name>/<version>/

# Files the Trainer writes into its model_run artifact.
TRAINING_STATS_FILE = "training_stats.json"  # per-epoch history and throughput
EFFECTIVE_CONFIG_FILE = "effective_config.yaml"  # the config the Trainer trained with

# A file an ExampleGen writes into its examples artifact: the input files it left out
# (data.bad_images: skip), {"count": n, "files": [{"file": path, "reason": text}]}.
SKIPPED_INPUTS_FILE = "skipped_inputs.json"

# Component ids of the pipeline (tfx node ids), as MLMD and the progress lines name them.
EXAMPLE_GEN_ID = "ExampleGen"
STATISTICS_GEN_ID = "StatisticsGen"
SCHEMA_GEN_ID = "SchemaGen"
EXAMPLE_VALIDATOR_ID = "ExampleValidator"
ANOMALIES_GATE_ID = "AnomaliesGate"
TRANSFORM_ID = "Transform"
TUNER_ID = "Tuner"
TRAINER_ID = "Trainer"
EVALUATOR_ID = "Evaluator"
PUSHER_ID = "Pusher"
TFLITE_CONVERTER_ID = "TFLiteConverter"

# A classifier's SavedModel asset of class names, one per line (line i = class id i); the
# TFLite metadata's labels file is the same list.
LABELS_ASSET = os.path.join("assets", "labels.txt")
LABELS_FILE_NAME = "labels.txt"

# TF Serving replays these requests when it loads a version (SavedModel warm-up).
WARMUP_DIRECTORY = "assets.extra"
WARMUP_FILE_NAME = "tf_serving_warmup_requests"
WARMUP_PATH = os.path.join(WARMUP_DIRECTORY, WARMUP_FILE_NAME)  # relative to the version dir


@dataclasses.dataclass(frozen=True)
class PipelinePaths:
    """Where a run's artifacts, metadata and pushed models live."""

    output_dir: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_dir, PIPELINE_ROOT_DIR)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, METADATA_FILE)

    @property
    def serving_dir(self) -> str:
        return os.path.join(self.output_dir, SERVING_DIR)

    def serving_model_dir(self, model_name: str) -> str:
        """<output-dir>/serving/<model_name>: the TF Serving base path (versions below it)."""
        return os.path.join(self.serving_dir, model_name)

    @property
    def summary_path(self) -> str:
        return os.path.join(self.output_dir, SUMMARY_FILE)

    @property
    def config_path(self) -> str:
        return os.path.join(self.output_dir, CONFIG_FILE)

    @property
    def running_config_path(self) -> str:
        return os.path.join(self.output_dir, RUNNING_CONFIG_FILE)

    @property
    def log_path(self) -> str:
        return os.path.join(self.output_dir, LOG_FILE)

    @property
    def report_path(self) -> str:
        return os.path.join(self.output_dir, REPORT_FILE)
