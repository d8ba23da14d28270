"""One benchmark measure: what to run, at which shape (every field is a CLI flag)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MEASURES = ("calibrate", "train", "sample", "prefix", "coldstart")
UNCOND_TOKENS = 10  # the neo1_0 unconditional prefix is 10 tokens
# the 8B model's config.json ships with the package: benchmarks need its shapes, not its weights
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "model" / "u1_8b_config.json"


@dataclass
class Measure:
    """One benchmark: what to run and at which shape (every field is a CLI flag)."""

    measure: str
    size: int = 2048  # square image side in pixels (train, sample, coldstart)
    batch: int = 1  # images per step (train, sample) or captions per forward (prefix)
    prefix: int = 300  # text tokens per prefix; rows of a batch vary by up to +-prefix_spread
    prefix_spread: int = 20
    checkpointing: str = "all"  # all | none | K (the top K layers keep activations, as train.checkpointing)
    keep_attention: bool = False  # recomputed layers keep their attention outputs (no attention recompute)
    swap_layers: int = 0  # generation layers streamed from pinned host memory (0 = all resident)
    slots: int = 2  # device buffers for streamed layers
    steps: int = 50  # sampler steps
    cfg_scale: float = 4.0
    lora: str = "default"  # LoRA spec or preset for training
    compile: bool = False
    fp8: bool = False  # frozen dense generation-layer matmuls in FP8 (train, sample; model/fp8.py)
    warmup: int = 3
    iters: int = 8
    profile: bool = False
    label: str = ""

    def __post_init__(self):
        problems = []
        if self.measure not in MEASURES:
            problems.append(f"measure {self.measure!r} is not one of {', '.join(MEASURES)}")
        if self.checkpointing not in ("all", "none") and not str(self.checkpointing).isdigit():
            problems.append(f"checkpointing {self.checkpointing!r} must be all, none or a layer count")
        for name in ("batch", "prefix", "iters", "slots", "steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("bench settings: " + "; ".join(problems))

    def prefix_lengths(self) -> list[int]:
        """Row prefix lengths: all ``prefix`` for one row, else spread deterministically around it."""
        if self.batch == 1 or self.prefix_spread == 0:
            return [self.prefix] * self.batch
        span = 2 * self.prefix_spread + 1
        return [max(1, self.prefix - self.prefix_spread + (row * 37) % span) for row in range(self.batch)]
