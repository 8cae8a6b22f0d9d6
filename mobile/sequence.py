"""Text classifiers and forecasters for TFLite: what the input is, measured from the SavedModel.

The image path folds the Transform graph's pixel scaling into the TFLite model
(mobile.convert.probe_pixel_scaling). The sequence models get the same treatment
where the Transform graph allows it:

  * text (tasks/text): Transform lower-cases, splits off punctuation, splits on
    whitespace, keeps the first max_len tokens, looks them up in its vocabulary
    (id = line + 1 of the ``tokens`` asset; unknown words: V + 1 for one OOV
    bucket) and pads with 0. String ops are not TFLite builtins, so the app does
    this and the TFLite model takes int32 ids [1, max_len]. :func:`probe_token_ids`
    checks those rules on the SavedModel's own ``transform_features`` signature
    and reads the vocabulary, which ships as the metadata's vocab.txt (line i is id i);
  * forecasting (tasks/forecasting): Transform standardises each column with its
    train mean and standard deviation, an affine map measured here
    (:func:`probe_window_normalization`) and folded into the graph; the model's
    standardised forecast is scaled back with the target's statistics.

Verification data come from the pipeline's examples through the same signature:
token ids from ``transform_features`` (so the SavedModel and TFLite see the same
ids), raw windows and their future values from the tf.Examples themselves.
"""

import enum
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tfprod.contract import features
from tfprod.mobile import convert, data, metadata

# What the text task saves beside the model (tasks/text/preprocessing.py, signatures.py).
TOKEN_VOCABULARY_ASSET = os.path.join("assets", "tokens")
TEXT_LABELS_ASSET = os.path.join("assets", "label_vocabulary.txt")
TOKENS_TRANSFORMED_KEY = "tokens_xf"
TEXT_KEY = "text"
# The forecasting task's raw label and transformed statistics (tasks/forecasting).
FORECAST_LABEL_KEY = "forecast_label"
TARGET_MEAN_KEY = "target_mean"
TARGET_STD_KEY = "target_std"
WINDOW_TRANSFORMED_KEY = "window_xf"
PADDING_TOKEN = "[PAD]"
OOV_TOKEN = "[OOV]"


class ModelKind(str, enum.Enum):
    """What a SavedModel's serving_raw signature takes, and so how it is converted."""

    IMAGE = "image"  # pixels -> probabilities
    TEXT = "text"  # strings -> probabilities
    FORECAST = "forecast"  # window [N, lookback, columns] -> forecast [N, horizon]


def model_kind(serving_model) -> ModelKind:
    """The kind of model, from its serving_raw signature's input and outputs."""
    signature = serving_model.signatures.get(features.SERVING_RAW_SIGNATURE)
    if signature is None:
        return ModelKind.IMAGE  # export.image_input_shape says what is missing
    (spec,) = signature.structured_input_signature[1].values()
    if spec.dtype.name == "string" and TOKENS_TRANSFORMED_KEY in _transform_outputs(serving_model):
        return ModelKind.TEXT
    if convert.FORECAST_OUTPUT in signature.structured_outputs:
        return ModelKind.FORECAST
    return ModelKind.IMAGE


def _transform_outputs(serving_model):
    signature = serving_model.signatures.get(features.TRANSFORM_SIGNATURE)
    return signature.structured_outputs if signature is not None else {}


def read_serialized(examples_uri: str, split: str, limit: Optional[int] = None) -> List[bytes]:
    """The serialized tf.Examples of one split of an ExampleGen output (gzipped TFRecords)."""
    import tensorflow as tf

    pattern = os.path.join(examples_uri, f"Split-{split}", "*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise data.DataError(f"no examples in {pattern}: is this an ExampleGen output with a "
                             f"'{split}' split?")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        dataset = dataset.take(limit)
    return [record.numpy() for record in dataset]


def _transform(serving_model, serialized: Sequence[bytes], batch_size: int = 512):
    """transform_features over serialized examples, outputs concatenated as numpy."""
    import tensorflow as tf

    signature = serving_model.signatures[features.TRANSFORM_SIGNATURE]
    parts = [signature(examples=tf.constant(list(serialized[start:start + batch_size])))
             for start in range(0, len(serialized), batch_size)]
    return {key: np.concatenate([part[key].numpy() for part in parts]) for key in parts[0]}


def _with_feature(template: bytes, **values) -> bytes:
    """template (a serialized tf.Example) with the given features replaced."""
    import tensorflow as tf

    example = tf.train.Example.FromString(template)
    for key, value in values.items():
        feature = example.features.feature[key]
        if isinstance(value, str):
            feature.bytes_list.value[:] = [value.encode("utf-8")]
        else:
            feature.float_list.value[:] = [float(item) for item in value]
    return example.SerializeToString()


# --------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle if line.rstrip("\r\n")]


def probe_token_ids(serving_model, saved_model_dir: str, template: bytes) -> convert.TokenIdsInput:
    """The token-ids input of a text classifier: its length and the id -> token table.

    Reads the Transform vocabulary saved with the model (assets/tokens: line i is token
    id i + 1) and checks, through ``transform_features`` on a tf.Example built from
    ``template`` (a real one of the split), that upper-case words get their lower-case
    id, that an unknown word gets id V + 1 (one OOV bucket) and that padding is 0.

    Raises:
      ConversionError: the model's Transform maps words otherwise (the vocabulary would
        mislead an app).
    """
    path = os.path.join(saved_model_dir, TOKEN_VOCABULARY_ASSET)
    if not os.path.isfile(path):
        raise convert.ConversionError(
            f"no token vocabulary at {path}: tfprod converts text models exported by "
            "pipeline.tasks.text (the Transform vocabulary 'tokens' travels as an asset)")
    tokens = read_lines(path)
    words = [token for token in tokens if token.isalpha() and token.lower() == token][:2]
    if len(words) < 2:
        raise convert.ConversionError(f"the vocabulary {path} has fewer than two words")
    text = f"{words[0].upper()} {words[1]} qzxunknownqzx zzqqunknownxx"
    ids = _transform(serving_model, [_with_feature(template, **{TEXT_KEY: text})])[
        TOKENS_TRANSFORMED_KEY][0]
    oov_id = len(tokens) + 1
    expected = [tokens.index(words[0]) + 1, tokens.index(words[1]) + 1, oov_id, oov_id]
    expected += [0] * (len(ids) - len(expected))
    if [int(value) for value in ids] != expected:
        raise convert.ConversionError(
            f"the Transform graph maps {text!r} to ids {list(ids)[:8]}..., not {expected[:8]}... "
            "(lower-cased vocabulary line + 1, unknown words V + 1, padding 0): the "
            "vocabulary in the metadata would not describe it; check data.text.num_oov_buckets "
            "(tfprod's TFLite export supports 1)")
    return convert.TokenIdsInput(sequence_length=len(ids),
                                 vocabulary=(PADDING_TOKEN, *tokens, OOV_TOKEN))


def target_column(model_input: convert.WindowInput) -> int:
    """The window column that is the target: the one standardised with the target's
    statistics (ties: the last, as tasks/forecasting appends the target)."""
    matches = [index for index, (mean, std) in enumerate(zip(model_input.mean, model_input.std))
               if np.isclose(mean, model_input.target_mean, rtol=1e-4, atol=1e-6)
               and np.isclose(std, model_input.target_std, rtol=1e-4, atol=1e-6)]
    if not matches:
        raise convert.ConversionError("no window column has the target's mean and std")
    return matches[-1]


def text_split(serving_model, serialized: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray]:
    """(token ids int32 [N, max_len], labels int64 [N]), by the model's transform_features."""
    transformed = _transform(serving_model, serialized)
    return (transformed[TOKENS_TRANSFORMED_KEY].astype(np.int32),
            transformed[features.LABEL_KEY].reshape(-1).astype(np.int64))


def text_probabilities(serving_model, token_ids: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The SavedModel's probabilities for token ids (the reference): its Keras model, the
    same call serving_default makes after Transform."""
    import tensorflow as tf

    return np.concatenate([
        serving_model(tf.constant(token_ids[start:start + batch_size], tf.int64),
                      training=False).numpy()
        for start in range(0, len(token_ids), batch_size)])


def tokenization_rules(model_input: convert.TokenIdsInput) -> str:
    """How an app turns a sentence into the model's input: the Transform graph's rules."""
    vocabulary_size = len(model_input.vocabulary) - 2
    return (f"int32 token ids [1, {model_input.sequence_length}]. Tokenize as the training "
            "pipeline did: lower-case the text (Unicode), put spaces around every punctuation "
            "mark and symbol (Unicode categories P and S) so each is a token, split on "
            f"whitespace, keep the first {model_input.sequence_length} tokens, map each to "
            f"its line number in vocab.txt (id 0 is padding, 1..{vocabulary_size} the "
            f"vocabulary, unknown words {vocabulary_size + 1}) and pad with 0 to "
            f"{model_input.sequence_length} ids.")


def text_metadata_spec(model_name: str, version: str, model_input: convert.TokenIdsInput,
                       labels: Sequence[str], description: str) -> metadata.ModelMetadataSpec:
    """Metadata of a text classifier: vocab.txt (VOCABULARY) on the input, labels.txt
    (TENSOR_AXIS_LABELS) on the output, the tokenization rules in the descriptions."""
    rules = tokenization_rules(model_input)
    return metadata.ModelMetadataSpec(
        name=model_name,
        description=description or (
            f"Classifies a text into {len(labels)} classes. Input: {rules} "
            "Trained and blessed by the tfprod TFX pipeline."),
        version=str(version),
        input=metadata.InputMetadata(
            name=convert.TOKEN_IDS_INPUT, description=rules, kind=metadata.InputKind.TOKEN_IDS,
            vocabulary=list(model_input.vocabulary), value_min=0.0,
            value_max=float(len(model_input.vocabulary) - 1)),
        output=metadata.OutputMetadata(
            name=features.PROBABILITIES_OUTPUT,
            description="Probability of each class, in the order of labels.txt.",
            labels=list(labels)))


# --------------------------------------------------------------------------
# Forecasting.
# --------------------------------------------------------------------------

_PROBE_VALUE = 100.0


def probe_window_normalization(serving_model, template: bytes) -> convert.WindowInput:
    """The forecaster's per-column standardisation, measured through transform_features.

    Builds tf.Examples from ``template`` (a real one): one with every window column at 0,
    and one per column with that column at 100; what moves in window_xf names the
    column's position, and the two values give its mean and std. A random window then
    checks that the map is affine. The target's mean and std are Transform outputs.

    Raises:
      ConversionError: the transform is not a per-column affine map of the raw window.
    """
    import tensorflow as tf

    signature = serving_model.signatures[features.SERVING_RAW_SIGNATURE]
    (window_spec,) = signature.structured_input_signature[1].values()
    _, lookback, column_count = window_spec.shape.as_list()
    horizon = signature.structured_outputs[convert.FORECAST_OUTPUT].shape.as_list()[-1]
    example = tf.train.Example.FromString(template)
    candidates = sorted(key for key, feature in example.features.feature.items()
                        if key != FORECAST_LABEL_KEY and feature.WhichOneof("kind") == "float_list"
                        and len(feature.float_list.value) == lookback)
    zeros = {name: [0.0] * lookback for name in candidates}
    probes = [_with_feature(template, **zeros)] + [
        _with_feature(template, **dict(zeros, **{name: [_PROBE_VALUE] * lookback}))
        for name in candidates]
    rng = np.random.default_rng(0)
    random_window = {name: rng.normal(0, 50, lookback) for name in candidates}
    probes.append(_with_feature(template, **random_window))
    transformed = _transform(serving_model, probes)
    windows = transformed[WINDOW_TRANSFORMED_KEY].reshape(len(probes), lookback, column_count)
    base = windows[0]
    columns, means, stds = [None] * column_count, [0.0] * column_count, [1.0] * column_count
    for index, name in enumerate(candidates):
        moved = np.abs(windows[index + 1] - base).max(axis=0) > 1e-9
        if moved.sum() != 1:
            continue
        (position,) = np.flatnonzero(moved)
        slope = float((windows[index + 1][:, position] - base[:, position]).mean() / _PROBE_VALUE)
        columns[position] = name
        stds[position] = 1.0 / slope
        means[position] = -float(base[:, position].mean()) / slope
    if None in columns:
        raise convert.ConversionError(
            f"could not find the raw feature of window column(s) "
            f"{[index for index, name in enumerate(columns) if name is None]} among {candidates}: "
            "tfprod converts forecasters exported by pipeline.tasks.forecasting")
    raw = np.stack([random_window[name] for name in columns], axis=-1)
    expected = (raw - np.array(means)) / np.array(stds)
    if not np.allclose(windows[-1], expected, atol=1e-3, rtol=1e-4):
        raise convert.ConversionError(
            "the Transform graph does not standardise each window column as (x - mean) / std, "
            "so it cannot be folded into the TFLite model")
    return convert.WindowInput(
        lookback=lookback, columns=tuple(columns), mean=tuple(means), std=tuple(stds),
        target_mean=float(transformed[TARGET_MEAN_KEY][0]),
        target_std=float(transformed[TARGET_STD_KEY][0]), horizon=horizon)


def forecast_split(serving_model, serialized: Sequence[bytes],
                   model_input: convert.WindowInput) -> Tuple[np.ndarray, np.ndarray]:
    """(raw windows float32 [N, lookback, columns], future values float32 [N, horizon])."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([model_input.lookback], tf.float32)
            for name in model_input.columns}
    spec[FORECAST_LABEL_KEY] = tf.io.FixedLenFeature([model_input.horizon], tf.float32)
    parsed = tf.io.parse_example(tf.constant(list(serialized)), spec)
    windows = np.stack([parsed[name].numpy() for name in model_input.columns], axis=-1)
    return windows.astype(np.float32), parsed[FORECAST_LABEL_KEY].numpy().astype(np.float32)


def savedmodel_forecasts(serving_model, windows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The SavedModel's forecasts (serving_raw) for raw windows: the reference."""
    import tensorflow as tf

    signature = serving_model.signatures[features.SERVING_RAW_SIGNATURE]
    (input_name,) = signature.structured_input_signature[1]
    return np.concatenate([
        signature(**{input_name: tf.constant(windows[start:start + batch_size], tf.float32)})[
            convert.FORECAST_OUTPUT].numpy()
        for start in range(0, len(windows), batch_size)])


def forecast_metadata_spec(model_name: str, version: str, model_input: convert.WindowInput,
                           description: str) -> metadata.ModelMetadataSpec:
    """Metadata of a forecaster whose standardisation is folded in (no associated files)."""
    columns = ", ".join(model_input.columns)
    statistics = "; ".join(f"{name}: mean {mean:.6g}, std {std:.6g}" for name, mean, std in zip(
        model_input.columns, model_input.mean, model_input.std))
    return metadata.ModelMetadataSpec(
        name=model_name,
        description=description or (
            f"Forecasts the next {model_input.horizon} values of the target from the last "
            f"{model_input.lookback} steps of {columns}. Trained and blessed by the tfprod "
            "TFX pipeline."),
        version=str(version),
        input=metadata.InputMetadata(
            name=convert.WINDOW_INPUT,
            description=(f"float32 window [1, {model_input.lookback}, "
                         f"{len(model_input.columns)}]: the last {model_input.lookback} steps, "
                         f"oldest first, columns {columns}, in raw units (the model "
                         f"standardises them itself with the training statistics: "
                         f"{statistics})."),
            kind=metadata.InputKind.TIME_SERIES),
        output=metadata.OutputMetadata(
            name=convert.FORECAST_OUTPUT,
            description=(f"float32 [1, {model_input.horizon}]: the next "
                         f"{model_input.horizon} values of the target, in its raw units."),
            labels=[], value_min=None, value_max=None))
