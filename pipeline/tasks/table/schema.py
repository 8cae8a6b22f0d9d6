"""TableSchema: SchemaGen's inferred schema, relaxed for tables.

TFDV infers from the training split that a column which happened to be complete is
required, has exactly one value (a fixed shape) and, for a string column with few values,
may only take those values. For a table all three are wrong: any cell may be missing in a
new row (Transform imputes it), and a category never seen in training goes to an OOV
bucket. Left as inferred, ExampleValidator would stop a run whose test file has a missing
value or a new category, and serving_default would refuse a tf.Example without a feature.

The rewrite keeps each feature's inferred type (TFDV still flags a string in a float
column), and its "at most one value per row"; it drops presence requirements, fixed shapes
and value domains. The label keeps its inferred constraints (every row has one).
"""

import os

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx

from tfprod.contract import features

SCHEMA_FILE = "schema.pbtxt"  # what SchemaGen writes, and what its readers read


def relax(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """A copy of the schema with every feature but the label optional, of variable length
    (at most one value) and without a value domain."""
    result = schema_pb2.Schema()
    result.CopyFrom(schema)
    for feature in result.feature:
        if feature.name == features.LABEL_KEY:
            continue
        feature.ClearField("presence")
        feature.presence.min_count = 0
        feature.presence.min_fraction = 0.0
        feature.ClearField("shape")
        feature.ClearField("value_count")
        feature.value_count.max = 1
        domain = feature.WhichOneof("domain_info")
        if domain:
            feature.ClearField(domain)
        feature.ClearField("distribution_constraints")
    used = {feature.domain for feature in result.feature if feature.HasField("domain")}
    kept = [domain for domain in result.string_domain if domain.name in used]
    del result.string_domain[:]
    result.string_domain.extend(kept)
    return result


@tfx.dsl.components.component
def TableSchema(inferred: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
                schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema]
                ) -> None:
    """Writes relax(inferred schema) as the schema every later component reads."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(inferred.uri, SCHEMA_FILE), "r") as handle:
        parsed = text_format.Parse(handle.read(), schema_pb2.Schema())
    with tf.io.gfile.GFile(os.path.join(schema.uri, SCHEMA_FILE), "w") as handle:
        handle.write(text_format.MessageToString(relax(parsed)))
