from pathlib import Path

import pytest
from PIL import Image

from u1lib.data import demo
from u1lib.data.buckets import BucketSpec
from u1lib.data.demo import load_demo_captions, skimage_data_dir, write_demo_folder
from u1lib.data.pack import pack
from u1lib.io import ForeignFilesError

CAPTIONS = Path(__file__).resolve().parents[3] / "config" / "demo_captions.yaml"


def test_shipped_captions_name_bundled_colour_photos():
    captions = load_demo_captions(CAPTIONS)
    assert 8 <= len(captions) <= 10
    for name, caption in captions.items():
        with Image.open(skimage_data_dir() / name) as image:
            assert image.mode == "RGB", name
        assert len(caption.split()) >= 8, name


def test_demo_folder_packs_without_a_skipped_item(tmp_path):
    ids = write_demo_folder(CAPTIONS, tmp_path / "demo")
    captions = load_demo_captions(CAPTIONS)
    assert ids == sorted(Path(name).stem for name in captions)
    for name, caption in captions.items():
        assert (tmp_path / "demo" / name).read_bytes() == (skimage_data_dir() / name).read_bytes()
        written = (tmp_path / "demo" / f"{Path(name).stem}.txt").read_text(encoding="utf-8")
        assert written == " ".join(caption.split()) + "\n"
    write_demo_folder(CAPTIONS, tmp_path / "demo")  # rewriting the same set is fine
    stats = pack(tmp_path / "demo", tmp_path / "packed", buckets=BucketSpec("area", 64 * 64, 8), val_count=1)
    assert stats["counts"]["usable"] == len(captions) and stats["skipped"] == []


def test_stray_files_in_the_output_folder_are_refused(tmp_path):
    (tmp_path / "old.jpg").write_bytes(b"x")
    with pytest.raises(ForeignFilesError, match=r"holds files `u1lib demo` did not write \(old.jpg\)"):
        write_demo_folder(CAPTIONS, tmp_path)


def test_missing_scikit_image_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-image"):
        write_demo_folder(CAPTIONS, tmp_path / "demo")


@pytest.mark.parametrize(
    "text,message",
    [
        ("astronaut.gif: a caption\n", "not a plain file name"),
        ("../astronaut.png: a caption\n", "not a plain file name"),
        ("astronaut.png: ''\n", "non-empty string"),
        ("- astronaut.png\n", "expected a mapping"),
        ("nothere.png: a caption that names a file scikit-image does not ship\n", "not bundled"),
    ],
)
def test_bad_caption_files(tmp_path, text, message):
    (tmp_path / "captions.yaml").write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        write_demo_folder(tmp_path / "captions.yaml", tmp_path / "demo")


def test_demo_verb_writes_the_folder(tmp_path):
    from u1lib.cli import main

    assert main(["demo", "--out", str(tmp_path / "photos")]) == 0
    assert len(list((tmp_path / "photos").glob("*.txt"))) == 8
