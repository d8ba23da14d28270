"""A run's lineage: what a checkpoint must share with the run that resumes it.

The settings that change the math, the base model, the training data, the prompt the prefixes were
made with, and the engine code: what the training step imports, less what cannot change a
checkpoint's tensors or the history it carries (display, file plumbing, the run summary, the resume
rule itself, this module among it).
"""

from __future__ import annotations

from u1lib.cache import PrefixCacheReader
from u1lib.data.prompts import PromptSpec
from u1lib.data.reader import PackedDataset
from u1lib.source_hash import code_hash
from u1lib.train.settings import TrainSettings

ENGINE_ENTRY = "train/loop.py"
LINEAGE_EXCLUDED = (
    "train/progress.py",
    "train/stop.py",
    "train/run_folder.py",
    "train/summary.py",
    "train/resume.py",
    "train/lineage.py",
    "train/metrics.py",
    "io.py",
    "provenance.py",
    "source_hash.py",
    "snapshot.py",
)
LABELS = {
    "model": "base model manifest",
    "data": "training data",
    "prompt": "prompt template/trigger",
    "engine": "engine code",
}


def run_lineage(s: TrainSettings, manifest: dict, data: PackedDataset, cache: PrefixCacheReader | None, prompt) -> dict:
    return {
        "settings": s.compatibility(),
        "model": manifest.get("manifest_hash"),
        "data": data.fingerprint(),
        # the prompt the prefixes were made with: the cache records it, online mode is given it
        "prompt": cache.info["prompt"] if cache is not None else PromptSpec.from_dict(prompt or {}).to_dict(),
        "engine": code_hash([ENGINE_ENTRY], exclude=LINEAGE_EXCLUDED),
    }


def lineage_differences(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's lineage and this run's, one readable item each.

    A setting the checkpoint does not mention (added to u1lib later) counts as its default value.
    """
    defaults = TrainSettings().compatibility()
    saved_settings = {**defaults, **saved.get("settings", {})}
    differ = [
        f"train.{k}: checkpoint {saved_settings.get(k)!r}, now {v!r}"
        for k, v in now["settings"].items()
        if saved_settings.get(k) != v
    ]
    differ += [f"{LABELS[k]}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in LABELS if saved.get(k) != now[k]]
    return differ
