"""``python -m u1lib <verb> ...``: one entry point, each verb owned by the module that does the work.

Verbs are imported lazily so ``python -m u1lib pack`` never imports torch. Errors that name their
cause (bad input, a refused resume, a busy run folder) print as one line without a traceback;
``U1LIB_TRACEBACK=1`` shows it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

VERBS = {
    "tiny": ("u1lib.tiny", "Build the embedded tiny model snapshot"),
    "snapshot": (
        "u1lib.snapshot_sources",
        "Build, download or verify in place a model snapshot and write its manifest",
    ),
    "verify": (
        "u1lib.snapshot_sources",
        "Check a snapshot against its manifest (sha256) and its .py files against modeling.json",
    ),
    "install-modeling": ("u1lib.modeling", "Verify upstream modeling files against sha256 pins and install them"),
    "demo": ("u1lib.data.demo", "Write the demo photos (from scikit-image) and captions as a folder"),
    "pack": ("u1lib.data.pack", "Pack a folder of captioned images into parquet"),
    "inspect-data": ("u1lib.data.inspect", "Summarise a packed parquet file"),
    "cache": ("u1lib.cache", "Precompute prefix K/V of every caption"),
    "train": ("u1lib.train.cli", "Train a LoRA"),
    "sample": ("u1lib.sample", "Sample images from base model and adapters"),
    "report": ("u1lib.report", "Build the HTML ablation report"),
    "inspect": ("u1lib.lora.inspect", "Show LoRA targets and trainable counts from config.json alone"),
    "export": ("u1lib.lora.export", "Export an adapter for each consumer (upstream LoRA, merged snapshot, PEFT)"),
    "parity": ("u1lib.parity", "Check the engine against a golden folder"),
    "bench": ("u1lib.bench", "Full-size random-weight benchmarks (GPU)"),
}
# what a user can act on from the message alone (ValueError covers the config, data and snapshot errors)
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, VERBS))
        lines = [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in VERBS.items()]
        print("usage: python -m u1lib <verb> [options]\n\nverbs:\n" + "\n".join(lines))
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"u1lib: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = importlib.import_module(VERBS[verb][0])
    try:
        # each owning module exposes cli(verb, argv) -> exit code
        return int(module.cli(verb, rest) or 0)
    except KeyboardInterrupt as err:
        detail = str(err) or "interrupted; files written so far are complete (every write is atomic)"
        print(f"u1lib {verb}: {detail}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("U1LIB_TRACEBACK"):
            raise
        print(f"u1lib {verb}: {err}", file=sys.stderr)
        return 1
