"""Snapshots we record rather than download: the tiny build and a user's folder, and the manifest
writer every source ends in (``u1lib.snapshot_hub`` downloads; ``u1lib.snapshot_sources`` picks)."""

from __future__ import annotations

from pathlib import Path

from u1lib.io import read_json, write_json
from u1lib.model.config import ConfigError, U1Config
from u1lib.snapshot import (
    SnapshotError,
    digest_files,
    listed_files,
    location,
    manifest_hash,
    stamped_files,
    write_stamp,
)

_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"


def write_manifest(
    folder: str | Path,
    manifest_path: str | Path,
    *,
    model: str,
    source: str,
    repo_id: str | None,
    revision: str | None,
    read_only: bool = False,
) -> dict:
    """Hash every file of the snapshot and write the manifest downstream stages key on, and its stamp.

    ``read_only`` marks a folder that is not ours (a user's, the Hugging Face cache): nothing writes to it.
    """
    folder, manifest_path = Path(folder), Path(manifest_path)
    trusted = stamped_files(manifest_path, folder)
    rels, stats, files = listed_files(folder), {}, []
    for rel, (sha, stat) in zip(rels, digest_files(folder, rels, trusted)):
        stats[rel] = stat
        files.append({"path": rel, "size": stat[0], "sha256": sha})
    if not files:
        raise SnapshotError(f"{folder}: no files to put in a manifest (did the download or build fail?)")
    manifest = {
        "model": model,
        "source": source,
        "repo_id": repo_id,
        "revision": revision,
        "snapshot_dir": location(folder, manifest_path.parent),
        "read_only": read_only,
        "files": files,
        "manifest_hash": manifest_hash(files),
    }
    write_if_changed(manifest_path, manifest)
    write_stamp(manifest_path, manifest, folder, stats)
    return manifest


def write_if_changed(path: Path, manifest: dict) -> None:
    """Write the manifest unless the file already says exactly that: its mtime is what Snakemake compares."""
    try:
        if read_json(path) == manifest:
            return
    except (OSError, ValueError):
        pass
    write_json(path, manifest)


def check_complete(folder: Path, what: str) -> None:
    """A SenseNova-U1 config.json and every weight file it needs, or SnapshotError saying what is missing."""
    try:
        U1Config.from_file(folder)
    except ConfigError as err:
        raise SnapshotError(f"{what} is not a SenseNova-U1 snapshot: {err}") from None
    index = folder / _WEIGHTS_INDEX
    if index.is_file():
        listing = read_json(index)
        weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise SnapshotError(f"{index}: no 'weight_map'; the download is damaged, fetch it again")
        missing = sorted({name for name in weight_map.values() if not (folder / name).is_file()})
        if missing:
            raise SnapshotError(f"{what} is incomplete: {index} names missing weight files: {', '.join(missing)}")
    elif not (folder / _WEIGHTS).is_file():
        raise SnapshotError(f"{what} has no weights: neither {_WEIGHTS} nor {_WEIGHTS_INDEX} in {folder}")


def snapshot_tiny(
    folder: str | Path,
    manifest_path: str | Path,
    *,
    seed: int,
    model: str = "tiny",
    variant: str = "u1",
    weights: str = "auto",
) -> dict:
    """Build the embedded tiny model (cheap and deterministic, so always rebuilt) and write its manifest.

    ``variant`` is the architecture (u1, u15, a3b: ``u1lib.tiny_config.VARIANTS``) and ``weights`` one of
    ``u1lib.tiny.WEIGHTS``. The manifest's revision names the model built: ``tiny-seed-3`` (random
    weights from seed 3), ``tiny-u15-seed-0``, and ``tiny-seed-0-pretrained`` for the packaged
    pretrained weights (what the report's banner reads).
    """
    from u1lib.tiny import build_tiny_snapshot, resolve_weights  # imports torch; the hub path does not

    kind = resolve_weights(weights, variant, seed)
    build_tiny_snapshot(folder, seed=seed, variant=variant, weights=kind)
    revision = f"tiny-seed-{seed}" if variant == "u1" else f"tiny-{variant}-seed-{seed}"
    revision += "-pretrained" if kind == "pretrained" else ""
    return write_manifest(folder, manifest_path, model=model, source="tiny", repo_id=None, revision=revision)


def snapshot_local(folder: str | Path, manifest_path: str | Path, *, model: str) -> dict:
    """Verify a model folder of the user's in place and write its manifest; the folder is never written to.

    Files whose size and mtime match the stamp of this folder's last check keep their sha256 from
    then; the others are hashed (once for a new folder: minutes for 35 GB).
    """
    folder, manifest_path = Path(folder), Path(manifest_path)
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise SnapshotError(
            f"model source {folder}: {what}; give a folder holding a downloaded model (config.json and its "
            "weights, e.g. from `hf download`), or tiny, or hub"
        )
    if manifest_path.resolve().is_relative_to(folder.resolve()):
        raise SnapshotError(
            f"{manifest_path} is inside the model folder {folder}, which is only read; write the manifest elsewhere"
        )
    check_complete(folder, f"model folder {folder}")
    return write_manifest(
        folder, manifest_path, model=model, source="local", repo_id=None, revision=None, read_only=True
    )
