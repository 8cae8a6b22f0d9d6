"""Compression beyond post-training quantization: QAT, pruning, clustering (mobile.compression).

Each technique fine-tunes a copy of the trained Keras model for a few epochs with the
TensorFlow Model Optimization Toolkit (tensorflow-model-optimization), then strips the
training wrappers, so what is converted to TFLite is a plain Keras model:

- ``qat``: quantization-aware training (fake-quant ops learn the int8 ranges); converted in
  mode int8 only, where the ranges are used.
- ``prune``: magnitude pruning to ``target_sparsity``, the mask updated every
  ``pruning_frequency`` steps. Schedule ``polynomial`` (the default) raises the sparsity
  from 0 to the target over the first two thirds of the fine-tune, the rest recovers;
  ``constant`` prunes to the target at the first step. A fine-tune too short for the
  polynomial ramp (fewer than two mask updates) prunes at the first step, and the report
  says which schedule ran. The zeros pay off only compressed (gzip), or with sparse kernels.
- ``cluster``: weight clustering (``num_clusters`` shared values per kernel, k-means++
  initialisation); like pruning, it pays off compressed.
- ``prune_qat``: pruning, then QAT with the sparsity-preserving scheme; int8 only.

The toolkit supports the built-in Keras layers (Dense, Conv2D, Embedding, ...) and custom
layers that name their weights (``get_prunable_weights``; ``get_clusterable_weights`` and
``get_clusterable_algorithm``), as the text models' token-and-position embedding does; a
wrapped layer that emits a mask (the padding mask) still emits it while it fine-tunes. A
layer it has no support for (a custom layer such as the Transformer's blocks) is left as it
was and named in :attr:`Compressed.left_alone`, so the report says how much of the model
was compressed. QAT quantizes built-in layers only. Nothing here knows the pipeline: the
caller gives a model factory, the training data and how to compile
(pipeline/mobile_compression.py).
"""

import contextlib
import dataclasses
import enum
import functools
import gzip
import time
from typing import Callable, ContextManager, List, Optional

import numpy as np

from tfprod import errors


class CompressionError(errors.RunFailure):
    """A compression technique could not be applied to the model; the message says why."""


class Technique(str, enum.Enum):
    """mobile.compression: one fine-tuned variant of the blessed model per technique."""

    QAT = "qat"
    PRUNE = "prune"
    CLUSTER = "cluster"
    PRUNE_QAT = "prune_qat"

    @property
    def quantization_aware(self) -> bool:
        """QAT variants convert in mode int8 only (their learnt ranges mean nothing else)."""
        return self in (Technique.QAT, Technique.PRUNE_QAT)

    @property
    def prunes(self) -> bool:
        return self in (Technique.PRUNE, Technique.PRUNE_QAT)


class PruningSchedule(str, enum.Enum):
    """mobile.pruning_schedule: how the sparsity reaches its target."""

    POLYNOMIAL = "polynomial"  # 0 -> target over the first 2/3 of the steps, then recovery
    CONSTANT = "constant"  # the target from the first step


DEFAULT_TARGET_SPARSITY = 0.5
DEFAULT_PRUNING_FREQUENCY = 10
DEFAULT_NUM_CLUSTERS = 16
DEFAULT_FINETUNE_EPOCHS = 2


@dataclasses.dataclass
class FinetuneSettings:
    """How a technique fine-tunes (mobile.target_sparsity, ... in pipeline.config)."""

    target_sparsity: float = DEFAULT_TARGET_SPARSITY
    pruning_frequency: int = DEFAULT_PRUNING_FREQUENCY
    pruning_schedule: PruningSchedule = PruningSchedule.POLYNOMIAL
    num_clusters: int = DEFAULT_NUM_CLUSTERS
    epochs: int = DEFAULT_FINETUNE_EPOCHS
    steps_per_epoch: int = 100
    learning_rate: float = 1e-4


@dataclasses.dataclass
class Compressed:
    """One fine-tuned, stripped model and what the fine-tune did."""

    technique: Technique
    model: object  # a tf.keras.Model, wrappers stripped (QAT keeps its fake-quant layers)
    finetune_seconds: float
    finetune_steps: int
    compressed_layers: List[str]
    left_alone: List[str]  # layers with weights the toolkit does not support
    # prune, prune_qat: the zeros among the pruned layers' kernels, measured after strip.
    sparsity: Optional[float] = None
    # cluster: the most distinct values in one clustered kernel, measured after strip.
    max_distinct_values: Optional[int] = None
    # prune, prune_qat: the schedule that ran, e.g. "polynomial 0 -> 0.8, steps 0..240".
    pruning_schedule: Optional[str] = None

    def to_report(self) -> dict:
        return {"technique": self.technique.value,
                "finetune_seconds": round(self.finetune_seconds, 2),
                "finetune_steps": self.finetune_steps,
                "compressed_layers": self.compressed_layers, "left_alone": self.left_alone,
                "sparsity": self.sparsity, "max_distinct_values": self.max_distinct_values,
                "pruning_schedule": self.pruning_schedule}


def gzip_size(model_bytes: bytes) -> int:
    """The bytes a model takes gzipped (level 9): what an app download or store sees."""
    return len(gzip.compress(model_bytes, compresslevel=9))


# --------------------------------------------------------------------------
# Which layers the toolkit supports.
# --------------------------------------------------------------------------


def _prunable(layer) -> bool:
    from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    return isinstance(layer, prunable_layer.PrunableLayer) or \
        callable(getattr(layer, "get_prunable_weights", None)) or \
        prune_registry.PruneRegistry.supports(layer)


def _clusterable(layer) -> bool:
    from tensorflow_model_optimization.python.core.clustering.keras import clusterable_layer
    from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

    if not isinstance(layer, clusterable_layer.ClusterableLayer) and all(
            callable(getattr(layer, method, None))
            for method in ("get_clusterable_weights", "get_clusterable_algorithm")):
        # A custom layer with the protocol's methods (the pruning wrapper takes such layers
        # as they are; the clustering wrapper checks the abstract class).
        clusterable_layer.ClusterableLayer.register(type(layer))
    return isinstance(layer, clusterable_layer.ClusterableLayer) or \
        clustering_registry.ClusteringRegistry.supports(layer)


def _quantizable(layer) -> bool:
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry().supports(layer)


def _kernels(layer) -> List[np.ndarray]:
    """The weights a technique compresses: kernels and embeddings (not biases, BN stats)."""
    return [weight.numpy() for weight in layer.weights
            if weight.name.split("/")[-1].split(":")[0] in ("kernel", "embeddings",
                                                             "depthwise_kernel")]


def _takes_its_mask(layer) -> bool:
    """False for a layer fed a mask (a text model's padding mask) whose call has no `mask`
    argument (Dropout, custom layers): Keras leaves such a layer's mask out, but the
    toolkit's wrappers pass every keyword on to the layer's call, which then fails."""
    import inspect

    import tensorflow as tf

    try:
        inputs = tf.nest.flatten(layer.input)
    except (AttributeError, ValueError):  # not called in a functional graph
        return True
    if all(getattr(tensor, "_keras_mask", None) is None for tensor in inputs):
        return True
    parameters = inspect.signature(layer.call).parameters
    return "mask" in parameters or any(parameter.kind == parameter.VAR_KEYWORD
                                       for parameter in parameters.values())


def _split_layers(model, supported: Callable) -> (List[str], List[str], List[str]):
    """(layers to wrap, layers with kernels among them, layers with kernels left alone).

    Layers without kernels (BatchNormalization, ReLU, pooling) are wrapped where the toolkit
    supports them (QAT quantizes their outputs) but are not listed as compressed.
    """
    wrap, compressed, left = [], [], []
    for layer in model.layers:
        if supported(layer) and _takes_its_mask(layer):
            wrap.append(layer.name)
            if _kernels(layer):
                compressed.append(layer.name)
        elif _kernels(layer):
            left.append(layer.name)
    return wrap, compressed, left


def _keep_mask(wrapper):
    """The wrapper passes on its layer's own mask: the toolkit's wrappers compute none, so a
    wrapped text embedding would drop the padding mask the attention and pooling read."""
    import tensorflow as tf

    inner = wrapper.layer
    if type(inner).compute_mask is not tf.keras.layers.Layer.compute_mask:
        wrapper.compute_mask = inner.compute_mask
        wrapper.supports_masking = True  # else Keras never asks the wrapper for a mask
    return wrapper


def _wrap_layers(model, names: List[str], wrap: Callable):
    """A copy of the functional model with the named layers wrapped, the others shared."""
    import tensorflow as tf

    names = set(names)

    def clone(layer):
        return _keep_mask(wrap(layer)) if layer.name in names else layer

    if not isinstance(model, tf.keras.Sequential) and not getattr(model, "_is_graph_network",
                                                                  False):
        raise CompressionError(
            f"the model {model.name!r} is a subclassed Keras model: the toolkit compresses "
            "functional and Sequential models only; build the registered model functionally "
            "or leave mobile.compression empty")
    return tf.keras.models.clone_model(model, clone_function=clone)


# --------------------------------------------------------------------------
# The techniques.
# --------------------------------------------------------------------------


def pruning_schedule(settings: FinetuneSettings):
    """(the toolkit's schedule, its description) for one fine-tune of settings' steps.

    The polynomial ramp ends on a mask update (a multiple of pruning_frequency) within the
    first two thirds of the steps, so the target is reached and kept; with room for fewer
    than two updates it becomes the constant schedule.
    """
    import tensorflow_model_optimization as tfmot

    frequency, target = settings.pruning_frequency, settings.target_sparsity
    steps = settings.epochs * settings.steps_per_epoch
    end = frequency * int((steps - 1) * 2 / 3 // frequency)
    if PruningSchedule(settings.pruning_schedule) == PruningSchedule.POLYNOMIAL and end >= frequency:
        return (tfmot.sparsity.keras.PolynomialDecay(0.0, target, begin_step=0, end_step=end,
                                                     frequency=frequency),
                f"polynomial 0 -> {target:g} over steps 0..{end} of {steps}, "
                f"mask updated every {frequency}")
    reason = "" if PruningSchedule(settings.pruning_schedule) == PruningSchedule.CONSTANT \
        else f" (too few steps, {steps}, for a polynomial ramp at frequency {frequency})"
    return (tfmot.sparsity.keras.ConstantSparsity(target, begin_step=0, frequency=frequency),
            f"constant {target:g} from step 0{reason}, mask updated every {frequency}")


def _prune(model, settings: FinetuneSettings):
    import tensorflow_model_optimization as tfmot

    wrap, names, left = _split_layers(model, _prunable)
    schedule, _ = pruning_schedule(settings)
    wrapped = _wrap_layers(model, wrap, lambda layer: tfmot.sparsity.keras.prune_low_magnitude(
        layer, pruning_schedule=schedule))
    return wrapped, names, left, [tfmot.sparsity.keras.UpdatePruningStep()]


def _cluster(model, settings: FinetuneSettings):
    import tensorflow_model_optimization as tfmot

    wrap, names, left = _split_layers(model, _clusterable)
    init = tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS
    wrapped = _wrap_layers(model, wrap, lambda layer: tfmot.clustering.keras.cluster_weights(
        layer, number_of_clusters=settings.num_clusters, cluster_centroids_init=init))
    return wrapped, names, left, []


@functools.lru_cache(maxsize=None)
def _prune_preserve_scheme_class():
    """The toolkit's prune-preserving 8-bit scheme, with one fix: its registry claims every
    layer without trainable weights, then asks the plain 8-bit registry, which knows only
    the built-in ones, for their config, and raises (e.g. for the text models' masked mean
    pooling before a quantized Dense). Here it declines what the 8-bit registry declines,
    so such a layer stays float, as it does under plain QAT."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve \
        import prune_preserve_quantize_registry as preserve
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    class Registry(preserve.Default8bitPrunePreserveQuantizeRegistry):
        def supports(self, layer):
            return super().supports(layer) and \
                default_8bit_quantize_registry.Default8BitQuantizeRegistry().supports(layer)

    class Scheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
        def get_quantize_registry(self):
            return Registry()

    return Scheme


def _quantize(model, preserve_sparsity: bool = False):
    import tensorflow_model_optimization as tfmot

    wrap, names, left = _split_layers(model, _quantizable)
    annotated = _wrap_layers(model, wrap, tfmot.quantization.keras.quantize_annotate_layer)
    scheme = None
    if preserve_sparsity:
        scheme = _prune_preserve_scheme_class()()
    with tfmot.quantization.keras.quantize_scope():
        quantized = tfmot.quantization.keras.quantize_apply(annotated, scheme) if scheme \
            else tfmot.quantization.keras.quantize_apply(annotated)
    return quantized, names, left, []


def _finetune(model, callbacks, dataset, settings: FinetuneSettings,
              compile_model: Callable, progress: Callable[[str], None], label: str) -> int:
    import tensorflow as tf

    compile_model(model, tf.keras.optimizers.Adam(settings.learning_rate))
    progress(f"{label}: fine-tuning {settings.epochs} epoch(s) x {settings.steps_per_epoch} "
             f"steps at learning rate {settings.learning_rate:g} ...")
    history = model.fit(dataset, epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch,
                        callbacks=callbacks, verbose=0)
    return len(history.epoch) * settings.steps_per_epoch


def _named_kernels(model, layer_names: List[str]) -> List[np.ndarray]:
    """The named layers' kernels, looking inside the toolkit's wrappers (QAT keeps them)."""
    names = set(layer_names)
    kernels = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if layer.name in names or inner.name in names:
            kernels += _kernels(layer)  # a QAT wrapper owns its inner layer's kernel
    return kernels


def measured_sparsity(model, layer_names: List[str]) -> float:
    """The fraction of exact zeros in the named layers' kernels."""
    kernels = _named_kernels(model, layer_names)
    total = sum(kernel.size for kernel in kernels)
    if not total:
        raise CompressionError(f"none of the layers {layer_names} has a kernel to measure")
    return sum(int(np.sum(kernel == 0)) for kernel in kernels) / total


def max_distinct_values(model, layer_names: List[str]) -> int:
    """The most distinct values any of the named layers' kernels holds."""
    return max((len(np.unique(kernel)) for kernel in _named_kernels(model, layer_names)),
               default=0)


def compress(make_model: Callable[[], object], technique: Technique, settings: FinetuneSettings,
             dataset, compile_model: Callable[[object, object], None],
             scope: Callable[[], ContextManager] = contextlib.nullcontext,
             progress: Callable[[str], None] = lambda line: None) -> Compressed:
    """Fine-tunes a fresh copy of the model with one technique and strips its wrappers.

    Args:
      make_model: returns the trained Keras model (a fresh copy: the technique wraps it).
      dataset: the training data, (features, label) batches, repeating.
      compile_model: (model, optimizer) -> None: compiles with the task's loss and metrics.
      scope: the distribution strategy's scope (model, wrappers and fit are built in it).

    Raises:
      CompressionError: the toolkit supports none of the model's layers, or the model
        is not functional.
    """
    import tensorflow_model_optimization as tfmot

    technique = Technique(technique)
    started = time.perf_counter()
    steps = 0
    with scope():
        model = make_model()
        if technique.prunes:
            wrapped, names, left, callbacks = _prune(model, settings)
            _require(names, technique, model)
            steps += _finetune(wrapped, callbacks, dataset, settings, compile_model, progress,
                               "prune")
            model = tfmot.sparsity.keras.strip_pruning(wrapped)
            pruned = names
        if technique == Technique.CLUSTER:
            wrapped, names, left, callbacks = _cluster(model, settings)
            _require(names, technique, model)
            steps += _finetune(wrapped, callbacks, dataset, settings, compile_model, progress,
                               "cluster")
            model = tfmot.clustering.keras.strip_clustering(wrapped)
        if technique.quantization_aware:
            model, names, left, callbacks = _quantize(
                model, preserve_sparsity=technique == Technique.PRUNE_QAT)
            _require(names, technique, model)
            if technique.prunes:
                # The scheme keeps the zeros of the layers it quantizes; a pruned layer QAT
                # does not quantize (a custom layer) is frozen, or its zeros would regrow.
                for layer in model.layers:
                    if layer.name in pruned and layer.name not in names:
                        layer.trainable = False
                names = [name for name in pruned if name not in names] + names
                left = [name for name in left if name not in names]
            steps += _finetune(model, callbacks, dataset, settings, compile_model, progress,
                               "QAT")
    result = Compressed(technique, model, time.perf_counter() - started, steps, names, left)
    if technique.prunes:
        result.sparsity = measured_sparsity(model, pruned)
        result.pruning_schedule = pruning_schedule(settings)[1]
    if technique == Technique.CLUSTER:
        result.max_distinct_values = max_distinct_values(model, names)
    return result


def _require(names: List[str], technique: Technique, model) -> None:
    if not names:
        raise CompressionError(
            f"mobile.compression {technique.value}: the toolkit supports none of the layers "
            f"with weights in model {model.name!r} "
            f"({', '.join(layer.name for layer in model.layers if layer.weights)}); "
            "remove it from mobile.compression")


# --------------------------------------------------------------------------
# The report's compression section.
# --------------------------------------------------------------------------


def variant_entry(compressed: Compressed, variant_report: dict, model_files: dict,
                  float32_size: Optional[int]) -> dict:
    """One technique in report.json's "compression": the fine-tune and each converted file,
    with its size, gzipped size and the runtimes' figures (from the variant's own report)."""
    entry = compressed.to_report()
    entry["report"] = variant_report.get("report_path")
    entry["failed_modes"] = variant_report.get("failed_modes", {})
    entry["models"] = []
    for row in variant_report["models"]:
        with open(model_files[row["mode"]], "rb") as handle:
            gzipped = gzip_size(handle.read())
        entry["models"].append({
            "mode": row["mode"], "path": row["path"], "size_bytes": row["size_bytes"],
            "gzip_bytes": gzipped,
            "size_ratio_vs_float32": row["size_bytes"] / float32_size if float32_size else None,
            "gzip_ratio_vs_float32": gzipped / float32_size if float32_size else None,
            "runtimes": row["runtimes"]})
    return entry


def baseline_entry(base_report: dict, model_files: dict) -> dict:
    """The uncompressed models (post-training only), gzipped sizes added, for comparison."""
    float32_size = next((row["size_bytes"] for row in base_report["models"]
                         if row["mode"] == "float32"), None)
    models = []
    for row in base_report["models"]:
        with open(model_files[row["mode"]], "rb") as handle:
            gzipped = gzip_size(handle.read())
        models.append({"mode": row["mode"], "size_bytes": row["size_bytes"],
                       "gzip_bytes": gzipped,
                       "gzip_ratio_vs_float32": gzipped / float32_size if float32_size else None,
                       "runtimes": row["runtimes"]})
    return {"float32_size_bytes": float32_size, "models": models}


def markdown_lines(section: dict, metric: str) -> List[str]:
    """report.md's compression table: every post-training and compressed file."""
    mae = metric == "mae"
    change = "MAE increase" if mae else "drop (points)"
    lines = ["", "## Compression (mobile.compression)", "",
             "Sizes are the .tflite file and the file gzipped (level 9); x float32 is against "
             "the post-training float32 file. Fine-tune time is the technique's own "
             "(wall seconds, on this machine).", "",
             f"| variant | mode | size (KB) | gzipped (KB) | gzipped x float32 | {change} | "
             + ("" if mae else "top-1 agreement | ") + "latency 1 thread (ms) | "
             "fine-tune (s) | measured |",
             "|---|---|---:|---:|---:|---|" + ("" if mae else "---|") + "---|---:|---|"]

    def row(variant, model, seconds, measured):
        runtimes = model["runtimes"].items()
        if mae:
            changes = ", ".join(f"{name} {result['mae_increase']:+.4f}" for name, result in runtimes)
        else:
            changes = ", ".join(f"{name} {result['accuracy_drop_points']:+.2f}"
                                for name, result in runtimes)
        agreement = "" if mae else ", ".join(
            f"{name} {result['top1_agreement']:.4f}" for name, result in runtimes) + " | "
        latency = ", ".join(f"{name} {result['latency_ms_1_thread']:.3f}"
                            for name, result in runtimes)
        ratio = model.get("gzip_ratio_vs_float32")
        lines.append(f"| {variant} | {model['mode']} | {model['size_bytes'] / 1024:.1f} | "
                     f"{model['gzip_bytes'] / 1024:.1f} | "
                     f"{'' if ratio is None else f'{ratio:.3f}'} | {changes} | {agreement}"
                     f"{latency} | {seconds} | {measured} |")

    for model in section["baseline"]["models"]:
        row("post-training", model, "", "")
    for variant in section["variants"]:
        measured = []
        if variant.get("sparsity") is not None:
            measured.append(f"sparsity {variant['sparsity']:.3f}")
        if variant.get("pruning_schedule"):
            measured.append(variant["pruning_schedule"])
        if variant.get("max_distinct_values") is not None:
            measured.append(f"<= {variant['max_distinct_values']} values per kernel")
        if variant.get("left_alone"):
            measured.append("not compressed: " + ", ".join(variant["left_alone"]))
        for model in variant["models"]:
            row(variant["technique"], model, f"{variant['finetune_seconds']:.1f}",
                "; ".join(measured))
        for mode, reason in (variant.get("failed_modes") or {}).items():
            lines.append(f"| {variant['technique']} | {mode} | not converted: "
                         f"{reason.splitlines()[0][:200]} |")
    for technique, reason in (section.get("failed") or {}).items():
        lines.append(f"| {technique} | | failed: {reason.splitlines()[0][:300]} |")
    return lines
