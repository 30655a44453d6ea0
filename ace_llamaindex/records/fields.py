"""Checking a record's JSON object when it is read: each field of its kind, else one line naming it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import OptionError

KIND_WORDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false",
              float: "a number"}
JSON_TYPES = {**{kind: kind for kind in KIND_WORDS}, float: (int, float)}  # JSON writes 12.0 as 12


def check_fields(values: Mapping[str, Any], kinds: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Each of ``values``' entries named in ``kinds`` is null or of its kind (a kind that is a mapping: an object whose
    entries are checked the same way); else one :class:`~ace_llamaindex.errors.OptionError` line naming ``where`` and
    the field (``serving.model``)."""
    for name, kind in kinds.items():
        value = values.get(name)
        if value is None:
            continue
        field_name = f"{prefix}{name}"
        expected = dict if isinstance(kind, Mapping) else kind
        if not isinstance(value, JSON_TYPES[expected]) or (isinstance(value, bool) and expected is not bool):
            raise OptionError(f"{where}: field {field_name!r} must be {KIND_WORDS[expected]}, got "
                              f"{type(value).__name__} {json.dumps(value, default=str)[:40]}")
        if isinstance(kind, Mapping):
            check_fields(value, kind, where, f"{field_name}.")


def options_given(cls, options: Any, keywords: Mapping[str, Any], function: str) -> Any:
    """``options`` (a dataclass of ``cls``; default ``cls()``) with ``keywords`` replacing its fields: how a function
    that takes an options record still takes each option as a keyword. A keyword that is no field is a ``TypeError``
    naming ``function``, as Python's own."""
    from dataclasses import fields, replace

    unknown = sorted(set(keywords) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    return replace(options or cls(), **keywords)
