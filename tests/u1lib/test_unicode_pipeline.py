"""Non-ASCII file names through the public verbs: pack -> cache -> train (-> sample) on the tiny model.

A name such as ``café.png`` used to pack and cache, then break training: the cache's safetensors
header (keys ``{sample_id}.k``) was rewritten with escaped non-ASCII but its old declared length.
"""

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]
# accented Latin (NFC and NFD), CJK, emoji (a ZWJ sequence), Arabic, Hebrew, spaces, mixed
NAMES = [
    "caf\u00e9",
    unicodedata.normalize("NFD", "cr\u00e8me br\u00fbl\u00e9e"),
    "\u732b\u306e\u5199\u771f",
    "\U0001f408\u200d\u2b1b",
    "\u0635\u0648\u0631\u0629 \u0642\u0637",
    "\u05ea\u05de\u05d5\u05e0\u05d4",
    "two words",
    "Mix\u00e9 \u732b \U0001f600 \u05d0",
]

pytestmark = pytest.mark.integration


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def u1lib(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "u1lib", *args], cwd=cwd, capture_output=True, text=True, encoding="utf-8", check=False
    )
    assert result.returncode == 0, f"u1lib {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder of Unicode-named photos (images NFD where the name has accents, captions NFC), packed,
    cached and trained for 3 steps through the CLI."""
    root = tmp_path_factory.mktemp("unicode")
    photos = root / "photos"
    photos.mkdir()
    for i, name in enumerate(NAMES):
        image = Image.new("RGB", (64 + 8 * (i % 2), 64), (30 * i, 120, 220 - 25 * i))
        image.paste((250, 250, 250), (0, 0, 16 + 4 * i, 16))
        image.save(photos / f"{unicodedata.normalize('NFD', name)}.png")
        (photos / f"{nfc(name)}.txt").write_text(f"a photo of {nfc(name)}", encoding="utf-8")
    (root / "train.yaml").write_text(
        "train: {steps: 3, batch_size: 2, lora: attn=r2a2, val_every: 2, ckpt_every: 2, log_every: 1, device: cpu}\n",
        encoding="utf-8",
    )
    u1lib("snapshot", "--model", "tiny", "--source", "tiny", "--out", "snap", "--manifest", "m.json", cwd=root)
    u1lib(
        "pack",
        "photos",
        "--out-dir",
        "data",
        "--buckets",
        "area:4096",
        "--token-size",
        "8",
        "--val-count",
        "2",
        cwd=root,
    )
    u1lib(
        "cache",
        "--snapshot",
        "snap",
        "--manifest",
        "m.json",
        "--data",
        "data/train.parquet",
        "data/val.parquet",
        "--out",
        "cache",
        cwd=root,
    )
    log = u1lib(
        "train",
        "train.yaml",
        "--snapshot",
        "snap",
        "--manifest",
        "m.json",
        "--train-data",
        "data/train.parquet",
        "--val-data",
        "data/val.parquet",
        "--cache",
        "cache",
        "--run-dir",
        "runs/a",
        cwd=root,
    )
    return root, log


def test_every_unicode_name_is_packed_once_under_its_nfc_id(trained):
    root, _ = trained
    ids = [
        row
        for split in ("train", "val")
        for row in pq.read_table(root / "data" / f"{split}.parquet").column("sample_id").to_pylist()
    ]
    assert sorted(ids) == sorted(nfc(name) for name in NAMES)
    stats = json.loads((root / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["skipped"] == [] and stats["counts"]["val"] == 2


def test_the_cache_holds_every_id_under_readable_keys(trained):
    root, _ = trained
    manifest = pq.read_table(root / "cache" / "manifest.parquet").to_pylist()
    assert {row["sample_id"] for row in manifest} >= {nfc(name) for name in NAMES}
    for row in manifest:
        with safe_open(root / "cache" / row["shard"], framework="pt") as shard:
            assert shard.get_tensor(f"{row['sample_id']}.k").shape[2] == row["length"]


def test_training_finishes_and_writes_its_logs_and_adapter(trained):
    root, log = trained
    run = root / "runs" / "a"
    assert "3 steps" in log
    train_log = [json.loads(line) for line in (run / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    val_log = [json.loads(line) for line in (run / "val_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [record["step"] for record in train_log] == [1, 2, 3] and val_log
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    with safe_open(run / "adapter.safetensors", framework="pt") as adapter:
        assert any(key.endswith(".lora_up.weight") for key in adapter.keys())  # noqa: SIM118 -- safe_open is not a mapping


def test_sampling_the_adapter_with_unicode_prompt_ids(trained):
    root, _ = trained
    ids = ["caf\u00e9", "\u732b", "\u05ea\u05de\u05d5\u05e0\u05d4"]
    (root / "prompts.yaml").write_text("".join(f"{i}: a photo of {i}\n" for i in ids), encoding="utf-8")
    u1lib(
        "sample",
        "--snapshot",
        "snap",
        "--prompts",
        "prompts.yaml",
        "--out",
        "samples",
        "--steps",
        "2",
        "--size",
        "32",
        "32",
        "--adapter",
        "a=runs/a/adapter.safetensors",
        cwd=root,
    )
    index = json.loads((root / "samples" / "a" / "index.json").read_text(encoding="utf-8"))
    assert sorted(image["prompt_id"] for image in index["images"]) == sorted(ids)
    for image in index["images"]:
        assert (root / "samples" / "a" / image["file"]).is_file()
