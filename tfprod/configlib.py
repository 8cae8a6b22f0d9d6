"""A generic loader for configs that are trees of dataclasses; it knows no schema.

A config is a dataclass whose fields are scalars (bool, int, float, str), enums,
``Optional[...]``, lists and nested dataclasses. This module builds such a config in
layers and checks the type of every value against the field that holds it:

1. the dataclass defaults;
2. a YAML file (``read_yaml``), built with ``from_dict``;
3. ``KEY=VALUE`` overrides (``parse_override``), each set with ``set_value``.

``set_value`` is the one public way to set a value at a dotted path: the command line's
``--set`` and the Tuner's hyperparameters both go through it. ``load`` runs the layers and
then the schema's ``validate`` once; an error names the key, where the value came from
(the YAML file, the ``--set`` override, or ``default value`` when neither set it) and what
is expected.

No TensorFlow here, and no tfprod import but tfprod.errors: the schemas (e.g.
tfprod.pipeline.config) stand on this module, never the other way round.
"""

import dataclasses
import enum
import os
import re
import typing
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from tfprod import errors

OMIT_WHEN_DEFAULT = "omit_when_default"  # field metadata, see added_field


class ConfigError(errors.ConfigError):
    """A config key or value is wrong: the message names the key, its source and what is
    expected. ``key`` is the dotted key at fault, when one is known."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key

    def at(self, source: Optional[str]) -> "ConfigError":
        """The same error with ``source: `` in front (unchanged when source is empty)."""
        if not source:
            return self
        try:
            error = type(self)(f"{source}: {self}")
        except TypeError:  # a subclass with other arguments
            error = ConfigError(f"{source}: {self}")
        error.key = self.key
        return error


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    """Raises ConfigError("key: expected <expected>, got <value>") unless condition holds."""
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}", key=key)


def added_field(default: Any) -> Any:
    """A dataclass field that ``to_dict(compact=True)`` leaves out while it holds its default.

    For keys added to a schema after configs were serialized somewhere that must stay the
    same (e.g. a compiled pipeline spec): the compact form of an old config does not
    change. A dataclass type as default means default_factory; a list or dict is copied.
    """
    metadata = {OMIT_WHEN_DEFAULT: True}
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):  # a fresh copy per instance
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------
# Types.
# --------------------------------------------------------------------------


def _non_null(tp: Any) -> Any:
    """X for Optional[X]; tp itself otherwise."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def type_name(tp: Any) -> str:
    """How a field type reads in an error message ("list of int", "one of 'a', 'b'")."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        names = [type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin in (list, List):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if _is_enum(tp):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is Any:
        return "a value"
    return getattr(tp, "__name__", str(tp))


def scalar_type(tp: Any) -> Optional[type]:
    """bool, int, float, str or the enum a field holds (through Optional); None otherwise."""
    plain = _non_null(tp)
    if plain in (bool, int, float, str) or _is_enum(plain):
        return plain
    return None


def split_key(key: str) -> List[str]:
    """'a.b.c' -> ['a', 'b', 'c']; ConfigError for an empty part."""
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"key '{key}' has an empty part", key=key)
    return path


def field_type(cls: type, key: str) -> Any:
    """The declared type at a dotted key of dataclass cls, or ConfigError for an unknown key."""
    path = split_key(key)
    current: Any = cls
    for depth, name in enumerate(path):
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown key '{key}': '{'.'.join(path[:depth])}' is not a "
                              "section", key=key)
        hints = typing.get_type_hints(current)
        if name not in hints:
            where = ".".join(path[:depth]) or "the top level"
            raise ConfigError(f"unknown key '{key}'; keys allowed in {where} are: "
                              f"{', '.join(sorted(hints))}", key=key)
        current = hints[name]
    return current


def coerce(value: Any, tp: Any, key: str) -> Any:
    """value converted to field type tp (an int is a float, never a bool an int).

    Raises:
      ConfigError: naming key, the expected type and the value.
    """
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        return coerce(value, _non_null(tp), key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}", key=key)
        (item_type,) = typing.get_args(tp)
        return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of keys, got {value!r}", key=key)
        return from_dict(tp, value, key)
    if _is_enum(tp):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}",
                              key=key) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:  # Checked by the schema's validate (e.g. a list of mixed values).
        return value
    else:
        raise TypeError(f"unsupported config field type {tp!r} at {key}")
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}", key=key)


# --------------------------------------------------------------------------
# Dataclass <-> dict.
# --------------------------------------------------------------------------


def from_dict(cls: type, values: Dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass cls from plain values, coercing each to its field's type.

    Missing keys keep their defaults. Nothing is validated beyond the types.

    Raises:
      ConfigError: an unknown key (the message lists the allowed ones) or a wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; keys allowed here are: "
                          f"{', '.join(sorted(fields))}", key=f"{where}{unknown[0]}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = coerce(value, hints[name], key)
    return cls(**kwargs)


def _omitted(section: Any, field: dataclasses.Field) -> bool:
    """True for an added_field that holds its default."""
    if not field.metadata.get(OMIT_WHEN_DEFAULT):
        return False
    default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
               else field.default)
    return getattr(section, field.name) == default


def to_dict(config: Any, compact: bool = False) -> Dict[str, Any]:
    """A config dataclass as plain YAML/JSON-safe values (enums become their values).

    Args:
      config: a config dataclass.
      compact: leave out added_field keys while they hold their defaults; from_dict reads
        the result back to the same config.
    """

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not (compact and _omitted(value, f))}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(config)


# --------------------------------------------------------------------------
# YAML, overrides and the path setter.
# --------------------------------------------------------------------------


def read_yaml(path: str, ignore_keys: Iterable[str] = ()) -> Dict[str, Any]:
    """The mapping in a YAML file (an empty file is {}), less the top-level ignore_keys.

    Raises:
      FileNotFoundError: the file does not exist.
      ConfigError: the file is not YAML, or not a mapping at the top level.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for key in ignore_keys:
        loaded.pop(key, None)
    return loaded


def dump_yaml(values: Dict[str, Any], header: str = "") -> str:
    """values as YAML in their order, after header (comment lines, each starting '# ')."""
    return header + yaml.safe_dump(values, sort_keys=False)


def parse_override(override: str) -> Tuple[str, str]:
    """'dotted.key=value' -> ('dotted.key', 'value'); the value stays text."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form dotted.key=value")
    key, text = override.split("=", 1)
    key = key.strip()
    if not all(key.split(".")):
        raise ConfigError(f"override '{override}' has an empty key part")
    return key, text


def _read_text(text: str, tp: Any, key: str) -> Any:
    """A value written as text (``--set``) read as YAML: ``3`` is an int, ``true`` a bool,
    ``[16, 32]`` a list, ``null`` None. Strings (and enum names) stay as written."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: the value {text!r} is not valid YAML ({error})",
                          key=key) from error
    plain = _non_null(tp)
    if value is not None and not isinstance(value, str) and (plain is str or _is_enum(plain)):
        return text  # e.g. export.model_name=123 is the name "123"
    return value


def set_value(config: Any, key: str, value: Any, source: str = "") -> None:
    """Sets the value at a dotted key of a config dataclass, in place, checking its type.

    The one path setter: ``--set`` overrides and the Tuner's values both use it. Setting
    a section (``trainer={epochs: 3}``) replaces the whole section.

    Args:
      config: the config dataclass to change.
      key: a dotted key, e.g. ``trainer.epochs``.
      value: the new value. A str for a field that does not hold strings is read as YAML,
        as the command line writes it (``"3"``, ``"[8, 16]"``, ``"null"``).
      source: where the value comes from, named in front of an error (e.g.
        ``--set trainer.epochs=three`` or ``tuning``).

    Raises:
      ConfigError: an unknown key, or a value of the wrong type.
    """
    try:
        path = split_key(key)
        tp = field_type(type(config), key)
        if isinstance(value, str):
            value = _read_text(value, tp, key)
        node = config
        for name in path[:-1]:
            node = getattr(node, name)
        setattr(node, path[-1], coerce(value, tp, key))
    except ConfigError as error:
        raise error.at(source) from None


def _leaf_keys(values: Dict[str, Any], prefix: str = "") -> Iterable[str]:
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, key + ".")
        else:
            yield key


def _key_paths(key: str) -> List[List[str]]:
    """The dotted paths an error key names: 'a.b[2].c' -> [['a', 'b']]; a check of two keys
    of one section, 'a.b/c', names both: [['a', 'b'], ['a', 'c']]."""
    first, *others = key.split("/")
    path = re.split(r"\[", first, maxsplit=1)[0].split(".")
    return [path] + [path[:-1] + re.split(r"\[", other, maxsplit=1)[0].split(".")
                     for other in others if other]


def source_of(key: Optional[str], sources: Dict[str, str]) -> Optional[str]:
    """Which layer set key (or the section holding it), from {dotted key: source} in the
    order the layers set them (a later layer's keys come later).

    A section's key (``data.augmentation``) is charged to the latest layer that set a key
    inside it. A key naming two keys of a section (``data.image_height/image_width``) is
    charged to the later layer that set either: that value made the pair invalid (e.g. ``--set
    data.image_width=-1`` over a file that sets both).
    """
    if not key:
        return None
    order = {name: position for position, name in enumerate(sources)}
    found: List[Tuple[int, str]] = []
    for path in _key_paths(key):
        for depth in range(len(path), 0, -1):
            name = ".".join(path[:depth])
            if name in sources:
                found.append((order[name], sources[name]))
                break
        else:  # a section's key (data.augmentation): the latest layer that set a key in it
            prefix = ".".join(path) + "."
            found += [(order[name], source) for name, source in sources.items()
                      if name.startswith(prefix)]
    return max(found)[1] if found else None


#: Named in front of an error whose key no layer set: the value is the dataclass default.
DEFAULT_SOURCE = "default value"


def _source_or_default(key: Optional[str], sources: Dict[str, str]) -> Optional[str]:
    """source_of, or DEFAULT_SOURCE for a known key that neither the file nor --set set."""
    if not key:
        return None
    return source_of(key, sources) or DEFAULT_SOURCE


def load(cls: type, path: Optional[str] = None, overrides: Sequence[str] = (),
         validate: Optional[Callable[[Any], None]] = None,
         ignore_keys: Iterable[str] = ()) -> Any:
    """Builds cls from its defaults, the YAML file at path, then the overrides; validates once.

    Args:
      cls: the config dataclass.
      path: a YAML file, or None for the defaults.
      overrides: ``dotted.key=value`` strings, applied in order (the last one wins).
      validate: called once on the result (e.g. the schema's validate method); a
        ConfigError it raises gets the source of its key in front.
      ignore_keys: top-level keys of the file that are records, not config (skipped).

    Raises:
      FileNotFoundError: path does not exist.
      ConfigError: bad YAML, an unknown key, a wrong type or an invalid value; the
        message starts with the file or the ``--set`` override the value came from.
    """
    values = read_yaml(path, ignore_keys) if path is not None else {}
    try:
        config = from_dict(cls, values)
    except ConfigError as error:
        raise error.at(path) from None
    sources = {key: path for key in _leaf_keys(values)} if path else {}
    for override in overrides:
        key, text = parse_override(override)
        set_value(config, key, text, source=f"--set {override}")
        # Re-inserted last: source_of reads the order of the keys as the order of layers.
        sources = {k: v for k, v in sources.items() if k != key and not k.startswith(key + ".")}
        sources[key] = f"--set {override}"
    if validate is not None:
        try:
            validate(config)
        except ConfigError as error:
            raise error.at(_source_or_default(error.key, sources)) from None
    # Kept on the object (not a field) so checks that run later, above the schema (the model
    # registry, the task), can name the layer too: see with_source.
    object.__setattr__(config, _SOURCES_ATTRIBUTE, sources)
    return config


_SOURCES_ATTRIBUTE = "_tfprod_config_sources"


def with_source(error: ConfigError, config: Any) -> ConfigError:
    """error with the file or ``--set`` override that set its key in front, for a config
    that load() built and a check that runs after load (e.g. model.name against the model
    registry); ``default value`` when no layer set the key; unchanged when the error names
    no key or the config was built in code."""
    if not hasattr(config, _SOURCES_ATTRIBUTE):  # built in code: no layers to name
        return error
    return error.at(_source_or_default(error.key, getattr(config, _SOURCES_ATTRIBUTE)))
