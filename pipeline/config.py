"""The experiment schema: typed, layered experiment configuration.

An experiment is a tree of dataclasses (experiment -> data, model, trainer, eval, export,
mobile, runtime, kubeflow, tuning, monitor). ``load_config`` builds it with the generic loader
(tfprod.configlib) in three layers: the dataclass defaults, then a YAML file from
``configs/``, then ``--set dotted.key=value`` overrides; then it validates the result once.

Validation here is the schema's own: each section's ``validate`` and the few rules between
sections that need nothing but the config. No TensorFlow is imported. The checks that need
other packages (the model registry, the task of the data, the recipes and the tuning space
against the task) live above, in tfprod.pipeline.checks, and run once where a run starts
(checks.preflight, before `tfprod run` imports TensorFlow; the Kubeflow compiler; the
Kubeflow train worker).
"""

import dataclasses
import enum
import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from tfprod import configlib
from tfprod.mobile import compress as mobile_compress
from tfprod.mobile import int8_auto as mobile_int8
from tfprod.mobile import options as mobile_options

# A tfprod.errors.ConfigError (and a ValueError); the message names the key, the source
# (the YAML file or the --set override) and what is expected.
ConfigError = configlib.ConfigError
# Top-level blocks of a saved config that record what a run did; loading skips them.
DISTRIBUTION_KEY = "distribution"
RECORD_KEYS = (DISTRIBUTION_KEY,)


class DataSource(str, enum.Enum):
    """Where the pipeline reads its raw data from."""

    FILES = "files"  # files in data.data_dir, laid out as data.format says
    TFDS = "tfds"  # a TensorFlow Datasets dataset prepared in data.tfds_data_dir


class DataFormat(str, enum.Enum):
    """How the raw data in ``data.data_dir`` is laid out."""

    IDX = "idx"  # train-/t10k- images and labels in IDX format (MNIST layout)
    CSV = "csv"  # a timestamped numeric CSV (data.time_series): forecasting
    TSV = "tsv"  # train.tsv and test.tsv with a `text<TAB>label` header (text classification)
    # train/<class>/*.{jpg,jpeg,png} and test/<class>/*: photos (pipeline/ingestion/image_folder.py)
    IMAGE_FOLDER = "image_folder"
    # train.csv and test.csv (optional eval.csv) with a header row: a table of numeric and
    # categorical columns and one label column (data.table; pipeline/ingestion/table.py)
    TABLE = "table"


class BadImages(str, enum.Enum):
    """data.bad_images: what a photo file that does not decode does to the run."""

    ERROR = "error"  # the run stops before TFX starts (exit 3), naming the file
    SKIP = "skip"  # left out; run_summary.json counts and lists it


class BeamMode(str, enum.Enum):
    """How Beam's DirectRunner executes the data components."""

    IN_PROCESS = "in_process"
    MULTI_PROCESS = "multi_process"


# A field added after the Kubeflow golden spec was recorded: to_dict(compact=True) leaves
# it out while it holds its default, so the compiled pipelines (and KFP cache keys) of
# existing configs stay the same.
_added_key = configlib.added_field
_check = configlib.check


class Optimizer(str, enum.Enum):
    """trainer.optimizer."""

    SGD = "sgd"  # with trainer.momentum and trainer.nesterov
    ADAM = "adam"
    ADAMW = "adamw"  # Adam with decoupled weight decay (trainer.weight_decay)


class LrSchedule(str, enum.Enum):
    """trainer.lr_schedule: how the learning rate moves from trainer.learning_rate."""

    CONSTANT = "constant"
    STEP = "step"  # times schedule.step_factor at each of schedule.step_boundaries
    COSINE = "cosine"  # cosine decay to schedule.min_learning_rate
    WARMUP_COSINE = "warmup_cosine"  # linear warmup to the peak, then cosine to the floor
    ONE_CYCLE = "one_cycle"  # up from peak/div_factor, then down to the floor
    PLATEAU = "plateau"  # divided by schedule.plateau_factor when the monitor stalls


@dataclasses.dataclass
class ScheduleConfig:
    """Parameters of trainer.lr_schedule; steps count optimizer steps over the whole run."""

    warmup_steps: Optional[int] = None  # warmup_cosine; or warmup_fraction of all steps
    warmup_fraction: float = 0.1
    min_learning_rate: float = 0.0  # the floor of cosine, warmup_cosine and one_cycle
    step_boundaries: List[int] = dataclasses.field(default_factory=list)  # step
    step_factor: float = 0.1  # step: multiplier at each boundary
    one_cycle_peak_fraction: float = 0.3  # one_cycle: share of the steps spent going up
    one_cycle_div_factor: float = 25.0  # one_cycle: starts at learning_rate / this
    plateau_factor: float = 0.5  # plateau: new lr = lr * factor
    plateau_patience: int = 1  # plateau: epochs without improvement
    plateau_monitor: str = "val_loss"


@dataclasses.dataclass
class AugmentationConfig:
    """data.augmentation: random image transforms on training batches (never served)."""

    translate: float = 0.0  # max shift, a fraction of height/width (= crop of a padded image)
    horizontal_flip: bool = _added_key(False)  # mirror left-right with probability 1/2
    rotation_degrees: float = 0.0  # max rotation either way
    contrast: float = 0.0  # contrast factor drawn from [1 - c, 1 + c]
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of pairs of images and labels
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) area of a pasted patch
    seed: Optional[int] = None  # null = trainer.seed

    @property
    def enabled(self) -> bool:
        return any((self.translate, self.rotation_degrees, self.contrast, self.mixup_alpha,
                    self.cutmix_alpha, self.horizontal_flip))

    @property
    def mixes_labels(self) -> bool:
        """Whether training labels become soft class distributions (mixup or cutmix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def validate(self) -> None:
        _check(0.0 <= self.translate < 0.5, "data.augmentation.translate",
               "a fraction in [0, 0.5)", self.translate)
        _check(0.0 <= self.rotation_degrees <= 180.0, "data.augmentation.rotation_degrees",
               "degrees in [0, 180]", self.rotation_degrees)
        _check(0.0 <= self.contrast < 1.0, "data.augmentation.contrast", "a number in [0, 1)",
               self.contrast)
        for key in ("mixup_alpha", "cutmix_alpha"):
            _check(getattr(self, key) >= 0.0, f"data.augmentation.{key}", "a number >= 0 "
                   "(0 = off)", getattr(self, key))
        _check(not (self.mixup_alpha > 0 and self.cutmix_alpha > 0),
               "data.augmentation.mixup_alpha/cutmix_alpha", "at most one of mixup and cutmix",
               (self.mixup_alpha, self.cutmix_alpha))


@dataclasses.dataclass
class TimeSeriesConfig:
    """data.format: csv. A timestamped numeric CSV, windowed (lookback -> horizon) per split."""

    # File name (or glob matching one file) in data.data_dir. When it matches nothing and
    # the directory holds one CSV, that CSV is used; null = the directory's one CSV.
    file: Optional[str] = "series.csv"
    timestamp_column: str = "date"
    target_column: str = "OT"
    # Model inputs besides the target's history; empty = every column but the timestamp.
    feature_columns: List[str] = dataclasses.field(default_factory=list)
    lookback: int = 96
    horizon: int = 24
    # The step between rows: a pandas offset alias (h, D, MS, ...) or "infer".
    frequency: str = "infer"
    # Chronological splits: the first train_fraction of the rows, then eval, then test.
    train_fraction: float = 0.7
    eval_fraction: float = 0.1
    window_stride: int = 1
    # The seasonal-naive baseline forecasts the value seasonal_period steps earlier.
    seasonal_period: int = 24

    def validate(self) -> None:
        _check(self.file is None or bool(self.file), "data.time_series.file",
               "null (the directory's one CSV) or a file name or glob", self.file)
        for key in ("timestamp_column", "target_column", "frequency"):
            _check(bool(getattr(self, key)), f"data.time_series.{key}", "a non-empty string",
                   getattr(self, key))
        for key in ("lookback", "horizon", "window_stride", "seasonal_period"):
            _check(getattr(self, key) >= 1, f"data.time_series.{key}", "an integer >= 1",
                   getattr(self, key))
        _check(self.seasonal_period <= self.lookback, "data.time_series.seasonal_period",
               f"at most the lookback ({self.lookback})", self.seasonal_period)
        _check(0.0 < self.train_fraction < 1.0 and 0.0 < self.eval_fraction < 1.0
               and self.train_fraction + self.eval_fraction < 1.0,
               "data.time_series.train_fraction/eval_fraction",
               "fractions in (0, 1) summing to less than 1 (the rest is test)",
               (self.train_fraction, self.eval_fraction))


@dataclasses.dataclass
class TextDataConfig:
    """data.format tsv: the columns, and how Transform turns text into token ids."""

    text_column: str = "sentence"
    label_column: str = "label"
    # Token ids: 0 pads, then the vocab_size most frequent training tokens, then
    # num_oov_buckets hashed buckets for every other token.
    vocab_size: int = 20000
    num_oov_buckets: int = 1
    max_len: int = 64

    def validate(self) -> None:
        _check(bool(self.text_column) and bool(self.label_column)
               and self.text_column != self.label_column, "data.text.text_column/label_column",
               "two different non-empty column names", (self.text_column, self.label_column))
        _check(self.vocab_size >= 1, "data.text.vocab_size", "an integer >= 1", self.vocab_size)
        _check(self.num_oov_buckets >= 1, "data.text.num_oov_buckets", "an integer >= 1",
               self.num_oov_buckets)
        _check(self.max_len >= 1, "data.text.max_len", "an integer >= 1", self.max_len)


class TableProblem(str, enum.Enum):
    """data.table.problem: what the label column asks for."""

    CLASSIFICATION = "classification"  # one class per distinct label value
    REGRESSION = "regression"  # a number


@dataclasses.dataclass
class TableDataConfig:
    """data.format table: which column is the label, which are features, and how Transform
    encodes them (pipeline/ingestion/table.py decides each column's type before the run)."""

    label_column: str = "label"
    # Columns that are neither label nor feature (ids, leaks, free text).
    drop_columns: List[str] = dataclasses.field(default_factory=list)
    # Overrides of the inferred type, per column.
    categorical_columns: List[str] = dataclasses.field(default_factory=list)
    numeric_columns: List[str] = dataclasses.field(default_factory=list)
    # null = inferred from the label column: strings, or integers with at most
    # max_integer_classes distinct values -> classification; other numbers -> regression.
    problem: Optional[TableProblem] = None
    # An integer feature column with at most this many distinct training values is
    # categorical (e.g. a year or a code); with more it is numeric.
    max_integer_categories: int = 10
    max_integer_classes: int = 20
    # Categorical columns: the vocabulary_size most frequent training values get their own
    # id; every other value (and a value never seen in training) falls into one of
    # num_oov_buckets hashed buckets; a missing value has an id of its own.
    vocabulary_size: int = 1000
    num_oov_buckets: int = 1
    # Written by the run, not by hand: what train.csv decided (column types, classes, the
    # target's scale) as JSON, so the ExampleGen, Transform, the Trainer and a Kubeflow
    # compile (whose data is read only at run time) use the same decisions.
    decided: Optional[str] = None

    def validate(self) -> None:
        _check(bool(self.label_column), "data.table.label_column", "the label column's name",
               self.label_column)
        for key in ("drop_columns", "categorical_columns", "numeric_columns"):
            _check(self.label_column not in getattr(self, key), f"data.table.{key}",
                   f"columns other than the label column {self.label_column!r}",
                   getattr(self, key))
        both = sorted(set(self.categorical_columns) & set(self.numeric_columns))
        _check(not both, "data.table.categorical_columns/numeric_columns",
               "each column in at most one of the two lists", both)
        _check(self.max_integer_categories >= 0, "data.table.max_integer_categories",
               "an integer >= 0 (0 = integer columns are always numeric)",
               self.max_integer_categories)
        _check(self.max_integer_classes >= 2, "data.table.max_integer_classes",
               "an integer >= 2", self.max_integer_classes)
        _check(self.vocabulary_size >= 1, "data.table.vocabulary_size", "an integer >= 1",
               self.vocabulary_size)
        _check(self.num_oov_buckets >= 1, "data.table.num_oov_buckets", "an integer >= 1",
               self.num_oov_buckets)


@dataclasses.dataclass
class DataConfig:
    """Where the raw data is and how it is split and validated."""

    source: DataSource = DataSource.FILES
    format: DataFormat = DataFormat.IDX
    data_dir: str = "data/mnist_sample"
    # Fraction of the training files held out as the `eval` split (by a hash of
    # the example, so the split is stable across runs).
    eval_fraction: float = 0.1
    image_height: int = 28
    image_width: int = 28
    # null = from the training labels (text; tasks that can count them). A number is
    # checked against the data.
    num_classes: Optional[int] = 10
    # A curated schema (schema.pbtxt). When set, ImportSchemaGen replaces SchemaGen.
    schema_path: Optional[str] = None
    # data.source: tfds. A prepared dataset `name[/config][:version]` (e.g. mnist:3.0.1) in
    # tfds_data_dir; nothing is downloaded. Each pipeline split reads a TFDS split spec
    # (slices like train[:2000] work); with tfds_eval_split null, eval is held out of the
    # train split by hash (eval_fraction).
    tfds_name: Optional[str] = None
    tfds_data_dir: Optional[str] = None
    tfds_train_split: str = "train"
    tfds_eval_split: Optional[str] = None
    tfds_test_split: str = "test"
    tfds_image_feature: str = "image"
    tfds_label_feature: str = "label"
    # Random image augmentation of the training batches (pipeline/tasks/image/augmentation.py).
    augmentation: AugmentationConfig = _added_key(AugmentationConfig)
    # data.format: tsv (pipeline/ingestion/tsv.py).
    text: TextDataConfig = _added_key(TextDataConfig)
    # data.format: csv (pipeline/ingestion/timeseries.py).
    time_series: TimeSeriesConfig = _added_key(TimeSeriesConfig)
    # data.format image_folder: the model sees image_height x image_width x image_channels
    # (1 = grayscale, 3 = RGB; photos are converted); IDX and TFDS images are grayscale (1).
    image_channels: int = _added_key(1)
    bad_images: BadImages = _added_key(BadImages.ERROR)
    # data.format: table (pipeline/ingestion/table.py).
    table: TableDataConfig = _added_key(TableDataConfig)

    def validate(self) -> None:
        self.augmentation.validate()
        _check(self.image_channels in (1, 3), "data.image_channels", "1 (grayscale) or 3 (RGB)",
               self.image_channels)
        _check(self.image_channels == 1 or self.format == DataFormat.IMAGE_FOLDER
               and self.source == DataSource.FILES, "data.image_channels",
               "1 unless data.format is image_folder (IDX and TFDS images are grayscale)",
               self.image_channels)
        self.text.validate()
        self.table.validate()
        if self.format == DataFormat.CSV:
            self.time_series.validate()
        _check(0.0 < self.eval_fraction < 1.0, "data.eval_fraction", "a number in (0, 1)",
               self.eval_fraction)
        if self.source == DataSource.TFDS:
            _check(bool(self.tfds_name), "data.tfds_name",
                   "a TFDS name such as mnist:3.0.1 (data.source is tfds)", self.tfds_name)
            _check(bool(self.tfds_data_dir), "data.tfds_data_dir",
                   "the TFDS data directory holding the prepared dataset (data.source is tfds)",
                   self.tfds_data_dir)
            for key in ("tfds_train_split", "tfds_test_split", "tfds_image_feature",
                        "tfds_label_feature"):
                _check(bool(getattr(self, key)), f"data.{key}", "a non-empty string",
                       getattr(self, key))
            _check(self.tfds_eval_split is None or bool(self.tfds_eval_split),
                   "data.tfds_eval_split", "null or a TFDS split", self.tfds_eval_split)
        _check(self.image_height > 0, "data.image_height", "a positive integer",
               self.image_height)
        _check(self.image_width > 0, "data.image_width", "a positive integer", self.image_width)
        _check(self.num_classes is None or self.num_classes >= 2, "data.num_classes",
               "null (from the training labels) or an integer >= 2", self.num_classes)

    def describe_source(self) -> str:
        """One line naming where the data comes from (for progress output)."""
        if self.source == DataSource.TFDS:
            return f"TFDS {self.tfds_name} in {self.tfds_data_dir}"
        return self.data_dir


@dataclasses.dataclass
class CnnConfig:
    """A VGG-style CNN: blocks of (conv, BatchNorm, ReLU) x convs_per_block, then max-pool."""

    filters: List[int] = dataclasses.field(default_factory=lambda: [32, 64])
    convs_per_block: int = 2
    dense_units: int = 128
    conv_dropout: float = 0.25
    dense_dropout: float = 0.4

    def validate(self) -> None:
        _check(len(self.filters) > 0 and all(f > 0 for f in self.filters), "model.cnn.filters",
               "a non-empty list of positive integers", self.filters)
        _check(self.convs_per_block >= 1, "model.cnn.convs_per_block", "an integer >= 1",
               self.convs_per_block)
        _check(self.dense_units >= 1, "model.cnn.dense_units", "an integer >= 1", self.dense_units)
        for key in ("conv_dropout", "dense_dropout"):
            value = getattr(self, key)
            _check(0.0 <= value < 1.0, f"model.cnn.{key}", "a number in [0, 1)", value)


@dataclasses.dataclass
class LstmForecasterConfig:
    """Stacked LSTMs over the window, then dense outputs: a change on top of persistence."""

    lstm_units: List[int] = dataclasses.field(default_factory=lambda: [32, 32])
    dropout: float = 0.1
    # A linear map of the whole (flattened) window added to the LSTM's output.
    linear_skip: bool = True

    def validate(self) -> None:
        _check(len(self.lstm_units) > 0 and all(u > 0 for u in self.lstm_units),
               "model.lstm_forecaster.lstm_units", "a non-empty list of positive integers",
               self.lstm_units)
        _check(0.0 <= self.dropout < 1.0, "model.lstm_forecaster.dropout", "a number in [0, 1)",
               self.dropout)


@dataclasses.dataclass
class LstmConfig:
    """Text: token embedding (padding masked), bidirectional LSTM, dense classifier."""

    embedding_dim: int = 64
    lstm_units: int = 64
    # Drops whole embedding channels (SpatialDropout1D), then dropout before the classifier.
    embedding_dropout: float = 0.3
    dropout: float = 0.5

    def validate(self) -> None:
        for key in ("embedding_dim", "lstm_units"):
            _check(getattr(self, key) >= 1, f"model.lstm.{key}", "an integer >= 1",
                   getattr(self, key))
        for key in ("embedding_dropout", "dropout"):
            _check(0.0 <= getattr(self, key) < 1.0, f"model.lstm.{key}", "a number in [0, 1)",
                   getattr(self, key))


@dataclasses.dataclass
class TransformerConfig:
    """Text: token + position embeddings, encoder blocks, masked mean pooling, classifier."""

    embedding_dim: int = 64
    num_heads: int = 2
    feed_forward_dim: int = 128
    num_blocks: int = 1
    dropout: float = 0.3

    def validate(self) -> None:
        for key in ("embedding_dim", "num_heads", "feed_forward_dim", "num_blocks"):
            _check(getattr(self, key) >= 1, f"model.transformer.{key}", "an integer >= 1",
                   getattr(self, key))
        _check(self.embedding_dim % self.num_heads == 0, "model.transformer.embedding_dim",
               f"a multiple of model.transformer.num_heads ({self.num_heads})",
               self.embedding_dim)
        _check(0.0 <= self.dropout < 1.0, "model.transformer.dropout", "a number in [0, 1)",
               self.dropout)


@dataclasses.dataclass
class TransformerForecasterConfig:
    """Encoder blocks over the window's steps, then dense outputs on top of persistence."""

    model_width: int = 32
    num_heads: int = 4
    num_blocks: int = 2
    feed_forward_width: int = 64
    dropout: float = 0.1
    linear_skip: bool = True

    def validate(self) -> None:
        for key in ("model_width", "num_heads", "num_blocks", "feed_forward_width"):
            _check(getattr(self, key) >= 1, f"model.transformer_forecaster.{key}",
                   "an integer >= 1", getattr(self, key))
        _check(self.model_width % self.num_heads == 0, "model.transformer_forecaster.model_width",
               f"a multiple of num_heads ({self.num_heads})", self.model_width)
        _check(0.0 <= self.dropout < 1.0, "model.transformer_forecaster.dropout",
               "a number in [0, 1)", self.dropout)


@dataclasses.dataclass
class ResnetConfig:
    """A small ResNet (models/resnet.py): a strided stem, stages of residual blocks (two
    3x3 convs with BatchNorm), global average pooling, then the classifier."""

    stem_filters: int = 32
    # Stem conv stride 2, then a 3x3 max-pool stride 2 when true (as ResNet does): the first
    # stage then runs at a quarter of the input's height and width, cheap on CPUs.
    stem_pool: bool = True
    filters: List[int] = dataclasses.field(default_factory=lambda: [32, 64, 128])
    blocks_per_stage: int = 1
    dropout: float = 0.2

    def validate(self) -> None:
        _check(self.stem_filters >= 1, "model.resnet.stem_filters", "an integer >= 1",
               self.stem_filters)
        _check(len(self.filters) > 0 and all(f > 0 for f in self.filters),
               "model.resnet.filters", "a non-empty list of positive integers", self.filters)
        _check(self.blocks_per_stage >= 1, "model.resnet.blocks_per_stage", "an integer >= 1",
               self.blocks_per_stage)
        _check(0.0 <= self.dropout < 1.0, "model.resnet.dropout", "a number in [0, 1)",
               self.dropout)


@dataclasses.dataclass
class MlpConfig:
    """Tables: an embedding per categorical column, concatenated with the numeric inputs,
    then dense blocks (Dense, BatchNorm, ReLU, dropout) and the output layer."""

    hidden_units: List[int] = dataclasses.field(default_factory=lambda: [64, 32])
    # Each categorical column's embedding width: min(embedding_dim, its number of ids).
    embedding_dim: int = 8
    dropout: float = 0.1
    batch_norm: bool = True

    def validate(self) -> None:
        _check(len(self.hidden_units) > 0 and all(u > 0 for u in self.hidden_units),
               "model.mlp.hidden_units", "a non-empty list of positive integers",
               self.hidden_units)
        _check(self.embedding_dim >= 1, "model.mlp.embedding_dim", "an integer >= 1",
               self.embedding_dim)
        _check(0.0 <= self.dropout < 1.0, "model.mlp.dropout", "a number in [0, 1)", self.dropout)


@dataclasses.dataclass
class WideDeepConfig:
    """Tables: a wide linear part (one-hot categorical ids and the numeric inputs) added to
    a deep part (as model.mlp) before the output (Cheng et al. 2016, without crosses)."""

    hidden_units: List[int] = dataclasses.field(default_factory=lambda: [64, 32])
    embedding_dim: int = 8
    dropout: float = 0.1

    def validate(self) -> None:
        _check(len(self.hidden_units) > 0 and all(u > 0 for u in self.hidden_units),
               "model.wide_deep.hidden_units", "a non-empty list of positive integers",
               self.hidden_units)
        _check(self.embedding_dim >= 1, "model.wide_deep.embedding_dim", "an integer >= 1",
               self.embedding_dim)
        _check(0.0 <= self.dropout < 1.0, "model.wide_deep.dropout", "a number in [0, 1)",
               self.dropout)


@dataclasses.dataclass
class ModelConfig:
    """Which registered model to build, and each family's hyperparameters."""

    name: str = "cnn"
    cnn: CnnConfig = dataclasses.field(default_factory=CnnConfig)
    # One dropout rate for the whole model, mapped onto the family's own rates
    # (pipeline.recipes.DROPOUT_MAPPINGS); null = the family's settings as they are.
    dropout: Optional[float] = _added_key(None)
    lstm_forecaster: LstmForecasterConfig = _added_key(LstmForecasterConfig)
    transformer_forecaster: TransformerForecasterConfig = _added_key(TransformerForecasterConfig)
    lstm: LstmConfig = _added_key(LstmConfig)
    transformer: TransformerConfig = _added_key(TransformerConfig)
    resnet: ResnetConfig = _added_key(ResnetConfig)
    mlp: MlpConfig = _added_key(MlpConfig)
    wide_deep: WideDeepConfig = _added_key(WideDeepConfig)

    def validate(self) -> None:
        """Each family's settings. That model.name is registered is checked above
        (tfprod.pipeline.checks: the registry imports TensorFlow)."""
        _check(bool(self.name), "model.name", "the name of a registered model", self.name)
        for section in (self.cnn, self.lstm, self.transformer, self.lstm_forecaster,
                        self.transformer_forecaster, self.resnet, self.mlp, self.wide_deep):
            section.validate()
        _check(self.dropout is None or 0.0 <= self.dropout < 1.0, "model.dropout",
               "null or a number in [0, 1)", self.dropout)


# trainer.weight_decay when it is null and trainer.optimizer is adamw: Keras AdamW's own
# default. Keras (like PyTorch) multiplies it by the learning rate, var -= lr * wd * var, so
# at lr 1e-3 over 2,000 steps it shrinks weights by about 0.8% on top of the gradient: a
# light regularizer that cannot stall a short run (1e-4 would be indistinguishable from adam).
ADAMW_DEFAULT_WEIGHT_DECAY = 0.004


@dataclasses.dataclass
class TrainerConfig:
    """How the Trainer fits the model."""

    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 1e-3
    # Caps the total number of training steps (e.g. for smoke runs), rounded up to whole
    # epochs of at most max_steps steps each; null = no cap.
    max_steps: Optional[int] = None
    early_stopping_patience: int = 2
    shuffle_buffer: int = 10000
    seed: int = 42
    # Training recipes (pipeline/recipes.py; README "Training recipes and tuning").
    optimizer: Optimizer = _added_key(Optimizer.ADAM)
    momentum: float = _added_key(0.9)  # sgd only
    nesterov: bool = _added_key(False)  # sgd only
    # Decoupled (Keras applies it as var -= lr*wd*var each step); null = the optimizer's
    # default: 0 for sgd and adam, ADAMW_DEFAULT_WEIGHT_DECAY for adamw.
    weight_decay: Optional[float] = _added_key(None)
    lr_schedule: LrSchedule = _added_key(LrSchedule.CONSTANT)
    schedule: ScheduleConfig = _added_key(ScheduleConfig)
    label_smoothing: float = _added_key(0.0)
    clip_norm: Optional[float] = _added_key(None)  # global gradient norm cap
    # e.g. 0.999: an EMA of the weights; the export keeps the better of EMA and raw weights
    # on the eval split (pipeline/recipes.py).
    ema_decay: Optional[float] = _added_key(None)
    # The EMA's decay ramps up as min(ema_decay, (1 + step) / (10 + step)), so a short run's
    # average is not held back by the initial weights; false = ema_decay from the first step.
    ema_warmup: bool = _added_key(True)
    early_stopping_monitor: str = _added_key("val_loss")

    def validate(self) -> None:
        _check(self.epochs >= 1, "trainer.epochs", "an integer >= 1", self.epochs)
        _check(self.batch_size >= 1, "trainer.batch_size", "an integer >= 1", self.batch_size)
        _check(self.learning_rate > 0, "trainer.learning_rate", "a positive number",
               self.learning_rate)
        _check(self.max_steps is None or self.max_steps >= 1, "trainer.max_steps",
               "null or an integer >= 1", self.max_steps)
        _check(self.early_stopping_patience >= 0, "trainer.early_stopping_patience",
               "an integer >= 0", self.early_stopping_patience)
        _check(self.shuffle_buffer >= 1, "trainer.shuffle_buffer", "an integer >= 1",
               self.shuffle_buffer)
        self._validate_recipe()

    @property
    def effective_weight_decay(self) -> float:
        """trainer.weight_decay, or the optimizer's default when it is null."""
        if self.weight_decay is not None:
            return self.weight_decay
        return ADAMW_DEFAULT_WEIGHT_DECAY if self.optimizer == Optimizer.ADAMW else 0.0

    def _validate_recipe(self) -> None:
        """Each recipe key on its own (pipeline/recipes.py builds them)."""
        _check(0.0 <= self.momentum < 1.0, "trainer.momentum", "a number in [0, 1)",
               self.momentum)
        _check(self.optimizer == Optimizer.SGD or not self.nesterov, "trainer.nesterov",
               "false unless trainer.optimizer is sgd", self.nesterov)
        _check(self.weight_decay is None or 0.0 <= self.weight_decay < 1.0,
               "trainer.weight_decay", "null or a number in [0, 1)", self.weight_decay)
        _check(self.optimizer != Optimizer.ADAMW or self.weight_decay != 0,
               "trainer.weight_decay",
               f"a positive number for adamw, or null for its default "
               f"{ADAMW_DEFAULT_WEIGHT_DECAY:g} (adamw with 0 is adam)", self.weight_decay)
        _check(0.0 <= self.label_smoothing < 1.0, "trainer.label_smoothing",
               "a number in [0, 1)", self.label_smoothing)
        _check(self.clip_norm is None or self.clip_norm > 0, "trainer.clip_norm",
               "null or a positive number", self.clip_norm)
        _check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "trainer.ema_decay",
               "null or a number in (0, 1), e.g. 0.999", self.ema_decay)
        schedule = self.schedule
        _check(schedule.warmup_steps is None or schedule.warmup_steps >= 1,
               "trainer.schedule.warmup_steps", "null or an integer >= 1",
               schedule.warmup_steps)
        _check(0.0 <= schedule.warmup_fraction < 1.0, "trainer.schedule.warmup_fraction",
               "a number in [0, 1)", schedule.warmup_fraction)
        _check(0.0 <= schedule.min_learning_rate < self.learning_rate,
               "trainer.schedule.min_learning_rate",
               f"a number in [0, trainer.learning_rate={self.learning_rate})",
               schedule.min_learning_rate)
        boundaries = schedule.step_boundaries
        _check(all(b >= 1 for b in boundaries) and boundaries == sorted(set(boundaries)),
               "trainer.schedule.step_boundaries", "strictly increasing step numbers >= 1",
               boundaries)
        _check(self.lr_schedule != LrSchedule.STEP or len(boundaries) > 0,
               "trainer.schedule.step_boundaries", "at least one step for lr_schedule step",
               boundaries)
        _check(0.0 < schedule.step_factor < 1.0, "trainer.schedule.step_factor",
               "a number in (0, 1)", schedule.step_factor)
        _check(0.0 < schedule.one_cycle_peak_fraction < 1.0,
               "trainer.schedule.one_cycle_peak_fraction", "a number in (0, 1)",
               schedule.one_cycle_peak_fraction)
        _check(schedule.one_cycle_div_factor >= 1.0, "trainer.schedule.one_cycle_div_factor",
               "a number >= 1", schedule.one_cycle_div_factor)
        _check(0.0 < schedule.plateau_factor < 1.0, "trainer.schedule.plateau_factor",
               "a number in (0, 1)", schedule.plateau_factor)
        _check(schedule.plateau_patience >= 0, "trainer.schedule.plateau_patience",
               "an integer >= 0", schedule.plateau_patience)
        if self.max_steps is not None:
            check_schedule_fits(self, self.max_steps)


def warmup_steps(trainer: TrainerConfig, total_steps: int) -> int:
    """warmup_cosine's warmup: schedule.warmup_steps, else warmup_fraction of all steps."""
    schedule = trainer.schedule
    if schedule.warmup_steps is not None:
        return schedule.warmup_steps
    return int(round(schedule.warmup_fraction * total_steps))


def check_schedule_fits(trainer: TrainerConfig, total_steps: int) -> None:
    """Raises ConfigError when the schedule's steps do not fit into total_steps of training."""
    if trainer.lr_schedule == LrSchedule.WARMUP_COSINE:
        warmup = warmup_steps(trainer, total_steps)
        if warmup >= total_steps:
            raise ConfigError(
                f"trainer.schedule.warmup_steps: the warmup ({warmup} steps) is not shorter "
                f"than the training ({total_steps} steps); lower it or train longer",
                key="trainer.schedule.warmup_steps")
    if trainer.lr_schedule == LrSchedule.STEP:
        late = [b for b in trainer.schedule.step_boundaries if b >= total_steps]
        if late:
            raise ConfigError(
                f"trainer.schedule.step_boundaries: {late} lie at or after the end of "
                f"training ({total_steps} steps); the decay would never happen",
                key="trainer.schedule.step_boundaries")


class Gate(str, enum.Enum):
    """eval.gate: what a new model must beat to be blessed (EvalConfig)."""

    ABSOLUTE = "absolute"  # eval.accuracy_threshold / eval.mae_threshold
    BASELINE = "baseline"  # the trivial predictor on the same data, by eval.baseline_margin


@dataclasses.dataclass
class EvalConfig:
    """When the Evaluator blesses a model (TFMA thresholds on the test split).

    eval.gate picks the floor a new model must clear (pipeline/tasks/baselines.py):
    absolute: accuracy >= eval.accuracy_threshold (forecasters: MAE <= eval.mae_threshold),
    numbers tuned to the shipped data. baseline: the model must beat the trivial predictor
    on the same test data by eval.baseline_margin: classifiers, accuracy >= the accuracy of
    always answering the most frequent training class + margin; regressors and
    forecasters, MAE <= (1 - margin) x the MAE of always predicting the training mean. In
    both, the model may not fall behind the last blessed model by more than
    eval.max_accuracy_drop (eval.max_mae_increase).
    """

    # The new model must reach at least this accuracy (gate absolute).
    accuracy_threshold: float = 0.97
    # ...and may not be worse than the last blessed model by more than this.
    max_accuracy_drop: float = 0.01
    # Forecasters: the test MAE (in the target's units) must be at most mae_threshold
    # (required for data.format csv), and at most max_mae_increase above the last
    # blessed model's.
    mae_threshold: Optional[float] = _added_key(None)
    max_mae_increase: float = _added_key(0.0)
    split: str = "test"
    gate: Gate = _added_key(Gate.ABSOLUTE)
    # gate baseline: accuracy points above the majority class (classifiers), or the
    # fraction of the mean predictor's MAE a regressor must cut (0.05 = 5% lower).
    baseline_margin: float = _added_key(0.05)
    # Raw features to slice the evaluation by, besides the overall slice (and the label, for
    # classifiers): one TFMA slice per value. Tables: names of categorical columns (strings
    # or integers), e.g. [island]. Reported per slice in run_summary.json and the report.
    slices: List[str] = _added_key([])
    # Per-slice gates: every slice of the label (classifiers) and of eval.slices must reach
    # this accuracy (null: no per-slice gate) ...
    min_slice_accuracy: Optional[float] = _added_key(None)
    # ... and (regressors) have at most this MAE, in the label's units.
    max_slice_mae: Optional[float] = _added_key(None)

    def validate(self) -> None:
        _check(0.0 <= self.accuracy_threshold <= 1.0, "eval.accuracy_threshold",
               "a number in [0, 1]", self.accuracy_threshold)
        _check(0.0 <= self.max_accuracy_drop <= 1.0, "eval.max_accuracy_drop",
               "a number in [0, 1]", self.max_accuracy_drop)
        _check(self.mae_threshold is None or self.mae_threshold > 0, "eval.mae_threshold",
               "null or a positive number", self.mae_threshold)
        _check(self.max_mae_increase >= 0, "eval.max_mae_increase", "a number >= 0",
               self.max_mae_increase)
        _check(self.split in ("train", "eval", "test"), "eval.split", "train, eval or test",
               self.split)
        _check(0.0 <= self.baseline_margin < 1.0, "eval.baseline_margin", "a number in [0, 1)",
               self.baseline_margin)
        _check(all(isinstance(name, str) and name.strip() for name in self.slices)
               and len(set(self.slices)) == len(self.slices), "eval.slices",
               "a list of distinct feature names", self.slices)
        _check(self.min_slice_accuracy is None or 0.0 <= self.min_slice_accuracy <= 1.0,
               "eval.min_slice_accuracy", "null or a number in [0, 1]", self.min_slice_accuracy)
        _check(self.max_slice_mae is None or self.max_slice_mae > 0, "eval.max_slice_mae",
               "null or a positive number", self.max_slice_mae)


@dataclasses.dataclass
class ExportConfig:
    """How the blessed model is named where it is pushed."""

    model_name: str = "mnist_cnn"

    def validate(self) -> None:
        _check(bool(self.model_name) and "/" not in self.model_name
               and self.model_name not in (".", ".."), "export.model_name",
               "a non-empty name without '/'", self.model_name)


@dataclasses.dataclass
class MobileConfig:
    """TFLite conversion of the blessed model (mobile/): modes, calibration, verification."""

    enabled: bool = True
    modes: List[mobile_options.ConversionMode] = dataclasses.field(
        default_factory=lambda: list(mobile_options.ConversionMode))
    # Type of the int8 model's input and output: float32, int8 or uint8 (raw pixels).
    int8_io: mobile_options.IoType = mobile_options.IoType.FLOAT32
    # Training images drawn at random to calibrate the int8 model.
    calibration_samples: int = 200
    # Verify on the first N test examples (null = the whole test split).
    test_examples: Optional[int] = None
    # Single-example invokes timed per runtime and thread count.
    latency_examples: int = 200
    runtimes: List[str] = dataclasses.field(default_factory=lambda: list(mobile_options.RUNTIMES))
    # int8 gates against the SavedModel on every runtime (docs/mobile.md "int8: gates and the
    # auto strategy"): accuracy drop in points, top-1 agreement; a failure warns or fails.
    max_int8_accuracy_drop: float = _added_key(mobile_int8.DEFAULT_MAX_ACCURACY_DROP_POINTS)
    min_int8_agreement: float = _added_key(mobile_int8.DEFAULT_MIN_TOP1_AGREEMENT)
    int8_gate: mobile_int8.GateAction = _added_key(mobile_int8.GateAction.WARN)
    # ptq: post-training int8 only; auto: then the worst layers in float, then QAT.
    int8_strategy: mobile_int8.Int8Strategy = _added_key(mobile_int8.Int8Strategy.PTQ)
    # auto: the most layers the float-layer attempts keep in float (1, 2, 4, ... up to it).
    int8_max_float_layers: int = _added_key(mobile_int8.DEFAULT_MAX_FLOAT_LAYERS)
    # Compression (mobile/compress.py, docs/mobile.md "Compression"): a list of qat, prune,
    # cluster, prune_qat; [] (none) by default. Each fine-tunes a copy of the blessed model
    # and is converted into <version>/<technique>/; the served SavedModel is not changed.
    compression: List[mobile_compress.Technique] = _added_key([])
    # The modes prune and cluster variants convert in (qat and prune_qat: int8 only).
    compression_modes: List[mobile_options.ConversionMode] = _added_key(
        [mobile_options.ConversionMode.INT8])
    target_sparsity: float = _added_key(mobile_compress.DEFAULT_TARGET_SPARSITY)
    # The pruning schedule: polynomial (0 -> target over the first 2/3 of the fine-tune) or
    # constant (the target from step 0); the mask is updated every pruning_frequency steps.
    pruning_schedule: mobile_compress.PruningSchedule = _added_key(
        mobile_compress.PruningSchedule.POLYNOMIAL)
    pruning_frequency: int = _added_key(mobile_compress.DEFAULT_PRUNING_FREQUENCY)
    num_clusters: int = _added_key(mobile_compress.DEFAULT_NUM_CLUSTERS)
    finetune_epochs: int = _added_key(mobile_compress.DEFAULT_FINETUNE_EPOCHS)
    # null: a tenth of trainer.learning_rate.
    finetune_learning_rate: Optional[float] = _added_key(None)
    # null: finetune_epochs whole passes over the training split.
    finetune_max_steps: Optional[int] = _added_key(None)

    def int8_gates(self) -> mobile_int8.Int8Gates:
        return mobile_int8.Int8Gates(self.max_int8_accuracy_drop, self.min_int8_agreement)

    def validate(self) -> None:
        _check(0.0 <= self.min_int8_agreement <= 1.0, "mobile.min_int8_agreement",
               "a fraction in [0, 1] (e.g. 0.98: the int8 model's top-1 matches the "
               "SavedModel's on 98% of the verification examples)", self.min_int8_agreement)
        _check(-100.0 <= self.max_int8_accuracy_drop <= 100.0, "mobile.max_int8_accuracy_drop",
               "accuracy points in [-100, 100] (e.g. 1.0)", self.max_int8_accuracy_drop)
        _check(self.int8_max_float_layers >= 1, "mobile.int8_max_float_layers",
               "an integer >= 1", self.int8_max_float_layers)
        _check(not self.enabled or len(self.modes) > 0, "mobile.modes",
               "a non-empty list of modes when mobile.enabled is true", self.modes)
        low, high = mobile_options.CALIBRATION_SAMPLES_RANGE
        _check(low <= self.calibration_samples <= high, "mobile.calibration_samples",
               f"an integer in {low}..{high}", self.calibration_samples)
        _check(self.test_examples is None or self.test_examples >= 1, "mobile.test_examples",
               "null or an integer >= 1", self.test_examples)
        _check(self.latency_examples >= 1, "mobile.latency_examples", "an integer >= 1",
               self.latency_examples)
        _check(len(self.runtimes) > 0 and set(self.runtimes) <= set(mobile_options.RUNTIMES),
               "mobile.runtimes", f"a non-empty list of {', '.join(mobile_options.RUNTIMES)}",
               self.runtimes)
        techniques = ", ".join(technique.value for technique in mobile_compress.Technique)
        _check(len(set(self.compression)) == len(self.compression), "mobile.compression",
               f"a list of distinct techniques ({techniques}), [] for none", self.compression)
        _check(len(self.compression_modes) > 0
               and len(set(self.compression_modes)) == len(self.compression_modes),
               "mobile.compression_modes", "a non-empty list of distinct modes",
               self.compression_modes)
        _check(0.0 < self.target_sparsity < 1.0, "mobile.target_sparsity",
               "a fraction between 0 and 1 (e.g. 0.5: half of each pruned kernel is zero)",
               self.target_sparsity)
        _check(self.pruning_frequency >= 1, "mobile.pruning_frequency",
               "an integer >= 1 (steps between mask updates; keep it below the fine-tune's "
               "steps, or nothing is pruned)", self.pruning_frequency)
        _check(2 <= self.num_clusters <= 256, "mobile.num_clusters", "an integer in 2..256",
               self.num_clusters)
        _check(self.finetune_epochs >= 1, "mobile.finetune_epochs", "an integer >= 1",
               self.finetune_epochs)
        _check(self.finetune_learning_rate is None or self.finetune_learning_rate > 0,
               "mobile.finetune_learning_rate", "null or a positive number",
               self.finetune_learning_rate)
        _check(self.finetune_max_steps is None or self.finetune_max_steps >= 1,
               "mobile.finetune_max_steps", "null or an integer >= 1", self.finetune_max_steps)

    def needs_finetune(self) -> bool:
        """Whether the TFLiteConverter fine-tunes: compression, or auto's QAT step."""
        return self.enabled and (bool(self.compression)
                                 or self.int8_strategy == mobile_int8.Int8Strategy.AUTO)


class StrategyName(str, enum.Enum):
    """The tf.distribute strategy the Trainer trains under (pipeline/distribute.py)."""

    AUTO = "auto"  # mirrored when more than one GPU is visible, else one_device
    ONE_DEVICE = "one_device"
    MIRRORED = "mirrored"  # all local GPUs (or CPU) of one machine
    MULTI_WORKER_MIRRORED = "multi_worker_mirrored"  # TF_CONFIG, or runtime.num_workers local
    TPU = "tpu"  # TPUClusterResolver at runtime.tpu_address (or $TPU_NAME)
    PARAMETER_SERVER = "parameter_server"  # TF_CONFIG with chief, worker and ps tasks


# The strategies compression's fine-tune runs under (one process, this machine's devices).
FINETUNE_STRATEGIES = (StrategyName.AUTO, StrategyName.ONE_DEVICE, StrategyName.MIRRORED)


class MixedPrecision(str, enum.Enum):
    """Keras mixed-precision policy; the model's output layer stays float32."""

    NONE = "none"
    MIXED_FLOAT16 = "mixed_float16"  # GPUs only
    MIXED_BFLOAT16 = "mixed_bfloat16"  # TPUs and CPUs


class LearningRateScaling(str, enum.Enum):
    """How trainer.learning_rate changes with the number of replicas (docs/distributed.md)."""

    LINEAR = "linear"  # learning_rate x replicas (global batch = batch_size x replicas)
    NONE = "none"


@dataclasses.dataclass
class RuntimeConfig:
    """Where the run writes, how the local runner executes it and how training is distributed."""

    output_dir: str = "outputs/mnist_cnn"
    beam_mode: BeamMode = BeamMode.IN_PROCESS
    beam_workers: int = 2
    enable_cache: bool = True
    # Distributed training (docs/distributed.md). trainer.batch_size is per replica.
    strategy: StrategyName = _added_key(StrategyName.AUTO)
    # multi_worker_mirrored without TF_CONFIG: worker processes the Trainer starts on 127.0.0.1.
    num_workers: int = _added_key(1)
    tpu_address: Optional[str] = _added_key(None)
    mixed_precision: MixedPrecision = _added_key(MixedPrecision.NONE)
    learning_rate_scaling: LearningRateScaling = _added_key(LearningRateScaling.LINEAR)
    # BackupAndRestore's directory (null = <the Trainer's model_run dir>/backup).
    backup_dir: Optional[str] = _added_key(None)
    # Local multi-worker jobs: how long the workers may run, and how often the whole job
    # is restarted (resuming from the backup) after a worker fails.
    worker_timeout_seconds: int = _added_key(3600)
    worker_restarts: int = _added_key(1)

    def validate(self) -> None:
        _check(bool(self.output_dir), "runtime.output_dir", "a directory path", self.output_dir)
        _check(self.beam_workers >= 1, "runtime.beam_workers", "an integer >= 1",
               self.beam_workers)
        _check(self.num_workers >= 1, "runtime.num_workers", "an integer >= 1", self.num_workers)
        _check(self.num_workers == 1 or self.strategy == StrategyName.MULTI_WORKER_MIRRORED,
               "runtime.num_workers",
               "1 unless runtime.strategy is multi_worker_mirrored (local worker processes)",
               self.num_workers)
        _check(self.tpu_address is None or bool(self.tpu_address), "runtime.tpu_address",
               "null or a TPU name / grpc://host:port", self.tpu_address)
        _check(self.mixed_precision != MixedPrecision.MIXED_FLOAT16
               or self.strategy != StrategyName.TPU, "runtime.mixed_precision",
               "mixed_bfloat16 or none on TPU (float16 is for GPUs)", self.mixed_precision.value)
        _check(self.worker_timeout_seconds >= 1, "runtime.worker_timeout_seconds",
               "an integer >= 1", self.worker_timeout_seconds)
        _check(self.worker_restarts >= 0, "runtime.worker_restarts", "an integer >= 0",
               self.worker_restarts)


class BeamRunner(str, enum.Enum):
    """Which Beam runner the data components use when the pipeline runs on Kubeflow."""

    DIRECT = "direct"  # DirectRunner inside each component's pod (multi-process)
    DATAFLOW = "dataflow"  # Google Cloud Dataflow
    FLINK = "flink"  # PortableRunner against a Beam job server in front of Flink
    SPARK = "spark"  # PortableRunner against a Beam job server in front of Spark


@dataclasses.dataclass
class KubeflowConfig:
    """How `tfprod kubeflow compile` builds the Kubeflow Pipelines v2 spec (kubeflow/)."""

    # The pipeline's default container image (kubeflow/Dockerfile), as image:image_tag.
    image: str = "ghcr.io/tfprod/tfprod"
    image_tag: str = "0.1.0"
    # The run's output directory on the cluster (a URI TensorFlow can open, e.g. gs://):
    # the default pipeline root is <output_dir>/pipeline, models go to <output_dir>/serving.
    output_dir: str = "gs://tfprod-artifacts/mnist_cnn"
    # Default of the pipeline's `data_dir` runtime parameter.
    data_dir: str = "gs://tfprod-artifacts/data/mnist"
    beam_runner: BeamRunner = BeamRunner.DIRECT
    # Worker processes of the DirectRunner in each pod (0 = one per CPU core).
    beam_direct_workers: int = 0
    # flink / spark: the Beam job server (host:port) and how it starts SDK workers.
    beam_job_endpoint: Optional[str] = None
    beam_environment_type: str = "EXTERNAL"
    beam_environment_config: str = "localhost:50000"
    # Appended to the runner's arguments (e.g. --project=P --region=R for Dataflow).
    beam_args: List[str] = dataclasses.field(default_factory=list)
    # Trainer pod resources (null/0 = not set). GPUs use the accelerator type below.
    trainer_cpu_limit: Optional[float] = None
    trainer_memory_limit_gb: Optional[float] = None
    trainer_gpus: int = 0
    trainer_gpu_type: str = "nvidia.com/gpu"
    # Node labels the Trainer pod must run on, as "key=value" strings.
    trainer_node_selector: List[str] = dataclasses.field(default_factory=list)
    # The LatestBlessedModel resolver compiles to a KFP "resolver" executor, which only
    # Vertex AI Pipelines runs; the open-source KFP backend rejects it. Off: the Evaluator
    # has no baseline model on Kubeflow (only the absolute accuracy threshold applies).
    baseline_resolver: bool = False
    # Kubernetes manifests (`tfprod kubeflow manifests`, kubeflow/manifests.py): the namespace
    # of the TFJob and the serving overlays, and the TFJob's worker count.
    namespace: str = "tfprod"
    tfjob_workers: int = 2
    # The TFJob's inputs: a finished pipeline run's Transform outputs (the transformed_examples
    # and transform_graph artifact URIs). null = not known yet: `tfprod kubeflow manifests`
    # fills them from --mlmd, or leaves a placeholder and says how to find them.
    tfjob_examples: Optional[str] = None
    tfjob_transform_output: Optional[str] = None
    # Where the TFJob's chief writes its model; null = <output_dir>/multiworker.
    tfjob_output_dir: Optional[str] = None

    @property
    def image_reference(self) -> str:
        """The pipeline's default image, ``image:tag`` (what the compiler writes)."""
        return f"{self.image}:{self.image_tag}"

    @property
    def pipeline_root(self) -> str:
        """The package's default pipeline root, <output_dir>/pipeline."""
        return f"{self.output_dir.rstrip('/')}/pipeline"

    def validate(self) -> None:
        _check(bool(self.image) and ":" not in self.image.rsplit("/", 1)[-1], "kubeflow.image",
               "an image name without a tag (the tag is kubeflow.image_tag)", self.image)
        _check(bool(self.image_tag) and ":" not in self.image_tag, "kubeflow.image_tag",
               "a non-empty tag", self.image_tag)
        for key in ("output_dir", "data_dir"):
            _check(bool(getattr(self, key)), f"kubeflow.{key}", "a directory URI",
                   getattr(self, key))
        _check(self.beam_direct_workers >= 0, "kubeflow.beam_direct_workers", "an integer >= 0",
               self.beam_direct_workers)
        if self.beam_runner in (BeamRunner.FLINK, BeamRunner.SPARK):
            _check(bool(self.beam_job_endpoint), "kubeflow.beam_job_endpoint",
                   f"host:port of the Beam job server for the {self.beam_runner.value} runner",
                   self.beam_job_endpoint)
        if self.beam_runner == BeamRunner.DATAFLOW:
            for flag in ("--project=", "--region="):
                _check(any(arg.startswith(flag) for arg in self.beam_args), "kubeflow.beam_args",
                       f"a {flag}... entry for the dataflow runner", self.beam_args)
        for key in ("trainer_cpu_limit", "trainer_memory_limit_gb"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"kubeflow.{key}", "null or a positive number",
                   value)
        _check(self.trainer_gpus >= 0, "kubeflow.trainer_gpus", "an integer >= 0",
               self.trainer_gpus)
        for entry in self.trainer_node_selector:
            _check("=" in entry and entry.split("=", 1)[0] != "",
                   "kubeflow.trainer_node_selector", 'a list of "key=value" strings', entry)
        # A DNS-1123 label: what Kubernetes accepts as a namespace name.
        _check(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace or "")
               is not None, "kubeflow.namespace",
               "a DNS label (lower-case letters, digits and '-', at most 63)", self.namespace)
        _check(self.tfjob_workers >= 1, "kubeflow.tfjob_workers", "an integer >= 1",
               self.tfjob_workers)
        for key in ("tfjob_examples", "tfjob_transform_output", "tfjob_output_dir"):
            value = getattr(self, key)
            _check(value is None or (isinstance(value, str) and "://" in value
                                     or str(value).startswith("/")), f"kubeflow.{key}",
                   "null or an absolute directory URI (e.g. gs://bucket/...)", value)


class TuningAlgorithm(str, enum.Enum):
    """tuning.algorithm: the KerasTuner oracle."""

    RANDOM = "random"
    HYPERBAND = "hyperband"
    BAYESIAN = "bayesian"


class SearchKind(str, enum.Enum):
    """How one hyperparameter is searched."""

    CHOICE = "choice"  # one of `values`
    INT = "int"  # integers in [min, max] by `step`
    FLOAT = "float"  # numbers in [min, max], `sampling` linear or log


@dataclasses.dataclass
class SearchSpace:
    """One searched hyperparameter: a dotted config key and its range."""

    name: str = ""  # the config key it sets, e.g. trainer.learning_rate
    kind: SearchKind = SearchKind.CHOICE
    values: List[Any] = dataclasses.field(default_factory=list)
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    sampling: str = "linear"  # linear or log (log needs min > 0)


@dataclasses.dataclass
class TuningConfig:
    """The optional TFX Tuner (pipeline/tuning.py); its best values feed the Trainer."""

    enabled: bool = False
    algorithm: TuningAlgorithm = TuningAlgorithm.RANDOM
    max_trials: int = 3  # random and bayesian; hyperband sizes itself from trial_epochs
    objective: str = "val_accuracy"
    trial_epochs: int = 1  # the per-trial budget: epochs of trial_steps_per_epoch steps
    trial_steps_per_epoch: int = 50
    trial_eval_steps: Optional[int] = None  # null = the whole eval split
    space: List[SearchSpace] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        """The section's own numbers (always, so a disabled section is ready to switch on).

        The search space and the objective are checked against the experiment and its
        task by pipeline.tuning.validate_tuning (from tfprod.pipeline.checks).
        """
        _check(self.max_trials >= 1, "tuning.max_trials", "an integer >= 1", self.max_trials)
        _check(self.trial_epochs >= 1, "tuning.trial_epochs", "an integer >= 1",
               self.trial_epochs)
        _check(self.trial_steps_per_epoch >= 1, "tuning.trial_steps_per_epoch",
               "an integer >= 1", self.trial_steps_per_epoch)
        _check(self.trial_eval_steps is None or self.trial_eval_steps >= 1,
               "tuning.trial_eval_steps", "null or an integer >= 1", self.trial_eval_steps)
        if self.algorithm == TuningAlgorithm.HYPERBAND:
            _check(self.trial_epochs >= 2, "tuning.trial_epochs",
                   "an integer >= 2 for hyperband (its largest trial budget in epochs)",
                   self.trial_epochs)
        _check(not self.enabled or len(self.space) > 0, "tuning.space",
               "at least one hyperparameter when tuning.enabled is true", self.space)


class PipelineDrift(str, enum.Enum):
    """monitor.pipeline_drift: what the pipeline's drift check (pipeline/drift_check.py) does
    when this run's data moved past a threshold against the last blessed run's."""

    OFF = "off"  # no check
    WARN = "warn"  # recorded in run_summary.json and the report; the run goes on
    FAIL = "fail"  # the run stops before Transform (bad input data, exit 3, naming them)


@dataclasses.dataclass
class FeatureThreshold:
    """monitor.features[]: one feature's own threshold (its comparator's distance)."""

    name: str = ""
    threshold: float = 0.1


@dataclasses.dataclass
class MonitorConfig:
    """Drift and skew thresholds: `tfprod monitor` (served requests against the run's training
    statistics) and the pipeline's check against the last blessed run (docs/monitoring.md).

    Distances are TFDV's: L-infinity for categorical features (string values, or integers
    the schema calls categorical), Jensen-Shannon divergence for numeric ones. A feature is
    past its threshold when its distance is greater than it.
    """

    categorical_threshold: float = 0.1  # default L-infinity threshold
    numeric_threshold: float = 0.1  # default Jensen-Shannon threshold
    features: List[FeatureThreshold] = dataclasses.field(default_factory=list)
    # The served predictions (class ids or values) against the model's own predictions on
    # the run's eval.split; the comparator follows their kind as above.
    prediction_threshold: float = 0.1
    # Examples of eval.split the model predicts for that reference (at most).
    reference_examples: int = 2000
    pipeline_drift: PipelineDrift = PipelineDrift.WARN

    def threshold_for(self, name: str, categorical: bool) -> float:
        """The threshold of one feature: its own entry, else the default of its kind."""
        for entry in self.features:
            if entry.name == name:
                return entry.threshold
        return self.categorical_threshold if categorical else self.numeric_threshold

    def validate(self) -> None:
        for key in ("categorical_threshold", "numeric_threshold", "prediction_threshold"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"monitor.{key}", "a number in [0, 1]",
                   getattr(self, key))
        names = [entry.name for entry in self.features]
        for index, entry in enumerate(self.features):
            _check(bool(entry.name), f"monitor.features[{index}].name",
                   "a feature name of the run's schema", entry.name)
            _check(0.0 <= entry.threshold <= 1.0, f"monitor.features[{index}].threshold",
                   "a number in [0, 1]", entry.threshold)
        _check(len(set(names)) == len(names), "monitor.features",
               "each feature at most once", names)
        _check(self.reference_examples >= 1, "monitor.reference_examples", "an integer >= 1",
               self.reference_examples)


class InfraServer(str, enum.Enum):
    """infra.server: which model server the InfraValidator starts (pipeline/infra_validator.py)."""

    TFPROD = "tfprod"  # `tfprod serve` as a subprocess (the default; always available)
    TF_SERVING = "tensorflow_model_server"  # TF Serving's binary, when it is on PATH


@dataclasses.dataclass
class InfraConfig:
    """The InfraValidator: the candidate served on 127.0.0.1 before the Pusher pushes it.

    Its answers must equal the in-process model's (class ids and names exactly, float
    outputs within infra.tolerance) on the warm-up requests and infra.sample_size test
    examples, over REST and gRPC; then a short load (infra.load_seconds, at most
    infra.load_max_requests) must stay within infra.max_p99_ms (infra.max_p50_ms) with at
    most infra.max_errors errors.
    """

    enabled: bool = True
    server: InfraServer = InfraServer.TFPROD
    # A served float output may differ from the in-process one by tolerance x (1 + |value|).
    tolerance: float = 1e-4
    sample_size: int = 32
    load_seconds: float = 1.0
    load_max_requests: int = 2000
    load_concurrency: int = 2
    max_p99_ms: float = 1000.0
    max_p50_ms: Optional[float] = None
    max_errors: int = 0
    startup_timeout_seconds: float = 300.0
    request_timeout_seconds: float = 30.0

    def validate(self) -> None:
        _check(0.0 <= self.tolerance <= 1.0, "infra.tolerance", "a number in [0, 1]",
               self.tolerance)
        _check(1 <= self.sample_size <= 10000, "infra.sample_size", "an integer in 1..10000",
               self.sample_size)
        _check(0.0 < self.load_seconds <= 60.0, "infra.load_seconds",
               "a number of seconds in (0, 60]", self.load_seconds)
        _check(self.load_max_requests >= 1, "infra.load_max_requests", "an integer >= 1",
               self.load_max_requests)
        _check(1 <= self.load_concurrency <= 64, "infra.load_concurrency",
               "an integer in 1..64", self.load_concurrency)
        _check(self.max_p99_ms > 0, "infra.max_p99_ms", "a positive number of milliseconds",
               self.max_p99_ms)
        _check(self.max_p50_ms is None or self.max_p50_ms > 0, "infra.max_p50_ms",
               "null or a positive number of milliseconds", self.max_p50_ms)
        _check(self.max_errors >= 0, "infra.max_errors", "an integer >= 0", self.max_errors)
        _check(self.startup_timeout_seconds > 0, "infra.startup_timeout_seconds",
               "a positive number of seconds", self.startup_timeout_seconds)
        _check(self.request_timeout_seconds > 0, "infra.request_timeout_seconds",
               "a positive number of seconds", self.request_timeout_seconds)


@dataclasses.dataclass
class ExperimentConfig:
    """One experiment: data, model, training, evaluation, export and runtime."""

    name: str = "mnist_cnn"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    mobile: MobileConfig = dataclasses.field(default_factory=MobileConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)
    tuning: TuningConfig = _added_key(TuningConfig)
    monitor: MonitorConfig = _added_key(MonitorConfig)
    infra: InfraConfig = _added_key(InfraConfig)

    def validate(self) -> None:
        """The schema's checks: every section, and the rules between sections that need
        nothing but the config. No TensorFlow; the checks against the model registry and
        the task run above (tfprod.pipeline.checks.check_experiment)."""
        _check(bool(self.name), "name", "a non-empty string", self.name)
        for section in (self.data, self.model, self.trainer, self.eval, self.export, self.mobile,
                        self.runtime, self.kubeflow, self.tuning, self.monitor,
                        self.infra):
            section.validate()
        if self.data.format == DataFormat.CSV and self.eval.gate == Gate.ABSOLUTE:
            _check(self.eval.mae_threshold is not None, "eval.mae_threshold",
                   "a positive number (the largest test MAE a forecaster may be blessed with; "
                   "or --set eval.gate=baseline to beat the training mean instead)",
                   self.eval.mae_threshold)
        # Compression fine-tunes inside the TFLiteConverter's one process.
        _check(not self.mobile.compression or self.runtime.strategy in FINETUNE_STRATEGIES,
               "runtime.strategy", "one of " + ", ".join(s.value for s in FINETUNE_STRATEGIES)
               + " when mobile.compression is set (compression fine-tunes in the "
               "TFLiteConverter's one process, on this machine's devices; train multi-worker, "
               "TPU or parameter-server runs without mobile.compression)",
               self.runtime.strategy.value)

    def check_paths(self) -> None:
        """Checks that the paths the run reads exist (separate from validate: needs disk)."""
        # A TFDS source is checked by pipeline.ingestion.tfds.dataset.check_source (it says how to build it).
        if self.data.source == DataSource.FILES and not os.path.isdir(self.data.data_dir):
            raise ConfigError(
                f"data.data_dir: directory not found: {self.data.data_dir} "
                "(pass --data-dir DIR or --set data.data_dir=DIR)"
            )
        if self.data.schema_path is not None and not os.path.isfile(self.data.schema_path):
            raise ConfigError(f"data.schema_path: file not found: {self.data.schema_path}")


def check_output_dir(output_dir: str, name: str = "runtime.output_dir") -> None:
    """Checks that a run can write in output_dir, before any work (needs disk, no TensorFlow).

    It must be a directory, or be one that can be made: the nearest part of the path that
    exists is a directory, and a file can be created there (not read-only, not immutable,
    not a read-only mount). Nothing is left behind.

    Args:
      output_dir: the run's output directory (absolute).
      name: what set it, named in the error: ``--output-dir``, ``--set
        runtime.output_dir=...`` or ``runtime.output_dir``.

    Raises:
      ConfigError: naming name and the path, and what is wrong with it.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"{name}: {output_dir} is a file, not a directory; pass a "
                          "directory (it is made if missing)")
    existing = output_dir
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{name}: cannot make {output_dir}: {existing} is a file, not a "
                          "directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=".tfprod-write-check-", dir=existing)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise ConfigError(
            f"{name}: cannot write in {existing} ({error.strerror or error}); the run needs "
            "a writable directory (pass another one)") from error


# --------------------------------------------------------------------------
# Loading and saving, with the generic loader (tfprod.configlib).
# --------------------------------------------------------------------------

to_dict = configlib.to_dict


def field_type(key: str) -> Any:
    """The declared type of a dotted experiment key; ConfigError for an unknown key."""
    return configlib.field_type(ExperimentConfig, key)


def set_value(experiment: ExperimentConfig, key: str, value: Any, source: str = "") -> None:
    """Sets one dotted key of an experiment in place, type-checked (configlib.set_value).

    Nothing is validated: validate the experiment once all values are set.
    """
    configlib.set_value(experiment, key, value, source=source)


def from_dict(values: Dict[str, Any], validate: bool = True) -> ExperimentConfig:
    """An ExperimentConfig from plain values (to_dict's output, a parsed YAML file).

    Args:
      values: the config as plain values; missing keys keep their defaults.
      validate: run the schema's checks. False for a config that was validated before it
        was serialized (the Trainer's custom_config): it is only parsed, types checked.

    Raises:
      ConfigError: an unknown key, a wrong type, or (validate) an invalid value.
    """
    config = configlib.from_dict(ExperimentConfig, values)
    if validate:
        config.validate()
    return config


def _absolute_paths(config: ExperimentConfig) -> None:
    config.data.data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
    if config.data.tfds_data_dir:
        config.data.tfds_data_dir = os.path.abspath(os.path.expanduser(config.data.tfds_data_dir))
    if config.data.schema_path:
        config.data.schema_path = os.path.abspath(os.path.expanduser(config.data.schema_path))
    config.runtime.output_dir = os.path.abspath(os.path.expanduser(config.runtime.output_dir))


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Loads defaults, then the YAML file (if any), then the overrides; validates once.

    Relative paths (data.data_dir, data.tfds_data_dir, data.schema_path, runtime.output_dir)
    are taken relative to the current directory and made absolute. A file's top-level
    ``distribution:`` block (the record effective_config.yaml keeps) is skipped. No
    TensorFlow is imported; the checks against the model registry and the task are
    tfprod.pipeline.checks.check_experiment's.

    Raises:
      ConfigError: for an unknown key, a wrong type, an invalid value or bad YAML; the
        message names the file or the --set override the value came from.
      FileNotFoundError: when the config file does not exist.
    """
    config = configlib.load(ExperimentConfig, path, overrides,
                            validate=ExperimentConfig.validate, ignore_keys=RECORD_KEYS)
    _absolute_paths(config)
    return config


def config_yaml(config: ExperimentConfig, records: Optional[Dict[str, Any]] = None,
                header: str = "") -> str:
    """The config as the YAML text load_config reads back, then any record blocks.

    Args:
      config: the experiment.
      records: top-level blocks after the config, keyed by a RECORD_KEYS name; load_config
        skips them.
      header: comment lines written first.
    """
    values = to_dict(config)
    for key, block in (records or {}).items():
        if key not in RECORD_KEYS:
            raise ValueError(f"{key!r} is not a record key ({', '.join(RECORD_KEYS)})")
        values[key] = block
    return configlib.dump_yaml(values, header)


def save_config(config: ExperimentConfig, path: str,
                records: Optional[Dict[str, Any]] = None) -> None:
    """Writes the final config as YAML (the file load_config reads back)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(config_yaml(config, records))
