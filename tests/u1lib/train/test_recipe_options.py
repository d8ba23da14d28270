"""The official recipe's options: sqrt(token) image weighting, the unclamped training noise scale,
v-loss with 1/clamp(1 - t, 0.05), and config/recipes/official.yaml as the workflow loads it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from u1lib.data.reader import PackedDataset
from u1lib.grid import apply_overrides, expand
from u1lib.model.config import U1Config
from u1lib.tiny_config import tiny_config_dict
from u1lib.train import loop
from u1lib.train.lineage import lineage_differences
from u1lib.train.loop import train
from u1lib.train.objectives import flow_loss, image_weights
from u1lib.train.settings import TrainSettings

REPO = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO / "config" / "schema" / "config.schema.yaml"
RECIPE = REPO / "config" / "recipes" / "official.yaml"
TINY = U1Config.from_upstream_dict(tiny_config_dict(vocab_size=64))  # 8-px tokens, noise max 8
CONFIG_8B = U1Config.from_file(REPO / "u1lib" / "model" / "u1_8b_config.json")


class StubModel:
    """Predicts a fixed x0 and records what flow_loss gave it: losses by hand, no network."""

    def __init__(self, config: U1Config, x_pred: torch.Tensor):
        self.config, self.x_pred, self.seen = config, x_pred, {}

    def denoise(self, z, t, prefix, noise_scale):
        self.seen.update(z=z, noise_scale=noise_scale)
        return self.x_pred, z


def _constant_images(values, size=16):
    return torch.stack([torch.full((3, size, size), float(v)) for v in values])


def _loss(values, t, *, loss_type, weights=None, noise_scale_clamp=True, huber_delta=1.0):
    """Images of constant value per image, predicted as zeros: every error of image i is -values[i]."""
    images = _constant_images(values)
    tokens = (images.shape[2] // TINY.token_size) * (images.shape[3] // TINY.token_size)
    model = StubModel(TINY, torch.zeros(len(values), tokens, TINY.fm_out_dim))
    return flow_loss(
        model,
        images,
        prefix=None,
        t=torch.tensor(t),
        noise=torch.zeros_like(images),
        loss_type=loss_type,
        t_eps=0.05,
        huber_delta=huber_delta,
        weights=weights,
        clamp_noise_scale=noise_scale_clamp,
    )


# ------------------------------------------------------------------ weighting


def test_sqrt_weights_by_hand():
    # 8-px tokens: 64x64 -> 64 tokens, 128x128 -> 256, 64x128 -> 128; sqrt: 8, 16, 8*sqrt(2)
    weights = image_weights([64, 128, 64], [64, 128, 128], 8, "sqrt")
    mean = (8 + 16 + 8 * math.sqrt(2)) / 3
    assert weights.tolist() == pytest.approx([8 / mean, 16 / mean, 8 * math.sqrt(2) / mean], rel=1e-6)
    assert weights.dtype == torch.float32
    assert image_weights([64, 128], [64, 128], 8, "none") is None
    with pytest.raises(ValueError, match="'cube'"):
        image_weights([64], [64], 8, "cube")


def test_sqrt_weights_average_one_and_one_resolution_is_exactly_none():
    widths, heights = [64, 72, 56, 128, 64] * 7, [64, 56, 72, 32, 64] * 7
    assert float(image_weights(widths, heights, 8, "sqrt").double().mean()) == pytest.approx(1.0, abs=1e-7)
    same = image_weights([72] * 11, [56] * 11, 8, "sqrt")
    assert torch.equal(same, torch.ones(11))  # float64 first: no rounding leaves a 1 - 1e-8
    for loss_type in ("x0", "v", "huber_x0", "huber_v"):
        plain = _loss([0.5, -0.25, 0.125], [0.3, 0.6, 0.9], loss_type=loss_type)
        weighted = _loss([0.5, -0.25, 0.125], [0.3, 0.6, 0.9], loss_type=loss_type, weights=same[:3])
        assert torch.allclose(weighted.loss, plain.loss, rtol=1e-6, atol=0), loss_type


def test_weighted_losses_by_hand():
    weights = torch.tensor([0.5, 1.5])
    # x0-MSE per image: 0.5^2 = 0.25 and 0.25^2 = 0.0625
    assert _loss([0.5, -0.25], [0.2, 0.2], loss_type="x0").loss.item() == pytest.approx((0.25 + 0.0625) / 2)
    out = _loss([0.5, -0.25], [0.2, 0.2], loss_type="x0", weights=weights)
    assert out.loss.item() == pytest.approx((0.5 * 0.25 + 1.5 * 0.0625) / 2)
    assert out.x0_mse.tolist() == pytest.approx([0.25, 0.0625])  # the logged per-image values are unweighted
    # Huber (delta 1) of errors 0.5 and 0.25: 0.5 * e^2 = 0.125 and 0.03125
    out = _loss([0.5, -0.25], [0.2, 0.2], loss_type="huber_x0", weights=weights)
    assert out.loss.item() == pytest.approx((0.5 * 0.125 + 1.5 * 0.03125) / 2)


def test_v_loss_is_upstreams_form_with_the_clamp_at_0_05():
    # v-MSE = x0-MSE / clamp_min(1 - t, 0.05)^2: t 0.5 -> 1 / 0.5^2 = 4; t 0.99 -> 1 - t = 0.01 clamps to 0.05 -> 400
    out = _loss([0.5, -0.25], [0.5, 0.99], loss_type="v")
    assert out.v_mse.tolist() == pytest.approx([0.25 * 4, 0.0625 * 400])
    assert out.loss.item() == pytest.approx((1.0 + 25.0) / 2)


# ------------------------------------------------------------------ noise scale


def test_unclamped_noise_scale_at_a_large_token_count():
    # 8B: sqrt(N / 64), clamped at 8 = 2048²; 4096² = 16384 tokens -> 16 unclamped
    assert CONFIG_8B.noise_scale_for(16384) == 8.0
    assert CONFIG_8B.noise_scale_for(16384, clamp=False) == 16.0
    assert CONFIG_8B.noise_scale_for(4096) == CONFIG_8B.noise_scale_for(4096, clamp=False) == 8.0
    assert CONFIG_8B.noise_scale_for(256, clamp=False) == 2.0  # 512²: the clamp changes nothing
    # what training feeds the model: an 800x800 tiny image has 100² tokens -> sqrt(10000 / 64) = 12.5
    images, noise = torch.zeros(1, 3, 800, 800), torch.ones(1, 3, 800, 800)
    for clamp, expected in ((True, 8.0), (False, 12.5)):
        model = StubModel(TINY, torch.zeros(1, 100 * 100, TINY.fm_out_dim))
        flow_loss(model, images, None, torch.tensor([0.25]), noise, clamp_noise_scale=clamp)
        assert model.seen["noise_scale"] == expected
        assert torch.allclose(model.seen["z"], torch.full_like(images, 0.75 * expected))  # (1 - t) * ns * eps


# ------------------------------------------------------------------ settings


def test_settings_validate_the_new_keys_and_keep_old_checkpoints_resumable():
    s = TrainSettings()
    assert (s.token_weighting, s.noise_scale) == ("none", "clamped")
    assert not {"token_weighting", "noise_scale"} & set(TrainSettings.RESUMABLE_CHANGES)  # they change the math
    with pytest.raises(ValueError) as err:
        TrainSettings.from_dict({"token_weighting": "cube", "noise_scale": "off"})
    assert "train.token_weighting: 'cube' is not one of none, sqrt" in str(err.value)
    assert "train.noise_scale: 'off' is not one of clamped, unclamped" in str(err.value)
    # a checkpoint written before these keys existed counts as their defaults
    old = {k: v for k, v in s.compatibility().items() if k not in ("token_weighting", "noise_scale")}
    now = {"settings": s.compatibility(), "model": "m", "data": "d", "prompt": "p", "engine": "e"}
    saved = {**now, "settings": old}
    assert lineage_differences(saved, now) == []
    sqrt = {**now, "settings": TrainSettings(token_weighting="sqrt").compatibility()}
    assert lineage_differences(saved, sqrt) == ["train.token_weighting: checkpoint 'none', now 'sqrt'"]


def test_the_loop_passes_weights_over_the_training_set_and_the_unclamped_flag(tiny_workspace, tmp_path, monkeypatch):
    ws, calls, real = tiny_workspace, [], loop.flow_loss

    def recording(model, images, *args, **kwargs):
        calls.append((images.shape, kwargs["weights"], kwargs["clamp_noise_scale"]))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(loop, "flow_loss", recording)
    paths = {k: ws[k] for k in ("snapshot_dir", "manifest_path", "train_parquet", "val_parquet", "cache_dir")}
    settings = {"steps": 2, "batch_size": 2, "lora": "attn=r2a2", "val_every": 100, "val_max_items": 1}
    train({**settings, "token_weighting": "sqrt", "noise_scale": "unclamped"}, run_dir=tmp_path / "run", **paths)
    data = PackedDataset(ws["train_parquet"])
    mean = sum(math.sqrt((w // 8) * (h // 8)) for w, h in zip(data.widths, data.heights)) / len(data)
    assert len(calls) == 2
    for shape, weights, clamp in calls:
        assert clamp is False
        expected = math.sqrt((shape[2] // 8) * (shape[3] // 8)) / mean  # one bucket per batch: one weight
        assert weights.tolist() == pytest.approx([expected] * shape[0], rel=1e-6)
    calls.clear()
    train({**settings, "steps": 1}, run_dir=tmp_path / "plain", **paths)
    assert [(w, c) for _, w, c in calls] == [(None, True)]  # the defaults: today's path


# ------------------------------------------------------------------ the recipe file


def _with_recipe(base: str) -> dict:
    """config/<base> with the recipe merged over it, as Snakemake merges --configfile files, validated."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config" / base).read_text())
    update_config(config, yaml.safe_load(RECIPE.read_text()))
    validate(config, str(SCHEMA_PATH))  # also fills the schema's defaults, as the Snakefile does
    return config


@pytest.mark.parametrize("base", ["config.yaml", "u1-8b.yaml"])
def test_official_recipe_validates_and_builds_the_published_settings(base):
    config = _with_recipe(base)
    variants = expand(config["grid"], config)
    assert [v.name for v in variants] == ["loss-v_t-logit_normal"]  # the base's grid cannot undo the recipe
    train_section = apply_overrides(config, variants[0].knobs)["train"]
    s = TrainSettings.from_dict(train_section)  # as the train rule passes it
    published = {
        "loss_type": "v",
        "t_eps": 0.05,
        "t_dist": "logit_normal",
        "t_mean": -0.8,
        "t_std": 0.8,
        "t_shift": 1.0,
        "cond_dropout": 0.1,
        "optimizer": "adamw",
        "betas": (0.9, 0.95),
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "lr": 1e-4,
        "schedule": "constant",
        "warmup_steps": 0,
        "ema": None,
        "token_weighting": "sqrt",
        "noise_scale": "unclamped",
    }
    assert {key: getattr(s, key) for key in published} == published
    recipe = yaml.safe_load(RECIPE.read_text())
    assert set(recipe) == {"train", "grid"}  # model, data, buckets and sampler stay the base's


def test_every_recipe_number_cites_its_source():
    lines = RECIPE.read_text().splitlines()
    body = [line for line in lines if line.startswith("  ") and not line.lstrip().startswith("#")]
    train_lines = body[: next(i for i, line in enumerate(body) if line.startswith("  axes:"))]
    for line in train_lines:
        if any(ch.isdigit() for ch in line.split("#")[0]):
            assert "#" in line, f"uncited number: {line}"
    recipe_keys = set(yaml.safe_load(RECIPE.read_text())["train"])
    documented = (REPO / "docs" / "RECIPES.md").read_text()
    assert [key for key in sorted(recipe_keys) if f"`{key}`" not in documented] == []
