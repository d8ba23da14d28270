"""Which checkpoint a run may resume from, and what happens to the ones it may not.

The rule: a run delivers exactly ``train.steps`` steps under the settings it is given, or it
refuses with the reason and the fix. A checkpoint qualifies when its lineage matches (the settings
that change the math, the base model, the data, the prompt, the engine code: train/lineage.py) and
its step is at most ``train.steps``. ``steps`` is part of the math itself when the schedule
depends on it (cosine; see TrainSettings.compatibility), so a changed step count never reshapes a
resumed schedule.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from u1lib.train import checkpoint as ckpt
from u1lib.train.lineage import lineage_differences

ON_INCOMPATIBLE = ("refuse", "restart")
ASIDE = "checkpoints.previous"


class IncompatibleCheckpoint(ValueError):
    """A checkpoint this run cannot continue from: other math, other inputs, or past the asked steps."""


def set_aside(folder: Path, paths: list[Path], why: str) -> None:
    """Move checkpoints this run will not use to ``checkpoints.previous`` (replacing what was there)."""
    aside = folder.with_name(ASIDE)
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True)
    for path in paths:
        path.rename(aside / path.name)
    names = ", ".join(path.name for path in paths)
    print(f"warning: {why}; moved {names} from {folder} to {aside}", file=sys.stderr)


def choose_checkpoint(folder: Path, lineage: dict, steps: int, on_incompatible: str) -> ckpt.TrainState | None:
    """The checkpoint to resume from, or None to start from step 0 (refusing raises)."""
    if on_incompatible not in ON_INCOMPATIBLE:
        raise ValueError(f"on_incompatible {on_incompatible!r} is not one of {ON_INCOMPATIBLE}")
    newest, problems = ckpt.newest_valid(folder)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if newest is None:
        return None
    differ = lineage_differences(newest.info.get("lineage", {}), lineage)
    if differ:
        why = f"{folder} was written with different settings ({'; '.join(differ)})"
        fix = "Restore those settings, or start over"
        return _refuse_or_restart(folder, why, fix, on_incompatible)
    if newest.step <= steps:
        return newest
    # asked for fewer steps than done: an earlier checkpoint of the same trajectory delivers exactly them
    earlier, _ = ckpt.newest_valid(folder, max_step=steps)
    if earlier is not None and not lineage_differences(earlier.info.get("lineage", {}), lineage):
        later = [p for p in ckpt.list_checkpoints(folder) if ckpt.checkpoint_step(p) > earlier.step]
        set_aside(folder, later, f"train.steps is {steps}: resuming from step {earlier.step}")
        return earlier
    kept = ", ".join(str(ckpt.checkpoint_step(p)) for p in ckpt.list_checkpoints(folder))
    why = (
        f"{folder} holds checkpoints at steps {kept}, past train.steps {steps}, and none at or before it; "
        "a run delivers exactly the steps asked for"
    )
    fix = f"Ask for at least {newest.step} steps to continue that run, or start over"
    return _refuse_or_restart(folder, why, fix, on_incompatible)


def _refuse_or_restart(folder: Path, why: str, fix: str, on_incompatible: str) -> None:
    if on_incompatible == "refuse":
        raise IncompatibleCheckpoint(
            f"{why}. {fix}: move that folder away (or pass --on-incompatible restart, which moves it to {ASIDE})."
        )
    set_aside(folder, ckpt.list_checkpoints(folder), f"starting over; {why}")
    return None
