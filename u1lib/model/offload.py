"""Swap mode: frozen generation-layer weights live in pinned host memory and stream to the device.

A few device "slots", each the size of one layer's frozen weights, hold the layers in use; a side
stream copies the next layer in the expected order into a free slot while the current one computes,
in forward and during the backward recompute (backward runs the layers top-down). A slot is only
overwritten after the compute stream has passed an event recorded when its owner's last use was
enqueued: right after a forward call, or, for a layer recomputed in backward, when the next lower
layer's recompute begins (its backward, which needs this layer's output gradient, follows all of
this layer's backward kernels).

Streamed layers must be recomputed in backward when gradients are on: a plain autograd graph would keep
references to weights whose slot is later reused. Trainable tensors (LoRA, full fine-tune) and the
small norm weights never move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from u1lib.model.u1 import U1Model, recomputed_layers


@dataclass
class _Layer:
    params: list[nn.Parameter]
    shapes: list[torch.Size]
    host: torch.Tensor  # flat copy of the layer's frozen weights (pinned on CUDA)
    slot: int | None = None
    in_backward: bool = False  # recomputed for backward; its slot frees when a lower layer starts


class LayerStreamer:
    """Moves streamed layers' frozen weights between host and ``slots`` device buffers."""

    def __init__(self, model: U1Model, layers: Iterable[int], slots: int = 2):
        if slots < 2:
            raise ValueError(f"swap mode needs at least 2 device slots (one computing, one loading), got {slots}")
        self.model = model
        self.order = sorted(set(layers))
        frozen = {index: self._frozen(index) for index in self.order}
        dtypes = {params[0].dtype for params in frozen.values()}
        if len(dtypes) > 1:
            raise ValueError(f"streamed layers mix weight dtypes {sorted(map(str, dtypes))}; swap mode needs one")
        first = frozen[self.order[0]][0]
        self.device, dtype = first.device, first.dtype
        self.cuda = self.device.type == "cuda"
        # one host buffer for all layers: the pinned allocator rounds each request up to a power of two
        sizes = {index: sum(p.numel() for p in params) for index, params in frozen.items()}
        host = torch.empty(sum(sizes.values()), dtype=dtype, pin_memory=self.cuda)
        self.layers: dict[int, _Layer] = {}
        offset = 0
        for index, params in frozen.items():
            layer = _Layer(params, [p.shape for p in params], host[offset : offset + sizes[index]])
            for p, view in zip(params, self._views(layer, layer.host)):
                view.copy_(p.data)
                p.data = p.data.new_empty(0)  # unbound until the layer is fetched
            self.layers[index] = layer
            offset += sizes[index]
        size = max(sizes.values())
        self.slots = [torch.empty(size, dtype=dtype, device=self.device) for _ in range(min(slots, len(self.order)))]
        self.owner: list[int | None] = [None] * len(self.slots)
        self.side = torch.cuda.Stream(self.device) if self.cuda else None
        self.slot_free: list = [None] * len(self.slots)  # event: last use of the slot's owner enqueued
        self.ready: dict[int, torch.cuda.Event] = {}  # layer -> event: its copy finished

    def _frozen(self, index: int) -> list[nn.Parameter]:
        """One layer's frozen 2-D ``_mot_gen`` weights (what streams); all of one dtype, not on meta."""
        params = [
            p
            for name, p in self.model.layers[index].named_parameters()
            if "_mot_gen" in name and p.dim() == 2 and not p.requires_grad
        ]
        if not params:
            raise ValueError(f"generation layer {index} has no frozen weights to stream (is the gen group loaded?)")
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise ValueError(
                f"generation layer {index} mixes weight dtypes {sorted(map(str, dtypes))}; swap mode needs one"
            )
        if any(p.is_meta for p in params):
            raise ValueError(f"generation layer {index} has weights on the meta device; load the gen group first")
        return params

    @staticmethod
    def _views(layer: _Layer, flat: torch.Tensor) -> list[torch.Tensor]:
        """The layer's weights as views into a flat buffer (host copy or device slot)."""
        views, offset = [], 0
        for shape in layer.shapes:
            n = shape.numel()
            views.append(flat[offset : offset + n].view(shape))
            offset += n
        return views

    # slot bookkeeping ----------------------------------------------------------------------
    def _bind(self, index: int, slot: int) -> None:
        layer = self.layers[index]
        for p, view in zip(layer.params, self._views(layer, self.slots[slot])):
            p.data = view
        layer.slot = slot

    def _unbind(self, index: int) -> None:
        layer = self.layers[index]
        for p in layer.params:
            p.data = p.data.new_empty(0)
        layer.slot, layer.in_backward = None, False

    def _fetch(self, index: int, keep: set[int]) -> None:
        """Start copying ``index`` into a slot whose owner is outside ``keep``."""
        if self.layers[index].slot is not None:
            return
        slot = next(s for s, owner in enumerate(self.owner) if owner is None or owner not in keep)
        previous = self.owner[slot]
        if previous is not None:
            self._unbind(previous)
        self.owner[slot] = index
        layer = self.layers[index]
        target = self.slots[slot][: layer.host.numel()]
        if self.cuda:
            if self.slot_free[slot] is not None:
                self.side.wait_event(self.slot_free[slot])
            with torch.cuda.stream(self.side):
                target.copy_(layer.host, non_blocking=True)
                self.ready[index] = self.side.record_event()
        else:
            target.copy_(layer.host)
        self._bind(index, slot)

    def _release(self, index: int) -> None:
        """Everything that reads ``index``'s weights is enqueued: its slot may be refilled after this point."""
        slot = self.layers[index].slot
        if slot is not None and self.cuda:
            self.slot_free[slot] = torch.cuda.current_stream(self.device).record_event()
        self.layers[index].in_backward = False

    def _upcoming(self, index: int, recompute: bool, grad: bool) -> list[int]:
        """Streamed layers expected after ``index``: up in forward, down in backward, then the next pass."""
        pos = self.order.index(index)
        up, down = self.order[pos + 1 :], self.order[:pos][::-1]
        if recompute:
            after = down + self.order  # backward continues down, then the next forward starts at the bottom
        elif grad:
            after = up + self.order[::-1]  # forward continues up, then backward recomputes top-down
        else:
            after = up + self.order  # inference: the next pass starts at the bottom
        upcoming: list[int] = []
        if len(self.slots) == 1:
            return upcoming
        for other in after:
            if other != index and other not in upcoming:
                upcoming.append(other)
            if len(upcoming) == len(self.slots) - 1:
                break
        return upcoming

    def _acquire(self, index: int, recompute: bool) -> None:
        for other, layer in self.layers.items():
            if layer.in_backward and other != index:
                self._release(other)  # a lower layer's recompute (or a new pass) started: its backward is enqueued
        upcoming = self._upcoming(index, recompute, torch.is_grad_enabled())
        self._fetch(index, keep={index})
        for other in upcoming:
            self._fetch(other, keep={index, *upcoming})
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.ready[index])
        self.layers[index].in_backward = recompute

    def call(self, index: int, fn: Callable) -> Callable:
        """``fn`` (one layer's forward) wrapped so the weights are in place; pass-through for resident layers."""
        if index not in self.layers:
            return fn
        if torch.is_grad_enabled() and index not in self.model.recompute_layers:
            raise RuntimeError(
                f"swap mode streams layer {index}, which is not recomputed; with gradients on every streamed "
                "layer must be in model.recompute_layers"
            )
        calls = 0

        def run(*args):
            nonlocal calls
            recompute, calls = calls > 0, calls + 1  # the second call is checkpoint's backward recompute
            self._acquire(index, recompute)
            out = fn(*args)
            if not recompute:
                self._release(index)
            return out

        return run

    def close(self) -> None:
        """Put every streamed weight back on the device as an ordinary resident tensor (swap mode off)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.side)
        for layer in self.layers.values():
            for p, view in zip(layer.params, self._views(layer, layer.host)):
                p.data = view.to(self.device, copy=True)
        self.model.layer_streamer = None


def enable_swap(model: U1Model, layers: Iterable[int] | None = None, slots: int = 2) -> LayerStreamer:
    """Stream the frozen weights of ``layers`` (default: every generation layer) from host memory.

    Call after LoRA wrapping and after choosing the trainable tensors: whatever requires grad stays.
    With gradients on, the streamed layers must be recomputed (``model.recompute_layers``).
    """
    if model.layer_streamer is not None:
        raise ValueError("swap mode is already on for this model")
    chosen = range(len(model.layers)) if layers is None else list(layers)
    if not chosen:
        raise ValueError("swap mode needs at least one layer to stream")
    bad = [i for i in chosen if not 0 <= i < len(model.layers)]
    if bad:
        raise ValueError(f"swap layers {bad} out of range 0..{len(model.layers) - 1}")
    streamer = LayerStreamer(model, chosen, slots)
    model.layer_streamer = streamer
    if streamer.cuda:
        torch.cuda.empty_cache()  # hand the freed resident weights back
    return streamer


def spread(count: int, total: int) -> list[int]:
    """``count`` layer indices spread evenly over ``total`` (partial swap: each copy hides behind the gap)."""
    if not 0 <= count <= total:
        raise ValueError(f"cannot stream {count} of {total} layers")
    return sorted({round((j + 0.5) * total / count - 0.5) for j in range(count)}) if count else []


def apply_memory_plan(
    model: U1Model,
    *,
    checkpointing: str | int,
    keep_attention: bool = False,
    swap_layers: int = 0,
    slots: int = 2,
    compile: bool = False,
    section: str = "train",
) -> None:
    """Recomputed layers, kept attention outputs, streamed layers and compilation, checked together.

    Call after the trainable surface is set (streaming moves only frozen weights). Streamed layers
    must be recomputed in backward, so they are spread over the recomputed ones; asking for more than
    there are is refused naming ``section``'s keys.
    """
    layers = model.config.num_hidden_layers
    model.recompute_layers = recomputed_layers(checkpointing, layers)
    model.keep_attention = keep_attention
    if swap_layers:
        recomputed = sorted(model.recompute_layers)
        if swap_layers > len(recomputed):
            raise ValueError(
                f"{section}.swap_layers {swap_layers} streams more layers than the {len(recomputed)} that "
                f"{section}.checkpointing {checkpointing!r} recomputes, and streamed layers must be recomputed "
                f"in backward: lower {section}.swap_layers or recompute more layers ({section}.checkpointing all)"
            )
        enable_swap(model, [recomputed[i] for i in spread(swap_layers, len(recomputed))], slots=slots)
    if compile:
        model.compile_layers()
