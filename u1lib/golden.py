"""A golden folder replayed on the engine: upstream's calls on a small random model (format:
tests/data/golden_u1_tiny_a/README.md), recomputed tensor by tensor under the names of its
expected.safetensors. Everything (image size, sampler settings, t values, prompts) comes from the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from u1lib.data.prompts import load_tokenizer
from u1lib.io import read_json
from u1lib.model.embedders import patchify, unpatchify
from u1lib.model.mlp import record_routing
from u1lib.model.sampling import CFG_NORMS, SAMPLER_T_EPS, euler_sample, time_grid
from u1lib.model.think import ThinkTokens, decode_think
from u1lib.model.u1 import PrefixKV, U1Model, image_indexes, text_indexes, velocity

THINK_STOPS = ("think_end", "eos", "budget")
UPSTREAM_THINK_BUDGET = 1024  # t2i_generate's default when meta.json names none


def _patches_channel_first(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B * (H/p)(W/p), 3*p*p], inner order (channel, row, col): the vision tower's input rows."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * (h // p) * (w // p), c * p * p)


def _teps_from_suffix(digits: str) -> float:
    """``v_teps005`` -> 0.05, ``v_teps002`` -> 0.02 (golden naming)."""
    return float(f"{digits[0]}.{digits[1:]}")


def _cfg_settings(name: str, meta: dict) -> tuple[str, tuple[float, float]]:
    """A sampler run's (cfg_norm, cfg interval) from its golden name: ``cfgnorm_<norm>`` names the norm,
    a name with ``interval`` uses meta.json's ``cfg_interval`` (and ``cfg_interval_norm``)."""
    sampler = meta.get("sampler", {})
    norm = next((n for n in CFG_NORMS if f"cfgnorm_{n}" in name), None)
    interval = tuple(sampler.get("cfg_interval", (0.0, 1.0)))
    if "interval" in name:
        interval = tuple(meta["cfg_interval"])
        norm = norm or meta.get("cfg_interval_norm", "none")
    return norm or sampler.get("cfg_norm", "none"), interval


class GoldenRun:
    def __init__(self, folder: Path):
        self.folder = folder
        self.inputs = load_file(folder / "inputs.safetensors")
        self.meta = read_json(folder / "meta.json")
        sampler = self.meta.get("sampler", {})
        self.cfg_scale = float(sampler.get("cfg_scale", 4.0))
        self.sampler = sampler

    def prefix_names(self) -> list[str]:
        return sorted(m.group(1) for k in self.inputs if (m := re.fullmatch(r"prefix\.(\w+)\.input_ids", k)))

    def think_runs(self) -> list[str]:
        """Runs that decode a think block first: the ``<run>.prompt.input_ids`` inputs."""
        return sorted(m.group(1) for k in self.inputs if (m := re.fullmatch(r"(\w+)\.prompt\.input_ids", k)))

    def cfg_runs(self) -> list[str]:
        """Sampler runs without thinking under other CFG settings (meta.json ``cfg_used_per_step``)."""
        return sorted(set(self.meta.get("cfg_used_per_step", {})) - set(self.think_runs()))

    def given(self) -> dict[str, torch.Tensor]:
        """Inputs plus meta.json facts as tensors, to check what the engine derives on its own."""
        facts = {f"cfg_used.{n}": torch.tensor(used) for n, used in self.meta.get("cfg_used_per_step", {}).items()}
        facts |= {
            f"think_stop.{n}": torch.tensor(THINK_STOPS.index(r["stop"])) for n, r in self.meta.get("think", {}).items()
        }
        return self.inputs | facts

    def compute(self, model: U1Model, tag: str = "") -> dict[str, torch.Tensor]:
        """Everything this folder's inputs allow, named as in expected.safetensors (with an optional tag)."""
        cfg, inp, out = model.config, self.inputs, {}
        prefixes: dict[str, PrefixKV] = {}
        for name in self.prefix_names():
            ids = inp[f"prefix.{name}.input_ids"]
            with record_routing(model) as routing:
                cache, hidden = model.prefix(ids, final_norm=True)
            out.update({f"prefix.{name}.{key}": value for key, value in routing.items()})
            prefixes[name] = cache
            out[f"prefix.{name}.last_hidden"] = hidden
            for i, (k, v) in enumerate(zip(cache.keys, cache.values)):
                out[f"prefix.{name}.layer{i}.k"], out[f"prefix.{name}.layer{i}.v"] = k, v
            out[f"inputs-check.prefix.{name}.indexes"] = text_indexes(1, ids.shape[1], ids.device)[0]
        p = cfg.token_size
        fm = model.fm_modules
        if "embed.t" in inp:
            out["embed.timestep"] = fm["timestep_embedder"](inp["embed.t"])
        if "embed.noise_scale_input" in inp and "noise_scale_embedder" in fm:
            out["embed.noise_scale"] = fm["noise_scale_embedder"](inp["embed.noise_scale_input"])
        if "sample.init_noise" in inp:
            noise = inp["sample.init_noise"]
            out["vision.mot_gen_out"] = fm["vision_model_mot_gen"](noise)
            out["vision.patches_channel_first"] = _patches_channel_first(noise, cfg.patch_size)
        if "gen.x0_clean" in inp:
            out["vision.und_out_on_x0_clean"] = model.vision_model(inp["gen.x0_clean"])
        for j in sorted({m.group(1) for k in inp if (m := re.fullmatch(r"gen(\d+)\.t", k))}):
            self._gen_step(model, prefixes, f"gen{j}", out)
        if "sample.init_noise" in inp and {"cond", "uncond"} <= prefixes.keys():
            self._sample(model, prefixes, out)
            for name in self.cfg_runs():
                norm, interval = _cfg_settings(name, self.meta)
                self._sampler_run(model, prefixes["cond"], prefixes["uncond"], f"sampler.{name}", out, norm, interval)
        if self.think_runs():
            tokens = ThinkTokens.from_tokenizer(load_tokenizer(self.folder))
            for name in self.think_runs():
                self._think(model, name, tokens, prefixes.get("uncond"), out)
        for name, cache in prefixes.items():
            if "sample.init_noise" in inp:
                h, w = inp["sample.init_noise"].shape[2:]
                out[f"inputs-check.prefix.{name}.image_indexes"] = image_indexes(cache.lengths, h // p, w // p)[0]
        return {f"{tag}{k}": v for k, v in out.items()}

    def _gen_step(self, model: U1Model, prefixes: dict[str, PrefixKV], step: str, out: dict) -> None:
        cfg, inp = model.config, self.inputs
        images, t = inp[f"{step}.z_image"], inp[f"{step}.t"]
        p = cfg.token_size
        ns = cfg.noise_scale_for((images.shape[2] // p) * (images.shape[3] // p))
        embeds = model.gen_embed(images, t, ns)
        out[f"{step}.gen_input_embeds"] = embeds
        z = patchify(images, p)
        velocities = {}
        for name, cache in prefixes.items():
            taps: dict[str, torch.Tensor] = {}
            with record_routing(model) as routing:
                x_pred = model.predict_x0(embeds, cache, images.shape[2] // p, images.shape[3] // p, taps)
            taps |= routing
            out[f"{step}.{name}.x_pred"] = x_pred
            velocities[name] = out[f"{step}.{name}.v"] = velocity(x_pred, z, t, SAMPLER_T_EPS)
            for digits in ("005", "002", "001", "010"):
                out[f"{step}.{name}.v_teps{digits}"] = velocity(x_pred, z, t, _teps_from_suffix(digits))
            for tap, value in taps.items():
                out[f"{step}.{name}.{tap}"] = value
        if {"cond", "uncond"} <= velocities.keys():
            out[f"{step}.v_cfg"] = velocities["uncond"] + self.cfg_scale * (velocities["cond"] - velocities["uncond"])
        fm = model.fm_modules
        direct = fm["timestep_embedder"](t)
        if "noise_scale_embedder" in fm:
            direct = direct + fm["noise_scale_embedder"](torch.full_like(t, ns / cfg.noise_scale_max_value))
        out[f"{step}.time_plus_noise_embed"] = direct

    def _sample(self, model: U1Model, prefixes: dict[str, PrefixKV], out: dict) -> None:
        """The folder's main sampler run (``sample.*``) and its noise and time-grid checks."""
        cfg, noise = model.config, self.inputs["sample.init_noise"]
        b, _, h, w = noise.shape
        seed = self.sampler.get("seed")
        if seed is not None:
            ns = cfg.noise_scale_for((h // cfg.token_size) * (w // cfg.token_size))
            regen = ns * torch.randn((b, 3, h, w), generator=torch.Generator("cpu").manual_seed(int(seed)))
            out["inputs-check.sample.init_noise"] = regen
        out["sample.timesteps"] = time_grid(int(self.sampler.get("num_steps", 50)), self._shift())
        norm, interval = _cfg_settings("sample", self.meta)
        out["sample.final_image"] = self._sampler_run(
            model, prefixes["cond"], prefixes["uncond"], "sample", out, norm, interval
        )

    def _shift(self) -> float:
        return float(self.sampler.get("timestep_shift", 3.0))

    def _sampler_run(self, model, cond: PrefixKV, uncond, name: str, out: dict, norm: str, interval) -> torch.Tensor:
        """One Euler run on ``sample.init_noise`` (one-row prefixes, repeated per image): every step's record
        as ``<name>.step<i>.*``, the image as ``<name>.x_final``, which steps applied CFG as a check."""
        cfg, noise = model.config, self.inputs["sample.init_noise"]
        b, _, h, w = noise.shape
        cond, uncond = cond.repeat(b), uncond.repeat(b)
        p = cfg.token_size
        ns = cfg.noise_scale_for((h // p) * (w // p))
        steps = int(self.sampler.get("num_steps", 50))
        grid, used = time_grid(steps, self._shift()), []

        def observe(i: int, record: dict[str, torch.Tensor]) -> None:
            used.append("v_uncond" in record)
            out.update({f"{name}.step{i}.{key}": value for key, value in record.items()})
            images = unpatchify(record["z"], p, h, w)
            out[f"{name}.step{i}.gen_input_embeds"] = model.gen_embed(images, grid[i].expand(b), ns)

        out[f"{name}.x_final"] = euler_sample(
            model,
            cond,
            uncond,
            noise,
            steps=steps,
            shift=self._shift(),
            cfg_scale=self.cfg_scale,
            cfg_norm=norm,
            cfg_interval=interval,
            t_eps=float(self.sampler.get("t_eps", SAMPLER_T_EPS)),
            observer=observe,
        )
        out[f"inputs-check.cfg_used.{name.removeprefix('sampler.')}"] = torch.tensor(used)
        return out[f"{name}.x_final"]

    def _think(self, model: U1Model, run: str, tokens: ThinkTokens, uncond: PrefixKV | None, out: dict) -> None:
        """Think decoding of ``<run>.prompt.input_ids``, the thought-extended prefix, then its sampler run."""
        prompt = self.inputs[f"{run}.prompt.input_ids"]
        out[f"inputs-check.{run}.prompt.indexes"] = text_indexes(1, prompt.shape[1], prompt.device)[0]
        budget = int(self.meta.get("think_budget", UPSTREAM_THINK_BUDGET))
        result = decode_think(model, prompt[0].tolist(), tokens, budget)
        out[f"inputs-check.think_stop.{run}"] = torch.tensor(THINK_STOPS.index(result.stop))
        out[f"{run}.token_ids"], out[f"{run}.logits"] = torch.tensor(result.token_ids), result.logits
        out[f"{run}.cond.input_ids"] = torch.tensor([result.input_ids])
        out[f"{run}.cond.indexes"] = text_indexes(1, len(result.input_ids), prompt.device)[0]
        for i, (k, v) in enumerate(zip(result.cache.keys, result.cache.values)):
            out[f"{run}.prefix.cond.layer{i}.k"], out[f"{run}.prefix.cond.layer{i}.v"] = k, v
        if "sample.init_noise" in self.inputs and uncond is not None:
            h, w = self.inputs["sample.init_noise"].shape[2:]
            p = model.config.token_size
            out[f"{run}.cond.image_indexes"] = image_indexes(result.cache.lengths, h // p, w // p)[0]
            norm, interval = _cfg_settings(run, self.meta)
            self._sampler_run(model, result.cache, uncond, f"sampler.{run}", out, norm, interval)
