"""Names that become file or folder names (prompt ids, variant names), checked before anything is written."""

from __future__ import annotations

import unicodedata

MAX_BYTES = 200  # leaves room for "_seed<n>.png" under the 255-byte name limit of common file systems
_PUNCTUATION = "._-"


def check_name(name: str, what: str, where: str | None = None) -> str:
    """Return ``name`` if it is safe as a single path component, else raise ValueError saying why.

    The rule: 1 to 200 bytes (UTF-8); the first character a letter or a digit, every other one a
    letter, a digit, a combining mark, '.', '_' or '-'. Letters, digits and marks are Unicode ones
    ('café', '猫', 'नमस्ते' pass), so ids in any script work, while separators ('/', '\\'), drive
    letters (':'), '..' and hidden names (a leading '.'), spaces and control characters cannot
    occur. ``what`` and ``where`` name the value in the message, e.g. "prompt id", "prompts.yaml".
    """
    if not name:
        reason = "is empty"
    elif len(name.encode("utf-8")) > MAX_BYTES:
        reason = f"is longer than {MAX_BYTES} bytes"
    elif not _letter_or_digit(name[0]):
        reason = f"starts with {name[0]!r}"
    else:
        bad = [c for c in name if not (_letter_or_digit(c) or _mark(c) or c in _PUNCTUATION)]
        reason = f"contains {bad[0]!r}" if bad else None
    if reason is None:
        return name
    location = f" in {where}" if where else ""
    raise ValueError(
        f"{what} {name!r}{location} {reason}, and it names files: use letters, digits, '.', '_' and '-', "
        "starting with a letter or a digit (no '/', '\\', ':', spaces or control characters)"
    )


def _letter_or_digit(char: str) -> bool:
    return unicodedata.category(char)[0] in "LN"


def _mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"
