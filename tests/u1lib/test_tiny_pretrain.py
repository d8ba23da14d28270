"""The packaged pretrained tiny weights: recorded, used by default, reproducible, and better than noise."""

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import u1lib.tiny as tiny
from u1lib.data.prompts import PromptSpec, load_tokenizer
from u1lib.io import read_json, sha256_file
from u1lib.model.config import U1Config
from u1lib.model.loading import load_model
from u1lib.model.sampling import euler_sample, initial_noise
from u1lib.prefix import PrefixEncoder
from u1lib.tiny import (
    PRETRAINED_FILE,
    PRETRAINED_SHA256,
    build_tiny_snapshot,
    pretrained_weights,
    resolve_weights,
)
from u1lib.tiny_pretrain import COLOURS, pretrain, shape_image
from u1lib.tiny_weights import random_weights


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: build_tiny_snapshot(root / kind, weights=kind) for kind in ("auto", "random")}


def test_packaged_file_matches_its_recorded_sha256():
    sidecar = read_json(PRETRAINED_FILE.with_suffix(".json"))
    assert sha256_file(PRETRAINED_FILE) == PRETRAINED_SHA256 == sidecar["sha256"]
    assert sidecar["bytes"] == PRETRAINED_FILE.stat().st_size < 4_000_000
    assert sidecar["build_command"].startswith("python -m u1lib tiny --pretrain u1lib/model/tiny_u1_pretrained")


def test_default_snapshot_carries_the_pretrained_weights_and_random_the_old_ones(snapshots):
    cfg = U1Config.from_file(snapshots["auto"])
    with safe_open(snapshots["auto"] / "model.safetensors", "pt") as handle:
        assert handle.metadata()["u1lib.tiny_weights"] == "pretrained"
    default, rand = (load_file(snapshots[kind] / "model.safetensors") for kind in ("auto", "random"))
    assert all(default[k].equal(v) for k, v in pretrained_weights(cfg).items())
    assert all(rand[k].equal(v) for k, v in random_weights(cfg, seed=0).items())
    assert not default["fm_modules.fm_head.0.weight"].equal(rand["fm_modules.fm_head.0.weight"])


def test_pretrained_exists_for_u1_at_its_seed_only():
    assert [resolve_weights("auto", v, s) for v, s in (("u1", 0), ("u1", 1), ("u15", 0))] == [
        "pretrained",
        "random",
        "random",
    ]
    for variant, seed in (("u15", 0), ("a3b", 0), ("u1", 3)):
        with pytest.raises(ValueError, match="model.tiny_weights: random"):
            resolve_weights("pretrained", variant, seed)
    with pytest.raises(ValueError, match="model.tiny_weights"):
        resolve_weights("trained", "u1", 0)


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / PRETRAINED_FILE.name
    shutil.copyfile(PRETRAINED_FILE, damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    monkeypatch.setattr(tiny, "PRETRAINED_FILE", damaged)
    with pytest.raises(ValueError, match="PRETRAINED_SHA256"):
        build_tiny_snapshot(tmp_path / "snap")


def test_pretraining_is_deterministic_and_trains(snapshots):
    first, record = pretrain(steps=2, batch_size=2, log_every=1)
    second, _ = pretrain(steps=2, batch_size=2, log_every=1)
    assert first.keys() == second.keys()
    assert [k for k in first if not first[k].equal(second[k])] == []
    start = random_weights(U1Config.from_file(snapshots["random"]), seed=0)
    unchanged = [k for k in start if start[k].half().equal(first[k])]
    assert unchanged and all(k.startswith("vision_model.") for k in unchanged)  # unused when generating
    assert record["steps"] == 2 and record["final_flow_loss"] > 0


def test_generated_images_match_their_captions():
    generator = torch.Generator().manual_seed(0)
    drawn = [shape_image(generator) for _ in range(40)]
    assert {tuple(image.shape) for image, _ in drawn} == {(3, 64, 64)}
    assert all(-1 <= float(image.min()) and float(image.max()) <= 1 for image, _ in drawn)
    assert {c.split()[-1] for _, c in drawn} >= {"background.", "stripes.", "bottom."}


def high_frequency_ratio(images: torch.Tensor) -> float:
    """Energy of neighbouring-pixel differences over twice the variance: ~1 for white noise, ~0 when smooth."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).pow(2).mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).pow(2).mean()
    return float((dx + dy) / (4 * images.var(dim=(-2, -1)).mean()))


def caption_colour_share(images: torch.Tensor, names: tuple[str, ...]) -> float:
    """Share of pixels within 0.25 (RGB in [0, 1]) of one of the colours the caption names."""
    rgb = (images.clamp(-1, 1) + 1) / 2
    palette = torch.tensor([COLOURS[name] for name in names])[:, None, :, None, None]
    return float(((rgb[None] - palette).norm(dim=2) < 0.25).any(dim=0).float().mean())


def test_pretrained_base_samples_have_structure_random_ones_do_not(snapshots):
    """The default workflow's sampler settings (10 steps, cfg 4, shift 3, 64x64) on shape captions."""
    captions = {
        "A large red circle on the center of a blue background.": ("red", "blue"),
        "Wide horizontal yellow and green stripes.": ("yellow", "green"),
    }
    figures = {}
    for kind, snapshot in snapshots.items():
        model = load_model(snapshot, ["und", "embed", "gen", "fm"])
        encoder = PrefixEncoder(model, load_tokenizer(snapshot), PromptSpec())
        noise = torch.cat([initial_noise(seed, 64, 64, model.config.noise_scale_for(64)) for seed in (0, 1)])
        cond = encoder.captions(list(captions))
        images = euler_sample(model, cond, encoder.uncond().repeat(2), noise, steps=10, shift=3.0, cfg_scale=4.0)
        share = min(caption_colour_share(image, names) for image, names in zip(images, captions.values()))
        figures[kind] = (high_frequency_ratio(images.clamp(-1, 1)), share)
    assert figures["random"][0] > 0.8 and figures["auto"][0] < 0.3, figures  # noise vs smooth
    assert figures["random"][1] < 0.2 and figures["auto"][1] > 0.5, figures  # the caption's colours drawn
