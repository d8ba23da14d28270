"""Typed settings from plain config sections: one rule for unknown keys and for lists read from YAML."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T")


def from_section(cls: type[T], raw: dict, section: str) -> T:
    """Build the dataclass ``cls`` from ``raw``; unknown keys are named with their section.

    YAML and JSON give lists where the dataclass holds tuples (so settings stay hashable and
    comparable), so lists are converted for every field whose default is a tuple.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown {section} setting(s): {', '.join(f'{section}.{k}' for k in unknown)}")
    values = dict(raw)
    for name, value in values.items():
        if isinstance(value, list) and isinstance(fields[name].default, tuple):
            values[name] = tuple(value)
    return cls(**values)
