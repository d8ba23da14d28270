"""u1lib.io: a safetensors header rewritten for determinism stays a valid file for any key or metadata text;
the guard on folders a stage replaces names what it does not claim."""

import itertools
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, load_file

from u1lib.io import ForeignFilesError, refuse_foreign, safetensors_bytes, save_safetensors

# accented Latin (NFC and NFD), CJK, emoji (with ZWJ and a variation selector), RTL, spaces, mixed
NAMES = [
    "caf\u00e9",
    "cafe\u0301",
    "\u732b\u306e\u5199\u771f",
    "\U0001f408\u200d\u2b1b",
    "\u2764\ufe0f",
    "\u0635\u0648\u0631\u0629",
    "\u05ea\u05de\u05d5\u05e0\u05d4",
    "two words",
    "Mix\u00e9 \u732b \U0001f600 \u05d0",
    'quote" back\\slash',
    "tab\tand\nnewline",
]


def tensors_for(names: list[str]) -> dict:
    """Tensors of several dtypes and shapes, so offsets and alignment are exercised."""
    out = {}
    for i, name in enumerate(names):
        out[f"{name}.k"] = torch.arange(i + 3, dtype=torch.float32).reshape(1, -1)
        out[f"{name}.v"] = torch.full((2, i + 1), i, dtype=torch.bfloat16 if i % 2 else torch.int64)
    return out


def header_of(data: bytes) -> tuple[int, bytes]:
    size = int.from_bytes(data[:8], "little")
    return size, data[8 : 8 + size]


@pytest.mark.parametrize("name", NAMES)
def test_non_ascii_keys_and_metadata_read_back(tmp_path, name):
    tensors = tensors_for([name, "plain"])
    metadata = {name: f"value {name}", "ascii": name, "z": "last"}
    path = tmp_path / "out.safetensors"
    save_safetensors(path, tensors, metadata)
    loaded = load_file(path)
    assert sorted(loaded) == sorted(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata() == metadata
        assert torch.equal(handle.get_tensor(f"{name}.k"), tensors[f"{name}.k"])


def test_header_follows_the_format_rules():
    data = safetensors_bytes(tensors_for(NAMES), {name: name for name in NAMES})
    size, header = header_of(data)
    assert size % 8 == 0 and header.startswith(b"{")
    parsed = json.loads(header)  # json ignores the trailing space padding
    assert header.rstrip(b" ") == json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    buffer = data[8 + size :]
    ends = sorted(entry["data_offsets"] for key, entry in parsed.items() if key != "__metadata__")
    assert ends[0][0] == 0 and ends[-1][1] == len(buffer)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ends))  # contiguous, relative to the buffer


def test_same_content_gives_the_same_bytes():
    metadata = {name: str(i) for i, name in enumerate(NAMES)}
    first = safetensors_bytes(tensors_for(NAMES), metadata)
    shuffled = dict(reversed(list(metadata.items())))
    again = [safetensors_bytes(dict(reversed(list(tensors_for(NAMES).items()))), shuffled) for _ in range(5)]
    assert all(data == first for data in again)
    assert load(first).keys() == tensors_for(NAMES).keys()
    other = safetensors_bytes(tensors_for(NAMES), {**metadata, NAMES[0]: "changed"})
    assert other != first


def test_metadata_is_stored_sorted():
    metadata = {name: "x" for name in NAMES}
    _, header = header_of(safetensors_bytes({"t": torch.zeros(1)}, metadata))
    assert list(json.loads(header)["__metadata__"]) == sorted(metadata)


@pytest.mark.parametrize("name", ["plain", *NAMES])
def test_matches_the_library_when_there_is_nothing_to_reorder(name):
    """One metadata entry has one order: the rewrite must then reproduce the library's bytes exactly."""
    from safetensors.torch import save

    tensors = tensors_for([name])
    assert safetensors_bytes(tensors, {"only": name}) == save(tensors, metadata={"only": name})


def test_a_written_file_is_the_deterministic_bytes_even_when_the_header_changes_length(tmp_path, monkeypatch):
    import u1lib.io as io_module

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.bfloat16)}
    metadata = {"z": "1", "y": "2"}
    save_safetensors(tmp_path / "same.safetensors", tensors, metadata)
    assert (tmp_path / "same.safetensors").read_bytes() == safetensors_bytes(tensors, metadata)
    real = io_module._deterministic_header
    monkeypatch.setattr(io_module, "_deterministic_header", lambda raw: real(raw) + b" " * 8)  # 8 bytes longer
    save_safetensors(tmp_path / "longer.safetensors", tensors, metadata)
    assert (tmp_path / "longer.safetensors").read_bytes() == safetensors_bytes(tensors, metadata)
    loaded = load_file(tmp_path / "longer.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_refuse_foreign_names_what_it_does_not_claim_and_accepts_what_it_does(tmp_path):
    folder = tmp_path / "out"
    refuse_foreign(folder, lambda name: False, "`u1lib x`")  # a missing folder holds nothing foreign
    folder.mkdir()
    for name in ("a.png", "b.png", "notes.txt", *(f"extra{k}" for k in range(6))):
        (folder / name).write_text("x")
    refuse_foreign(folder, lambda name: True, "`u1lib x`")
    with pytest.raises(ForeignFilesError) as err:
        refuse_foreign(folder, lambda name: name.endswith(".png"), "`u1lib x`")
    assert "holds files `u1lib x` did not write (extra0, extra1, extra2, extra3, extra4 and 2 more)" in str(err.value)
    with pytest.raises(ForeignFilesError, match="is a file"):
        refuse_foreign(folder / "a.png", lambda name: True, "`u1lib x`")


def test_refuse_foreign_passes_empty_folders_but_not_a_file_deep_inside_one(tmp_path):
    """Snakemake makes the folders of a job's outputs before it starts; they hold nothing to lose."""
    folder = tmp_path / "run"
    (folder / "previews" / "step-1").mkdir(parents=True)
    refuse_foreign(folder, lambda name: False, "`u1lib x`")
    (folder / "previews" / "step-1" / "mine.png").write_text("x")
    with pytest.raises(ForeignFilesError, match=r"\(previews/step-1/mine.png\)"):
        refuse_foreign(folder, lambda name: False, "`u1lib x`")


def test_refuse_foreign_asks_about_every_file_below_by_its_relative_path_and_follows_no_link(tmp_path):
    folder, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (folder / "a" / "b").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "inside.png").write_text("x")
    (folder / "top.png").write_text("x")
    (folder / "a" / "b" / "deep_seed1.png").write_text("x")
    (folder / "link").symlink_to(elsewhere)
    asked = []
    refuse_foreign(folder, lambda name: asked.append(name) or True, "`u1lib x`")
    assert sorted(asked) == ["a/b/deep_seed1.png", "link", "top.png"]
