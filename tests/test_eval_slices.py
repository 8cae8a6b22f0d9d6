"""eval.slices and the per-slice gates: the TFMA configs they build, the checks that refuse
them where they cannot apply (before TensorFlow: exit 2 through `tfprod run`), and how the
report matches a per-slice threshold to the slices it gates. The runs that evaluate real
slices are in tests/e2e/test_table_e2e.py."""

import dataclasses

import pytest

from tfprod import cli
from tfprod.contract import features
from tfprod.pipeline import checks
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import tasks
from tfprod.pipeline.report import readers
from tfprod.pipeline.tasks import classification
from tfprod.pipeline.tasks.table import evaluation
from tests.conftest import MNIST_CONFIG, REPO_ROOT
from tests.test_table import write_table

PENGUINS_CONFIG = REPO_ROOT / "configs" / "penguins_mlp.yaml"
PENGUINS_SAMPLE = REPO_ROOT / "data" / "penguins_sample"


def _metric(eval_config, class_name):
    return next(metric for spec in eval_config.metrics_specs for metric in spec.metrics
                if metric.class_name == class_name)


def test_slices_and_the_per_slice_accuracy_gate_in_the_classifier_config():
    plain = classification.classification_eval_config(config_lib.EvalConfig())
    assert [list(spec.feature_keys) for spec in plain.slicing_specs] == [[], [features.LABEL_KEY]]
    assert len(_metric(plain, "SparseCategoricalAccuracy").per_slice_thresholds) == 1

    gated = classification.classification_eval_config(
        config_lib.EvalConfig(accuracy_threshold=0.9, min_slice_accuracy=0.8), None,
        ["island", "year"])
    assert [list(spec.feature_keys) for spec in gated.slicing_specs] == [
        [], [features.LABEL_KEY], ["island"], ["year"]]
    overall, per_slice = _metric(gated, "SparseCategoricalAccuracy").per_slice_thresholds
    assert [list(spec.feature_keys) for spec in overall.slicing_specs] == [[]]
    assert overall.threshold.value_threshold.lower_bound.value == pytest.approx(0.9)
    # Every class and every value of each slice feature must reach 0.8 on its own.
    assert [list(spec.feature_keys) for spec in per_slice.slicing_specs] == [
        [features.LABEL_KEY], ["island"], ["year"]]
    assert per_slice.threshold.value_threshold.lower_bound.value == pytest.approx(0.8)
    # Slices can be a handful of examples: no comparison with the last blessed model there.
    assert not per_slice.threshold.HasField("change_threshold")


def test_slices_and_the_per_slice_mae_gate_in_the_regression_config():
    config = evaluation.regression_eval_config(
        config_lib.EvalConfig(max_slice_mae=250.0), 500.0, ["island"])
    assert [list(spec.feature_keys) for spec in config.slicing_specs] == [[], ["island"]]
    overall, per_slice = _metric(config, "MeanAbsoluteError").per_slice_thresholds
    assert overall.threshold.value_threshold.upper_bound.value == pytest.approx(500.0)
    assert [list(spec.feature_keys) for spec in per_slice.slicing_specs] == [["island"]]
    assert per_slice.threshold.value_threshold.upper_bound.value == pytest.approx(250.0)


def test_binary_tables_report_calibration_beside_auc_precision_and_recall():
    config = classification.classification_eval_config(config_lib.EvalConfig())
    evaluation.add_binary_metrics(config)
    names = {metric.class_name for metric in config.metrics_specs[-1].metrics}
    assert names == {"AUC", "Precision", "Recall", "Calibration"}
    assert list(config.metrics_specs[-1].binarize.class_ids.values) == [1]


def test_table_slices_name_categorical_columns_and_map_to_their_keys():
    experiment = config_lib.load_config(str(PENGUINS_CONFIG), [
        f"data.data_dir={PENGUINS_SAMPLE}", "eval.slices=[island, year]"])
    task = tasks.get_task(experiment)
    task.preflight(experiment)
    assert task.slice_feature_keys(experiment) == ["island", "year"]
    eval_config = task.eval_config(experiment)
    assert [list(spec.feature_keys) for spec in eval_config.slicing_specs] == [
        [], [features.LABEL_KEY], ["island"], ["year"]]


@pytest.mark.parametrize("slices, message", [
    ("[bill_length_mm]", r"'bill_length_mm' is numeric; slice by a categorical column: "
                         r"island, sex, year"),
    ("[species]", r"'species' is the label"),
    ("[beak]", r"'beak' is not a column of train.csv"),
])
def test_a_table_slice_that_is_not_a_categorical_column_stops_the_preflight(slices, message):
    experiment = config_lib.load_config(str(PENGUINS_CONFIG), [
        f"data.data_dir={PENGUINS_SAMPLE}", f"eval.slices={slices}"])
    with pytest.raises(config_lib.ConfigError, match=r"eval.slices: " + message):
        tasks.get_task(experiment).preflight(experiment)


def test_gates_of_the_other_kind_of_model_are_refused(tmp_path):
    classifier = config_lib.load_config(str(PENGUINS_CONFIG), [
        f"data.data_dir={PENGUINS_SAMPLE}", "eval.slices=[island]", "eval.max_slice_mae=3"])
    with pytest.raises(config_lib.ConfigError, match=r"eval.max_slice_mae: gates regressors.*"
                                                     r"use eval.min_slice_accuracy"):
        tasks.get_task(classifier).preflight(classifier)
    rows = [[kind, str(size + 0.5)] for kind, size in zip("abcabcabcabc", range(12))]
    data_dir = write_table(tmp_path / "sizes", train=rows, test=rows[:3], header=["kind", "size"])
    regressor = config_lib.load_config(str(PENGUINS_CONFIG), [
        f"data.data_dir={data_dir}", "data.table.label_column=size",
        "eval.slices=[kind]", "eval.min_slice_accuracy=0.5"])
    with pytest.raises(config_lib.ConfigError, match=r"eval.min_slice_accuracy: gates "
                                                     r"classifiers.*use eval.max_slice_mae"):
        tasks.get_task(regressor).preflight(regressor)


def test_image_runs_refuse_slices_before_tensorflow_with_exit_2(capsys):
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--set", "eval.slices=[image]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "eval.slices: the image_classification task's examples carry no feature to slice " \
           "by besides the label (per-class metrics are reported already)" in err
    assert "--set" in err  # where the value came from
    # The per-class gate needs no eval.slices: it gates the label's slices.
    experiment = config_lib.load_config(str(MNIST_CONFIG), ["eval.min_slice_accuracy=0.5"])
    checks.check_experiment(experiment)
    with pytest.raises(config_lib.ConfigError, match=r"eval.max_slice_mae: gates regressors"):
        checks.check_experiment(config_lib.load_config(str(MNIST_CONFIG),
                                                       ["eval.max_slice_mae=1"]))


def test_the_slice_keys_are_checked_and_left_out_of_the_compact_config():
    experiment = config_lib.load_config(str(MNIST_CONFIG))
    compact = config_lib.to_dict(experiment, compact=True)["eval"]
    assert not {"slices", "min_slice_accuracy", "max_slice_mae"} & set(compact)
    for override, key in [("eval.min_slice_accuracy=1.5", "eval.min_slice_accuracy"),
                          ("eval.max_slice_mae=0", "eval.max_slice_mae"),
                          ("eval.slices=[island, island]", "eval.slices")]:
        with pytest.raises(config_lib.ConfigError, match=key):
            config_lib.load_config(str(PENGUINS_CONFIG), [override])
    # Each config gets its own list.
    assert config_lib.EvalConfig().slices is not config_lib.EvalConfig().slices


def test_the_report_applies_a_slice_threshold_to_every_slice_of_its_feature():
    rows = {(name, metric): readers.MetricRow(slice_name=name, metric=metric, value=0.5)
            for name in ("overall", "label=0", "label=1", "island=Dream", "island=Biscoe,sex=m")
            for metric in ("accuracy", "example_count")}
    matched = readers._rows_of_spec(rows, "island", "accuracy")
    assert [row.slice_name for row in matched] == ["island=Dream"]
    assert sorted(row.slice_name for row in readers._rows_of_spec(rows, "label", "accuracy")) \
        == ["label=0", "label=1"]
    assert [row.slice_name for row in readers._rows_of_spec(rows, "overall", "accuracy")] == [
        "overall"]
    assert readers._rows_of_spec(rows, "sex", "accuracy") == []
