"""A snapshot's manifest and the checks against it: what every stage that reads the weights runs.

About 300 lines on purpose: this is the one snapshot file the code hashes leave out by name (``cache.py``,
``train/loop.py``, ``workflow_plan.py``: a check that refuses changed files changes no result), so what
those stages import for the check lives here, with what it needs, and nothing that builds a snapshot.

A stage downstream depends on the manifest, never on a folder. The manifest records where the snapshot
folder is (:func:`snapshot_dir`): our own build or download beside it, or a folder we only read (a
user's model folder, a snapshot in the Hugging Face cache), verified in place and never written to.
Snapshots are built, downloaded or found by ``u1lib.snapshot_record``, ``u1lib.snapshot_hub`` and
``u1lib.snapshot_sources``.

Beside the manifest, a stamp (``manifest.verified.json``) keeps a copy of the manifest and each file's
size, mtime and sha256 at its last full check. Snakemake deletes the manifest before rerunning the
snapshot rule; the stamp survives, so the rerun recognises the snapshot instead of fetching it again.
Stages that read the weights (:func:`require_verified`) re-hash only files whose size or mtime changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from u1lib.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Modeling code is install_modeling's business (modeling.json), never the manifest's.
MODELING_CODE = "*.py"
# where tiny and hub snapshots are built or downloaded, beside the manifest
OWN_FOLDER = "snapshot"


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


def location(folder: Path, base: Path) -> str:
    """How a manifest records ``folder``: relative to ``base`` (the manifest's folder) when inside it or
    given relative, so a moved or copied project keeps finding it; otherwise absolute, as given."""
    if folder.is_absolute() and not Path(os.path.abspath(folder)).is_relative_to(os.path.abspath(base)):
        return str(folder)
    return Path(os.path.relpath(folder, base)).as_posix()


def same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# ---------------------------------------------------------------------------------------------
# manifest


def listed_files(folder: Path) -> list[str]:
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
    return stat_fingerprint(folder, listed_files(Path(folder)))


def stat_fingerprint(folder: str | Path, names: list[str]) -> str:
    """16 hex digits over the names, sizes and mtimes of ``names`` (relative to ``folder``, in order)."""
    digest = hashlib.sha256()
    for rel in names:
        stat = (Path(folder) / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def manifest_hash(files: list[dict]) -> str:
    lines = sorted(f"{entry['path']}\t{entry['sha256']}\n" for entry in files)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def digest(path: Path, trusted: tuple[list[int], str] | None) -> tuple[str, list[int]]:
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


# hashlib and file reads release the GIL: shards hash on this many cores at once
HASH_THREADS = min(8, os.cpu_count() or 1)


def digest_files(
    folder: Path, rels: list[str], trusted: dict[str, tuple[list[int], str]]
) -> list[tuple[str, list[int]]]:
    """:func:`digest` of each of ``rels`` under ``folder``, in order, several files at a time."""
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        return list(pool.map(lambda rel: digest(folder / rel, trusted.get(rel)), rels))


def manifest_entries(manifest: dict, where: str) -> list[dict]:
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


def check_files(
    folder: Path, entries: list[dict], trusted: dict[str, tuple[list[int], str]]
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Path -> problem for every entry the folder does not reproduce, and the stats of those it does."""
    failed, stats, present = {}, {}, []
    for entry in entries:
        rel, path = entry["path"], folder / entry["path"]
        if not path.is_file():
            failed[rel] = f"{path}: missing (the manifest lists it)"
        elif (size := path.stat().st_size) != entry["size"]:
            failed[rel] = f"{path}: size {size} bytes, manifest says {entry['size']}"
        else:
            present.append(entry)
    for entry, (sha, stat) in zip(present, digest_files(folder, [e["path"] for e in present], trusted)):
        if sha != entry["sha256"]:
            failed[entry["path"]] = f"{folder / entry['path']}: sha256 {sha}, manifest says {entry['sha256']}"
        else:
            stats[entry["path"]] = stat
    order = {entry["path"]: k for k, entry in enumerate(entries)}
    return dict(sorted(failed.items(), key=lambda item: order[item[0]])), stats


def verify_snapshot(folder: str | Path, manifest: dict) -> list[str]:
    """Every way the snapshot differs from the manifest (empty = verified), hashing every file.

    Files the manifest does not list are not problems (installed modeling code, for one); they are
    logged as a warning.
    """
    folder = Path(folder)
    entries = manifest_entries(manifest, f"manifest of {folder}")
    problems = list(check_files(folder, entries, {})[0].values())
    if manifest.get("manifest_hash") != manifest_hash(entries):
        problems.append(f"manifest of {folder}: manifest_hash does not match its file list (edited by hand?)")
    listed = {entry["path"] for entry in entries}
    extra = [rel for rel in listed_files(folder) if rel not in listed] if folder.is_dir() else []
    if extra:
        log.warning("%s: files not in the manifest (ignored): %s", folder, ", ".join(extra))
    return problems


# ---------------------------------------------------------------------------------------------
# the stamp: what was verified, when


def stamp_path(manifest_path: str | Path) -> Path:
    """``manifest.verified.json`` beside ``manifest.json``: ours to write, even for a user's read-only folder."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.verified.json")


def read_stamp(manifest_path: Path) -> dict | None:
    """The stamp, or None where there is none or it is unusable (it is only a cache: re-hash instead)."""
    path = stamp_path(manifest_path)
    if not path.is_file():
        return None
    try:
        stamp = read_json(path)
        manifest_entries(stamp["manifest"], str(path))
        if isinstance(stamp["folder"], str) and isinstance(stamp["verified"], dict):
            return stamp
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("%s: unreadable stamp, ignored (the files are hashed again)", path)
    return None


def stamped_files(manifest_path: Path, folder: Path) -> dict[str, tuple[list[int], str]]:
    """rel -> ([size, mtime_ns], sha256) of ``folder``'s files at their last full check, from the stamp."""
    stamp = read_stamp(manifest_path)
    if stamp is None or not same_folder(manifest_path.parent / stamp["folder"], folder):
        return {}
    trusted = {}
    for rel, value in stamp["verified"].items():
        if isinstance(value, list) and len(value) == 3:
            trusted[rel] = (value[:2], value[2])
    return trusted


def write_stamp(manifest_path: Path, manifest: dict, folder: Path, stats: dict[str, list[int]]) -> None:
    """Record what was just verified, unless the stamp says so already; concurrent jobs each write a
    complete stamp (atomic rename). One that cannot be written (a read-only results folder) costs a
    re-hash next time, nothing more.
    """
    sha = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    verified = {rel: [*stat, sha[rel]] for rel, stat in sorted(stats.items())}
    stamp = {"manifest": manifest, "folder": location(folder, manifest_path.parent), "verified": verified}
    if read_stamp(manifest_path) == stamp:
        return
    try:
        write_json(stamp_path(manifest_path), stamp)
    except OSError as err:
        log.warning("%s: cannot write the stamp (%s); the next check hashes every file", stamp_path(manifest_path), err)


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
        seed, _, weights = seed.partition("-")  # tiny-seed-0-pretrained; without a suffix: random
        weights = f" --weights {weights or 'random'}"
        return f"rebuild it: `{snapshot(f'--source tiny{variant}{weights} --seed', seed, '--out', folder)}`"
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
    entries = manifest_entries(manifest, str(manifest_path))
    if manifest.get("manifest_hash") != manifest_hash(entries):
        raise SnapshotError(
            f"{manifest_path}: manifest_hash does not match its file list (edited by hand?); "
            "rebuild it with the snapshot stage"
        )
    folder = snapshot_dir(manifest_path, manifest) if folder is None else Path(folder)
    failed, stats = check_files(folder, entries, stamped_files(manifest_path, folder))
    if failed:
        raise SnapshotError(
            f"{folder} no longer matches {manifest_path}:\n  "
            + "\n  ".join(failed.values())
            + f"\n{_repair_hint(manifest_path, manifest, folder)}"
        )
    write_stamp(manifest_path, manifest, folder, stats)
    return folder
