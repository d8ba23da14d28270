"""Config schema violations as the lines a user acts on: ``train.betas[1]: what is wrong (hint)``.

jsonschema stops nowhere and words its messages for schema authors; the workflow shows every problem
at once, named by the key path the user wrote, with the closest known key for a typo.
"""

from __future__ import annotations

import difflib
import re

import jsonschema

_TEXT_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def key_path(parts) -> str:
    """jsonschema's path deque as the user wrote it: train.betas[1]."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def config_problems(instance: dict, schema: dict) -> list[str]:
    """Every schema violation as 'key.path: what is wrong', sorted."""
    problems = []
    for error in jsonschema.Draft202012Validator(schema).iter_errors(instance):
        missing = re.fullmatch(r"'(.+)' is a required property", error.message)
        if error.validator == "additionalProperties" and "properties" in error.schema:
            problems += _unknown_keys(error)
        elif error.validator == "required" and missing:
            problems.append(f"{key_path([*error.absolute_path, missing[1]])}: missing; the other settings here need it")
        else:
            problems.append(f"{key_path(error.absolute_path)}: {error.message}{_hint(error)}")
    return sorted(problems)


def _unknown_keys(error) -> list[str]:
    """One line per unknown key, with the closest known key or the list of allowed ones."""
    known = list(error.schema["properties"])
    lines = []
    for key in sorted(set(error.instance) - set(known)):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(known)}"
        lines.append(f"{key_path([*error.absolute_path, key])}: unknown key; {hint}")
    return lines


def _hint(error) -> str:
    if isinstance(error.instance, str) and _TEXT_EXPONENT.fullmatch(error.instance):
        return " (YAML reads 1e-4 as text: write 1.0e-4)"
    if error.validator in ("oneOf", "anyOf") and "description" in error.schema:
        return f" ({error.schema['description']})"
    return ""


def problems_message(what: str, problems: list[str]) -> str:
    return f"{what}:\n  " + "\n  ".join(problems)
