"""Upstream modeling files: their sha256 pins, their installation into a snapshot, and checks of what is installed.

Remote code never enters a snapshot except through ``install_modeling``, which copies upstream's
modeling files only when each matches its sha256 pin and records them in modeling.json;
``verify_modeling`` checks the snapshot's ``.py`` files against that record. The native engine
imports none of them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from u1lib.io import read_json, sha256_file, write_bytes, write_json
from u1lib.snapshot import COMMIT_SHA, SnapshotError, snapshot_dir

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REINSTALL = "run `python -m u1lib install-modeling` again (the workflow: `snakemake --forcerun install_modeling`)"


@dataclass(frozen=True)
class ModelingPins:
    """The upstream repository and commit, and the sha256 of every modeling file install_modeling
    accepts (the workflow's clone_upstream rule reads the same file through this class)."""

    commit: str
    files: dict[str, str]
    repo: str | None = None  # owner/name on GitHub; needed only to clone

    @classmethod
    def from_file(cls, path: str | Path) -> ModelingPins:
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
        if not (isinstance(commit, str) and COMMIT_SHA.match(commit)):
            problems.append(f"'commit' must be a 40-hex upstream commit sha, got {commit!r}")
        repo = raw.get("repo")
        if repo is not None and not (isinstance(repo, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", repo)):
            problems.append(f"'repo' must be owner/name, got {repo!r}")
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
        return cls(commit=commit, files=dict(files), repo=repo)


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
        raise SnapshotError(f"refusing to install modeling files from {source_dir}:\n  " + "\n  ".join(problems))
    return contents


def _writable_snapshot(manifest_path: Path) -> Path:
    """The manifest's snapshot folder, refusing one that is not ours to write."""
    if not manifest_path.is_file():
        raise SnapshotError(f"{manifest_path}: no such manifest; run `python -m u1lib snapshot` first")
    manifest = read_json(manifest_path)
    folder = snapshot_dir(manifest_path, manifest)
    if manifest.get("read_only"):
        raise SnapshotError(
            f"{folder}: {manifest_path} records it read-only (a model folder of yours, or the Hugging Face "
            "cache), so no modeling files are written there. The native engine needs none: set "
            "model.modeling_source to none (or pass --source none); or let the snapshot stage download a "
            "copy of its own (model.source hub, without HF_HUB_OFFLINE)."
        )
    if not folder.is_dir():
        raise SnapshotError(f"{folder}: no such snapshot folder; run `python -m u1lib snapshot` first")
    return folder


def install_modeling(
    manifest_path: str | Path,
    *,
    source_dir: Path | None,
    pins_path: Path,
    report_path: Path,
) -> dict:
    """Copy upstream's modeling files into the manifest's snapshot after checking each against its pin.

    ``source_dir`` None records that no upstream code is installed (the native engine needs none).
    """
    if source_dir is None:
        report = {
            "status": "native-only",
            "note": "the native engine executes no remote code; no upstream modeling files installed",
        }
    else:
        folder = _writable_snapshot(Path(manifest_path))
        pins = ModelingPins.from_file(pins_path)
        contents = _pinned_sources(Path(source_dir), pins, Path(pins_path))
        for name, data in contents.items():
            write_bytes(folder / name, data)
        report = {"status": "installed", "pinned_commit": pins.commit, "files": dict(sorted(pins.files.items()))}
    write_json(report_path, report)
    return report


def _installed_files(report: dict, report_path: Path) -> dict[str, str]:
    """File name -> sha256 of what the report says was installed."""
    status = report.get("status") if isinstance(report, dict) else None
    if status == "native-only":
        return {}
    files = report.get("files") if status == "installed" else None
    if not (
        isinstance(files, dict)
        and all(isinstance(name, str) and "/" not in name and isinstance(digest, str) for name, digest in files.items())
    ):
        raise SnapshotError(
            f"{report_path}: not a modeling report (needs status native-only, or installed with files "
            f"{{name: sha256}}); {_REINSTALL}"
        )
    return files


def verify_modeling(folder: str | Path, report_path: str | Path, *, required: bool = False) -> list[str]:
    """Every ``.py`` file of the snapshot the modeling report does not vouch for: edited, missing, unexpected.

    Without a report at ``report_path`` (allowed unless ``required``) the snapshot may hold no ``.py`` file.
    """
    folder, report_path = Path(folder), Path(report_path)
    if report_path.is_file():
        installed = _installed_files(read_json(report_path), report_path)
        why = f"not installed by install-modeling ({report_path} does not list it); remove it or {_REINSTALL}"
    elif required:
        raise SnapshotError(f"{report_path}: no such modeling report (`python -m u1lib install-modeling` writes it)")
    else:
        installed = {}
        why = f"no modeling report at {report_path} vouches for it; name one with --modeling, or remove the file"
    problems = []
    for name, digest in sorted(installed.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            problems.append(f"{path}: missing (or a symlink); {report_path} records it as installed; {_REINSTALL}")
        elif (actual := sha256_file(path)) != digest:
            problems.append(
                f"{path}: sha256 {actual}, {report_path} records {digest} "
                f"(edited since it was installed?); {_REINSTALL}"
            )
    present = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    problems += [f"{folder / rel}: unexpected modeling code, {why}" for rel in present if rel not in installed]
    return problems


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Install upstream modeling files that match their sha256 pins."
    )
    parser.add_argument("--manifest", required=True, type=Path, help="manifest.json of the snapshot to copy into")
    parser.add_argument("--source", required=True, help="clone of upstream neo_unify/, or 'none' (native engine only)")
    parser.add_argument("--pins", required=True, type=Path, help="pins YAML (config/pins/neo_unify.yaml)")
    parser.add_argument("--report", required=True, type=Path, help="modeling.json to write")
    args = parser.parse_args(argv)
    source_dir = None if args.source.lower() == "none" else Path(args.source)
    report = install_modeling(args.manifest, source_dir=source_dir, pins_path=args.pins, report_path=args.report)
    print(f"{args.report}: {report['status']}")
    return 0
