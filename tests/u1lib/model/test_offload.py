"""Swap mode on CPU: the slot bookkeeping gives the same numbers as resident weights, and refuses misuse."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from u1lib.lora.adapter import wrap
from u1lib.lora.spec import resolve_spec
from u1lib.model.config import U1Config
from u1lib.model.loading import random_model
from u1lib.model.offload import apply_memory_plan, enable_swap, spread
from u1lib.model.u1 import PrefixKV
from u1lib.train.objectives import flow_loss


@pytest.fixture(scope="module")
def five_layer_model(golden_dir):
    """The tiny golden shapes with five layers, so two or three slots must be reused within a pass."""
    cfg = U1Config.from_file(golden_dir)
    cfg = U1Config(**{**cfg.to_dict(), "num_hidden_layers": 5})
    return random_model(cfg, ["und", "gen", "fm", "embed"], dtype=torch.float32, seed=1)


def _trainable(model):
    wrap(model, resolve_spec("attn=r4a4;mlp=r4a4", model.config))
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or name.startswith("fm_modules.fm_head"))
    g = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_up" in name:
            p.data = 0.05 * torch.randn(p.shape, generator=g)  # non-zero so LoRA grads reach the base path
    return model


def _batch(model, lengths=(5, 3)):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        ids = torch.randint(0, cfg.vocab_size, (1, n), generator=g)
        rows.append(model.prefix(ids))
    prefix = PrefixKV.stack(rows)
    images = torch.rand(len(lengths), 3, 16, 32, generator=g) * 2 - 1
    return images, prefix, torch.tensor([0.3, 0.8]), torch.randn(images.shape, generator=g)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = flow_loss(model, *batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("layers,slots", [(None, 2), (None, 3), ([0, 2, 3], 2), ([1], 2)])
def test_swap_training_step_equals_resident(five_layer_model, layers, slots):
    resident = _trainable(copy.deepcopy(five_layer_model))
    resident.recompute_layers = frozenset(range(len(resident.layers)))
    swapped = copy.deepcopy(resident)
    batch = _batch(resident)
    want_loss, want = _loss_and_grads(resident, batch)
    enable_swap(swapped, layers, slots=slots)
    for _ in range(2):  # the second step starts from the slots the first one left behind
        loss, grads = _loss_and_grads(swapped, batch)
        assert torch.equal(loss, want_loss)
        assert grads.keys() == want.keys() and all(torch.equal(grads[k], want[k]) for k in want)
    images, prefix, t, _ = batch
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(swapped.denoise(images, t, prefix, 2.0)[0], resident.denoise(images, t, prefix, 2.0)[0])


class _CountAttention(TorchDispatchMode):
    """Counts attention kernels that actually run (a kept output is served without reaching this mode)."""

    calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += "scaled_dot_product" in func.name() and "backward" not in func.name()
        return func(*args, **(kwargs or {}))


def test_keep_attention_skips_the_attention_recompute(five_layer_model):
    full = _trainable(copy.deepcopy(five_layer_model))
    full.recompute_layers = frozenset(range(len(full.layers)))
    selective = copy.deepcopy(full)
    selective.keep_attention = True
    batch = _batch(full)
    counted = {}
    for name, model in (("full", full), ("selective", selective)):
        model.zero_grad(set_to_none=True)
        loss = flow_loss(model, *batch).loss
        with _CountAttention() as counter:
            loss.backward()
        counted[name] = (
            loss.detach(),
            {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
            counter.calls,
        )
    (want_loss, want, recomputed), (loss, grads, kept) = counted["full"], counted["selective"]
    assert torch.equal(loss, want_loss) and all(torch.equal(grads[k], want[k]) for k in want)
    assert recomputed >= len(full.layers) and kept == 0


def test_swap_weights_leave_the_layer_and_come_back(golden_model):
    model = copy.deepcopy(golden_model)
    weight = model.layers[1].mlp_mot_gen.up_proj.weight
    before = weight.detach().clone()
    streamer = enable_swap(model, [1])
    assert weight.numel() == 0  # unbound until fetched
    assert model.layers[1].mlp.up_proj.weight.numel() > 0  # the understanding tower stays
    streamer.close()
    assert model.layer_streamer is None and torch.equal(weight, before)


def test_swap_refuses_unrecomputed_layers_with_grad(golden_model):
    model = _trainable(copy.deepcopy(golden_model))
    enable_swap(model)
    with pytest.raises(RuntimeError, match="not recomputed"):
        flow_loss(model, *_batch(model)).loss.backward()
    with pytest.raises(ValueError, match="already on"):
        enable_swap(model)


def test_spread_layers():
    assert spread(4, 42) == [5, 15, 26, 36]
    assert spread(42, 42) == list(range(42))
    assert spread(0, 42) == []
    with pytest.raises(ValueError):
        spread(43, 42)


@pytest.mark.parametrize("checkpointing,swap,streamed", [("all", 2, [1, 3]), (2, 2, [0, 2]), (2, 3, [0, 1, 2])])
def test_memory_plan_streams_layers_spread_over_the_recomputed_ones(five_layer_model, checkpointing, swap, streamed):
    """Layers that keep their activations (the last K) stay resident, so streaming combines with them."""
    model = copy.deepcopy(five_layer_model)
    apply_memory_plan(model, checkpointing=checkpointing, swap_layers=swap)
    try:
        assert sorted(model.layer_streamer.layers) == streamed
        assert set(streamed) <= model.recompute_layers
    finally:
        model.layer_streamer.close()


def test_memory_plan_refuses_more_streamed_layers_than_recomputed_naming_the_keys(five_layer_model):
    model = copy.deepcopy(five_layer_model)
    with pytest.raises(ValueError, match=r"train.swap_layers 4 streams more layers than the 3 that train.checkp"):
        apply_memory_plan(model, checkpointing=2, swap_layers=4)
    assert model.layer_streamer is None
