"""mobile.compression inside the pipeline: fine-tune copies of the blessed model, convert them.

The TFLiteConverter calls this after the blessed model's own (post-training) conversion.
What needs the pipeline is here: the model is rebuilt from the experiment config and the
registry and given the SavedModel's weights; it is fine-tuned on the Transform's
transformed training split under the run's (one-machine) strategy; and each stripped model
goes through mobile.export.export_tflite like the blessed one, verified against the
blessed SavedModel. The techniques themselves are mobile/compress.py. The SavedModel that
was pushed to TF Serving is read, never written.

    <version>/<technique>/<mode>.tflite + report.json/.md   one folder per technique
    <version>/report.json                                    gains a "compression" section
"""

import dataclasses
import logging
import os
from typing import Callable, Dict, Optional

from tfprod.mobile import compress, convert, export, verify
from tfprod.pipeline import config as config_lib

TRAIN_SPLIT = "Split-train"


class Finetuner:
    """Fine-tunes the blessed model with each technique once (cached: auto's QAT step and
    the qat variant share one fine-tune)."""

    def __init__(self, experiment: config_lib.ExperimentConfig, saved_model_dir: str,
                 transformed_examples_uri: str, transform_graph_uri: str,
                 progress: Callable[[str], None] = print):
        self.experiment = experiment
        self.saved_model_dir = saved_model_dir
        self.train_files = [os.path.join(transformed_examples_uri, TRAIN_SPLIT, "*")]
        self.transform_graph_uri = transform_graph_uri
        self.progress = progress
        self._cache: Dict[compress.Technique, compress.Compressed] = {}
        self._strategy = None

    def strategy(self):
        """The run's strategy (one machine: config validation refuses the others)."""
        if self._strategy is None:
            from tfprod.pipeline import distribute

            self._strategy = distribute.create_strategy(self.experiment.runtime)
        return self._strategy

    def settings(self, replicas: int) -> compress.FinetuneSettings:
        from tfprod.pipeline import trainer

        mobile, training = self.experiment.mobile, self.experiment.trainer
        batch_size = training.batch_size * replicas
        schedule = trainer.training_schedule(
            trainer.count_records(self.train_files),
            dataclasses.replace(training, batch_size=batch_size, epochs=mobile.finetune_epochs,
                                max_steps=mobile.finetune_max_steps))
        return compress.FinetuneSettings(
            target_sparsity=mobile.target_sparsity, pruning_frequency=mobile.pruning_frequency,
            pruning_schedule=mobile.pruning_schedule, num_clusters=mobile.num_clusters,
            epochs=schedule["epochs"],
            steps_per_epoch=schedule["steps_per_epoch"],
            learning_rate=mobile.finetune_learning_rate or training.learning_rate / 10)

    def make_model(self):
        """The registered model with the SavedModel's weights (the blessed, exported ones)."""
        import tensorflow as tf

        from tfprod.pipeline import trainer

        model = trainer.build_and_compile(self.experiment)
        checkpoint = os.path.join(self.saved_model_dir, "variables", "variables")
        try:
            model.load_weights(checkpoint).expect_partial().assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as error:
            raise compress.CompressionError(
                f"the weights in {self.saved_model_dir} do not fit the model "
                f"{self.experiment.model.name!r} built from the experiment config ({error}); "
                "compression rebuilds the model from the config, so it cannot follow a Tuner "
                "that changed the architecture: leave mobile.compression empty for such "
                "runs") from None
        return model

    def compressed(self, technique: compress.Technique) -> compress.Compressed:
        technique = compress.Technique(technique)
        if technique not in self._cache:
            import tensorflow_transform as tft

            from tfprod.pipeline import tasks, trainer

            strategy = self.strategy()
            settings = self.settings(strategy.num_replicas_in_sync)
            task = tasks.get_task(self.experiment)
            training = self.experiment.trainer
            dataset = trainer.make_dataset(
                self.train_files, tft.TFTransformOutput(self.transform_graph_uri),
                training.batch_size * strategy.num_replicas_in_sync, shuffle=True,
                seed=training.seed, shuffle_buffer=training.shuffle_buffer, repeat=True,
                task=task)
            self.progress(f"compression {technique.value}: on {strategy.num_replicas_in_sync} "
                          f"replica(s) ({type(strategy).__name__})")
            self._cache[technique] = compress.compress(
                self.make_model, technique, settings, dataset,
                lambda model, optimizer: task.compile_model(model, self.experiment,
                                                            optimizer=optimizer),
                scope=strategy.scope, progress=self.progress)
            self.progress(f"compression {technique.value}: fine-tuned in "
                          f"{self._cache[technique].finetune_seconds:.1f}s")
        return self._cache[technique]

    def qat_model(self):
        """auto's QAT step (mobile.export.ExportOptions.qat_model)."""
        return self.compressed(compress.Technique.QAT).model


def convert_variants(finetuner: Finetuner, base: export.ExportResult, calibration, test_inputs,
                     test_targets, options: export.ExportOptions, serving_model, model_input,
                     convertible_model: Optional[Callable] = None) -> dict:
    """Converts each technique's model into <base.output_dir>/<technique>/ and adds the
    "compression" section to the base report (report.json/.md rewritten).

    A technique that fails (the toolkit refuses the model, no mode converts) is recorded in
    the section's "failed" and the others go on; the blessed model's files stay as written.
    """
    mobile = finetuner.experiment.mobile
    section = {"settings": {
        "techniques": [technique.value for technique in mobile.compression],
        "compression_modes": [mode.value for mode in mobile.compression_modes],
        "target_sparsity": mobile.target_sparsity, "pruning_frequency": mobile.pruning_frequency,
        "pruning_schedule": mobile.pruning_schedule.value,
        "num_clusters": mobile.num_clusters, "finetune_epochs": mobile.finetune_epochs,
        "finetune_max_steps": mobile.finetune_max_steps},
        "baseline": compress.baseline_entry(base.report, base.model_files),
        "variants": [], "failed": {}}
    float32_size = section["baseline"]["float32_size_bytes"]
    rebuild = convertible_model or (lambda model, _: model)
    for technique in mobile.compression:
        modes = [convert.ConversionMode.INT8] if technique.quantization_aware \
            else list(mobile.compression_modes)
        try:
            compressed = finetuner.compressed(technique)
            variant = export.export_tflite(
                finetuner.saved_model_dir, os.path.join(base.output_dir, technique.value),
                base.report["model_name"], base.report["version"], calibration, test_inputs,
                test_targets, dataclasses.replace(
                    options, modes=[mode.value for mode in modes],
                    # Each variant's int8 is repaired as the blessed model's is
                    # (int8_strategy auto: float layers; a QAT model's layers left float
                    # by the toolkit, e.g. an attention mask's, are calibrated as in PTQ).
                    int8_strategy=options.int8_strategy, int8_gate="warn", qat_model=None,
                    # QAT wrappers are not the registry's layers: converted as they are.
                    convertible_model=(lambda _, model_input, model=compressed.model:
                                       model if technique.quantization_aware
                                       else rebuild(model, model_input))),
                progress=finetuner.progress, serving_model=serving_model,
                model_input=model_input)
        except Exception as error:  # noqa: BLE001  (one technique; the rest go on)
            # The blessed model's files are written; a variant that fails, for whatever
            # reason, is reported (report.json "failed", run_summary) rather than taking
            # them and the other variants down. The traceback goes to the run log.
            section["failed"][technique.value] = f"{type(error).__name__}: {error}"
            logging.getLogger(__name__).exception("compression %s failed", technique.value)
            finetuner.progress(f"compression {technique.value}: failed: "
                               f"{type(error).__name__}: {error}")
            continue
        variant.report["report_path"] = variant.report_files["json"]
        section["variants"].append(compress.variant_entry(
            compressed, variant.report, variant.model_files, float32_size))
    base.report["compression"] = section
    base.report_files.update(verify.write_report(base.report, base.output_dir))
    return section

