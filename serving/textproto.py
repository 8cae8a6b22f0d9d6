"""A small reader for protobuf text format files whose protos are not on PyPI.

TF Serving's batching parameters (`BatchingParameters`) and monitoring config
(`MonitoringConfig`) protos are not part of tensorflow-serving-api, so their
text files are read here into plain dictionaries and checked against the field
names each file allows.
"""

import re
from typing import Any, Dict, List

from tfprod.serving.errors import ConfigFileError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<punct>[{}:<>;,])
    | (?P<word>[A-Za-z0-9_.+\-]+)
    )""", re.VERBOSE)


def _tokenize(text: str, source: str) -> List[str]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ConfigFileError(f"{source}: cannot parse text proto near {text[position:position + 30]!r}")
        position = match.end()
        if match.group("comment") is None:
            tokens.append(match.group(match.lastgroup))
    return tokens


def _value(token: str) -> Any:
    if token[0] in "\"'":
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    try:
        return int(token)
    except ValueError:
        try:
            return float(token)
        except ValueError:
            return token  # an enum name


def parse(text: str, source: str = "<text proto>") -> Dict[str, List[Any]]:
    """Parses text format into {field: [values...]}; nested messages are dicts.

    Raises:
        ConfigFileError: the text is not valid protobuf text format.
    """
    tokens = _tokenize(text, source)
    position = 0

    def message(closing: str) -> Dict[str, List[Any]]:
        nonlocal position
        fields: Dict[str, List[Any]] = {}
        while position < len(tokens):
            token = tokens[position]
            if token == closing:
                position += 1
                return fields
            if token in ";,":
                position += 1
                continue
            name = token
            position += 1
            if position < len(tokens) and tokens[position] == ":":
                position += 1
            if position >= len(tokens):
                raise ConfigFileError(f"{source}: field {name!r} has no value")
            token = tokens[position]
            if token in ("{", "<"):
                position += 1
                fields.setdefault(name, []).append(message("}" if token == "{" else ">"))
            else:
                position += 1
                fields.setdefault(name, []).append(_value(token))
        if closing:
            raise ConfigFileError(f"{source}: missing {closing!r} at the end of the file")
        return fields

    return message("")
