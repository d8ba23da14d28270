"""The typed training configuration, built once from the config's ``train`` section."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from u1lib.lora.io import FACTOR_DTYPES
from u1lib.train.objectives import LOSS_TYPES, NOISE_SCALES, TOKEN_WEIGHTINGS
from u1lib.train.previews import PreviewSettings
from u1lib.train.timesteps import T_DISTS
from u1lib.typed_config import from_section


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 200
    batch_size: int = 2  # global micro-batch: split across data-parallel ranks
    grad_accum: int = 1
    lr: float = 1e-3
    lora: str = "attn=r8a8;mlp=r8a8"
    lora_dropout: float = 0.0
    full_ft: tuple[str, ...] = ()
    loss_type: str = "x0"
    huber_delta: float = 1.0
    token_weighting: str = "none"  # sqrt: image loss weight ∝ sqrt(tokens) (objectives.image_weights)
    noise_scale: str = "clamped"  # unclamped: upstream's training noise scale (model/config.py)
    t_dist: str = "uniform"
    t_mean: float = -0.8
    t_std: float = 0.8
    t_shift: float = 1.0
    t_eps: float | None = None  # None: the model config's t_eps (0.05)
    cond_dropout: float = 0.0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema: float | None = None
    checkpointing: str | int = "none"  # none | all | K (all but the last K generation layers)
    val_every: int = 50
    val_t: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    val_seed: int = 1234
    val_max_items: int = 16
    ckpt_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    memory_mode: str = "resident"  # resident | online_prefix
    swap_layers: int = 0  # generation layers streamed from pinned host memory (needs checkpointing of them)
    keep_attention: bool = False  # recomputed layers keep attention outputs (recompute skips attention)
    compile: bool = False  # torch.compile each layer (CUDA; the first steps pay the compilation)
    compile_eval: bool | str = "auto"  # with compile: eval passes compiled too (true), eager (false), auto: if it pays
    fp8: bool = False  # frozen dense generation-layer matmuls in FP8 e4m3 (model/fp8.py; CUDA cc >= 8.9)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    device: str = "auto"
    # {"path", "skip"}: an upstream LoRA baked into the base (lora/io.py bake_upstream_lora); path null: none
    upstream_lora: dict = dataclasses.field(default_factory=lambda: {"path": None, "skip": []})
    save_every: int = 0  # also keep the adapter every N steps (adapters/step-N.safetensors); 0: only final + best
    preview_every: int = 0  # preview samples every N steps (previews/step-N/); 0: none
    preview: dict = dataclasses.field(default_factory=dict)  # PreviewSettings keys (train/previews.py)
    tensorboard: bool = True  # event files in run_dir/tensorboard
    wandb_project: str | None = None  # also log to this W&B project (needs the wandb package)
    adapter_dtype: str = "float32"  # dtype of the saved LoRA factors: float32 | bfloat16 (U1.5's own files)

    # settings that may change between a checkpoint and its resume without changing the math
    # (memory and speed modes are tested to give the same numbers, so they may change too); steps
    # only while the schedule does not depend on it
    RESUMABLE_CHANGES = (
        "steps",
        "val_every",
        "ckpt_every",
        "keep_checkpoints",
        "log_every",
        "device",
        "memory_mode",
        "checkpointing",
        "swap_layers",
        "keep_attention",
        "compile",
        "compile_eval",
        "save_every",
        "preview_every",
        "preview",
        "tensorboard",
        "wandb_project",
        "adapter_dtype",
    )

    def __post_init__(self):
        problems = []
        choices = {
            "loss_type": LOSS_TYPES,
            "token_weighting": TOKEN_WEIGHTINGS,
            "noise_scale": NOISE_SCALES,
            "t_dist": T_DISTS,
            "optimizer": ("adamw", "adamw8bit"),
            "schedule": ("constant", "cosine"),
            "memory_mode": ("resident", "online_prefix"),
            "precision": ("auto", "fp32", "bf16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"train.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("steps", "batch_size", "grad_accum"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"train.{name}: must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.cond_dropout <= 1:
            problems.append(f"train.cond_dropout: {self.cond_dropout} is not a probability")
        if self.lr <= 0:
            problems.append(f"train.lr: must be positive, got {self.lr}")
        if self.ema is not None and not 0 < self.ema < 1:
            problems.append(f"train.ema: decay {self.ema} must be in (0, 1) or null")
        if not isinstance(self.swap_layers, int) or self.swap_layers < 0:
            problems.append(f"train.swap_layers: must be a non-negative integer, got {self.swap_layers!r}")
        for name in ("save_every", "preview_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"train.{name}: must be a non-negative integer (0: off), got {getattr(self, name)!r}")
        if self.adapter_dtype not in FACTOR_DTYPES:
            problems.append(f"train.adapter_dtype: {self.adapter_dtype!r} is not one of {', '.join(FACTOR_DTYPES)}")
        try:
            PreviewSettings.from_dict(self.preview)
        except ValueError as err:
            problems.append(str(err).replace("\n  ", "; "))
        if self.compile_eval not in (True, False, "auto"):
            problems.append(f"train.compile_eval: {self.compile_eval!r} is not true, false or auto")
        ck = self.checkpointing
        if not (ck in ("none", "all") or (isinstance(ck, int) and ck >= 0)):
            problems.append(f"train.checkpointing: {ck!r} is not none, all or a non-negative integer")
        if problems:
            raise ValueError("invalid training settings:\n  " + "\n  ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainSettings":
        return from_section(cls, raw, "train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def compatibility(self) -> dict:
        """What a checkpoint must share with the run that resumes it (JSON-normalised: tuples as lists)."""
        data = self.to_dict()
        for name in self.RESUMABLE_CHANGES:
            if name != "steps" or self.schedule == "constant":  # a cosine schedule is shaped by steps
                data.pop(name, None)
        return json.loads(json.dumps(data))
