"""Model snapshots with a manifest of every file's sha256, and pinned upstream modeling files.

A stage downstream depends on the manifest, never on a folder: a re-run verifies the files and
fetches only what fails. Remote code never enters a snapshot except through ``install_modeling``,
which copies upstream's modeling files only when each matches its sha256 pin.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from u1lib.io import read_json, sha256_file, write_bytes, write_json
from u1lib.model.config import ConfigError, U1Config

log = logging.getLogger(__name__)

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Modeling code is install_modeling's business (modeling.json), never the snapshot's.
_MODELING_CODE = "*.py"

Downloader = Callable[..., object]


class SnapshotError(ValueError):
    """A snapshot, manifest or pins file that fails a check; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# manifest


def _listed_files(snapshot_dir: Path) -> list[str]:
    """Relative paths of the files a manifest covers, sorted.

    Skips hidden paths (huggingface_hub's ``.cache/``, temporary files of atomic writes) and
    ``.py`` files (installed modeling code, tracked by modeling.json).
    """
    paths = []
    for path in snapshot_dir.rglob("*"):
        rel = path.relative_to(snapshot_dir)
        if any(part.startswith(".") for part in rel.parts) or path.match(_MODELING_CODE):
            continue
        if path.is_file():
            paths.append(rel.as_posix())
    return sorted(paths)


def _manifest_hash(files: list[dict]) -> str:
    lines = sorted(f"{entry['path']}\t{entry['sha256']}\n" for entry in files)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def write_manifest(
    snapshot_dir: str | Path,
    manifest_path: str | Path,
    *,
    model: str,
    source: str,
    repo_id: str | None,
    revision: str,
) -> dict:
    """Hash every file of the snapshot and write the manifest downstream stages key on."""
    snapshot_dir = Path(snapshot_dir)
    files = []
    for rel in _listed_files(snapshot_dir):
        path = snapshot_dir / rel
        files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    if not files:
        raise SnapshotError(f"{snapshot_dir}: no files to put in a manifest (did the download or build fail?)")
    manifest = {
        "model": model,
        "source": source,
        "repo_id": repo_id,
        "revision": revision,
        "files": files,
        "manifest_hash": _manifest_hash(files),
    }
    write_json(manifest_path, manifest)
    return manifest


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


def _failed_files(snapshot_dir: Path, entries: list[dict]) -> dict[str, str]:
    """Path -> problem for every manifest entry the snapshot does not reproduce."""
    failed = {}
    for entry in entries:
        path = snapshot_dir / entry["path"]
        if not path.is_file():
            failed[entry["path"]] = f"{path}: missing (the manifest lists it)"
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            failed[entry["path"]] = f"{path}: size {size} bytes, manifest says {entry['size']}"
            continue
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            failed[entry["path"]] = f"{path}: sha256 {actual}, manifest says {entry['sha256']}"
    return failed


def verify_snapshot(snapshot_dir: str | Path, manifest: dict) -> list[str]:
    """Every way the snapshot differs from the manifest (empty = verified).

    Files the manifest does not list are not problems (installed modeling code, for one); they are
    logged as a warning.
    """
    snapshot_dir = Path(snapshot_dir)
    entries = _manifest_entries(manifest, f"manifest of {snapshot_dir}")
    problems = list(_failed_files(snapshot_dir, entries).values())
    if manifest.get("manifest_hash") != _manifest_hash(entries):
        problems.append(f"manifest of {snapshot_dir}: manifest_hash does not match its file list (edited by hand?)")
    listed = {entry["path"] for entry in entries}
    extra = [rel for rel in _listed_files(snapshot_dir) if rel not in listed] if snapshot_dir.is_dir() else []
    if extra:
        log.warning("%s: files not in the manifest (ignored): %s", snapshot_dir, ", ".join(extra))
    return problems


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


def _check_config(snapshot_dir: Path, what: str) -> None:
    try:
        U1Config.from_file(snapshot_dir)
    except ConfigError as err:
        raise SnapshotError(f"{what} is not a SenseNova-U1 snapshot: {err}") from None


def snapshot_hub(
    repo_id: str,
    revision: str,
    snapshot_dir: str | Path,
    manifest_path: str | Path,
    *,
    model: str | None = None,
    allow_patterns: list[str] | None = None,
    downloader: Downloader | None = None,
) -> dict:
    """Download ``repo_id`` at commit ``revision`` into ``snapshot_dir`` and write its manifest.

    A verified snapshot is left alone; files that fail verification are deleted and fetched again.
    ``.py`` files are never downloaded (see ``install_modeling``). ``model`` defaults to the repo name.
    """
    if not _COMMIT_SHA.match(revision):
        raise SnapshotError(
            f"revision {revision!r} is not a full 40-hex commit sha: a branch or tag can move, so the snapshot "
            "would not be reproducible. Pin the commit (see the repo's history on the Hub)."
        )
    snapshot_dir, manifest_path = Path(snapshot_dir), Path(manifest_path)
    previous = read_json(manifest_path) if manifest_path.is_file() else None
    entries = _manifest_entries(previous, str(manifest_path)) if previous is not None else []
    if previous is not None and (previous.get("repo_id"), previous.get("revision")) != (repo_id, revision):
        log.info("%s describes %s@%s; replacing it", manifest_path, previous.get("repo_id"), previous.get("revision"))
        for entry in entries:  # files of the old revision must not slip into the new manifest
            (snapshot_dir / entry["path"]).unlink(missing_ok=True)
        previous, entries = None, []
    failed = _failed_files(snapshot_dir, entries)
    if previous is not None and not failed:
        log.info("%s: verified against %s; nothing to download", snapshot_dir, manifest_path)
        return previous
    for rel, problem in failed.items():
        log.warning("%s; fetching it again", problem)
        (snapshot_dir / rel).unlink(missing_ok=True)
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    (downloader or _download_from_hub)(
        repo_id,
        revision=revision,
        local_dir=snapshot_dir,
        allow_patterns=allow_patterns,
        ignore_patterns=[_MODELING_CODE],
    )
    what = f"{repo_id}@{revision}"
    _check_config(snapshot_dir, what)
    if previous is None:
        name = model or repo_id.split("/")[-1]
        return write_manifest(snapshot_dir, manifest_path, model=name, source="hub", repo_id=repo_id, revision=revision)
    still_failed = _failed_files(snapshot_dir, entries)
    if still_failed:
        raise SnapshotError(
            f"{what}: files fetched again still differ from {manifest_path}: "
            + "; ".join(still_failed.values())
            + ". The manifest does not describe this revision; delete it to start over."
        )
    return previous


def snapshot_tiny(snapshot_dir: str | Path, manifest_path: str | Path, *, seed: int, model: str = "tiny") -> dict:
    """Build the embedded tiny model (cheap and deterministic, so always rebuilt) and write its manifest."""
    from u1lib.tiny import build_tiny_snapshot  # imports torch; the hub path does not need it

    build_tiny_snapshot(snapshot_dir, seed=seed)
    revision = f"tiny-seed-{seed}"
    return write_manifest(snapshot_dir, manifest_path, model=model, source="tiny", repo_id=None, revision=revision)


# ---------------------------------------------------------------------------------------------
# upstream modeling files


@dataclass(frozen=True)
class ModelingPins:
    """The upstream commit and the sha256 of every modeling file install_modeling accepts."""

    commit: str
    files: dict[str, str]

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelingPins":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SnapshotError(f"{path}: no such pins file (see config/pins/neo_unify.yaml)") from None
        except yaml.YAMLError as err:
            raise SnapshotError(f"{path}: not valid YAML ({err})") from None
        raw = raw if isinstance(raw, dict) else {}
        problems = []
        commit = raw.get("commit")
        if not (isinstance(commit, str) and _COMMIT_SHA.match(commit)):
            problems.append(f"'commit' must be a 40-hex upstream commit sha, got {commit!r}")
        files = raw.get("files")
        if not isinstance(files, dict) or not files:
            problems.append("'files' must map each modeling file name to its sha256")
            files = {}
        for name, digest in files.items():
            if not isinstance(name, str) or "/" in name or name.startswith("."):
                problems.append(f"files: {name!r} must be a plain file name")
            if not (isinstance(digest, str) and _SHA256.match(digest)):
                problems.append(f"files.{name}: {digest!r} is not a 64-hex sha256")
        if problems:
            raise SnapshotError(f"{path}: " + "; ".join(problems))
        return cls(commit=commit, files=dict(files))


def _read_no_follow(path: Path) -> bytes:
    """Read a file, refusing a symlink even if one was swapped in after the check."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _pinned_sources(source_dir: Path, pins: ModelingPins, pins_path: Path) -> dict[str, bytes]:
    """The bytes of every pinned file, or one SnapshotError listing every problem found."""
    if not source_dir.is_dir():
        raise SnapshotError(
            f"{source_dir}: not a folder; pass a clone of upstream's neo_unify/ at {pins.commit}, or 'none'"
        )
    problems, contents = [], {}
    for entry in sorted(source_dir.iterdir()):
        expected = pins.files.get(entry.name)
        if entry.is_symlink():
            problems.append(f"{entry}: is a symlink, never followed; put the real file there")
        elif expected is None:
            if entry.name == "__pycache__" and entry.is_dir():
                continue  # bytecode Python left behind; never copied
            problems.append(f"{entry}: not in the pins {pins_path}; remove it")
        elif not entry.is_file():
            problems.append(f"{entry}: not a regular file")
        else:
            data = _read_no_follow(entry)
            actual = hashlib.sha256(data).hexdigest()
            if actual == expected:
                contents[entry.name] = data
            else:
                problems.append(f"{entry}: sha256 {actual}, pinned {expected} (not upstream {pins.commit}?)")
    for name in sorted(pins.files):
        path = source_dir / name
        if not path.exists() and not path.is_symlink():
            problems.append(f"{path}: missing (pinned in {pins_path})")
    if problems:
        raise SnapshotError(
            f"refusing to install modeling files from {source_dir}:\n  " + "\n  ".join(problems)
        )
    return contents


def install_modeling(
    snapshot_dir: str | Path,
    *,
    source_dir: Path | None,
    pins_path: Path,
    report_path: Path,
) -> dict:
    """Copy upstream's modeling files into the snapshot after checking each against its sha256 pin.

    ``source_dir`` None records that no upstream code is installed (the native engine needs none).
    """
    if source_dir is None:
        report = {
            "status": "native-only",
            "note": "the native engine executes no remote code; no upstream modeling files installed",
        }
    else:
        snapshot_dir, pins_path = Path(snapshot_dir), Path(pins_path)
        if not snapshot_dir.is_dir():
            raise SnapshotError(f"{snapshot_dir}: no such snapshot folder; run `python -m u1lib snapshot` first")
        pins = ModelingPins.from_file(pins_path)
        contents = _pinned_sources(Path(source_dir), pins, pins_path)
        for name, data in contents.items():
            write_bytes(snapshot_dir / name, data)
        report = {"status": "installed", "pinned_commit": pins.commit, "files": dict(sorted(pins.files.items()))}
    write_json(report_path, report)
    return report


# ---------------------------------------------------------------------------------------------
# command line


def _snapshot_cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Download or build a model snapshot and write its manifest."
    )
    parser.add_argument("--model", required=True, help="model name recorded in the manifest")
    parser.add_argument("--source", required=True, choices=("tiny", "hub"))
    parser.add_argument("--repo-id", help="Hub repo (source hub)")
    parser.add_argument("--revision", help="full 40-hex commit sha (source hub)")
    parser.add_argument(
        "--allow-pattern", action="append", dest="allow_patterns", help="download only matching files (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (source tiny)")
    parser.add_argument("--out", required=True, type=Path, help="snapshot folder")
    parser.add_argument("--manifest", required=True, type=Path, help="manifest.json to write")
    args = parser.parse_args(argv)
    if args.source == "hub":
        if not (args.repo_id and args.revision):
            parser.error("--source hub needs --repo-id and --revision")
        manifest = snapshot_hub(
            args.repo_id, args.revision, args.out, args.manifest, model=args.model, allow_patterns=args.allow_patterns
        )
    else:
        if args.repo_id or args.revision or args.allow_patterns:
            parser.error("--source tiny is built from --seed; --repo-id, --revision, --allow-pattern are for hub")
        manifest = snapshot_tiny(args.out, args.manifest, seed=args.seed, model=args.model)
    print(f"{args.manifest}: {len(manifest['files'])} files, manifest_hash {manifest['manifest_hash']}")
    return 0


def _verify_cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Check a snapshot against its manifest (sizes and sha256)."
    )
    parser.add_argument("--snapshot", required=True, type=Path, help="snapshot folder")
    parser.add_argument("--manifest", required=True, type=Path, help="its manifest.json")
    args = parser.parse_args(argv)
    problems = verify_snapshot(args.snapshot, read_json(args.manifest))
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.snapshot}: {'verified' if not problems else f'{len(problems)} problem(s)'} against {args.manifest}")
    return 1 if problems else 0


def _install_modeling_cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Install upstream modeling files that match their sha256 pins."
    )
    parser.add_argument("--snapshot", required=True, type=Path, help="snapshot folder to copy into")
    parser.add_argument("--source", required=True, help="clone of upstream neo_unify/, or 'none' (native engine only)")
    parser.add_argument("--pins", required=True, type=Path, help="pins YAML (config/pins/neo_unify.yaml)")
    parser.add_argument("--report", required=True, type=Path, help="modeling.json to write")
    args = parser.parse_args(argv)
    source_dir = None if args.source.lower() == "none" else Path(args.source)
    report = install_modeling(args.snapshot, source_dir=source_dir, pins_path=args.pins, report_path=args.report)
    print(f"{args.report}: {report['status']}")
    return 0


_VERBS = {"snapshot": _snapshot_cli, "install-modeling": _install_modeling_cli, "verify": _verify_cli}


def cli(verb: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _VERBS[verb](verb, argv)
    except ValueError as err:  # SnapshotError, or unreadable JSON/config: the message names the file
        print(f"u1lib {verb}: {err}", file=sys.stderr)
        return 1
