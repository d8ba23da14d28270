"""The demo dataset: colour photographs bundled with scikit-image, captioned by this project.

``config/demo_captions.yaml`` maps a file name inside ``skimage/data`` to its caption;
:func:`write_demo_folder` turns it into the folder format ``pack`` reads (image bytes copied
unchanged, ``<id>.txt`` beside each). Only files shipped in the wheel are used, never pooch
downloads, so it works offline.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import yaml

from u1lib.data.sources import CAPTION_SUFFIX, IMAGE_SUFFIXES
from u1lib.io import refuse_foreign, write_bytes, write_text


def skimage_data_dir() -> Path:
    """The ``data`` folder of the installed scikit-image, found without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the demo dataset needs scikit-image: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_demo_captions(captions_yaml: str | os.PathLike) -> dict[str, str]:
    """File name -> caption, checked: image suffixes only, non-empty single-line captions."""
    captions_yaml = Path(captions_yaml)
    try:
        data = yaml.safe_load(captions_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{captions_yaml}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{captions_yaml}: expected a mapping of image file name -> caption")
    problems = []
    for name, caption in data.items():
        if not isinstance(name, str) or Path(name).suffix.lower() not in IMAGE_SUFFIXES or Path(name).name != name:
            problems.append(f"key {name!r} is not a plain file name ending in {', '.join(IMAGE_SUFFIXES)}")
        if not isinstance(caption, str) or not caption.strip():
            problems.append(f"{name!r}: caption must be a non-empty string")
    if problems:
        raise ValueError(f"{captions_yaml}: " + "; ".join(problems))
    return data


def write_demo_folder(captions_yaml: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Write ``<id>.<ext>`` + ``<id>.txt`` for every demo photo into ``out_dir``; return the ids.

    ``out_dir`` may only hold files of this demo set: a stale file (e.g. from an entry since removed)
    would otherwise be packed silently.
    """
    captions = load_demo_captions(captions_yaml)
    data_dir = skimage_data_dir()
    missing = [name for name in captions if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{captions_yaml}: not bundled with the installed scikit-image ({data_dir}): {', '.join(missing)}"
        )
    out_dir = Path(out_dir)
    expected = {name for name in captions} | {Path(name).stem + CAPTION_SUFFIX for name in captions}
    refuse_foreign(out_dir, expected.__contains__, "`u1lib demo`")
    for name, caption in captions.items():
        write_bytes(out_dir / name, (data_dir / name).read_bytes())
        write_text(out_dir / (Path(name).stem + CAPTION_SUFFIX), " ".join(caption.split()) + "\n")
    return sorted(Path(name).stem for name in captions)


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Write the demo photos + captions as a folder."
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write <id>.<ext> + <id>.txt into")
    default = Path(__file__).resolve().parents[2] / "config" / "demo_captions.yaml"
    parser.add_argument("--captions", type=Path, default=default, help="YAML of file name -> caption")
    args = parser.parse_args(argv)
    try:
        ids = write_demo_folder(args.captions, args.out)
    except (OSError, ValueError) as err:
        print(f"{verb}: {err}", file=sys.stderr)
        return 1
    print(f"{len(ids)} demo photos -> {args.out}")
    return 0
