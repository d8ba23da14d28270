"""Ablation grid: axes of dotted config keys with labelled values -> named variants.

A variant is one training run: a readable name (its ``{variant}`` wildcard and run folder) and the
knobs it changes (dotted key -> value). Names come from labels the user wrote, never from raw float
values, and do not depend on the order of keys in the config file. Pure Python: the Snakefile
imports this at parse time.

Config form (``grid`` section)::

    axes:                       # product of all axes
      train.loss_type: [x0, v]  # list form: labels are the values (strings, integers, booleans)
      train.lr: {lr1e-4: 1.0e-4, lr3e-4: 3.0e-4}   # mapping form: label -> value (any value)
    aliases: {train.lr: lr}     # optional short axis names; default: first word of the last key segment
    variants:                   # optional explicit list, added to the product
      - {name: long-run, knobs: {train.steps: 200}}

With neither axes nor variants the config trains one variant, ``default``.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

BASE = "base"  # the untrained model's column in every comparison; no variant may take the name
DEFAULT = "default"  # the single variant of a config without a grid
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 120
SECTIONS = ("train", "prompt", "sample")  # the config sections a variant may change
FIXED_KEYS = {"sample.prompt_set": "every variant is sampled on the one prompt set the report compares"}


class GridError(ValueError):
    """A grid that cannot be turned into variants; the message lists every problem."""


@dataclass(frozen=True)
class Variant:
    name: str
    knobs: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def expand(grid: Mapping, config: Mapping) -> list[Variant]:
    """Variants of ``grid`` (the config's grid section), sorted by name; ``config`` gives the known keys."""
    problems: list[str] = []
    axes = grid.get("axes") or {}
    aliases = grid.get("aliases") or {}
    for key in sorted(set(axes) | set(aliases)):
        problems += _key_problems(key, config, "grid.axes" if key in axes else "grid.aliases")
    problems += [f"grid.aliases.{key}: no axis of that key" for key in sorted(set(aliases) - set(axes))]
    labelled = {key: _labelled_values(key, axes[key], problems) for key in sorted(axes)}
    variants = _product(labelled, _axis_aliases(sorted(axes), aliases, problems)) if axes else []
    for index, entry in enumerate(grid.get("variants") or []):
        variant = _explicit_variant(index, entry, config, problems)
        if variant is not None:
            variants.append(variant)
    if not variants and not problems:
        variants = [Variant(DEFAULT, {}, "the config as written")]
    problems += _name_problems(variants)
    if problems:
        raise GridError("ablation grid:\n  " + "\n  ".join(problems))
    return sorted(variants, key=lambda variant: variant.name)


def apply_overrides(section: Mapping, knobs: Mapping[str, Any]) -> dict:
    """A deep copy of ``section`` with each dotted key of ``knobs`` (relative to it) set to its value."""
    result = copy.deepcopy(dict(section))
    for dotted, value in knobs.items():
        *parents, leaf = dotted.split(".")
        node = result
        for part in parents:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise GridError(f"{dotted}: no such key ({part!r} is not a section)")
            node = child
        if leaf not in node:
            raise GridError(f"{dotted}: no such key")
        node[leaf] = copy.deepcopy(value)
    return result


def describe(variants: list[Variant], base: str = BASE) -> dict:
    """The ``variants.json`` document the report reads."""
    return {
        "variants": {variant.name: {"knobs": variant.knobs, "label": variant.label} for variant in variants},
        "base": base,
    }


def _key_problems(dotted: str, config: Mapping, where: str) -> list[str]:
    if not isinstance(dotted, str) or dotted.split(".")[0] not in SECTIONS:
        return [f"{where}: {dotted!r} must be a dotted key in one of the sections {', '.join(SECTIONS)}"]
    if dotted in FIXED_KEYS:
        return [f"{where}: {dotted} cannot vary: {FIXED_KEYS[dotted]}"]
    try:
        apply_overrides(config, {dotted: None})
    except GridError as err:
        return [f"{where}: {err}"]
    return []


def _labelled_values(key: str, values, problems: list[str]) -> dict[str, Any]:
    """label -> value for one axis; the list form uses the values themselves as labels."""
    where = f"grid.axes.{key}"
    if isinstance(values, list):
        labelled = {}
        for value in values:
            if isinstance(value, float) or not isinstance(value, (str, int)):
                problems.append(
                    f"{where}: value {value!r} cannot be its own label; use the mapping form "
                    f"{{label: value}}, e.g. {{lr1e-4: 1.0e-4}}"
                )
            elif _label(value) in labelled:
                problems.append(f"{where}: value {value!r} listed twice")
            else:
                labelled[_label(value)] = value
    elif isinstance(values, dict):
        labelled = {}
        for label, value in values.items():
            if isinstance(label, (bool, float)) or not isinstance(label, (str, int)):
                problems.append(f'{where}: label {label!r} must be a word; quote it, e.g. "lr1e-4"')
            else:
                labelled[str(label)] = value
        seen: dict[str, str] = {}
        for label, value in labelled.items():
            twin = seen.setdefault(repr(value), label)
            if twin != label:
                problems.append(f"{where}: labels {twin!r} and {label!r} give the same value {value!r}")
    else:
        problems.append(f"{where}: expected a list of values or a mapping label -> value, got {values!r}")
        return {}
    if not values:
        problems.append(f"{where}: an axis needs at least one value")
    for label in labelled:
        if not SAFE_NAME.fullmatch(label):
            problems.append(f"{where}: label {label!r} may only hold letters, digits, '.', '_' and '-'")
    return labelled


def _label(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _axis_aliases(keys: list[str], aliases: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """Short axis names: the given alias, else the first word of the last key segment.

    Derived aliases that clash fall back to the whole last segment, then to the whole key.
    """
    derived = {key: key.split(".")[-1].split("_")[0] for key in keys}
    for fallback in (lambda key: key.split(".")[-1], lambda key: key.replace(".", "-")):
        counts: dict[str, int] = {}
        for alias in derived.values():
            counts[alias] = counts.get(alias, 0) + 1
        derived = {key: fallback(key) if counts[alias] > 1 else alias for key, alias in derived.items()}
    chosen = {key: str(aliases.get(key, derived[key])) for key in keys}
    owners: dict[str, str] = {}
    for key, alias in chosen.items():
        if not SAFE_NAME.fullmatch(alias):
            problems.append(f"grid.aliases.{key}: {alias!r} may only hold letters, digits, '.', '_' and '-'")
        if owners.setdefault(alias, key) != key:
            problems.append(f"grid.aliases: axes {owners[alias]} and {key} would both be called {alias!r}")
    return chosen


def _product(labelled: dict[str, dict[str, Any]], aliases: dict[str, str]) -> list[Variant]:
    keys = sorted(labelled)
    variants = []
    for labels in itertools.product(*(sorted(labelled[key]) for key in keys)):
        name = "_".join(f"{aliases[key]}-{label}" for key, label in zip(keys, labels))
        knobs = {key: labelled[key][label] for key, label in zip(keys, labels)}
        description = ", ".join(f"{key}={label}" for key, label in zip(keys, labels))
        variants.append(Variant(name, knobs, description))
    return variants


def _explicit_variant(index: int, entry, config: Mapping, problems: list[str]) -> Variant | None:
    where = f"grid.variants[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        problems.append(f"{where}: expected {{name: <text>, knobs: {{dotted.key: value}}}}, got {entry!r}")
        return None
    knobs = entry.get("knobs") or {}
    if not isinstance(knobs, dict):
        problems.append(f"{where}.knobs: expected a mapping dotted.key -> value, got {knobs!r}")
        return None
    found = [problem for key in sorted(knobs) for problem in _key_problems(key, config, f"{where}.knobs")]
    problems += found
    if found:
        return None
    label = ", ".join(f"{key}={value}" for key, value in sorted(knobs.items())) or "the config as written"
    return Variant(entry["name"], dict(sorted(knobs.items())), label)


def _name_problems(variants: list[Variant]) -> list[str]:
    problems = []
    seen: dict[str, Variant] = {}
    for variant in variants:
        if not SAFE_NAME.fullmatch(variant.name) or len(variant.name) > MAX_NAME_LENGTH:
            problems.append(
                f"variant name {variant.name!r} must be 1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-' "
                "(it names a folder), starting with a letter or digit"
            )
        if variant.name == BASE:
            problems.append(f"variant name {BASE!r} is reserved for the untrained model")
        if variant.name in seen:
            problems.append(f"variant name {variant.name!r} given twice ({seen[variant.name].label}; {variant.label})")
        seen[variant.name] = variant
    return problems
