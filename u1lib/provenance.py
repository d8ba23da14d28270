"""Where a result came from: package versions and the git commit of this checkout (no torch import)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "safetensors", "transformers", "tokenizers", "pyarrow", "pillow", "snakemake", "numpy")


def versions() -> dict[str, str]:
    from u1lib import __version__

    found = {"python": platform.python_version(), "u1lib": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def git_commit(cwd: Path | None = None) -> str:
    """The commit of the checkout u1lib runs from (not of the working directory)."""
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def source_hash(*relative_paths: str) -> str:
    """Hash of u1lib source files (paths relative to the package): results computed by other code differ."""
    from u1lib import __version__

    root = Path(__file__).parent
    digest = hashlib.sha256(__version__.encode())
    for rel in relative_paths:
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return digest.hexdigest()[:16]
