"""Stopping the pipeline on data anomalies.

ExampleValidator records anomalies but does not stop a run. AnomaliesGate runs
right after it and fails with DataValidationError when any split has
anomalies, naming each feature and why; Transform and everything after it
depend on the gate, so nothing is trained or pushed on bad data.
"""

import os
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

from tfprod import errors

SCHEMA_DIFF_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split


class DataValidationError(errors.InputDataError, RuntimeError):
    """The data does not match the schema; the message lists every anomaly."""


def read_anomalies(anomalies_uri: str, split_names: List[str]) -> Dict[str, anomalies_pb2.Anomalies]:
    """Reads ExampleValidator's per-split Anomalies protos from an artifact URI."""
    result = {}
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", SCHEMA_DIFF_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as handle:
            anomalies.ParseFromString(handle.read())
        result[split] = anomalies
    return result


def describe_anomalies(per_split: Dict[str, anomalies_pb2.Anomalies]) -> List[str]:
    """One line per anomalous feature: split, feature, short and long description."""
    lines = []
    for split, anomalies in sorted(per_split.items()):
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(
                f"{reason.short_description}: {reason.description}" for reason in info.reason)
            lines.append(f"split '{split}', feature '{feature}': "
                         f"{reasons or info.short_description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
            lines.append(f"split '{split}', whole dataset: {reasons or info.short_description}")
    return lines


def check_anomalies(anomalies_uri: str, split_names: List[str]) -> None:
    """Raises DataValidationError listing the anomalies, if there are any."""
    lines = describe_anomalies(read_anomalies(anomalies_uri, split_names))
    if lines:
        raise DataValidationError(
            "ExampleValidator found anomalies; the run stops before training.\n  "
            + "\n  ".join(lines)
            + "\nFix the data, or, if the change is expected, update the schema "
              "(data.schema_path) and run again.")


@tfx.dsl.components.component
def AnomaliesGate(anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails the run when ExampleValidator found anomalies in any split."""
    check_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
