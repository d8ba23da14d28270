"""Model snapshots: a manifest of every file's sha256, where the files are, and checks that they still match.

A stage downstream depends on the manifest, never on a folder. The manifest records where the snapshot
folder is (:func:`snapshot_dir`): our own build or download beside it, or a folder we only read (a
user's model folder, a snapshot in the Hugging Face cache), verified in place and never written to.

Beside the manifest, a stamp (``manifest.verified.json``) keeps a copy of the manifest and each file's
size, mtime and sha256 at its last full check. Snakemake deletes the manifest before rerunning the
snapshot rule; the stamp survives, so the rerun recognises the snapshot instead of fetching it again.
Stages that read the weights (:func:`require_verified`) re-hash only files whose size or mtime changed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from u1lib.io import read_json, sha256_file, write_json
from u1lib.model.config import ConfigError, U1Config

log = logging.getLogger(__name__)

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Modeling code is install_modeling's business (modeling.json), never the manifest's.
MODELING_CODE = "*.py"
_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"
# where tiny and hub snapshots are built or downloaded, beside the manifest
OWN_FOLDER = "snapshot"

Downloader = Callable[..., object]


class SnapshotError(ValueError):
    """A snapshot, manifest or pins file that fails a check; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# where a snapshot is


def default_snapshot_dir(manifest_path: str | Path) -> Path:
    """Where tiny and hub snapshots are built or downloaded: ``snapshot/`` beside the manifest."""
    return Path(manifest_path).with_name(OWN_FOLDER)


def snapshot_dir(manifest_path: str | Path, manifest: dict | None = None) -> Path:
    """The snapshot folder the manifest describes (every consumer asks here, none guesses).

    A relative location is relative to the manifest's folder, so moving a project moves its
    snapshot along; a manifest written before locations were recorded means ``snapshot/``.
    """
    manifest_path = Path(manifest_path)
    manifest = read_json(manifest_path) if manifest is None else manifest
    return manifest_path.parent / manifest.get("snapshot_dir", OWN_FOLDER)


def _location(folder: Path, base: Path) -> str:
    """How a manifest records ``folder``: relative to ``base`` (the manifest's folder) when inside it or
    given relative, so a moved or copied project keeps finding it; otherwise absolute, as given."""
    if folder.is_absolute() and not Path(os.path.abspath(folder)).is_relative_to(os.path.abspath(base)):
        return str(folder)
    return Path(os.path.relpath(folder, base)).as_posix()


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# ---------------------------------------------------------------------------------------------
# manifest


def _listed_files(folder: Path) -> list[str]:
    """Relative paths of the files a manifest covers, sorted.

    Skips hidden paths (huggingface_hub's ``.cache/``, temporary files of atomic writes) and
    ``.py`` files (modeling code, tracked by modeling.json).
    """
    paths = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or path.match(MODELING_CODE):
            continue
        if path.is_file():
            paths.append(rel.as_posix())
    return sorted(paths)


def folder_fingerprint(folder: str | Path) -> str:
    """Names, sizes and mtimes of the files a manifest of ``folder`` would list (stat only, no reads):
    what the workflow compares to notice that a model folder of the user's changed.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for rel in _listed_files(folder):
        stat = (folder / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _manifest_hash(files: list[dict]) -> str:
    lines = sorted(f"{entry['path']}\t{entry['sha256']}\n" for entry in files)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _digest(path: Path, trusted: tuple[list[int], str] | None) -> tuple[str, list[int]]:
    """sha256 of ``path`` and the [size, mtime_ns] it had while hashed.

    A file whose size and mtime equal ``trusted``'s is not read: its sha256 from then is returned.
    """
    before = _stat(path)
    if trusted is not None and trusted[0] == before:
        return trusted[1], before
    actual = sha256_file(path)
    if _stat(path) != before:
        raise SnapshotError(
            f"{path}: changed while being hashed (is a download still writing it?); run again when it is done"
        )
    return actual, before


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
    trusted = _trusted(manifest_path, folder)
    files, stats = [], {}
    for rel in _listed_files(folder):
        sha, stats[rel] = _digest(folder / rel, trusted.get(rel))
        files.append({"path": rel, "size": stats[rel][0], "sha256": sha})
    if not files:
        raise SnapshotError(f"{folder}: no files to put in a manifest (did the download or build fail?)")
    manifest = {
        "model": model,
        "source": source,
        "repo_id": repo_id,
        "revision": revision,
        "snapshot_dir": _location(folder, manifest_path.parent),
        "read_only": read_only,
        "files": files,
        "manifest_hash": _manifest_hash(files),
    }
    _write_if_changed(manifest_path, manifest)
    _write_stamp(manifest_path, manifest, folder, stats)
    return manifest


def _write_if_changed(path: Path, manifest: dict) -> None:
    """Write the manifest unless the file already says exactly that: its mtime is what Snakemake compares."""
    try:
        if read_json(path) == manifest:
            return
    except (OSError, ValueError):
        pass
    write_json(path, manifest)


def _manifest_entries(manifest: dict, where: str) -> list[dict]:
    """The manifest's file entries, checked for shape and for paths that stay inside the snapshot."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not files:
        raise SnapshotError(f"{where}: no 'files' list; rebuild the manifest with `python -m u1lib snapshot`")
    problems = []
    for i, entry in enumerate(files):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            problems.append(f"files[{i}] must be {{path: str, size: int, sha256: str}}, got {entry!r}")
        elif Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
            problems.append(f"files[{i}].path {entry['path']!r} leaves the snapshot folder")
    if problems:
        raise SnapshotError(f"{where}: " + "; ".join(problems))
    return files


def _check_files(
    folder: Path, entries: list[dict], trusted: dict[str, tuple[list[int], str]]
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Path -> problem for every entry the folder does not reproduce, and the stats of those it does."""
    failed, stats = {}, {}
    for entry in entries:
        rel, path = entry["path"], folder / entry["path"]
        if not path.is_file():
            failed[rel] = f"{path}: missing (the manifest lists it)"
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            failed[rel] = f"{path}: size {size} bytes, manifest says {entry['size']}"
            continue
        sha, stat = _digest(path, trusted.get(rel))
        if sha != entry["sha256"]:
            failed[rel] = f"{path}: sha256 {sha}, manifest says {entry['sha256']}"
        else:
            stats[rel] = stat
    return failed, stats


def verify_snapshot(folder: str | Path, manifest: dict) -> list[str]:
    """Every way the snapshot differs from the manifest (empty = verified), hashing every file.

    Files the manifest does not list are not problems (installed modeling code, for one); they are
    logged as a warning.
    """
    folder = Path(folder)
    entries = _manifest_entries(manifest, f"manifest of {folder}")
    problems = list(_check_files(folder, entries, {})[0].values())
    if manifest.get("manifest_hash") != _manifest_hash(entries):
        problems.append(f"manifest of {folder}: manifest_hash does not match its file list (edited by hand?)")
    listed = {entry["path"] for entry in entries}
    extra = [rel for rel in _listed_files(folder) if rel not in listed] if folder.is_dir() else []
    if extra:
        log.warning("%s: files not in the manifest (ignored): %s", folder, ", ".join(extra))
    return problems


# ---------------------------------------------------------------------------------------------
# the stamp: what was verified, when


def stamp_path(manifest_path: str | Path) -> Path:
    """``manifest.verified.json`` beside ``manifest.json``: ours to write, even for a user's read-only folder."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.verified.json")


def _read_stamp(manifest_path: Path) -> dict | None:
    """The stamp, or None where there is none or it is unusable (it is only a cache: re-hash instead)."""
    path = stamp_path(manifest_path)
    if not path.is_file():
        return None
    try:
        stamp = read_json(path)
        _manifest_entries(stamp["manifest"], str(path))
        if isinstance(stamp["folder"], str) and isinstance(stamp["verified"], dict):
            return stamp
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("%s: unreadable stamp, ignored (the files are hashed again)", path)
    return None


def _trusted(manifest_path: Path, folder: Path) -> dict[str, tuple[list[int], str]]:
    """rel -> ([size, mtime_ns], sha256) of ``folder``'s files at their last full check, from the stamp."""
    stamp = _read_stamp(manifest_path)
    if stamp is None or not _same_folder(manifest_path.parent / stamp["folder"], folder):
        return {}
    trusted = {}
    for rel, value in stamp["verified"].items():
        if isinstance(value, list) and len(value) == 3:
            trusted[rel] = (value[:2], value[2])
    return trusted


def _write_stamp(manifest_path: Path, manifest: dict, folder: Path, stats: dict[str, list[int]]) -> None:
    """Record what was just verified, unless the stamp says so already; concurrent jobs each write a
    complete stamp (atomic rename). One that cannot be written (a read-only results folder) costs a
    re-hash next time, nothing more.
    """
    sha = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    verified = {rel: [*stat, sha[rel]] for rel, stat in sorted(stats.items())}
    stamp = {"manifest": manifest, "folder": _location(folder, manifest_path.parent), "verified": verified}
    if _read_stamp(manifest_path) == stamp:
        return
    try:
        write_json(stamp_path(manifest_path), stamp)
    except OSError as err:
        log.warning("%s: cannot write the stamp (%s); the next check hashes every file", stamp_path(manifest_path), err)


def _previous(manifest_path: Path) -> dict | None:
    """The manifest last written here, or the stamp's copy when Snakemake deleted it before a rerun."""
    if manifest_path.is_file():
        record = read_json(manifest_path)
    else:
        stamp = _read_stamp(manifest_path)
        if stamp is None:
            return None
        record = stamp["manifest"]
        log.info("%s missing; recognising the snapshot from %s", manifest_path, stamp_path(manifest_path))
    _manifest_entries(record, str(manifest_path))
    return record


def _restore(manifest_path: Path, record: dict, folder: Path, stats: dict[str, list[int]]) -> dict:
    """Write ``record`` as the manifest (where it is missing or differs) and stamp the files just verified."""
    _write_if_changed(manifest_path, record)
    _write_stamp(manifest_path, record, folder, stats)
    return record


def _repair_hint(manifest_path: Path, manifest: dict, folder: Path) -> str:
    """The command that puts it right; it leaves an unchanged manifest untouched, so nothing reruns."""
    source, repo_id, revision = manifest.get("source"), manifest.get("repo_id"), manifest.get("revision")

    def snapshot(*args) -> str:
        return " ".join(
            [
                "python -m u1lib snapshot --model",
                str(manifest.get("model")),
                *map(str, args),
                "--manifest",
                str(manifest_path),
            ]
        )

    if source == "local":
        record = snapshot("--source", folder)
        return f"{folder} is yours and only read: restore those files, or record it as it is now: `{record}`"
    if manifest.get("read_only"):
        return f"{folder} is in the Hugging Face cache: repair it with `hf download {repo_id} --revision {revision}`"
    if source == "tiny":
        variant, _, seed = str(revision).removeprefix("tiny-").rpartition("seed-")
        variant = f" --variant {variant.rstrip('-')}" if variant else ""
        return f"rebuild it: `{snapshot(f'--source tiny{variant} --seed', seed, '--out', folder)}`"
    fetch = snapshot("--source hub --repo-id", repo_id, "--revision", revision, "--out", folder)
    return f"fetch those files again: `{fetch}`"


def require_verified(manifest_path: str | Path, folder: str | Path | None = None) -> Path:
    """The snapshot folder (``folder``, default the manifest's), refusing files that no longer match.

    Cheap on purpose, since every stage that reads the weights calls it: a file whose size and mtime
    equal those of its last full check is trusted without reading it; the others are hashed. So a
    same-size edit whose mtime was put back (``os.utime``, some copy tools) is not caught here;
    ``python -m u1lib verify`` hashes every file. A changed size is always caught.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise SnapshotError(
            f"{manifest_path}: no such manifest; build the snapshot first (the workflow's snapshot rule, "
            "or `python -m u1lib snapshot`)"
        )
    manifest = read_json(manifest_path)
    entries = _manifest_entries(manifest, str(manifest_path))
    if manifest.get("manifest_hash") != _manifest_hash(entries):
        raise SnapshotError(
            f"{manifest_path}: manifest_hash does not match its file list (edited by hand?); "
            "rebuild it with the snapshot stage"
        )
    folder = snapshot_dir(manifest_path, manifest) if folder is None else Path(folder)
    failed, stats = _check_files(folder, entries, _trusted(manifest_path, folder))
    if failed:
        raise SnapshotError(
            f"{folder} no longer matches {manifest_path}:\n  "
            + "\n  ".join(failed.values())
            + f"\n{_repair_hint(manifest_path, manifest, folder)}"
        )
    _write_stamp(manifest_path, manifest, folder, stats)
    return folder


# ---------------------------------------------------------------------------------------------
# snapshots


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


def _check_complete(folder: Path, what: str) -> None:
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
            _check_complete(folder, f"{what} in {folder}")
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
        failed, stats = _check_files(folder, entries, _trusted(manifest_path, folder))
        if not failed:
            log.info("%s: verified against %s; nothing to download", folder, manifest_path)
            return _restore(manifest_path, record, folder, stats)
        looked = f"{folder} (" + "; ".join(failed.values()) + ")"
        if record.get("read_only") or not _same_folder(folder, own):
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
    _check_complete(own, what)
    if record is None:
        return write_manifest(own, manifest_path, model=name, source="hub", repo_id=repo_id, revision=revision)
    still_failed, stats = _check_files(own, entries, {})
    if still_failed:
        raise SnapshotError(
            f"{what}: files fetched again still differ from {manifest_path}: "
            + "; ".join(still_failed.values())
            + f". The manifest does not describe this revision; delete it and {stamp_path(manifest_path)} "
            "to start over."
        )
    return _restore(manifest_path, record, own, stats)


def snapshot_tiny(
    folder: str | Path, manifest_path: str | Path, *, seed: int, model: str = "tiny", variant: str = "u1"
) -> dict:
    """Build the embedded tiny model (cheap and deterministic, so always rebuilt) and write its manifest.

    ``variant`` is the architecture (u1, u15, a3b: ``u1lib.tiny.VARIANTS``); the manifest's revision
    names it and the seed: ``tiny-seed-0`` (u1), ``tiny-u15-seed-0``.
    """
    from u1lib.tiny import build_tiny_snapshot  # imports torch; the hub path does not need it

    build_tiny_snapshot(folder, seed=seed, variant=variant)
    revision = f"tiny-seed-{seed}" if variant == "u1" else f"tiny-{variant}-seed-{seed}"
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
    _check_complete(folder, f"model folder {folder}")
    return write_manifest(
        folder, manifest_path, model=model, source="local", repo_id=None, revision=None, read_only=True
    )


def make_snapshot(
    source: str,
    manifest_path: str | Path,
    *,
    model: str,
    repo_id: str | None = None,
    revision: str | None = None,
    seed: int = 0,
    variant: str = "u1",
    out: str | Path | None = None,
    allow_patterns: list[str] | None = None,
) -> dict:
    """One entry for every source: ``tiny`` (of ``variant``), ``hub``, or the path of a folder holding a
    downloaded model."""
    out = default_snapshot_dir(manifest_path) if out is None else Path(out)
    if source == "tiny":
        return snapshot_tiny(out, manifest_path, seed=seed, model=model, variant=variant)
    if source == "hub":
        return snapshot_hub(repo_id, revision, out, manifest_path, model=model, allow_patterns=allow_patterns)
    return snapshot_local(source, manifest_path, model=model)


# ---------------------------------------------------------------------------------------------
# command line


def _snapshot_cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Download, build or verify a model snapshot and write its manifest."
    )
    parser.add_argument("--model", required=True, help="model name recorded in the manifest")
    parser.add_argument(
        "--source",
        required=True,
        help="tiny (build the embedded tiny model), hub (download --repo-id at --revision), or the path of a "
        "folder holding a downloaded model (verified in place, never written to; ./hub for a folder named hub)",
    )
    parser.add_argument("--repo-id", help="Hub repo (source hub)")
    parser.add_argument("--revision", help="full 40-hex commit sha (source hub)")
    parser.add_argument(
        "--allow-pattern", action="append", dest="allow_patterns", help="download only matching files (repeatable)"
    )
    parser.add_argument("--seed", type=int, help="weight seed (source tiny, default 0)")
    parser.add_argument(
        "--variant", choices=("u1", "u15", "a3b"), help="architecture of the tiny model (source tiny, default u1)"
    )
    parser.add_argument(
        "--out", type=Path, help="folder to build or download into (tiny, hub); default: snapshot/ beside --manifest"
    )
    parser.add_argument("--manifest", required=True, type=Path, help="manifest.json to write")
    args = parser.parse_args(argv)
    hub_only = {"--repo-id": args.repo_id, "--revision": args.revision, "--allow-pattern": args.allow_patterns}
    if args.source == "hub":
        if not (args.repo_id and args.revision):
            parser.error("--source hub needs --repo-id and --revision")
    elif any(hub_only.values()):
        parser.error(f"{', '.join(k for k, v in hub_only.items() if v)}: only for --source hub")
    for flag, value in (("--seed", args.seed), ("--variant", args.variant)):
        if value is not None and args.source != "tiny":
            parser.error(f"{flag}: only for --source tiny")
    if args.out is not None and args.source not in ("tiny", "hub"):
        parser.error("--out: a folder source is verified in place, nothing is written there")
    manifest = make_snapshot(
        args.source,
        args.manifest,
        model=args.model,
        repo_id=args.repo_id,
        revision=args.revision,
        seed=args.seed or 0,
        variant=args.variant or "u1",
        out=args.out,
        allow_patterns=args.allow_patterns,
    )
    print(f"{args.manifest}: {len(manifest['files'])} files, manifest_hash {manifest['manifest_hash']}")
    return 0


def _verify_cli(verb: str, argv: list[str]) -> int:
    from u1lib.modeling import verify_modeling  # modeling imports this module

    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}",
        description="Check a snapshot against its manifest (sizes and sha256 of every file) and its .py files "
        "against the modeling report.",
    )
    parser.add_argument("--manifest", required=True, type=Path, help="the snapshot's manifest.json")
    parser.add_argument("--snapshot", type=Path, help="snapshot folder (default: the one the manifest records)")
    parser.add_argument(
        "--modeling", type=Path, help="modeling.json of install-modeling (default: modeling.json beside --manifest)"
    )
    args = parser.parse_args(argv)
    folder = args.snapshot or snapshot_dir(args.manifest)
    problems = verify_snapshot(folder, read_json(args.manifest))
    report = args.modeling or args.manifest.with_name("modeling.json")
    problems += verify_modeling(folder, report, required=args.modeling is not None)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{folder}: {'verified' if not problems else f'{len(problems)} problem(s)'} against {args.manifest}")
    return 1 if problems else 0


_VERBS = {"snapshot": _snapshot_cli, "verify": _verify_cli}


def cli(verb: str, argv: list[str]) -> int:
    return _VERBS[verb](verb, argv)
