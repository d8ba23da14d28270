"""Typed settings from plain config sections: one rule for unknown keys, value types and YAML lists."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import TypeVar

T = TypeVar("T")

# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: 1e-4 and 1.0e4 stay text
_TEXT_EXPONENT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?)(\d+)")
_NAMES = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("text", "texts"),
    bool: ("true or false", "booleans"),
    dict: ("a mapping", "mappings"),
    type(None): ("null", "nulls"),
}


def from_section(cls: type[T], raw: dict, section: str) -> T:
    """Build the dataclass ``cls`` from ``raw``, checking every value against its field's annotation.

    Unknown keys and every mistyped value are reported together in one ValueError, each named
    ``section.key``, before the dataclass's own value rules run. YAML and JSON give lists where the
    dataclass holds tuples (so settings stay hashable and comparable), so those become tuples.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown {section} setting(s): {', '.join(f'{section}.{k}' for k in unknown)}")
    hints = typing.get_type_hints(cls)
    values, problems = {}, []
    for name, value in raw.items():
        ok, converted = _conform(value, hints[name])
        if ok:
            values[name] = converted
        else:
            problems.append(_problem(f"{section}.{name}", value, hints[name], fields[name].default))
    if problems:
        raise ValueError(f"invalid {section} setting(s):\n  " + "\n  ".join(problems))
    return cls(**values)


def _conform(value, hint) -> tuple[bool, object]:
    """(whether ``value`` fits ``hint``, the value with lists turned into tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            ok, converted = _conform(value, member)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        element_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(element_hints) != len(value):
            return False, value
        items = [_conform(item, item_hint) for item, item_hint in zip(value, element_hints)]
        return all(ok for ok, _ in items), tuple(converted for _, converted in items)
    if origin is dict or hint is dict:
        key_hint, value_hint = args or (typing.Any, typing.Any)
        ok = isinstance(value, dict) and all(
            _conform(k, key_hint)[0] and _conform(v, value_hint)[0] for k, v in value.items()
        )
        return ok, value
    if hint is typing.Any:
        return True, value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    raise TypeError(f"from_section cannot check the annotation {hint!r}")  # a programming error, not bad input


def _describe(hint, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(member, plural) for member in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], plural=True)}"
        if len(set(args)) == 1:
            return f"a list of exactly {len(args)} {_describe(args[0], plural=True)}"
        return f"a list of exactly {len(args)} values ({', '.join(map(_describe, args))})"
    base = dict if origin is dict else hint
    if base in _NAMES:
        return _NAMES[base][plural]
    return getattr(base, "__name__", str(base))


def _problem(key: str, value, hint, default) -> str:
    kind = type(value).__name__ + (f" of {len(value)}" if isinstance(value, (list, tuple)) else "")
    message = f"{key}: got {value!r} ({kind}), expected {_describe(hint)}"
    if isinstance(default, tuple) and default:
        message += f", e.g. {list(default)}"
    return message + _text_number_hint(value)


def _text_number_hint(value) -> str:
    """What to write instead, where a number arrived as text (YAML's exponent rule, or quotes)."""
    texts = [item for item in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(item, str)]
    for text in texts:
        if match := _TEXT_EXPONENT.fullmatch(text.strip()):
            mantissa, sign, digits = match.groups()
            mantissa += "0" if mantissa.endswith(".") else "" if "." in mantissa else ".0"
            fixed = f"{mantissa}e{sign or '+'}{digits}"
            return "; YAML reads 1e-4 as text: write 1.0e-4" + (f" (here {fixed})" if fixed != "1.0e-4" else "")
    for text in texts:
        try:
            float(text)
        except ValueError:
            continue
        if any(ch.isdigit() for ch in text):
            return f"; {text!r} is quoted text: write the number without quotes"
    return ""
