"""The SenseNova-U1 text-to-image model: prefix on the understanding tower, denoising on the generation tower.

Text never attends to image tokens, so text-to-image splits exactly into two calls: a causal prefix
pass that yields per-layer K/V, and generation passes whose image tokens attend to that cache.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from u1lib.device import compute_dtype
from u1lib.model.config import U1Config
from u1lib.model.embedders import TimestepEmbedder, VisionModel, patchify
from u1lib.model.heads import make_head
from u1lib.model.layers import DecoderLayer, RMSNorm, Runs
from u1lib.model.rope import AxisAngles


@dataclass
class PrefixKV:
    """Per-layer prefix keys/values [B, H_kv, L, D] (right-padded to L) and each row's true length."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor  # [B] int64
    _runs: Runs | None = field(default=None, init=False, repr=False, compare=False)
    _runs_known: bool = field(default=False, init=False, repr=False, compare=False)

    def runs(self) -> Runs | None:
        """(first row, end row, length) for consecutive rows of one prefix length; None if no row is padded.

        Read once per PrefixKV (the only host sync a generation pass needs), then reused at every step.
        """
        if not self._runs_known:
            width, runs = self.keys[0].shape[2], []
            for row, n in enumerate(self.lengths.tolist()):
                if runs and runs[-1][2] == n:
                    runs[-1] = (runs[-1][0], row + 1, n)
                else:
                    runs.append((row, row + 1, n))
            self._runs = None if all(n == width for _, _, n in runs) else runs
            self._runs_known = True
        return self._runs

    def repeat(self, times: int) -> "PrefixKV":
        """Each row repeated ``times`` times in place (row order a, a, b, b)."""
        rep = lambda t: t.repeat_interleave(times, dim=0)  # noqa: E731
        return PrefixKV([rep(k) for k in self.keys], [rep(v) for v in self.values], rep(self.lengths))

    def to(self, device=None, dtype=None) -> "PrefixKV":
        return PrefixKV(
            [k.to(device=device, dtype=dtype) for k in self.keys],
            [v.to(device=device, dtype=dtype) for v in self.values],
            self.lengths.to(device),
        )

    @staticmethod
    def stack(parts: list["PrefixKV"]) -> "PrefixKV":
        """Concatenate along the batch, right-padding every layer to the longest prefix."""
        width = max(p.keys[0].shape[2] for p in parts)
        pad = lambda t: F.pad(t, (0, 0, 0, width - t.shape[2]))  # noqa: E731
        layers = range(len(parts[0].keys))
        return PrefixKV(
            [torch.cat([pad(p.keys[i]) for p in parts]) for i in layers],
            [torch.cat([pad(p.values[i]) for p in parts]) for i in layers],
            torch.cat([p.lengths for p in parts]),
        )

    def select(self, index: int) -> "PrefixKV":
        """One row, trimmed to its own length."""
        n = int(self.lengths[index])
        return PrefixKV(
            [k[index : index + 1, :, :n] for k in self.keys],
            [v[index : index + 1, :, :n] for v in self.values],
            self.lengths[index : index + 1],
        )


_ATTENTION_OPS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
)


def _keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing: keep each attention kernel's output (and log-sum-exp), recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def recomputed_layers(policy: str | int, num_layers: int) -> frozenset[int]:
    """Layers whose activations are recomputed in backward: none, all, or all but the last K."""
    if policy == "none":
        return frozenset()
    if policy == "all":
        return frozenset(range(num_layers))
    return frozenset(range(max(0, num_layers - int(policy))))


def text_indexes(batch: int, length: int, device, start: int = 0) -> torch.Tensor:
    """Text positions [B, 3, L]: t = start..start+L-1, h = w = 0."""
    t = torch.arange(start, start + length, device=device)
    zeros = torch.zeros_like(t)
    return torch.stack((t, zeros, zeros))[None].expand(batch, -1, -1)


def image_indexes(prefix_lengths: torch.Tensor, token_h: int, token_w: int) -> torch.Tensor:
    """Image-token positions [B, 3, N]: t = that row's prefix length, (h, w) = raster position."""
    k = torch.arange(token_h * token_w, device=prefix_lengths.device)
    rows, cols = k // token_w, k % token_w
    t = prefix_lengths[:, None].expand(-1, k.numel())
    return torch.stack((t, rows[None].expand_as(t), cols[None].expand_as(t)), dim=1)


class Backbone(nn.Module):
    """``language_model.model``: token embeddings, decoder layers, one final norm per tower."""

    def __init__(self, cfg: U1Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_mot_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LanguageModel(nn.Module):
    def __init__(self, cfg: U1Config):
        super().__init__()
        self.model = Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


class U1Model(nn.Module):
    """Module tree and parameter names as upstream's NEOChatModel; forward split by tower.

    ``recompute_layers`` lists generation layers whose activations are recomputed in backward;
    with ``keep_attention`` their attention outputs are kept instead (one [S, hidden] tensor per
    layer) so the recompute skips the attention kernel; ``layer_streamer`` (set by
    :func:`u1lib.model.offload.enable_swap`) brings streamed layers' weights to the device around
    each call.
    """

    def __init__(self, cfg: U1Config):
        super().__init__()
        self.config = cfg
        self.language_model = LanguageModel(cfg)
        self.vision_model = VisionModel(cfg)
        fm = {
            "vision_model_mot_gen": VisionModel(cfg),
            "timestep_embedder": TimestepEmbedder(cfg),
            "fm_head": make_head(cfg),
        }
        if cfg.add_noise_scale_embedding:
            fm["noise_scale_embedder"] = TimestepEmbedder(cfg)
        self.fm_modules = nn.ModuleDict(fm)
        self.recompute_layers: frozenset[int] = frozenset()
        self.keep_attention = False
        self.layer_streamer = None

    def compile_layers(self, **options) -> None:
        """torch.compile each layer's prefix step and its generation step minus attention (CUDA speed).

        One compiled graph serves every layer (modules are inlined, parameters are graph inputs);
        attention stays eager, so prefix lengths and row runs never trigger a recompile.
        """
        und = torch.compile(DecoderLayer.forward_und, **options)
        qkv = torch.compile(DecoderLayer.gen_qkv, **options)
        out = torch.compile(DecoderLayer.gen_out, **options)
        for layer in self.layers:
            layer.forward_und = functools.partial(und, layer)
            layer.gen_qkv = functools.partial(qkv, layer)
            layer.gen_out = functools.partial(out, layer)

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.model.layers

    def _angles(self, indexes: torch.Tensor, hidden: torch.Tensor) -> AxisAngles:
        """RoPE tables in the dtype the projections will produce from ``hidden`` (autocast's, if on)."""
        cfg = self.config
        return AxisAngles(indexes, cfg.head_dim, cfg.rope_theta, cfg.rope_theta_hw, compute_dtype(hidden))

    def _checkpoint_options(self) -> dict:
        if not self.keep_attention:
            return {}
        return {"context_fn": functools.partial(create_selective_checkpoint_contexts, _keep_attention)}

    # understanding path -------------------------------------------------------------------
    def prefix(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None, *, final_norm: bool = False):
        """Causal prefix over right-padded token ids [B, L] -> PrefixKV (and the normed hidden if asked).

        Padding sits after each row's tokens, so causal attention keeps valid positions exact. Without
        ``final_norm`` the last layer stops at its K/V: its attention and MLP feed nothing kept.
        """
        b, length = input_ids.shape
        if lengths is None:
            lengths = torch.full((b,), length, dtype=torch.long, device=input_ids.device)
        h = self.language_model.model.embed_tokens(input_ids)
        angles = self._angles(text_indexes(b, length, input_ids.device), h)
        keys, values = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and not final_norm:
                k, v = layer.kv_und(h, angles)
            else:
                h, k, v = layer.forward_und(h, angles)
            keys.append(k)
            values.append(v)
        cache = PrefixKV(keys, values, lengths.to(torch.long))
        if final_norm:
            return cache, self.language_model.model.norm(h)
        return cache

    def extend_prefix(self, cache: PrefixKV, input_ids: torch.Tensor) -> tuple[PrefixKV, torch.Tensor]:
        """Feed tokens [1, n] after a one-row unpadded prefix: the longer PrefixKV and the new tokens' normed hidden.

        The new tokens take the next text positions and attend causally over the whole cache, so the
        result equals the prefix of the concatenated ids (think decoding).
        """
        if input_ids.shape[0] != 1 or cache.keys[0].shape[0] != 1:
            raise ValueError(
                f"extend_prefix takes one row, got ids {tuple(input_ids.shape)} and a cache of "
                f"{cache.keys[0].shape[0]} rows"
            )
        start = cache.keys[0].shape[2]
        h = self.language_model.model.embed_tokens(input_ids)
        angles = self._angles(text_indexes(1, input_ids.shape[1], input_ids.device, start), h)
        keys, values = [], []
        for layer, past_k, past_v in zip(self.layers, cache.keys, cache.values):
            h, k, v = layer.forward_und_after(h, angles, past_k, past_v)
            keys.append(k)
            values.append(v)
        return PrefixKV(keys, values, cache.lengths + input_ids.shape[1]), self.language_model.model.norm(h)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Understanding-tower logits of normed hidden states (``lm_head``, or the tied embeddings)."""
        lm = self.language_model
        weight = lm.model.embed_tokens.weight if self.config.tie_word_embeddings else lm.lm_head.weight
        return F.linear(hidden, weight)

    # generation path ----------------------------------------------------------------------
    def gen_embed(self, images: torch.Tensor, t: torch.Tensor, noise_scale: float) -> torch.Tensor:
        """Noisy images [B, 3, H, W], t [B] float32 -> generation input embeddings [B, N, hidden]."""
        fm = self.fm_modules
        cond = fm["timestep_embedder"](t)
        if "noise_scale_embedder" in fm:
            ns = torch.full_like(t, noise_scale / self.config.noise_scale_max_value, dtype=torch.float32)
            cond = cond + fm["noise_scale_embedder"](ns)
        return fm["vision_model_mot_gen"](images) + cond[:, None, :]

    def predict_x0(self, embeds, prefix: PrefixKV, token_h: int, token_w: int, taps: dict | None = None):
        """Generation tower + norm_mot_gen + fm_head: [B, N, hidden] -> x-prediction [B, N, 3*P*P].

        ``taps``, when given, receives each layer's output, the final normed hidden and the pixel
        head's inner maps (parity checks).
        """
        angles = self._angles(image_indexes(prefix.lengths, token_h, token_w), embeds)
        runs = prefix.runs()
        h = embeds
        for i, layer in enumerate(self.layers):
            run = layer.forward_gen if self.layer_streamer is None else self.layer_streamer.call(i, layer.forward_gen)
            args = (h, angles, prefix.keys[i], prefix.values[i], runs)
            if i in self.recompute_layers and torch.is_grad_enabled():
                h = checkpoint(run, *args, use_reentrant=False, **self._checkpoint_options())
            else:
                h = run(*args)
            if taps is not None:
                taps[f"layer{i}.out"] = h
        h = self.language_model.model.norm_mot_gen(h)
        if taps is not None:
            taps["final_hidden"] = h
        return self.fm_modules["fm_head"](h, token_h, token_w, taps)

    def denoise(self, images, t, prefix: PrefixKV, noise_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One generation pass on images [B, 3, H, W] at times t [B]: returns (x_pred, z) in token layout."""
        p = self.config.token_size
        token_h, token_w = images.shape[2] // p, images.shape[3] // p
        x_pred = self.predict_x0(self.gen_embed(images, t, noise_scale), prefix, token_h, token_w)
        return x_pred, patchify(images, p).to(x_pred.dtype)


def velocity(x_pred: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """v = (x_pred - z) / max(1 - t, t_eps), t [B] broadcast over tokens and channels."""
    return (x_pred - z) / (1 - t).clamp_min(t_eps).to(x_pred.dtype)[:, None, None]
