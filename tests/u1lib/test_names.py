"""Names that become files: a family of escapes and oddities is refused, ids in any script pass."""

from __future__ import annotations

import pytest

from u1lib.names import MAX_BYTES, check_name

BAD = {
    "../../x": "starts with '.'",
    "..": "starts with '.'",
    ".": "starts with '.'",
    ".hidden": "starts with '.'",
    "/abs/path": "starts with '/'",
    "a/b": "contains '/'",
    "a/../../b": "contains '/'",
    "C:\\x": "contains ':'",
    "a\\b": "contains '\\\\'",
    "\\\\server\\share": "starts with '\\\\'",
    "": "is empty",
    "a\x00b": "contains '\\x00'",
    "a\nb": "contains '\\n'",
    "tab\there": "contains '\\t'",
    "a\x1b[31m": "contains '\\x1b'",
    "two words": "contains ' '",
    "-rf": "starts with '-'",
    "_x": "starts with '_'",
    "a\u202eb": "contains '\\u202e'",  # right-to-left override: hides what the name really is
    "a\uff0fb": "contains '／'",  # fullwidth solidus, a '/' look-alike
    "x" * (MAX_BYTES + 1): f"is longer than {MAX_BYTES} bytes",
    "猫" * (MAX_BYTES // 3 + 1): f"is longer than {MAX_BYTES} bytes",  # bytes, not characters, count
}


@pytest.mark.parametrize("name", BAD)
def test_unsafe_names_are_refused_naming_what_where_and_why(name):
    with pytest.raises(ValueError) as err:
        check_name(name, "prompt id", "prompts.yaml")
    message = str(err.value)
    assert message.startswith(f"prompt id {name!r} in prompts.yaml {BAD[name]}"), message
    assert "use letters, digits, '.', '_' and '-'" in message  # how to fix it


GOOD = ["cat", "Cat-2", "seed_0.v1", "0", "café", "猫", "नमस्ते", "ÅngströM", "x" * MAX_BYTES]


@pytest.mark.parametrize("name", GOOD)
def test_ordinary_names_in_any_script_pass_unchanged(name):
    assert check_name(name, "prompt id") == name


def test_the_message_leaves_out_where_when_it_is_not_given():
    with pytest.raises(ValueError, match=r"^--adapter variant name 'a/b' contains '/'"):
        check_name("a/b", "--adapter variant name")
