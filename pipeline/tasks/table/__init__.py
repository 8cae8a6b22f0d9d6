"""Tables: a CSV directory -> typed, imputed, encoded columns -> a classifier or a regressor.

One task for both problems: data.table.problem (or the label column, when it is null)
decides. The column types, the classes and the regression target's scale are decided
once before the run from train.csv (pipeline.ingestion.table.infer_spec); the preflight
writes the problem and the class count into the config, so the saved config, the
ExampleGen, Transform and the Trainer agree.

Models: `mlp` and `wide_deep` (models/tabular.py). Exported signatures (signatures.py):

  serving_default:    serialized tf.Examples -> outputs
  serving_raw:        one named input per feature column (float32 for numeric and integer
                      columns, NaN = missing; string for the others, "" = missing), so a
                      REST row `{"instances": [{"fare": 12.5, "company": "Flash Cab"}]}`
                      works; tfprod serve fills a missing key or a JSON null as missing
  transform_features: serialized tf.Examples -> the transformed features
  evaluation:         (regression) serialized tf.Examples -> prediction and mean_baseline

Classification outputs `probabilities`, `class_id` and `class_name`; regression outputs
`prediction` (in the label's units).

Tables get no TFLite model (MOBILE_SKIP_REASON says why; the run summary and report show
it).
"""

import functools
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from tfprod.contract import features
from tfprod.contract.tasks import TaskName
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.tasks import (CONFUSION_MATRIX_SECTION, RESIDUALS_SECTION,
                                   TABLE_COLUMNS_SECTION, register)
from tfprod.pipeline.tasks.classification import ACCURACY_METRIC, ClassificationTask

# Outputs of the prediction signatures.
PREDICTION_OUTPUT = "prediction"  # regression, in the label's units
MEAN_BASELINE_OUTPUT = "mean_baseline"  # the evaluation signature's train-mean predictor
EVALUATION_SIGNATURE = "evaluation"
# run_summary.json metrics (regression), and the classification extras for two classes.
MAE_METRIC = "mae"
RMSE_METRIC = "rmse"
MEAN_BASELINE_MAE_METRIC = "mean_baseline_mae"
BINARY_METRICS = ("auc", "precision", "recall", "calibration")

MOBILE_SKIP_REASON = (
    "table models get no TFLite file: their inputs are named columns of mixed types "
    "(strings, missing values) that the Transform graph encodes, and that graph (vocabulary "
    "lookups, sparse inputs) is not part of what TFLite runs; serve the SavedModel instead")


@functools.lru_cache(maxsize=8)
def _cached_spec(data_dir: str, table_key: str, eval_fraction: float, stamp: Tuple):
    from tfprod.pipeline.ingestion import table_format as table

    del stamp  # part of the cache key only: a changed file is read again
    table_config = config_lib.TableDataConfig(**_table_values(table_key))
    return table.infer_spec(data_dir, table_config, eval_fraction)


def _table_values(key: str) -> Dict[str, Any]:
    import json

    values = json.loads(key)
    if values.get("problem") is not None:
        values["problem"] = config_lib.TableProblem(values["problem"])
    return values


def table_spec(experiment: config_lib.ExperimentConfig):
    """The TableSpec of the experiment's table: data.table.decided (the preflight writes
    it), else train.csv read (once per process and change of the file)."""
    import json

    data = experiment.data
    if data.table.decided:
        from tfprod.pipeline.ingestion import table_format as table

        return table.TableSpec.from_dict(json.loads(data.table.decided))
    path = os.path.join(data.data_dir, "train.csv")
    try:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = ()
    key = json.dumps(config_lib.to_dict(data.table), sort_keys=True)
    return _cached_spec(data.data_dir, key, float(data.eval_fraction), stamp)


def is_regression(experiment: config_lib.ExperimentConfig) -> bool:
    return table_spec(experiment).problem == "regression"


@register
class TableTask(ClassificationTask):
    """A CSV table: one label column, numeric and categorical feature columns."""

    name = TaskName.TABLE
    data_formats = (config_lib.DataFormat.TABLE.value,)
    # What either problem logs: accuracy (classification) or mae (regression).
    metrics = ("loss", ACCURACY_METRIC, MAE_METRIC)
    summary_metrics = (ACCURACY_METRIC, MAE_METRIC, RMSE_METRIC, MEAN_BASELINE_MAE_METRIC)
    report_sections = frozenset({CONFUSION_MATRIX_SECTION, TABLE_COLUMNS_SECTION,
                                 RESIDUALS_SECTION})
    sliceable = True  # eval.slices: categorical columns

    def preprocessing_function(self) -> Callable:
        from tfprod.pipeline.tasks.table import preprocessing

        return preprocessing.preprocessing_fn

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        from tfprod.pipeline.ingestion import table

        return table.TableExampleGen(input_base=data_dir, spec=table_spec(experiment))

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """Reads every file as the ExampleGen will (TableFormatError on bad data), then
        writes what the data decided into the config: data.table.problem, and for
        classification data.num_classes (null = the number of training labels; a number
        is checked against them)."""
        from tfprod.pipeline.ingestion import table_format as table

        import json

        data = experiment.data
        data.table.decided = None  # decide again from the data as it is now
        spec = table.check_table_dir(data.data_dir, data.table, data.eval_fraction)
        data.table.problem = config_lib.TableProblem(spec.problem)
        data.table.decided = json.dumps(spec.to_dict(), sort_keys=True)
        if spec.problem == table.CLASSIFICATION:
            classes = len(spec.label_names)
            if data.num_classes is None:
                data.num_classes = classes
            elif data.num_classes != classes:
                raise table.TableFormatError(
                    f"{os.path.join(data.data_dir, table.TRAIN_FILE)}: the label column "
                    f"{spec.label_column!r} has {classes} classes {spec.label_names[:20]}, but "
                    f"data.num_classes is {data.num_classes} (pass --set "
                    f"data.num_classes={classes}, or null)")
        elif experiment.trainer.label_smoothing > 0:
            raise config_lib.ConfigError(
                "trainer.label_smoothing: applies to classification only, and this table's "
                f"label {spec.label_column!r} is a regression target ({spec.problem_reason}); "
                "pass --set trainer.label_smoothing=0", key="trainer.label_smoothing")
        self.slice_feature_keys(experiment)

    def slice_feature_keys(self, experiment: config_lib.ExperimentConfig) -> List[str]:
        """eval.slices' column names as tf.Example keys; only categorical columns (a numeric
        one would give a slice per distinct number).

        Raises:
          ConfigError: a name that is not a categorical feature column, naming those that are.
        """
        self.check_eval_slices(experiment, classifier=not is_regression(experiment))
        if not experiment.eval.slices:
            return []
        spec = table_spec(experiment)
        columns = {column.name: column for column in spec.columns}
        categorical = [column.name for column in spec.columns if column.type == "categorical"]
        keys = []
        for name in experiment.eval.slices:
            column = columns.get(name)
            if column is None or column.type != "categorical":
                why = ("is the label" if name == spec.label_column else
                       "is numeric" if column is not None else "is not a column of train.csv")
                raise config_lib.ConfigError(
                    f"eval.slices: {name!r} {why}; slice by a categorical column: "
                    f"{', '.join(categorical) or '(this table has none)'}", key="eval.slices")
            keys.append(column.key)
        return keys

    def schema_rewrite(self, schema_gen) -> Any:
        from tfprod.pipeline.tasks.table import schema

        return schema.TableSchema(inferred=schema_gen.outputs["schema"])

    def transform_custom_config(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        table = experiment.data.table
        return {"spec": table_spec(experiment).to_dict(),
                "vocabulary_size": table.vocabulary_size,
                "num_oov_buckets": table.num_oov_buckets}

    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        from tfprod.models import registry
        from tfprod.pipeline.tasks.table import preprocessing

        spec = table_spec(experiment)
        table = experiment.data.table
        return registry.ModelInputs(
            feature_name=features.TABLE_NUMERIC_KEY, feature_shape=(),
            num_classes=len(spec.label_names) if spec.problem == "classification" else 0,
            numeric_width=2 * len(spec.numeric),
            categorical_cardinalities=tuple(
                preprocessing.cardinality(column.distinct, table.vocabulary_size,
                                          table.num_oov_buckets)
                for column in spec.categorical))

    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        inputs = {key: transformed[key] for key in (features.TABLE_NUMERIC_KEY,
                                                    features.TABLE_CATEGORICAL_KEY)
                  if key in transformed}
        return inputs, transformed[features.LABEL_KEY]

    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        if not is_regression(experiment):
            super().compile_model(model, experiment, optimizer)
            return
        import tensorflow as tf

        # Huber on the standardized target: MAE-like for outliers, smooth near zero.
        model.compile(optimizer=optimizer, loss=tf.keras.losses.Huber(),
                      metrics=[tf.keras.metrics.MeanAbsoluteError(name=MAE_METRIC)])

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        from tfprod.pipeline.tasks.table import signatures

        return signatures.make_table_signatures(model, tf_transform_output,
                                                table_spec(experiment))

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.pipeline.tasks.table import signatures

        return signatures.table_warmup_requests(table_spec(experiment),
                                                experiment.export.model_name)

    def label_counts(self, experiment: config_lib.ExperimentConfig):
        """Class ids of the train split and of eval.split's data, counted."""
        from tfprod.pipeline.tasks import baselines

        train, scored = _split_labels(experiment)
        return baselines.count_labels(train), baselines.count_labels(scored)

    def baseline_metrics(self, experiment: config_lib.ExperimentConfig) -> Dict[str, float]:
        """Classification: the majority class's accuracy; regression: mean_baseline_mae
        (the train split's mean label, scored by MAE on eval.split's labels)."""
        if not is_regression(experiment):
            return super().baseline_metrics(experiment)
        from tfprod.pipeline.tasks import baselines

        train, scored = _split_labels(experiment)
        return {baselines.MEAN_BASELINE_MAE: baselines.mean_predictor_mae(train, scored)}

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        from tfprod.pipeline.tasks.table import evaluation

        if is_regression(experiment):
            baseline_mae = self.baseline_metrics(experiment)[MEAN_BASELINE_MAE_METRIC]
            return evaluation.regression_eval_config(experiment.eval, baseline_mae,
                                                     self.slice_feature_keys(experiment))
        config = super().eval_config(experiment)
        if len(table_spec(experiment).label_names) == 2:
            evaluation.add_binary_metrics(config)
        return config

    def gate_bound(self, experiment: config_lib.ExperimentConfig,
                   baseline: Dict[str, float]) -> Optional[Tuple[str, float]]:
        """Regression: the MAE bound regression_eval_config gates on, which under the
        absolute gate is the smaller of eval.mae_threshold and the mean baseline's MAE."""
        if not is_regression(experiment) or MEAN_BASELINE_MAE_METRIC not in baseline:
            return super().gate_bound(experiment, baseline)
        from tfprod.pipeline.tasks.table import evaluation

        return MAE_METRIC, evaluation.allowed_mae(
            experiment.eval, baseline[MEAN_BASELINE_MAE_METRIC])

    def supports_mobile(self) -> bool:
        return False

    def mobile_skip_reason(self) -> Optional[str]:
        return MOBILE_SKIP_REASON

    def run_summary_extras(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        spec = table_spec(experiment)
        extras = {
            "label_column": spec.label_column,
            "problem": spec.problem,
            "problem_reason": spec.problem_reason,
            "train_rows": spec.train_rows,
            "columns": [{"name": c.name, "type": c.type, "kind": c.kind, "reason": c.reason,
                         "distinct": c.distinct, "missing_rate": c.missing_rate}
                        for c in spec.columns],
            "dropped_columns": dict(spec.dropped),
        }
        if spec.problem == "classification":
            extras["classes"] = list(spec.label_names)
        else:
            extras["label_mean"] = spec.label_mean
            extras["label_std"] = spec.label_std
        return extras


def _split_labels(experiment: config_lib.ExperimentConfig) -> Tuple[List[Any], List[Any]]:
    """(train split labels, labels of the split the Evaluator scores), from the raw files."""
    from tfprod.contract import splits
    from tfprod.pipeline.ingestion import table

    data = experiment.data
    spec = table_spec(experiment)
    train, evaluation = table.train_split_labels(data.data_dir, spec)
    split = experiment.eval.split
    if split == splits.TEST:
        scored = table.read_labels(os.path.join(data.data_dir, table.TEST_FILE), spec)
    elif split == splits.EVAL:
        scored = evaluation
    else:
        scored = train
    return train, scored

