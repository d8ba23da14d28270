import hashlib
import io
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from u1lib.data.buckets import BucketSpec
from u1lib.data.inspect import cli as inspect_cli
from u1lib.data.inspect import inspect_data
from u1lib.data.pack import ROW_GROUP_SIZE, PackError, cli, pack, split_validation
from u1lib.data.schema import PACKED_SCHEMA
from u1lib.data.sources import SourceError, sample_id_problem

REPO = Path(__file__).resolve().parents[3]
SPEC = BucketSpec("area", 64 * 64, 8)  # buckets 64x64, 72x56, 56x72, ... up to 128x32


def image_bytes(size=(80, 60), colour=(200, 30, 30), fmt="JPEG") -> bytes:
    image = Image.new("RGB", size, colour)
    image.paste((20, 20, 220), (0, 0, size[0] // 2, size[1] // 3))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_folder(root: Path, count: int = 6) -> Path:
    """``count`` good items of several shapes and formats."""
    root.mkdir(parents=True, exist_ok=True)
    shapes = [(80, 60), (60, 80), (100, 100), (200, 50), (90, 50)]
    formats = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")]
    for i in range(count):
        suffix, fmt = formats[i % len(formats)]
        (root / f"item{i:02d}.{suffix}").write_bytes(image_bytes(shapes[i % len(shapes)], (10 * i, 100, 50), fmt))
        (root / f"item{i:02d}.txt").write_text(f"caption number {i}\n", encoding="utf-8")
    return root


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_pack_folder_writes_the_documented_schema(tmp_path):
    src = make_folder(tmp_path / "src")
    (src / "item00.txt").write_text("a cat\n---think---\nwhy a cat\n", encoding="utf-8")
    stats = pack(src, tmp_path / "out", buckets=SPEC, val_count=2)
    for name in ("train.parquet", "val.parquet"):
        assert pq.read_schema(tmp_path / "out" / name).equals(PACKED_SCHEMA)
    rows = read_rows(tmp_path / "out" / "train.parquet") + read_rows(tmp_path / "out" / "val.parquet")
    assert sorted(r["sample_id"] for r in rows) == [f"item{i:02d}" for i in range(6)]
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]))
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (row["width"], row["height"]) and row["bucket"] == f"{row['width']}x{row['height']}"
        source = next(src.glob(row["sample_id"] + ".*[!t]"))
        assert row["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    by_id = {r["sample_id"]: r for r in rows}
    assert (by_id["item00"]["caption"], by_id["item00"]["think"]) == ("a cat", "why a cat")
    assert (by_id["item01"]["caption"], by_id["item01"]["think"]) == ("caption number 1", None)
    assert by_id["item02"]["bucket"] == "64x64" and by_id["item03"]["bucket"] == "128x32"
    assert stats["counts"] == {"usable": 6, "train": 4, "val": 2, "skipped": 0}
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    train_ids = [r["sample_id"] for r in read_rows(tmp_path / "out" / "train.parquet")]
    assert train_ids == sorted(train_ids)


def test_repacking_gives_byte_identical_parquet(tmp_path):
    src = make_folder(tmp_path / "src")
    pack(src, tmp_path / "a", buckets=SPEC, val_count=1)
    copy = make_folder(tmp_path / "copy")  # same content, other folder, files written again
    pack(copy, tmp_path / "b", buckets=SPEC, val_count=1)
    for name in ("train.parquet", "val.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rows_go_in_small_row_groups(tmp_path):
    pack(make_folder(tmp_path / "src", count=ROW_GROUP_SIZE + 4), tmp_path / "out", buckets=SPEC)
    metadata = pq.ParquetFile(tmp_path / "out" / "train.parquet").metadata
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [ROW_GROUP_SIZE, 4]


def test_validation_split_is_seeded_and_independent_of_order():
    ids = [f"id{i}" for i in range(50)]
    chosen = split_validation(ids, 5, split_seed=3)
    assert len(chosen) == 5
    assert split_validation(list(reversed(ids)), 5, split_seed=3) == chosen
    assert split_validation(ids, 5, split_seed=4) != chosen
    # an item added or removed elsewhere moves nothing else: val is a prefix of one fixed order
    assert split_validation(ids, 6, split_seed=3) > chosen


def parquet_source(path: Path, records: list[dict], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def source_records(count: int = 6) -> list[dict]:
    return [
        {
            "sample_id": f"p{i}",
            "caption": f"photo {i}",
            "think": "because" if i == 0 else None,
            "image": image_bytes((80 + 10 * i, 60), (30 * i, 10, 10), "PNG"),
        }
        for i in range(count)
    ]


def test_parquet_source_output_does_not_depend_on_row_order(tmp_path):
    records = source_records()
    pack(parquet_source(tmp_path / "a.parquet", records), tmp_path / "a", buckets=SPEC, val_count=2)
    pack(parquet_source(tmp_path / "b.parquet", records[::-1]), tmp_path / "b", buckets=SPEC, val_count=2)
    for name in ("train.parquet", "val.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = read_rows(tmp_path / "a" / "train.parquet") + read_rows(tmp_path / "a" / "val.parquet")
    assert {r["sample_id"]: r["think"] for r in rows}["p0"] == "because"


def test_parquet_source_duplicates_are_all_skipped(tmp_path):
    records = source_records(4)
    records[3]["sample_id"] = "p1"
    stats = pack(parquet_source(tmp_path / "s.parquet", records), tmp_path / "out", buckets=SPEC)
    assert [r["sample_id"] for r in read_rows(tmp_path / "out" / "train.parquet")] == ["p0", "p2"]
    assert [(s["file"], s["reason"]) for s in stats["skipped"]] == [
        ("s.parquet row 1", "duplicate id"),
        ("s.parquet row 3", "duplicate id"),
    ]


def test_parquet_source_with_wrong_schema_names_the_columns(tmp_path):
    path = parquet_source(tmp_path / "bad.parquet", [{"sample_id": "x", "caption": 5, "picture": b"..."}])
    with pytest.raises(SourceError) as caught:
        pack(path, tmp_path / "out", buckets=SPEC)
    message = str(caught.value)
    assert "missing column 'image'" in message and "column 'caption' has type int64, expected string" in message
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        pack(tmp_path / "x.parquet", tmp_path / "out", buckets=SPEC)


def add_bad_items(src: Path) -> dict[str, str]:
    """Write one instance of every folder problem; return file -> expected reason."""
    (src / "nocap.jpg").write_bytes(image_bytes())
    (src / "emptycap.jpg").write_bytes(image_bytes())
    (src / "emptycap.txt").write_text("  \n\n", encoding="utf-8")
    (src / "latin1.jpg").write_bytes(image_bytes())
    (src / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    for suffix, fmt in (("jpg", "JPEG"), ("png", "PNG")):
        (src / f"dup.{suffix}").write_bytes(image_bytes(fmt=fmt))
    (src / "dup.txt").write_text("duplicate", encoding="utf-8")
    noisy = io.BytesIO()
    Image.effect_noise((120, 90), 60).convert("RGB").save(noisy, format="JPEG")
    (src / "broken.jpg").write_bytes(noisy.getvalue()[: len(noisy.getvalue()) // 2])
    (src / "broken.txt").write_text("broken", encoding="utf-8")
    (src / "zero.png").write_bytes(b"")
    (src / "zero.txt").write_text("zero", encoding="utf-8")
    (src / "tiny.png").write_bytes(image_bytes((10, 10), fmt="PNG"))
    (src / "tiny.txt").write_text("tiny", encoding="utf-8")
    (src / "orphan.txt").write_text("no image", encoding="utf-8")
    (src / "inject.png").write_bytes(image_bytes(fmt="PNG"))
    (src / "inject.txt").write_text("a cat<|im_end|>", encoding="utf-8")
    (src / "__uncond__.png").write_bytes(image_bytes(fmt="PNG"))
    (src / "__uncond__.txt").write_text("reserved", encoding="utf-8")
    return {
        "nocap.jpg": "missing caption",
        "emptycap.jpg": "empty caption",
        "latin1.jpg": "caption is not UTF-8",
        "dup.jpg": "duplicate id",
        "dup.png": "duplicate id",
        "broken.jpg": "truncated or corrupt image",
        "zero.png": "empty file",
        "tiny.png": "too small",
        "orphan.txt": "caption without image",
        "inject.png": "template token in caption",
        "__uncond__.png": "reserved sample_id",
    }


def test_bad_items_are_skipped_with_reasons(tmp_path, capsys):
    src = make_folder(tmp_path / "src", count=3)
    expected = add_bad_items(src)
    (src / "notes.md").write_text("not data")
    stats = pack(src, tmp_path / "out", buckets=SPEC)
    assert {s["file"]: s["reason"] for s in stats["skipped"]} == expected
    assert stats["counts"]["usable"] == 3 and stats["ignored_files"] == ["notes.md"]
    latin1 = next(s for s in stats["skipped"] if s["file"] == "latin1.jpg")
    assert "0xe9" in latin1["detail"]
    dup = next(s for s in stats["skipped"] if s["file"] == "dup.png")
    assert "dup.jpg, dup.png" in dup["detail"]
    printed = capsys.readouterr().out
    assert f"skipped {len(expected)} item(s):" in printed
    assert "    2  duplicate id" in printed and "    1  too small" in printed
    assert stats["skipped_by_reason"]["duplicate id"] == 2


def test_strict_mode_lists_every_bad_item_and_writes_nothing(tmp_path):
    src = make_folder(tmp_path / "src", count=3)
    expected = add_bad_items(src)
    with pytest.raises(PackError) as caught:
        pack(src, tmp_path / "out", buckets=SPEC, strict=True)
    for file, reason in expected.items():
        assert f"{file}: {reason}" in str(caught.value)
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_no_usable_item_is_an_error_that_lists_the_items(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"not an image")
    (src / "a.txt").write_text("a")
    (src / "b.png").write_bytes(image_bytes(fmt="PNG"))
    with pytest.raises(PackError) as caught:
        pack(src, tmp_path / "out", buckets=SPEC)
    message = str(caught.value)
    assert f"no usable items in folder {src}: all 2 item(s) were skipped" in message
    assert "a.jpg: not a recognised image" in message and "b.png: missing caption (expected b.txt)" in message
    assert os.listdir(tmp_path / "out") == []


def write_empty_source(kind: str, root: Path) -> tuple[Path, list[str]]:
    """A source with nothing to pack; returns it and what its error must say besides the path."""
    if kind == "empty parquet":
        path = root / "empty.parquet"
        pq.write_table(pa.Table.from_pylist([], schema=PACKED_SCHEMA), path)
        return path, ["has no rows"]
    src = root / "src"
    src.mkdir()
    if kind == "empty folder":
        (src / ".DS_Store").write_bytes(b"x")
        return src, ["nothing but hidden files"]
    if kind == "captions only":
        for stem in ("a", "b"):
            (src / f"{stem}.txt").write_text("caption")
        return src, ["2 caption file(s)"]
    if kind == "other image types":
        for name in ("a.gif", "b.tiff", "c.heic"):
            (src / name).write_bytes(image_bytes(fmt="GIF"))
        return src, ["3 other file(s): a.gif, b.tiff, c.heic"]
    (src / "photos").mkdir()  # images one level down
    make_folder(src / "photos", count=2)
    return src, ["1 sub-folder(s), which are not searched"]


EMPTY_SOURCES = ["empty folder", "captions only", "other image types", "nested folder", "empty parquet"]


@pytest.mark.parametrize("kind", EMPTY_SOURCES)
def test_a_source_with_nothing_to_pack_names_its_path_and_writes_nothing(tmp_path, kind):
    src, needles = write_empty_source(kind, tmp_path)
    with pytest.raises(SourceError) as caught:
        pack(src, tmp_path / "out", buckets=SPEC)
    message = str(caught.value)
    assert message.startswith(f"{src}: no usable items") and all(needle in message for needle in needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", EMPTY_SOURCES)
def test_cli_pack_of_an_empty_source_fails_without_output(tmp_path, capsys, kind):
    src, _ = write_empty_source(kind, tmp_path)
    options = ["--buckets", "area:4096", "--token-size", "8"]
    assert cli("pack", [str(src), "--out-dir", str(tmp_path / "out"), *options]) == 1
    assert cli("pack", [str(src), "--out", str(tmp_path / "one" / "all.parquet"), *options]) == 1
    err = capsys.readouterr().err
    assert err.count(f"pack: {src}: no usable items") == 2
    assert not (tmp_path / "out").exists() and list((tmp_path / "one").iterdir()) == []


def test_val_count_must_leave_training_items(tmp_path):
    src = make_folder(tmp_path / "src", count=3)
    with pytest.raises(PackError, match="val_count 3 leaves no training items: only 3 usable"):
        pack(src, tmp_path / "out", buckets=SPEC, val_count=3)


def test_empty_validation_file_is_valid(tmp_path):
    pack(make_folder(tmp_path / "src", count=2), tmp_path / "out", buckets=SPEC, val_count=0)
    table = pq.read_table(tmp_path / "out" / "val.parquet")
    assert table.num_rows == 0 and table.schema.equals(PACKED_SCHEMA)


def test_large_images_are_downscaled_and_small_ones_upscaled_and_flagged(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.jpg").write_bytes(image_bytes((2400, 1800)))
    (src / "small.png").write_bytes(image_bytes((40, 40), fmt="PNG"))
    for stem in ("big", "small"):
        (src / f"{stem}.txt").write_text(stem)
    stats = pack(src, tmp_path / "out", buckets=SPEC)
    rows = read_rows(tmp_path / "out" / "train.parquet")
    sizes = {r["sample_id"]: Image.open(io.BytesIO(r["image"])).size for r in rows}
    assert sizes == {"big": (72, 56), "small": (64, 64)}
    assert stats["resize"]["upscaled"] == ["small"] and stats["resize"]["downscaled_count"] == 1


def test_cli_pack_and_inspect(tmp_path, capsys):
    src = make_folder(tmp_path / "src", count=4)
    code = cli(
        "pack",
        [
            str(src),
            "--out-dir",
            str(tmp_path / "out"),
            "--buckets",
            "area:4096",
            "--token-size",
            "8",
            "--val-count",
            "1",
            "--split-seed",
            "7",
        ],
    )
    assert code == 0
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["split"]["split_seed"] == 7
    capsys.readouterr()
    assert inspect_cli("inspect-data", [str(tmp_path / "out" / "train.parquet")]) == 0
    printed = capsys.readouterr().out
    assert "3 rows" in printed and "bucket" in printed and "caption chars" in printed and "schema: ok" in printed


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert cli("pack", [str(tmp_path / "absent"), "--out-dir", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'absent'}: no such folder" in capsys.readouterr().err
    (tmp_path / "photo.jpg").write_bytes(image_bytes())
    assert cli("pack", [str(tmp_path / "photo.jpg"), "--out-dir", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'photo.jpg'}: a file, not a folder" in capsys.readouterr().err
    assert cli("pack", [str(tmp_path), "--out-dir", str(tmp_path / "o"), "--buckets", "round"]) == 1
    assert "kind 'round'" in capsys.readouterr().err


def test_inspect_flags_a_wrong_schema(tmp_path, capsys):
    path = parquet_source(tmp_path / "odd.parquet", [{"sample_id": "b", "caption": "x", "width": 3}])
    summary = inspect_data(path)
    assert "missing column 'image' (binary)" in summary["problems"]
    assert "column 'width' has type int64, expected int32" in summary["problems"]
    assert inspect_cli("inspect-data", [str(path)]) == 1
    assert "PROBLEM" in capsys.readouterr().out


def test_pack_verb_does_not_import_torch(tmp_path):
    src = make_folder(tmp_path / "src", count=2)
    script = (
        "import sys; from u1lib.cli import main; "
        f"code = main(['pack', {str(src)!r}, '--out-dir', {str(tmp_path / 'out')!r}, '--buckets', 'area:4096', "
        "'--token-size', '8']); sys.exit(code or ('torch' in sys.modules) * 3)"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_pack_to_one_file(tmp_path):
    src = make_folder(tmp_path / "src", count=3)
    assert (
        cli("pack", [str(src), "--out", str(tmp_path / "all.parquet"), "--buckets", "area:4096", "--token-size", "8"])
        == 0
    )
    assert pq.read_table(tmp_path / "all.parquet").num_rows == 3
    assert json.loads((tmp_path / "all.stats.json").read_text())["counts"]["usable"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.parquet", "all.stats.json", "src"]  # no scratch left


# accented Latin, CJK, emoji (ZWJ sequence, variation selector), RTL, spaces, mixed
UNICODE_NAMES = [
    "caf\u00e9",
    "\u00f1and\u00fa cr\u00e8me",
    "\u732b\u306e\u5199\u771f",
    "\U0001f408\u200d\u2b1b",
    "\u2764\ufe0f fire",
    "\u0635\u0648\u0631\u0629",
    "\u05ea\u05de\u05d5\u05e0\u05d4 1",
    "two  words",
    "Mix\u00e9 \u732b \U0001f600 \u05d0",
    "\u1e9b\u0323 dot",
]


def nfd(name: str) -> str:
    return unicodedata.normalize("NFD", name)


@pytest.mark.parametrize(
    "image_form, caption_form", [(nfd, str), (str, nfd), (nfd, nfd)], ids=["nfd-image", "nfd-caption", "both-nfd"]
)
def test_unicode_names_pair_across_normalisations_and_ids_are_nfc(tmp_path, image_form, caption_form):
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(UNICODE_NAMES):
        (src / f"{image_form(name)}.png").write_bytes(image_bytes((64, 64), (20 * i, 90, 9), "PNG"))
        (src / f"{caption_form(name)}.txt").write_text(f"caption of {name}", encoding="utf-8")
    assert any(nfd(name) != name for name in UNICODE_NAMES)  # the family exercises normalisation
    stats = pack(src, tmp_path / "out", buckets=SPEC, val_count=2)
    assert stats["skipped"] == [] and stats["counts"]["usable"] == len(UNICODE_NAMES)
    rows = read_rows(tmp_path / "out" / "train.parquet") + read_rows(tmp_path / "out" / "val.parquet")
    expected = {unicodedata.normalize("NFC", name) for name in UNICODE_NAMES}
    assert expected == set(UNICODE_NAMES) and {row["sample_id"] for row in rows} == expected
    assert all(row["caption"] == f"caption of {row['sample_id']}" for row in rows)  # each image got its own caption
    assert set(stats["split"]["val_ids"]) <= expected
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8")) == stats


def test_names_that_differ_only_in_normalisation_are_one_id(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("caf\u00e9", nfd("caf\u00e9")):
        (src / f"{name}.png").write_bytes(image_bytes(fmt="PNG"))
    (src / "caf\u00e9.txt").write_text("a cup", encoding="utf-8")
    make_folder(src, count=1)
    stats = pack(src, tmp_path / "out", buckets=SPEC)
    dups = [s for s in stats["skipped"] if s["reason"] == "duplicate id"]
    assert sorted(s["file"] for s in dups) == sorted(["caf\u00e9.png", nfd("caf\u00e9") + ".png"])
    assert all("differ only in Unicode normalisation" in s["detail"] for s in dups)


def test_parquet_ids_are_normalised_to_nfc_before_duplicates_are_counted(tmp_path):
    records = source_records(4)
    records[0]["sample_id"] = nfd("\u00e9t\u00e9")
    records[1]["sample_id"] = nfd("\u0101b")
    records[2]["sample_id"] = "\u0101b"  # the same id as row 1 once normalised
    stats = pack(parquet_source(tmp_path / "s.parquet", records), tmp_path / "out", buckets=SPEC)
    assert [r["sample_id"] for r in read_rows(tmp_path / "out" / "train.parquet")] == ["p3", "\u00e9t\u00e9"]
    assert [(s["file"], s["reason"]) for s in stats["skipped"]] == [
        ("s.parquet row 1", "duplicate id"),
        ("s.parquet row 2", "duplicate id"),
    ]


@pytest.mark.parametrize(
    "sample_id", ["a\tb", "a\nb", "a\u2028b", "a\u2029b", "a\x7fb", "a\x00b", "a\udce9b", " a", "a/b", "a\\b"]
)
def test_ids_with_control_characters_or_separators_are_refused(sample_id):
    assert sample_id_problem(sample_id) == "invalid sample_id"


@pytest.mark.parametrize(
    "sample_id", [*UNICODE_NAMES, "\u200fRTL mark", "zero\u200bwidth", "\ue000 private", "inner\u00a0space"]
)
def test_ids_in_any_script_with_format_characters_are_accepted(sample_id):
    assert sample_id_problem(sample_id) is None


def test_file_names_that_are_not_utf8_are_skipped_and_reported_readably(tmp_path):
    src = make_folder(tmp_path / "src", count=2)
    for suffix in (b".png", b".txt"):
        with open(os.fsencode(src) + b"/caf\xe9" + suffix, "wb") as handle:  # a Latin-1 name, as old archives hold
            handle.write(image_bytes(fmt="PNG") if suffix == b".png" else b"caption")
    stats = pack(src, tmp_path / "out", buckets=SPEC)
    assert stats["counts"]["usable"] == 2
    assert sorted((s["file"], s["reason"]) for s in stats["skipped"]) == [
        ("caf\\xe9.png", "file name is not UTF-8"),
        ("caf\\xe9.txt", "file name is not UTF-8"),
    ]
    assert json.loads((tmp_path / "out" / "stats.json").read_bytes().decode("utf-8")) == stats
