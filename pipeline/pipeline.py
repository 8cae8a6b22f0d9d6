"""create_pipeline(config): the one pipeline definition that every runner uses.

ExampleGen -> StatisticsGen -> SchemaGen (or ImportSchemaGen) -> ExampleValidator
-> AnomaliesGate -> Transform -> [Tuner, when tuning.enabled] -> Trainer -> Evaluator
(vs. the latest blessed model) -> [InfraValidator, when infra.enabled: the candidate in a
real server on 127.0.0.1, pipeline.infra_validator] -> Pusher (atomic: pipeline.pusher;
only a model blessed by the Evaluator and the InfraValidator) -> TFLiteConverter (blessed
models only; when mobile.enabled).
Building it writes nothing. It reads only what the task needs to settle its evaluation gate
(with eval.gate: baseline, the labels of the raw data, to score the trivial baseline).
"""

import json
from typing import List, Optional, Union

from tfx import v1 as tfx

from tfprod.contract import layout
from tfprod.pipeline import tflite_converter
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import drift_check, ingestion, tasks, trainer, tuning, validation
from tfprod.pipeline import infra_validator as infra_lib
from tfprod.pipeline import pusher as pusher_lib

RUN_FN = "tfprod.pipeline.trainer.run_fn"


def beam_pipeline_args(runtime: config_lib.RuntimeConfig) -> List[str]:
    """DirectRunner arguments: in-process by default, or several worker processes."""
    if runtime.beam_mode == config_lib.BeamMode.MULTI_PROCESS:
        return ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={runtime.beam_workers}"]
    return ["--runner=DirectRunner", "--direct_running_mode=in_memory",
            "--direct_num_workers=1"]


def create_pipeline(experiment: config_lib.ExperimentConfig,
                    paths: Optional[layout.PipelinePaths] = None,
                    metadata_connection_config=None,
                    data_dir: Optional[Union[str, tfx.dsl.experimental.RuntimeParameter]] = None,
                    beam_args: Optional[List[str]] = None,
                    pipeline_name: Optional[str] = None,
                    baseline_resolver: bool = True) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline for an experiment.

    Args:
      experiment: the validated experiment config.
      paths: where the run writes; defaults to experiment.runtime.output_dir.
      metadata_connection_config: MLMD connection; defaults to SQLite in the output dir.
      data_dir: the raw data directory, or a RuntimeParameter for it (Kubeflow);
        defaults to experiment.data.data_dir.
      beam_args: Beam args used instead of the runtime's DirectRunner args (Kubeflow
        picks the runner from its config section).
      pipeline_name: defaults to experiment.name.
      baseline_resolver: compare with the latest blessed model (a Resolver node). The
        open-source Kubeflow Pipelines backend cannot run resolver nodes.
    """
    paths = paths or layout.PipelinePaths(experiment.runtime.output_dir)
    data = experiment.data
    task = tasks.get_task(experiment)
    example_gen = task.example_gen(
        experiment, experiment.data.data_dir if data_dir is None else data_dir)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if data.schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=data.schema_path)
    else:
        # The schema describes the training data; eval and test are checked against it.
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True,
            exclude_splits=[ingestion.EVAL_SPLIT, ingestion.TEST_SPLIT])
    # A task may rewrite the inferred schema before anything reads it (tables: any value may
    # be missing in any row, and a category never seen in training is OOV, not an anomaly).
    schema_rewrite = None if data.schema_path else task.schema_rewrite(schema_gen)
    schema_source = schema_rewrite or schema_gen
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_source.outputs["schema"])
    anomalies_gate = validation.AnomaliesGate(anomalies=example_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_source.outputs["schema"],
        preprocessing_fn=task.preprocessing_fn,
        custom_config=task.transform_custom_config(experiment) or None,
        splits_config=tfx.proto.SplitsConfig(
            analyze=[ingestion.TRAIN_SPLIT],
            transform=[ingestion.TRAIN_SPLIT, ingestion.EVAL_SPLIT]),
        disable_statistics=True)
    transform.add_upstream_node(anomalies_gate)

    # Compact: recipe keys at their defaults leave the spec as before they existed.
    trainer_config = {trainer.EXPERIMENT_CONFIG_KEY: config_lib.to_dict(experiment, compact=True)}
    tuner = (tuning.tuner_component(experiment, transform, schema_source, trainer_config)
             if experiment.tuning.enabled else None)
    model_trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_source.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[ingestion.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[ingestion.EVAL_SPLIT]),
        custom_config=trainer_config)

    latest_blessed_model = None
    if baseline_resolver:
        latest_blessed_model = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=model_trainer.outputs["model"],
        baseline_model=(latest_blessed_model.outputs["model"] if latest_blessed_model else None),
        eval_config=task.eval_config(experiment),
        example_splits=[experiment.eval.split])

    # The candidate in a real model server (no Docker): parity with the in-process model
    # and latency under a short load, recorded as TFX's InfraBlessing.
    infra_validator = None
    if experiment.infra.enabled:
        infra_validator = infra_lib.InfraValidator(
            model=model_trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            examples=example_gen.outputs["examples"],
            model_name=experiment.export.model_name,
            infra_config=json.dumps(config_lib.to_dict(experiment.infra))
        ).with_id(infra_lib.COMPONENT_ID)
    infra_blessing = infra_validator.outputs["blessing"] if infra_validator else None

    # TFX's Pusher, pushing into a temporary directory and renaming it into place; it pushes
    # only a model blessed by the Evaluator and (when it runs) the InfraValidator.
    pusher = pusher_lib.AtomicPusher(
        model=model_trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=paths.serving_model_dir(experiment.export.model_name)))
    ).with_id(layout.PUSHER_ID)

    components = [example_gen, statistics_gen, schema_gen, schema_rewrite, example_validator,
                  anomalies_gate, transform, tuner, model_trainer, latest_blessed_model,
                  evaluator, infra_validator, pusher]
    if experiment.mobile.enabled and task.supports_mobile():
        components.append(tflite_converter.TFLiteConverter(
            model=model_trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            infra_blessing=infra_blessing,
            examples=example_gen.outputs["examples"],
            pushed_model=pusher.outputs["pushed_model"],
            output_dir=paths.output_dir,
            model_name=experiment.export.model_name,
            # compact: keys added later (mobile.int8_*) appear only when set, so the
            # compiled pipelines of existing configs stay the same.
            mobile_config=json.dumps(config_lib.to_dict(experiment.mobile, compact=True)),
            # A fine-tune (compression, auto's QAT step) needs the transformed training data
            # and the experiment; other runs compile as before.
            **(dict(transformed_examples=transform.outputs["transformed_examples"],
                    transform_graph=transform.outputs["transform_graph"],
                    experiment_config=json.dumps(config_lib.to_dict(experiment)))
               if experiment.mobile.needs_finetune() else {})))

    components += drift_check.nodes(experiment, statistics_gen, schema_source, transform,
                                    baseline_resolver and metadata_connection_config is None)
    if metadata_connection_config is None:
        metadata_connection_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata_path)
    if beam_args is None:
        beam_args = beam_pipeline_args(experiment.runtime)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name or experiment.name,
        pipeline_root=paths.pipeline_root,
        components=[component for component in components if component is not None],
        enable_cache=experiment.runtime.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_args))
