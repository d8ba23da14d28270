"""Small file helpers every stage shares: atomic writes, JSON/JSONL, hashes."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)
_SAFETENSORS_ALIGNMENT = 8  # the header is padded so the tensor buffer starts 8-byte aligned


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash or a full disk leaves the previous file intact and no half-written one behind; what a
    killed writer left is removed by the next writer of ``path`` (as for :func:`atomic_folder`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    held, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _hold(held)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get ordinary permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        os.close(held)
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; if the block succeeds it replaces ``path`` as a whole.

    Readers see the old folder or the new one, never a mix; a failure leaves the old one and no
    temporary folder behind. The writer holds an ``flock`` on its temporary folder, so what a killed
    writer left beside ``path`` (a half-built cache can be gigabytes) is recognised by the next
    writer, no process holding it, and removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    held = os.open(tmp, os.O_RDONLY)
    _hold(held)
    _BUILDING.add(tmp)
    try:
        yield tmp
        if path.exists():
            old = tmp.with_name(tmp.name + ".old")
            path.rename(old)
            tmp.rename(path)
            if old.is_symlink():  # a link is replaced; the folder it pointed to is not ours to delete
                old.unlink()
            else:
                shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        _BUILDING.discard(tmp)
        os.close(held)
        shutil.rmtree(tmp, ignore_errors=True)


_ABANDONED_AFTER_S = 60  # younger temporaries may be a writer's between mkstemp/mkdtemp and flock
# the temporary folders this process is building: files written inside one (a sample set's PNGs, a
# cache's shards) need no look for leftovers, which would make writing N files there O(N^2)
_BUILDING: set[Path] = set()


def _hold(fd: int) -> None:
    """Mark a temporary file or folder as in use for as long as this process keeps ``fd`` open."""
    with contextlib.suppress(OSError):  # a file system without flock (some NFS, Lustre): leftovers stay
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the process ends, however it ends


def _remove_abandoned(path: Path) -> None:
    """Remove the temporary files or folders (and replaced ``.old`` ones) of writers of ``path`` that died."""
    if any(folder in _BUILDING for folder in path.parents):
        return
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        if not leftover.name.endswith((".tmp", ".tmp.old")):
            continue
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile
            if leftover.is_symlink():  # a replaced link: what it points to is not ours
                leftover.unlink()
            elif time.time() - leftover.stat().st_mtime > _ABANDONED_AFTER_S and not _held_by_a_writer(leftover):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()


def _held_by_a_writer(leftover: Path) -> bool:
    """Whether a live process holds ``leftover`` (see :func:`_hold`); when that cannot be told, it is."""
    try:
        fd = os.open(leftover, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held, or a file system that cannot tell
        return True
    finally:
        os.close(fd)  # also releases the lock just taken
    return False


class ForeignFilesError(ValueError):
    """An output folder that holds something its stage did not write."""


def refuse_foreign(folder: Path, ours: Callable[[str], bool], writer: str) -> None:
    """Refuse a folder ``writer`` would replace or clear if it holds a file ``ours`` does not claim.

    Stages replace their output folders as a whole (or remove what an earlier run left there), so
    a user's folder given by mistake must be refused before anything in it changes. ``ours`` is
    asked about every file and link below ``folder``, by its path relative to it (``a/b.png``);
    folders that hold no file hold nothing to lose (Snakemake makes the folders of a job's outputs
    before the job starts).
    """
    if folder.exists() and not folder.is_dir():
        raise ForeignFilesError(f"{folder} is a file: {writer} needs a folder of its own there")
    foreign = sorted(name for name in _files_below(folder) if not ours(name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ForeignFilesError(
            f"{folder} holds files {writer} did not write ({shown}); {writer} replaces or clears what it "
            "finds there, so nothing was written: give it a new or empty folder"
        )


def _files_below(folder: Path) -> Iterator[str]:
    """Relative paths of the files and links below ``folder`` (links are not followed)."""
    for root, dirs, files in os.walk(folder):
        here = Path(root).relative_to(folder)
        links = [name for name in dirs if os.path.islink(os.path.join(root, name))]
        dirs[:] = [name for name in dirs if name not in links]
        yield from ((here / name).as_posix() for name in (*files, *links))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one line and flush it, so a killed process loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")  # the format write_jsonl uses
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete lines; a torn last line (killed writer) is ignored, any other bad line names the file."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err})") from None
    return records


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace a JSONL file atomically, in the line format append_jsonl writes."""
    write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _deterministic_header(raw: bytes) -> bytes:
    """A safetensors header's JSON with its metadata sorted, space-padded to the format's alignment.

    The library writes metadata from a hash map, so its order (and the file's bytes) changes from
    call to call; the header is re-serialised with the metadata sorted and laid out as the format
    prescribes: UTF-8 JSON space-padded to a multiple of 8 bytes (keeping the tensor buffer
    aligned). Its length is recomputed, never assumed: any key or value may change it. Data offsets
    count from the buffer's start, so they stay valid.
    """
    header = json.loads(raw)
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % _SAFETENSORS_ALIGNMENT)


def _on_cpu(tensors: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes that depend only on the content (:func:`_deterministic_header`)."""
    from safetensors.torch import save

    data = save(_on_cpu(tensors), metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    text = _deterministic_header(data[8 : 8 + size])
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomic, deterministic safetensors write: the bytes of :func:`safetensors_bytes`.

    The library writes the file itself, which releases the GIL (its in-memory ``save`` holds it
    throughout, stalling a training thread beside a background write); the header is then put in
    its deterministic order in place.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(_on_cpu(tensors), str(tmp), metadata=metadata)
        with open(tmp, "r+b") as handle:
            size = int.from_bytes(handle.read(8), "little")
            text = _deterministic_header(handle.read(size))
            if len(text) == size:
                handle.seek(8)
                handle.write(text)
            else:  # another length: the buffer moves behind the new header
                body = handle.read()
                handle.seek(0)
                handle.write(len(text).to_bytes(8, "little") + text)
                handle.write(body)
                handle.truncate()
