"""The text classification preprocessing_fn: normalize, tokenize, look up, pad.

One graph, shared by training and serving (it is part of every exported model):

  text -> lower case (Unicode-aware) -> punctuation and symbols split off as tokens
       -> whitespace split -> first max_len tokens -> vocabulary ids -> padded ids

Token ids: 0 is padding, 1..V are the V most frequent training tokens (V <= vocab_size),
and V+1..V+num_oov_buckets are hash buckets for every other token. No real token
ever gets id 0, so models can mask padding with `ids != 0`.
"""

from typing import Any, Dict, Optional

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.contract import features
from tfprod.pipeline.ingestion import tsv
from tfprod.pipeline.tasks.text import TOKENS_TRANSFORMED_KEY

TOKEN_VOCABULARY = "tokens"  # the Transform asset holding the token vocabulary
# Transform asset: one "<label id, 6 digits>:<label name>" line per class (any order).
LABEL_VOCABULARY = "label_names"
PADDING_ID = 0
# Punctuation (P) and symbols (S) in any script become tokens of their own.
_SPLIT_OFF = r"([\pP\pS])"
_LABEL_ID_DIGITS = 6

DEFAULT_SETTINGS = {"vocab_size": 20000, "num_oov_buckets": 1, "max_len": 64}


def tokenize(text: tf.Tensor, max_len: Optional[int] = None) -> tf.RaggedTensor:
    """Strings [N] -> tokens [N, (ragged)]: lower-cased, punctuation split off, whitespace split."""
    lowered = tf.strings.lower(text, encoding="utf-8")
    spaced = tf.strings.regex_replace(lowered, _SPLIT_OFF, r" \1 ")
    tokens = tf.strings.split(spaced)
    if max_len is not None:
        tokens = tokens[:, :max_len]
    return tokens


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Raw text (and label) -> padded token ids (and label id).

    Args:
      inputs: `text` (string [N, 1]); during analysis also `label` (int64 [N, 1]) and
        `label_name` (string [N, 1]).
      custom_config: vocab_size, num_oov_buckets and max_len (data.text.*).

    Returns:
      `tokens_xf` (int64 [N, max_len]) and, when the label is given, `label` (int64 [N]).
    """
    settings = dict(DEFAULT_SETTINGS, **(custom_config or {}))
    max_len = int(settings["max_len"])
    text = tf.reshape(inputs[tsv.TEXT_KEY], [-1])
    tokens = tokenize(text, max_len)
    vocabulary_ids = tft.compute_and_apply_vocabulary(
        tokens, top_k=int(settings["vocab_size"]),
        num_oov_buckets=int(settings["num_oov_buckets"]), vocab_filename=TOKEN_VOCABULARY)
    # Shift by one so that 0 is free for padding.
    token_ids = (vocabulary_ids + 1).to_tensor(default_value=PADDING_ID, shape=[None, max_len])
    outputs = {TOKENS_TRANSFORMED_KEY: token_ids}
    if features.LABEL_KEY in inputs:
        label = tf.reshape(inputs[features.LABEL_KEY], [-1])
        outputs[features.LABEL_KEY] = label
        if tsv.LABEL_NAME_KEY in inputs:
            # Export the id -> name table with the transform graph (and so with the model).
            label_name = tf.reshape(inputs[tsv.LABEL_NAME_KEY], [-1])
            tft.vocabulary(tf.strings.join([
                tf.strings.as_string(label, width=_LABEL_ID_DIGITS, fill="0"), label_name],
                separator=":"), vocab_filename=LABEL_VOCABULARY)
    return outputs


def label_names_from_vocabulary(entries) -> list:
    """The LABEL_VOCABULARY asset's entries -> label names ordered by label id."""
    pairs = []
    for entry in entries:
        text = entry.decode("utf-8") if isinstance(entry, bytes) else entry
        label_id, name = text.split(":", 1)
        pairs.append((int(label_id), name))
    pairs.sort()
    ids = [label_id for label_id, _ in pairs]
    if ids != list(range(len(ids))):
        raise ValueError(f"label vocabulary ids are not 0..{len(ids) - 1}: {ids}")
    return [name for _, name in pairs]
