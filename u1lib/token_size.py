"""The model's token size (pixels per token side) as the workflow's config decides it, before any job.

Packing snaps images to it and sampling sizes must be multiples of it, so the workflow resolves
``dataset.buckets.token_size: auto`` and checks sample sizes while it plans. A tiny variant and a
model folder of the user's decide it from the config alone; a hub model's is read from its snapshot
once downloaded (for the checks only: what reruns must not depend on what is downloaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from u1lib.data.buckets import BucketError, BucketSpec
from u1lib.model.config import ConfigError, U1Config
from u1lib.snapshot import snapshot_dir

# each tiny variant's patch_size x merge as u1lib/tiny_config.py sets it, known without importing torch;
# tests/workflow/test_tiny_variants.py holds them to the builder
TINY_TOKEN_SIZE = {"u1": 8, "u15": 32, "a3b": 8}


def folder_token_size(folder: Path) -> int | None:
    """The token size in ``folder``'s config.json; None where it cannot be read (the snapshot stage
    then says why)."""
    try:
        return U1Config.from_file(folder).token_size
    except (ConfigError, OSError, ValueError):
        return None


def static_token_size(model: dict) -> tuple[int | None, str]:
    """(the token size where the config alone decides it, where it comes from); None for a hub model."""
    source = model["source"]
    if source == "tiny":
        return TINY_TOKEN_SIZE[model["tiny_variant"]], f"the tiny {model['tiny_variant']} model"
    if source == "hub":
        return None, f"{model['repo_id']}@{model['revision']}"
    return folder_token_size(Path(source)), f"{source}/config.json"


def downloaded_token_size(model: dict, manifest_path: Path) -> int | None:
    """A hub model's token size from the snapshot already downloaded, if it is of this revision."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        pinned = (manifest["repo_id"], manifest["revision"])
        folder = snapshot_dir(manifest_path, manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder_token_size(folder) if pinned == (model["repo_id"], model["revision"]) else None


@dataclass(frozen=True)
class ModelTokenSize:
    static: int | None  # decided by the config alone (what pack params may depend on)
    known: int | None  # static, or read from a downloaded snapshot of the pinned revision (checks only)
    origin: str  # where it comes from, for messages


def model_token_size(model: dict, manifest_path: Path) -> ModelTokenSize:
    """The config's ``model`` section's token size; ``manifest_path`` is where a hub snapshot's would be."""
    static, origin = static_token_size(model)
    known = static or (downloaded_token_size(model, manifest_path) if model["source"] == "hub" else None)
    return ModelTokenSize(static, known, origin)


def resolve_buckets(buckets: dict, model: ModelTokenSize) -> dict:
    """dataset.buckets with ``token_size: auto`` replaced where the config decides it (so auto and the
    same number written out are the same params); a number must be a multiple of the model's."""
    static, known, origin = model.static, model.known, model.origin
    token = buckets["token_size"]
    if token != "auto" and known and token % known:
        raise ValueError(
            f"dataset.buckets.token_size {token}: not a multiple of the model's token size {known} "
            f"({origin}); write auto (the default) to follow the model"
        )
    if token == "auto" and static:
        token = static
    if token != "auto":
        try:
            BucketSpec.from_dict({**buckets, "token_size": token})
        except BucketError as err:
            raise ValueError(f"dataset.buckets: {err}") from None
    return {**buckets, "token_size": token}


def sample_size_problems(samples: dict[str, dict], *, token: int, origin: str) -> list[str]:
    """One line per sample.width/height that is not a multiple of the token size; ``samples`` maps a
    label ('' for the shared section, 'variant NAME: ' for a grid's own value) to those keys."""
    problems = []
    for label, sample in samples.items():
        for key, value in sample.items():
            if key in ("width", "height") and value % token:
                below, above = max(token, value // token * token), (value // token + 1) * token
                problems.append(
                    f"{label}sample.{key} {value}: not a multiple of the model's token size {token} "
                    f"({origin}); the nearest are {below} and {above}"
                )
    return problems
