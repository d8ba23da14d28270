"""A snapshot of a pinned Hub revision: downloaded once, re-fetched file by file where it fails its
manifest, or, with HF_HUB_OFFLINE set, found complete in the Hugging Face cache and verified there."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from u1lib.io import read_json
from u1lib.snapshot import (
    COMMIT_SHA,
    MODELING_CODE,
    SnapshotError,
    check_files,
    manifest_entries,
    read_stamp,
    same_folder,
    snapshot_dir,
    stamp_path,
    stamped_files,
    write_stamp,
)
from u1lib.snapshot_record import check_complete, write_if_changed, write_manifest

log = logging.getLogger(__name__)

Downloader = Callable[..., object]


def _previous(manifest_path: Path) -> dict | None:
    """The manifest last written here, or the stamp's copy when Snakemake deleted it before a rerun."""
    if manifest_path.is_file():
        record = read_json(manifest_path)
    else:
        stamp = read_stamp(manifest_path)
        if stamp is None:
            return None
        record = stamp["manifest"]
        log.info("%s missing; recognising the snapshot from %s", manifest_path, stamp_path(manifest_path))
    manifest_entries(record, str(manifest_path))
    return record


def _restore(manifest_path: Path, record: dict, folder: Path, stats: dict[str, list[int]]) -> dict:
    """Write ``record`` as the manifest (where it is missing or differs) and stamp the files just verified."""
    write_if_changed(manifest_path, record)
    write_stamp(manifest_path, record, folder, stats)
    return record


def _download_from_hub(repo_id: str, *, revision: str, local_dir: Path, allow_patterns, ignore_patterns) -> None:
    from huggingface_hub import snapshot_download  # network client: imported only when used

    snapshot_download(
        repo_id,
        revision=revision,
        local_dir=local_dir,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
    )


def _hub_offline() -> bool:
    """huggingface_hub's own reading of HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_hub_snapshot(repo_id: str, revision: str, allow_patterns) -> tuple[Path | None, str]:
    """repo_id@revision's folder in the Hugging Face cache (None if absent), and where that is."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    where = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / revision
    try:
        found = snapshot_download(
            repo_id,
            revision=revision,
            local_files_only=True,
            allow_patterns=allow_patterns,
            ignore_patterns=[MODELING_CODE],
        )
    except LocalEntryNotFoundError as err:
        return None, f"the Hugging Face cache, {where}: {str(err).splitlines()[0]}"
    return Path(found), f"the Hugging Face cache, {where}"


def _from_hf_cache(repo_id, revision, manifest_path, *, model, allow_patterns, looked: str) -> dict:
    """Offline: verify repo_id@revision in place in the Hugging Face cache (no copy), or say where we looked."""
    what = f"{repo_id}@{revision}"
    folder, where = _cached_hub_snapshot(repo_id, revision, allow_patterns)
    problem = None
    if folder is not None:
        try:
            check_complete(folder, f"{what} in {folder}")
        except SnapshotError as err:
            problem = str(err)
    if folder is None or problem:
        raise SnapshotError(
            f"{what}: HF_HUB_OFFLINE is set, so nothing is downloaded, and no complete local snapshot was found. "
            f"Looked in: {looked}; {problem or where}. To fix: download it where the Hub is reachable "
            f"(`hf download {repo_id} --revision {revision}`) and copy the Hugging Face cache here "
            "(HF_HOME / HF_HUB_CACHE name it), point model.source at a folder holding the model, "
            "or unset HF_HUB_OFFLINE."
        )
    log.info("%s: offline; verifying %s in place", what, folder)
    return write_manifest(
        folder, manifest_path, model=model, source="hub", repo_id=repo_id, revision=revision, read_only=True
    )


def snapshot_hub(
    repo_id: str,
    revision: str,
    local_dir: str | Path,
    manifest_path: str | Path,
    *,
    model: str | None = None,
    allow_patterns: list[str] | None = None,
    downloader: Downloader | None = None,
) -> dict:
    """Download ``repo_id`` at commit ``revision`` into ``local_dir`` and write its manifest.

    A snapshot the manifest describes (or the stamp, when Snakemake deleted the manifest to rerun
    the rule) is verified and never downloaded again; files that fail are deleted and fetched again.
    With HF_HUB_OFFLINE set nothing is fetched: a complete snapshot of repo_id@revision in the
    Hugging Face cache is verified in place instead. ``.py`` files are never downloaded (see
    ``install_modeling``). ``model`` defaults to the repo name.
    """
    if not COMMIT_SHA.match(revision):
        raise SnapshotError(
            f"revision {revision!r} is not a full 40-hex commit sha: a branch or tag can move, so the snapshot "
            "would not be reproducible. Pin the commit (see the repo's history on the Hub)."
        )
    own, manifest_path = Path(local_dir), Path(manifest_path)
    what, name = f"{repo_id}@{revision}", model or repo_id.split("/")[-1]
    record = _previous(manifest_path)
    entries = record["files"] if record is not None else []
    described = (record.get("source"), record.get("repo_id"), record.get("revision")) if record else None
    if record is not None and described != ("hub", repo_id, revision):
        log.info("%s describes %s; replacing it", manifest_path, " ".join(map(str, described)))
        if not record.get("read_only"):  # files of the old revision must not slip into the new manifest
            for entry in entries:
                (snapshot_dir(manifest_path, record) / entry["path"]).unlink(missing_ok=True)
        record, entries = None, []
    failed: dict[str, str] = {}
    looked = f"{own} (no snapshot of {what} recorded in {manifest_path} or {stamp_path(manifest_path)})"
    if record is not None:
        folder = snapshot_dir(manifest_path, record)
        failed, stats = check_files(folder, entries, stamped_files(manifest_path, folder))
        if not failed:
            log.info("%s: verified against %s; nothing to download", folder, manifest_path)
            return _restore(manifest_path, record, folder, stats)
        looked = f"{folder} (" + "; ".join(failed.values()) + ")"
        if record.get("read_only") or not same_folder(folder, own):
            log.warning("%s fails verification and is not ours to repair; starting over in %s", folder, own)
            record, entries, failed = None, [], {}
    if _hub_offline():
        return _from_hf_cache(
            repo_id, revision, manifest_path, model=name, allow_patterns=allow_patterns, looked=looked
        )
    for rel, problem in failed.items():
        log.warning("%s; fetching it again", problem)
        (own / rel).unlink(missing_ok=True)
    own.mkdir(parents=True, exist_ok=True)
    (downloader or _download_from_hub)(
        repo_id,
        revision=revision,
        local_dir=own,
        allow_patterns=allow_patterns,
        ignore_patterns=[MODELING_CODE],
    )
    check_complete(own, what)
    if record is None:
        return write_manifest(own, manifest_path, model=name, source="hub", repo_id=repo_id, revision=revision)
    still_failed, stats = check_files(own, entries, {})
    if still_failed:
        raise SnapshotError(
            f"{what}: files fetched again still differ from {manifest_path}: "
            + "; ".join(still_failed.values())
            + f". The manifest does not describe this revision; delete it and {stamp_path(manifest_path)} "
            "to start over."
        )
    return _restore(manifest_path, record, own, stats)
