"""Android metadata for TFLite models: the TFLite Metadata flatbuffer, written here.

tflite-support's metadata writers cannot be imported on this stack (a missing
libusb and a pybind11 clash, see STACK.md), so this module builds the
``ModelMetadata`` flatbuffer itself with the ``flatbuffers`` package, following
the published schema (tensorflow/tflite-support ``metadata_schema.fbs``, schema
version 1.5.0, file identifier ``M001``). Each ``_SLOT`` constant below is the
field's index in its table, i.e. its position in the schema (a union field takes
two slots: its type then its value).

The metadata is attached the way the TFLite metadata populator does it:
  * the flatbuffer goes into a new model buffer, named by a ``TFLITE_METADATA``
    entry in the model's ``metadata`` list;
  * the associated files (labels, vocabulary) are appended to the model file
    as an uncompressed zip archive, so Android can read them without a copy.
"""

import dataclasses
import enum
import io
import zipfile
from typing import Dict, List, Optional, Sequence, Union

import flatbuffers

from tfprod import errors

METADATA_FILE_IDENTIFIER = b"M001"
METADATA_BUFFER_NAME = "TFLITE_METADATA"


class MetadataError(errors.RunFailure, ValueError):
    """The metadata is incomplete or cannot be attached; the message says what to fix."""


class AssociatedFileType(enum.IntEnum):
    """``AssociatedFileType`` in the schema."""

    UNKNOWN = 0
    DESCRIPTIONS = 1
    TENSOR_AXIS_LABELS = 2
    TENSOR_VALUE_LABELS = 3
    TENSOR_AXIS_SCORE_CALIBRATION = 4
    VOCABULARY = 5


class ColorSpace(enum.IntEnum):
    """``ColorSpaceType`` in the schema."""

    UNKNOWN = 0
    RGB = 1
    GRAYSCALE = 2


class InputKind(str, enum.Enum):
    """What the model's input tensor holds."""

    IMAGE = "image"  # pixels, described by ImageProperties and NormalizationOptions
    TOKEN_IDS = "token_ids"  # int32 token ids, with the vocabulary as an associated file
    TIME_SERIES = "time_series"  # a float window; its output is a forecast, not classes


# Union type tags (the position of the member in the union, starting at 1).
_CONTENT_FEATURE_PROPERTIES = 1
_CONTENT_IMAGE_PROPERTIES = 2
_PROCESS_UNIT_NORMALIZATION = 1

# Field slots, table by table (see the module docstring).
_ASSOCIATED_FILE_NAME, _ASSOCIATED_FILE_DESCRIPTION, _ASSOCIATED_FILE_TYPE = 0, 1, 2
_IMAGE_SIZE_WIDTH, _IMAGE_SIZE_HEIGHT = 0, 1
_IMAGE_PROPERTIES_COLOR_SPACE, _IMAGE_PROPERTIES_DEFAULT_SIZE = 0, 1
_CONTENT_PROPERTIES_TYPE, _CONTENT_PROPERTIES, _CONTENT_RANGE = 0, 1, 2
_VALUE_RANGE_MIN, _VALUE_RANGE_MAX = 0, 1
_NORMALIZATION_MEAN, _NORMALIZATION_STD = 0, 1
_PROCESS_UNIT_OPTIONS_TYPE, _PROCESS_UNIT_OPTIONS = 0, 1
_STATS_MAX, _STATS_MIN = 0, 1
(_TENSOR_NAME, _TENSOR_DESCRIPTION, _TENSOR_DIMENSION_NAMES, _TENSOR_CONTENT,
 _TENSOR_PROCESS_UNITS, _TENSOR_STATS, _TENSOR_ASSOCIATED_FILES) = range(7)
_SUBGRAPH_NAME, _SUBGRAPH_DESCRIPTION, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS = 0, 1, 2, 3
(_MODEL_NAME, _MODEL_DESCRIPTION, _MODEL_VERSION, _MODEL_SUBGRAPHS, _MODEL_AUTHOR,
 _MODEL_LICENSE, _MODEL_ASSOCIATED_FILES, _MODEL_MIN_PARSER_VERSION) = range(8)
_TABLE_SIZES = {"AssociatedFile": 5, "ImageSize": 2, "ImageProperties": 2,
                "FeatureProperties": 0, "Content": 3, "ValueRange": 2,
                "NormalizationOptions": 2, "ProcessUnit": 2, "Stats": 2,
                "TensorMetadata": 7, "SubGraphMetadata": 10, "ModelMetadata": 8}


@dataclasses.dataclass
class AssociatedFile:
    """A file packed into the model's zip and named in the metadata."""

    name: str
    description: str
    file_type: AssociatedFileType
    content: bytes


@dataclasses.dataclass
class InputMetadata:
    """The model's input tensor, as an Android app must prepare it.

    For images, ``mean``/``std`` say how the app turns pixel values into the
    tensor's values: ``(pixel - mean) / std`` per channel. A model with its
    normalization folded in takes raw pixels: mean 0, std 1.
    """

    name: str
    description: str
    kind: InputKind
    mean: List[float] = dataclasses.field(default_factory=lambda: [0.0])
    std: List[float] = dataclasses.field(default_factory=lambda: [1.0])
    image_width: int = 0
    image_height: int = 0
    color_space: ColorSpace = ColorSpace.GRAYSCALE
    # The range of the tensor's values in its own units (Stats): one value, or one per
    # channel. For a float input, the range after normalization; for uint8/int8, the
    # integer range.
    value_min: Optional[Union[float, Sequence[float]]] = None
    value_max: Optional[Union[float, Sequence[float]]] = None
    vocabulary: Optional[Sequence[str]] = None  # token id i is vocabulary[i]


@dataclasses.dataclass
class OutputMetadata:
    """The model's output tensor: class probabilities with a label file (or, for a
    time-series input, a forecast: no labels).

    ``value_min``/``value_max`` (Stats) are in the tensor's units: 0..1 for float
    probabilities, the integer range for a quantized output; None writes no Stats.
    """

    name: str
    description: str
    labels: Sequence[str]
    value_min: Optional[Union[float, Sequence[float]]] = 0.0
    value_max: Optional[Union[float, Sequence[float]]] = 1.0


@dataclasses.dataclass
class ModelMetadataSpec:
    """Everything written into the TFLite Metadata flatbuffer."""

    name: str
    description: str
    version: str
    input: InputMetadata
    output: OutputMetadata
    author: str = "tfprod"
    license: str = ""

    LABEL_FILE = "labels.txt"
    VOCABULARY_FILE = "vocab.txt"

    def validate(self) -> None:
        for key in ("name", "description", "version"):
            if not getattr(self, key):
                raise MetadataError(f"metadata {key} is empty: give the model a {key}")
        if not self.output.labels and self.input.kind != InputKind.TIME_SERIES:
            raise MetadataError("metadata output.labels is empty: pass one label per class")
        if self.input.kind == InputKind.IMAGE:
            if len(self.input.mean) != len(self.input.std) or not self.input.mean:
                raise MetadataError(
                    f"input normalization needs one mean and one std per channel, got mean "
                    f"{self.input.mean} and std {self.input.std}")
            if any(value == 0 for value in self.input.std):
                raise MetadataError(f"input normalization std may not be 0: {self.input.std}")
            channels = {ColorSpace.RGB: (1, 3), ColorSpace.GRAYSCALE: (1,)}.get(
                self.input.color_space)
            if channels and len(self.input.mean) not in channels:
                raise MetadataError(
                    f"a {self.input.color_space.name} image takes one mean/std per channel "
                    f"(or one for all), got {len(self.input.mean)}")
        elif self.input.kind == InputKind.TOKEN_IDS and not self.input.vocabulary:
            raise MetadataError("a token-ids input needs its vocabulary (input.vocabulary)")

    def associated_files(self) -> List[AssociatedFile]:
        """The files that go into the model's zip: labels, and the vocabulary for text."""
        files = []
        if self.output.labels:
            files.append(AssociatedFile(
                self.LABEL_FILE, "One class label per line, in output order.",
                AssociatedFileType.TENSOR_AXIS_LABELS, _lines(self.output.labels)))
        if self.input.kind == InputKind.TOKEN_IDS:
            files.append(AssociatedFile(
                self.VOCABULARY_FILE, "One token per line; line i is token id i.",
                AssociatedFileType.VOCABULARY, _lines(self.input.vocabulary or [])))
        return files


def _lines(items: Sequence[str]) -> bytes:
    for item in items:
        if "\n" in item:
            raise MetadataError(f"label or token {item!r} contains a newline")
    return ("\n".join(items) + "\n").encode("utf-8")


# --------------------------------------------------------------------------
# Writing the flatbuffer.
# --------------------------------------------------------------------------


class _Writer:
    """Small helpers over flatbuffers.Builder (children are built before parents)."""

    def __init__(self):
        self.builder = flatbuffers.Builder(1024)

    def string(self, text: str) -> int:
        return self.builder.CreateString(text)

    def offsets_vector(self, offsets: Sequence[int]) -> int:
        self.builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.builder.PrependUOffsetTRelative(offset)
        return self.builder.EndVector()

    def floats_vector(self, values: Sequence[float]) -> int:
        self.builder.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.builder.PrependFloat32(float(value))
        return self.builder.EndVector()

    def table(self, table_name: str, offsets: Dict[int, int] = None,
              bytes_: Dict[int, int] = None, uints: Dict[int, int] = None,
              ints: Dict[int, int] = None) -> int:
        """A table with the given fields, by slot: offsets, int8/uint8, uint32, int32."""
        builder = self.builder
        builder.StartObject(_TABLE_SIZES[table_name])
        for slot, value in (offsets or {}).items():
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        for slot, value in (uints or {}).items():
            builder.PrependUint32Slot(slot, value, 0)
        for slot, value in (ints or {}).items():
            builder.PrependInt32Slot(slot, value, 0)
        for slot, value in (bytes_ or {}).items():
            # force_defaults is off: 0 (the default) is simply not stored.
            builder.PrependUint8Slot(slot, value, 0)
        return builder.EndObject()


def _associated_file(writer: _Writer, associated: AssociatedFile) -> int:
    return writer.table("AssociatedFile",
                        offsets={_ASSOCIATED_FILE_NAME: writer.string(associated.name),
                                 _ASSOCIATED_FILE_DESCRIPTION: writer.string(associated.description)},
                        bytes_={_ASSOCIATED_FILE_TYPE: int(associated.file_type)})


def _input_tensor(writer: _Writer, spec: ModelMetadataSpec,
                  files: Dict[str, int]) -> int:
    tensor = spec.input
    name, description = writer.string(tensor.name), writer.string(tensor.description)
    offsets = {_TENSOR_NAME: name, _TENSOR_DESCRIPTION: description}
    bytes_ = {}
    if tensor.kind == InputKind.IMAGE:
        size = writer.table("ImageSize", uints={_IMAGE_SIZE_WIDTH: tensor.image_width,
                                                _IMAGE_SIZE_HEIGHT: tensor.image_height})
        properties = writer.table("ImageProperties",
                                  offsets={_IMAGE_PROPERTIES_DEFAULT_SIZE: size},
                                  bytes_={_IMAGE_PROPERTIES_COLOR_SPACE: int(tensor.color_space)})
        content = writer.table("Content", offsets={_CONTENT_PROPERTIES: properties},
                               bytes_={_CONTENT_PROPERTIES_TYPE: _CONTENT_IMAGE_PROPERTIES})
        mean, std = writer.floats_vector(tensor.mean), writer.floats_vector(tensor.std)
        normalization = writer.table("NormalizationOptions",
                                     offsets={_NORMALIZATION_MEAN: mean, _NORMALIZATION_STD: std})
        unit = writer.table("ProcessUnit", offsets={_PROCESS_UNIT_OPTIONS: normalization},
                            bytes_={_PROCESS_UNIT_OPTIONS_TYPE: _PROCESS_UNIT_NORMALIZATION})
        offsets[_TENSOR_PROCESS_UNITS] = writer.offsets_vector([unit])
    else:
        properties = writer.table("FeatureProperties")
        content = writer.table("Content", offsets={_CONTENT_PROPERTIES: properties},
                               bytes_={_CONTENT_PROPERTIES_TYPE: _CONTENT_FEATURE_PROPERTIES})
        if tensor.kind == InputKind.TOKEN_IDS:
            offsets[_TENSOR_ASSOCIATED_FILES] = writer.offsets_vector(
                [files[ModelMetadataSpec.VOCABULARY_FILE]])
    offsets[_TENSOR_CONTENT] = content
    if tensor.value_min is not None and tensor.value_max is not None:
        offsets[_TENSOR_STATS] = _stats(writer, tensor.value_min, tensor.value_max)
    return writer.table("TensorMetadata", offsets=offsets, bytes_=bytes_)


def _stats(writer: _Writer, low, high) -> int:
    """A Stats table; a single value applies to every channel (the schema's rule)."""
    def values(value):
        return [value] if isinstance(value, (int, float)) else list(value)

    return writer.table("Stats", offsets={_STATS_MAX: writer.floats_vector(values(high)),
                                          _STATS_MIN: writer.floats_vector(values(low))})


def _output_tensor(writer: _Writer, spec: ModelMetadataSpec, files: Dict[str, int]) -> int:
    name, description = writer.string(spec.output.name), writer.string(spec.output.description)
    properties = writer.table("FeatureProperties")
    content = writer.table("Content", offsets={_CONTENT_PROPERTIES: properties},
                           bytes_={_CONTENT_PROPERTIES_TYPE: _CONTENT_FEATURE_PROPERTIES})
    offsets = {_TENSOR_NAME: name, _TENSOR_DESCRIPTION: description, _TENSOR_CONTENT: content}
    if spec.output.value_min is not None and spec.output.value_max is not None:
        offsets[_TENSOR_STATS] = _stats(writer, spec.output.value_min, spec.output.value_max)
    if spec.output.labels:
        offsets[_TENSOR_ASSOCIATED_FILES] = writer.offsets_vector(
            [files[ModelMetadataSpec.LABEL_FILE]])
    return writer.table("TensorMetadata", offsets=offsets)


def min_parser_version(spec: ModelMetadataSpec) -> str:
    """The oldest metadata parser that understands what this spec writes.

    Everything written is in schema 1.0.0, except the VOCABULARY file type (1.0.1).
    """
    return "1.0.1" if spec.input.kind == InputKind.TOKEN_IDS else "1.0.0"


def build_metadata(spec: ModelMetadataSpec) -> bytes:
    """The ModelMetadata flatbuffer (file identifier M001) for spec."""
    spec.validate()
    writer = _Writer()
    # Each associated file table is written once and referenced where it applies.
    files = {associated.name: _associated_file(writer, associated)
             for associated in spec.associated_files()}
    inputs = writer.offsets_vector([_input_tensor(writer, spec, files)])
    outputs = writer.offsets_vector([_output_tensor(writer, spec, files)])
    subgraph = writer.table("SubGraphMetadata", offsets={
        _SUBGRAPH_NAME: writer.string(spec.name), _SUBGRAPH_INPUTS: inputs,
        _SUBGRAPH_OUTPUTS: outputs})
    model = writer.table("ModelMetadata", offsets={
        _MODEL_NAME: writer.string(spec.name),
        _MODEL_DESCRIPTION: writer.string(spec.description),
        _MODEL_VERSION: writer.string(spec.version),
        _MODEL_SUBGRAPHS: writer.offsets_vector([subgraph]),
        _MODEL_AUTHOR: writer.string(spec.author),
        _MODEL_LICENSE: writer.string(spec.license),
        _MODEL_MIN_PARSER_VERSION: writer.string(min_parser_version(spec))})
    writer.builder.Finish(model, file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(writer.builder.Output())


# --------------------------------------------------------------------------
# Attaching it to a model, and reading it back out.
# --------------------------------------------------------------------------


def _model_flatbuffer(model_bytes: bytes) -> bytes:
    """The model without any zip appended (the flatbuffer itself)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            start = min(info.header_offset for info in archive.infolist()) if archive.infolist() \
                else len(model_bytes)
    except zipfile.BadZipFile:
        return model_bytes
    return model_bytes[:start]


def attach_metadata(model_bytes: bytes, spec: ModelMetadataSpec) -> bytes:
    """Returns the model with spec's metadata and associated files attached.

    Any metadata or associated files already attached are replaced.

    Raises:
      MetadataError: the spec is incomplete or the bytes are not a TFLite model.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    metadata_bytes = build_metadata(spec)
    flatbuffer = bytearray(_model_flatbuffer(model_bytes))
    if not schema.Model.ModelBufferHasIdentifier(flatbuffer, 0):
        raise MetadataError("not a TFLite model (no TFL3 identifier): convert the model first")
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    model.metadata = [entry for entry in (model.metadata or [])
                      if entry.name.decode() != METADATA_BUFFER_NAME]
    buffer = schema.BufferT()
    buffer.data = list(metadata_bytes)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    output = io.BytesIO(flatbuffer_utils.convert_object_to_bytearray(model))
    # Stored, not deflated: Android memory-maps the files straight out of the model.
    files = spec.associated_files()
    if files:  # a forecaster has none: no (empty) zip is appended then
        with zipfile.ZipFile(output, "a", compression=zipfile.ZIP_STORED) as archive:
            for associated in files:
                archive.writestr(associated.name, associated.content)
    return output.getvalue()


def extract_metadata_buffer(model_bytes: bytes) -> bytes:
    """The raw TFLITE_METADATA flatbuffer of a model.

    Raises:
      MetadataError: the model carries no metadata.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    flatbuffer = bytearray(_model_flatbuffer(model_bytes))
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name().decode() == METADATA_BUFFER_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    raise MetadataError("the model has no TFLITE_METADATA entry: attach metadata first")


def read_associated_files(model_bytes: bytes) -> Dict[str, bytes]:
    """The files in the model's zip (name -> content); empty if there are none."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}
