"""Pretrain the tiny u1 model on generated shape images, so the default workflow shows what training does.

Random weights sample noise, before LoRA training and after it, so the default report shows no
effect of training. A few minutes of full training on the CPU, on images this module draws
(coloured discs, squares, stripes and gradients on coloured backgrounds, each with a caption naming
them), give a base model whose samples have structure; the LoRA variants then visibly move them
towards the demo photos. It never sees those photos, so that move is the LoRA's doing.

The weights are stored in the package (:data:`u1lib.tiny.PRETRAINED_FILE`, float16, its sha256
recorded in u1lib/tiny.py and in the sidecar JSON beside it). Rebuild them with
``python -m u1lib tiny --pretrain u1lib/model/tiny_u1_pretrained.safetensors``: fixed seeds, fixed
thread count and deterministic algorithms give the same bytes on the same torch build and CPU kind.

It reuses the engine's own maths: the training-time sampler (:func:`u1lib.train.timesteps.sample_t`),
the flow-matching loss (:func:`u1lib.train.objectives.flow_loss`) and the model's prefix path. Text
positions also learn next-token prediction, so ``lm_head`` is trained too; only the understanding
tower's vision embeddings (unused when generating from text) keep their random draw.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from u1lib.data.prompts import UNCOND_TEXT, PromptSpec, cond_text
from u1lib.io import save_safetensors, sha256_file, write_json
from u1lib.model.config import U1Config
from u1lib.model.u1 import PrefixKV, U1Model
from u1lib.tiny_config import tiny_config_dict
from u1lib.tiny_tokenizer import train_tokenizer, vocab_size_of
from u1lib.tiny_weights import file_metadata, random_weights
from u1lib.train.objectives import flow_loss
from u1lib.train.optim import make_optimizer, set_lr
from u1lib.train.settings import TrainSettings
from u1lib.train.timesteps import sample_t

log = logging.getLogger(__name__)

DEFAULT_STEPS = 1800
LOSS_TYPE = "x0"
SIZE = 64  # the default workflow's sample size: 8 x 8 tokens of 8 px
COLOURS = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.65, 0.2),
    "blue": (0.1, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.05),
    "purple": (0.5, 0.15, 0.65),
    "pink": (0.95, 0.55, 0.7),
    "brown": (0.45, 0.28, 0.12),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "grey": (0.5, 0.5, 0.5),
}
KINDS = ("circle", "square", "stripes", "gradient")
PLACES = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "center": (0.5, 0.5)}


def _pick(options, generator: torch.Generator):
    options = list(options)
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def shape_image(generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """One generated image [3, SIZE, SIZE] in [-1, 1] and its caption, drawn from ``generator``."""
    kind = _pick(KINDS, generator)
    fg_name = _pick(COLOURS, generator)
    bg_name = _pick([c for c in COLOURS if c != fg_name], generator)
    fg, bg = (torch.tensor(COLOURS[n])[:, None, None] for n in (fg_name, bg_name))
    coords = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE
    y, x = coords[:, None], coords[None, :]
    if kind in ("circle", "square"):
        place = _pick(PLACES, generator)
        cx, cy = PLACES[place]
        half = 0.14 + 0.1 * float(torch.rand((), generator=generator))
        if kind == "circle":
            mask = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
        else:
            mask = ((x - cx).abs() <= half) & ((y - cy).abs() <= half)
        size = "large" if half > 0.19 else "small"
        caption = f"A {size} {fg_name} {kind} on the {place} of a {bg_name} background."
    elif kind == "stripes":
        vertical = bool(torch.rand((), generator=generator) < 0.5)
        period = _pick((16, 32), generator)
        axis = torch.arange(SIZE)[None, :] if vertical else torch.arange(SIZE)[:, None]
        mask = ((axis % period) < period // 2).expand(SIZE, SIZE)
        width = "thin" if period == 16 else "wide"
        caption = f"{width.capitalize()} {'vertical' if vertical else 'horizontal'} {fg_name} and {bg_name} stripes."
    else:
        ramp = y.expand(SIZE, SIZE)
        image = bg * (1 - ramp) + fg * ramp
        return image * 2 - 1, f"A smooth gradient from {bg_name} at the top to {fg_name} at the bottom."
    image = torch.where(mask, fg, bg)
    return image * 2 - 1, caption


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic kernels on ``threads`` intra-op threads, restoring the caller's settings afterwards.

    The count is fixed because reduction order follows it. One by default: on a busy machine two
    OpenMP threads that wait on each other ran 15 times slower per step than one.
    """
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _prefixes(model: U1Model, shared: PrefixKV, suffixes: list[list[int]], uncond: list[int], dropped: list[bool]):
    """Every row's prefix K/V and the next-token loss of its caption tokens.

    Every caption's prefix starts with the same system message, so its K/V are computed once and
    each caption's own tokens extend it (causal attention: the result equals the prefix of the whole
    text); that cuts the understanding tower's work per row from ~300 tokens to ~30. Rows whose
    condition is dropped get the unconditional prefix, computed once.
    """
    uncond_kv = model.prefix(torch.tensor([uncond]))
    parts, logits, targets = [], [], []
    for suffix, drop in zip(suffixes, dropped):
        if drop:
            parts.append(uncond_kv)
            continue
        kv, hidden = model.extend_prefix(shared, torch.tensor([suffix]))
        parts.append(kv)
        logits.append(model.lm_logits(hidden[0, :-1]))
        targets.append(torch.tensor(suffix[1:]))
    lm = F.cross_entropy(torch.cat(logits).float(), torch.cat(targets)) if logits else torch.zeros(())
    return PrefixKV.stack(parts), lm


def _split_ids(encode, spec: PromptSpec) -> tuple[list[int], Callable[[str], list[int]]]:
    """The system message's token ids and a function giving the ids of a caption's remaining text,
    checked to concatenate to the ids of the whole conditional text."""
    marker = "<|im_start|>user"
    shared_text = cond_text(spec, "").partition(marker)[0]
    shared = encode(shared_text)

    def suffix(caption: str) -> list[int]:
        text = cond_text(spec, caption)
        rest = encode(text[len(shared_text) :])
        if shared + rest != encode(text):
            raise ValueError(f"caption {caption!r}: its tokens do not split at {marker!r}")
        return rest

    return shared, suffix


def pretrain(
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int = 1,
    cond_dropout: float = 0.1,
    lm_weight: float = 0.1,
    log_every: int = 100,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train every weight of the tiny u1 model from its seed-``seed`` random draw; returns the float16
    weights and a record of how they were made (settings, final losses, wall time)."""
    started = time.perf_counter()
    tokenizer = train_tokenizer()
    config = tiny_config_dict(vocab_size_of(tokenizer), "u1")
    cfg = U1Config.from_upstream_dict(config, source="tiny_config_dict(variant='u1')")
    spec = PromptSpec()

    def encode(text: str) -> list[int]:  # as u1lib.data.prompts.encode, on the tokenizers object itself
        return tokenizer.encode(text, add_special_tokens=False).ids

    uncond_ids = encode(UNCOND_TEXT)
    shared_ids, split = _split_ids(encode, spec)
    with deterministic(threads):
        model = U1Model(cfg)
        model.load_state_dict(random_weights(cfg, seed), strict=True)
        model.train()
        params = list(model.parameters())
        # the trainer's optimizer and schedule: linear warm-up, then cosine to 0 (short runs end on small steps)
        schedule = TrainSettings(
            steps=steps, lr=lr, warmup_steps=max(1, steps // 20), schedule="cosine", weight_decay=0.01
        )
        optimizer = make_optimizer(params, schedule, torch.device("cpu"))
        generator = torch.Generator("cpu").manual_seed(seed)
        recent: list[tuple[float, float]] = []
        for step in range(steps):
            set_lr(optimizer, step, schedule)
            drawn = [shape_image(generator) for _ in range(batch_size)]
            images = torch.stack([image for image, _ in drawn])
            dropped = (torch.rand(batch_size, generator=generator) < cond_dropout).tolist()
            suffixes = [split(caption) for _, caption in drawn]
            t = sample_t(batch_size, "logit_normal", generator, t_eps=cfg.t_eps, mean=cfg.P_mean, std=cfg.P_std)
            noise = torch.randn(images.shape, generator=generator)
            shared = model.prefix(torch.tensor([shared_ids]))
            prefix, lm = _prefixes(model, shared, suffixes, uncond_ids, dropped)
            flow = flow_loss(model, images, prefix, t, noise, loss_type=LOSS_TYPE, t_eps=cfg.t_eps).loss
            optimizer.zero_grad(set_to_none=True)
            (flow + lm_weight * lm).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            recent = (recent + [(flow.item(), lm.item())])[-log_every:]
            if (step + 1) % log_every == 0 or step + 1 == steps:
                mean = [sum(v) / len(recent) for v in zip(*recent)]
                log.info("step %d/%d: flow loss %.4f, lm loss %.3f (last %d)", step + 1, steps, *mean, len(recent))
    weights = {key: value.detach().to(torch.float16).contiguous() for key, value in model.state_dict().items()}
    record = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "cond_dropout": cond_dropout,
        "lm_weight": lm_weight,
        "loss_type": LOSS_TYPE,
        "t_dist": "logit_normal",
        "final_flow_loss": round(mean[0], 5),
        "final_lm_loss": round(mean[1], 4),
        "wall_s": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    return weights, record


def write_pretrained(path: str | Path, steps: int | None = None) -> dict:
    """Pretrain for ``steps`` (default :data:`DEFAULT_STEPS`), write the weights to ``path`` and the
    sidecar ``<stem>.json`` beside it (build command, settings, losses, size, sha256); returns the sidecar."""
    path = Path(path)
    command = f"python -m u1lib tiny --pretrain {path}" + ("" if steps is None else f" --steps {steps}")
    weights, record = pretrain(steps=DEFAULT_STEPS if steps is None else steps)
    save_safetensors(path, weights, file_metadata(record["seed"], "pretrained"))
    record = {"file": path.name, "build_command": command, **record, "bytes": path.stat().st_size}
    record["sha256"] = sha256_file(path)
    write_json(path.with_suffix(".json"), record)
    return record
