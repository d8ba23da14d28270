"""The setup steps of a training run, each a function of the settings and what the steps before it
produced, so the trainer's constructor reads as the list of them (train/loop.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from u1lib.cache import PrefixCacheReader
from u1lib.data.reader import BucketBatchSampler, PackedDataset
from u1lib.io import read_json
from u1lib.lora.adapter import make_trainable
from u1lib.lora.io import bake_upstream_lora
from u1lib.lora.spec import TrainableSurface
from u1lib.model.fp8 import enable_fp8
from u1lib.model.loading import load_model
from u1lib.model.offload import apply_memory_plan
from u1lib.model.u1 import U1Model
from u1lib.train.inputs import RunFiles, open_cache, open_data
from u1lib.train.objectives import image_weights
from u1lib.train.prefetch import BatchPrefetcher
from u1lib.train.settings import TrainSettings


@dataclass
class RunInputs:
    manifest: dict
    train_data: PackedDataset
    val_data: PackedDataset
    val_source: str  # "held-out" or the training set itself
    cache: PrefixCacheReader | None  # None outside resident mode


def open_inputs(s: TrainSettings, files: RunFiles, device: torch.device, dtype: torch.dtype) -> RunInputs:
    """The data, and the prefix cache when resident: opened before the model loads, so they fail fast."""
    manifest = read_json(files.manifest_path)
    train_data, val_data, val_source = open_data(Path(files.train_parquet), files.val_parquet)
    cache = None
    if s.memory_mode == "resident":
        held_out = [val_data] if val_source == "held-out" else []
        cache = open_cache(files.cache_dir, manifest=manifest, data=[train_data, *held_out], device=device, dtype=dtype)
    return RunInputs(manifest, train_data, val_data, val_source, cache)


def load_base(s: TrainSettings, snapshot_dir, device: torch.device, dtype: torch.dtype) -> tuple[U1Model, dict]:
    """The towers training needs (the understanding tower only online), with any upstream LoRA baked
    in; returns the model and what was baked."""
    groups = ["gen", "fm"] + (["und", "embed"] if s.memory_mode == "online_prefix" else [])
    model = load_model(snapshot_dir, groups, device=device, dtype=dtype)
    return model, bake_upstream_lora(model, s.upstream_lora)


def make_surface(s: TrainSettings, model: U1Model) -> tuple[TrainableSurface, dict[str, torch.nn.Parameter]]:
    """Wrap the LoRA targets and unfreeze the full fine-tune patterns, store the frozen base in FP8
    where asked, then apply the memory plan (after the surface: only frozen weights stream); returns
    the surface and its trainable tensors."""
    surface = TrainableSurface.resolve(s.lora, s.full_ft, model.config)
    torch.manual_seed(s.seed)  # adapter init
    names = make_trainable(model, surface, dropout=s.lora_dropout)
    if s.fp8:
        enable_fp8(model)
    apply_memory_plan(
        model,
        checkpointing=s.checkpointing,
        keep_attention=s.keep_attention,
        swap_layers=s.swap_layers,
        compile=s.compile,
    )
    params = dict(model.named_parameters())
    return surface, {n: params[n] for n in names}


def batches(
    s: TrainSettings, data: PackedDataset, token_size: int, device: torch.device
) -> tuple[BucketBatchSampler, BatchPrefetcher, torch.Tensor | None]:
    """The bucketed batch order, the prefetching image loader and each image's loss weight (None: equal)."""
    sampler = BucketBatchSampler(data, s.batch_size, seed=s.seed, drop_last=True)
    loader = BatchPrefetcher(data, pin_memory=device.type == "cuda")
    return sampler, loader, image_weights(data.widths, data.heights, token_size, s.token_weighting)
