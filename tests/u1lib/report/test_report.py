"""The HTML ablation report, built from fabricated run folders (3 variants + base, or a grid of N).

``make_runs`` is a small hand-checked set (numbers below); ``make_grid`` fabricates N variants of a
12-point grid with close, 8B-like validation losses, previews and samples, for the page's looks
(tests/u1lib/test_report_choosing.py renders it) and for the size and time budget.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from u1lib.report import build_report, cli
from u1lib.report.collect import flatten
from u1lib.report.formats import fmt_bytes, fmt_delta, fmt_number, fmt_percent, loss_decimals
from u1lib.report.plots import moving_average
from u1lib.report.tables import settings_tables

REPO = Path(__file__).resolve().parents[3]
PROMPT_SET = "demo"
PROMPTS = [("cat", "a cat <script>alert(1)</script>"), ("rocket", "a rocket at dusk")]
SEEDS = [0, 1]
VARIANTS = {
    "base": "base",
    "variants": {
        "x0-uniform": {"knobs": {"train.loss_type": "x0", "train.t_dist": "uniform"}, "label": "x0 loss"},
        "v-uniform": {"knobs": {"train.loss_type": "v", "train.t_dist": "uniform"}, "label": "v loss"},
        "x0-logit": {"knobs": {"train.loss_type": "x0", "train.t_dist": "logit_normal"}, "label": "logit t"},
    },
}
PROVENANCE = {
    "git_commit": "abc123def",
    "model": {"name": "tiny", "source": "tiny", "repo_id": "", "revision": "tiny-seed-0", "manifest_hash": "f00dcafe"},
    "versions": {"python": "3.11.9", "torch": "2.13.0"},
}
BASE_VAL = 1.0  # every run's step-0 validation loss (the untrained model)
# per variant: trainable params, best val loss, its step; x0-logit has the lowest best loss
NUMBERS = {"x0-uniform": (12345, 0.5, 15), "v-uniform": (23456, 0.75, 20), "x0-logit": (34567, 0.25, 10)}
WARMUP_SECONDS = 9.0  # the first 3 steps (compilation); later steps take 0.4, 0.5 or 0.6 s: median 0.5


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _write_images(folder: Path, entries: list[tuple[str, str, int]], image, index: dict) -> None:
    """PNGs for (prompt_id, prompt, seed) entries, and their index.json (``index`` plus the images list)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for prompt_id, prompt, seed in entries:
        file = f"{prompt_id}_seed{seed}.png"
        image(prompt_id, seed).save(folder / file)
        images.append({"prompt_id": prompt_id, "prompt": prompt, "seed": seed, "file": file})
    _write_json(folder / "index.json", {**index, "images": images})


def _solid(color: tuple[int, int, int], size=(48, 32)):
    return lambda prompt_id, seed: Image.new("RGB", size, color)


def _write_samples(folder: Path, name: str, color, sampler: dict | None = None) -> None:
    entries = [(prompt_id, prompt, seed) for prompt_id, prompt in PROMPTS for seed in SEEDS]
    index = {"variant": name, "prompt_set": PROMPT_SET, "sampler": sampler or {"steps": 10, "cfg_scale": 4.0}}
    _write_images(folder / "samples" / PROMPT_SET, entries, _solid(color), index)


def write_previews(folder: Path, steps: list[int], color) -> None:
    """What the trainer writes: previews/step-XXXXXXXX/index.json with PNGs beside it."""
    for step in steps:
        folder_of_step = folder / "previews" / f"step-{step:08d}"
        _write_images(folder_of_step, [("cat", PROMPTS[0][1], 0)], _solid(color), {"step": step})


def _write_trained(folder: Path, name: str, index: int) -> None:
    params, best, best_step = NUMBERS[name]
    _write_jsonl(
        folder / "train_log.jsonl",
        [
            {
                "step": s,
                "loss": 1.0 / (s + index),
                "x0_mse": 0.5 / (s + index),
                "v_mse": 9.0 / (s + index),
                "t": [0.5],
                "lr": 1e-4,
                "grad_norm": 1.0,
                "images_per_s": 4.0,
                "dropped": s % 2,
                "seconds": WARMUP_SECONDS if s <= 3 else (0.4, 0.5, 0.6)[s % 3],
            }
            for s in range(1, 21)
        ],
    )
    _write_jsonl(
        folder / "val_log.jsonl",
        [
            {"step": 0, "val_loss": BASE_VAL, "per_t": {"0.1": 0.5, "0.5": 1.5}},
            *(
                {
                    "step": s,
                    "val_loss": best if s == best_step else best + 0.1,
                    "per_t": {"0.1": 0.2 + 0.1 * index, "0.5": 0.3},
                }
                for s in (5, 10, 15, 20)
            ),
        ],
    )
    _write_json(
        folder / "metrics.json",
        {
            "steps": 20,
            "images_seen": 40,
            "wall_time_s": 5.0,
            "job_seconds": {  # only the first run validated: the others show none for that phase
                "total": 41.0,
                "load": 3.0,
                "first_step": 30.0,
                "steps": 5.0,
                **({"validation": 2.0} if index == 0 else {}),
                "other": 3.0,
            },
            "s_per_step": 0.25,
            "images_per_s": 8.0,
            "peak_gpu_mem_bytes": 3 * 2**30,
            "peak_host_rss_bytes": 512 * 2**20,
            "final_train_loss": 0.05,
            "final_val_loss": best + 0.1,
            "trainable_params": params,
            "adapter_bytes": 2 * 2**20,
            "device": "cpu",
            "versions": {},
            "git_commit": "abc123def",
            "t_hist": {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [index, 5, 5, 5]},
            "dropout_count": 4 + index,
            "dataset": {
                "train": {"file": "train.parquet", "rows": 6, "fingerprint": f"fp{index}train"},
                "validation": {"source": "held-out", "file": "val.parquet", "rows": 2, "fingerprint": "fpval"},
            },
        },
    )
    knobs = VARIANTS["variants"][name]["knobs"]
    _write_json(
        folder / "config.json",
        {
            "train": {
                "loss_type": knobs["train.loss_type"],
                "t_dist": knobs["train.t_dist"],
                "lr": 1e-4,
                "val_max_items": 16,
            },
            "optim": {"weight_decay": 0.0, "betas": [0.9, 0.999]},
            "lora": {"rank": 4 if name == "x0-logit" else 8},
        },
    )
    (folder / "adapter.safetensors").write_bytes(b"\0" * 16)


def make_runs(root: Path) -> dict[str, Path]:
    run_dirs = {"base": root / "base"}
    _write_samples(root / "base", "base", (250, 250, 250))
    for index, name in enumerate(VARIANTS["variants"]):
        run_dirs[name] = root / name
        _write_samples(root / name, name, (40 * index, 100, 200))
        _write_trained(root / name, name, index)
    (root / "x0-logit" / "samples" / PROMPT_SET / "rocket_seed1.png").unlink()  # one missing image
    return run_dirs


# ------------------------------------------------------------------ a grid of N fabricated variants

GRID_AXES = {
    "train.lr": {"lr1e-4": 1e-4, "lr3e-4": 3e-4, "lr1e-3": 1e-3},
    "train.loss_type": {"x0": "x0", "v": "v"},
    "train.t_dist": {"uniform": "uniform", "logit": "logit_normal"},
}
GRID_PROMPTS = [
    ("cat", "Close-up of a tabby cat with ginger fur and green eyes looking straight at the camera."),
    ("espresso", "A cup of espresso in a red cup on a saucer, on a wooden table, seen from above."),
    ("rocket", "A white rocket on its launch pad at dusk under floodlights and a deep blue sky."),
    ("lighthouse", "A red and white lighthouse on a rocky coast under a cloudy sky."),
]
GRID_T = (0.1, 0.3, 0.5, 0.7, 0.9)


def grid_variants(count: int) -> dict:
    """variants.json of the first ``count`` points of a 3 x 2 x 2 grid (lr, loss type, t distribution)."""
    points = list(itertools.product(*(labels.items() for labels in GRID_AXES.values())))[:count]
    described = {}
    for point in points:
        name = "_".join(label for label, _ in point)
        described[name] = {"knobs": dict(zip(GRID_AXES, (value for _, value in point))), "label": ""}
    return {"base": "base", "variants": described}


def _noise(size: int, seed: int):
    rng = random.Random(seed)
    return Image.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))


def _photo(size: int, seed: int):
    """A smooth picture (photographs compress like this, noise does not)."""
    rng = random.Random(seed)
    tint = [rng.randrange(256) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize((size, size))
    return Image.merge("RGB", [gradient.point(lambda v, t=t: (v + t) % 256) for t in tint])


def make_grid(root: Path, count: int, *, image_px: int = 64, steps: int = 200) -> tuple[dict[str, Path], dict]:
    """Run folders for ``count`` variants (+ base) with 8B-like losses (variants differ in the 4th-5th
    digit), previews every quarter of the run and a 4-prompt x 2-seed sample set. ``image_px`` above
    64 draws smooth pictures instead of noise, to measure the page's size with real-sized samples."""
    variants = grid_variants(count)
    picture = _photo if image_px > 64 else _noise
    run_dirs = {"base": root / "base"}
    sampler = {"steps": 28, "cfg_scale": 4.0, "timestep_shift": 3.0, "width": image_px, "height": image_px}
    entries = [(pid, prompt, seed) for pid, prompt in GRID_PROMPTS for seed in (0, 1)]
    picture_seed = {prompt_id: 2 * position for position, (prompt_id, _) in enumerate(GRID_PROMPTS)}

    def image(prompt_id: str, seed: int):
        return picture(image_px, picture_seed[prompt_id] + seed)

    _write_images(root / "base" / "samples" / PROMPT_SET, entries, image, {"sampler": sampler})
    _write_images(root / "base" / "previews" / "step-00000000", entries[:4:2], image, {"step": 0})
    base_val, base_per_t = 0.25395, {t: 0.05 + 0.5 * t for t in GRID_T}
    for index, (name, entry) in enumerate(variants["variants"].items()):
        knobs, rng = entry["knobs"], random.Random(index)
        folder = run_dirs[name] = root / name
        gain = 1e-4 * (index % 5 + 1) * (1.5 if knobs["train.t_dist"] == "logit_normal" else 1.0)
        records = []
        for s in range(1, steps + 1):
            x0 = 0.30 - 0.04 * s / steps + rng.gauss(0, 0.02)
            records.append(
                {
                    "step": s,
                    "loss": x0 if knobs["train.loss_type"] == "x0" else 40 * x0,
                    "x0_mse": x0,
                    "v_mse": 40 * x0,
                    "t": [rng.random()],
                    "lr": knobs["train.lr"],
                    "grad_norm": 1.0,
                    "images_per_s": 8.0,
                    "dropped": 0,
                    "seconds": 30.0 if s <= 3 else 0.9 + rng.random() * 0.1,
                }
            )
        _write_jsonl(folder / "train_log.jsonl", records)
        val = [{"step": 0, "val_loss": base_val, "per_t": {f"{t:g}": v for t, v in base_per_t.items()}}]
        for s in range(steps // 4, steps + 1, steps // 4):
            drop = gain * (s / steps) ** 0.5
            val.append(
                {
                    "step": s,
                    "val_loss": base_val - drop,
                    "per_t": {f"{t:g}": v - drop * (0.5 + t) for t, v in base_per_t.items()},
                }
            )
        _write_jsonl(folder / "val_log.jsonl", val)
        counts = [5] * 10 if knobs["train.t_dist"] == "uniform" else [1, 2, 4, 7, 9, 9, 7, 4, 2, 1]
        _write_json(
            folder / "metrics.json",
            {
                "steps": steps,
                "images_seen": steps * 8,
                "wall_time_s": 1.0 * steps + 90,
                "peak_gpu_mem_bytes": 40 * 2**30,
                "peak_host_rss_bytes": 30 * 2**30,
                "trainable_params": 21_000_000,
                "adapter_bytes": 84 * 2**20,
                "t_hist": {"edges": [i / 10 for i in range(11)], "counts": counts},
                "dropout_count": steps // 10,
                "dataset": {
                    "train": {"file": "train.parquet", "rows": 1000, "fingerprint": "9f2c41d0"},
                    "validation": {"source": "held-out", "file": "val.parquet", "rows": 64, "fingerprint": "77ab03e1"},
                },
            },
        )
        _write_json(
            folder / "config.json",
            {
                "train": {
                    "steps": steps,
                    "lr": knobs["train.lr"],
                    "loss_type": knobs["train.loss_type"],
                    "t_dist": knobs["train.t_dist"],
                    "batch_size": 8,
                    "lora": "attn=r16a16;mlp=r16a16",
                    "val_max_items": 16,
                    "val_t": list(GRID_T),
                }
            },
        )
        (folder / "adapter.safetensors").write_bytes(b"\0" * 16)
        _write_images(folder / "samples" / PROMPT_SET, entries, image, {"sampler": sampler})
        for s in range(steps // 4, steps + 1, steps // 4):
            _write_images(folder / "previews" / f"step-{s:08d}", entries[:4:2], image, {"step": s})
    return run_dirs, variants


# ------------------------------------------------------------------ the hand-checked set


def build(tmp_path: Path, run_dirs: dict[str, Path], **options) -> str:
    out = tmp_path / "out" / "report.html"
    kwargs = {"variants": VARIANTS, "provenance": PROVENANCE, "prompt_set": PROMPT_SET, **options}
    build_report(run_dirs, out, **kwargs)
    return out.read_text(encoding="utf-8")


def embedded_images(page: str) -> list[Image.Image]:
    encoded = re.findall(r'src="data:image/(?:png|jpeg);base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in encoded]


def section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    return root, build(root, make_runs(root / "runs"))


def test_page_names_every_variant_and_provenance(built):
    _, page = built
    for name in ["base", *VARIANTS["variants"]]:
        assert name in page
    for text in ("abc123def", "tiny-seed-0", "f00dcafe", "2.13.0", "x0 loss"):
        assert text in page
    assert "<td>device</td><td>cpu</td>" in section(page, "provenance")  # from the runs' metrics.json


def test_runs_table_numbers(built):
    _, page = built
    runs = section(page, "runs")
    for params, _, _ in NUMBERS.values():
        assert f"{params:,}" in runs
    for text in ("3.0 GiB", "512.0 MiB", "2.0 MiB", "5 s", "4 of 40 (10.0%)"):
        assert text in runs
    # the job's phases: a column each, as the runs recorded them; "—" where a run has no such phase
    phases = runs[runs.index("Inside each train job") :]
    headers = re.findall(r"<th>([^<]*)</th>", phases)
    assert headers[:2] == ["variant", "total"]
    assert sorted(headers[2:]) == ["first step", "load", "other", "steps", "validation"]
    first = dict(zip(headers[1:], re.findall(r'<td class="num">([^<]*)</td>', phases)))
    assert first["total"] == "41 s" and first["first step"] == "30 s" and first["other"] == "3 s"
    validated = next(iter(VARIANTS["variants"]))  # the first run written (_write_trained index 0)
    for name in VARIANTS["variants"]:
        row = phases[phases.index(f"{name}</td>") :].split("</tr>")[0]
        cell = re.findall(r'<td class="num">([^<]*)</td>', row)[headers.index("validation") - 1]
        assert cell == ("2 s" if name == validated else "—"), name
    best_cells = re.findall(r'<td class="num best">([^<]*)</td>', page)
    assert best_cells == ["0.250 (step 10)"]


def test_data_section_names_the_fingerprints(built):
    _, page = built
    data = section(page, "settings")
    differing = data[: data.index("shared by all")]
    # a row per run, in leaderboard order: x0-logit, x0-uniform, v-uniform
    rows = re.findall(r"</span>([\w-]+)</td><td>(fp\dtrain)</td>", differing)
    assert rows == [("x0-logit", "fp2train"), ("x0-uniform", "fp0train"), ("v-uniform", "fp1train")]
    assert "<td>validation.fingerprint</td><td>fpval</td>" in data  # shared by all three


def test_images_are_embedded_and_contact_sheet_has_a_cell_per_sample(built):
    root, page = built
    figures = re.findall(r'<figure><img src="data:image/png', page)
    assert len(figures) == 5  # best-loss dots, validation, per t, training, t densities
    assert "http://" not in page and "https://" not in page
    samples = section(page, "samples")
    thumbs = re.findall(r'<td><a href="([^"]+)"><img src="data:image/png', samples)
    assert len(thumbs) == 4 * len(PROMPTS) * len(SEEDS) - 1  # base + 3 variants, less the missing one
    assert samples.count('<td class="missing"') == 1
    assert "x0-logit: sample &#x27;rocket&#x27; seed 1" in page
    assert not list((root / "out").glob(".*tmp"))  # atomic write left no temp file


def test_training_settings_split_into_shared_and_differing(built):
    _, page = built
    settings = section(page, "settings")
    middle = settings.index("Training settings (config.json): shared")
    differing, shared = (
        settings[settings.index("Training settings (config.json): differing") : middle],
        settings[middle:],
    )
    for key in ("train.loss_type", "train.t_dist", "lora.rank"):
        assert f"<th>{key}</th>" in differing and f"<td>{key}</td>" not in shared
    for key in ("train.lr", "optim.weight_decay", "optim.betas"):
        assert f"<td>{key}</td>" in shared and key not in differing


def test_sampler_settings_are_shown(built):
    _, page = built
    samples = section(page, "samples")
    assert "<td>cfg_scale</td><td>4.0</td>" in samples


def test_text_is_escaped(built):
    _, page = built
    assert "a cat &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page


def test_partial_run_gives_notes_not_errors(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    (run_dirs["v-uniform"] / "val_log.jsonl").unlink()
    (run_dirs["v-uniform"] / "metrics.json").unlink()
    with open(run_dirs["x0-uniform"] / "train_log.jsonl", "a") as handle:
        handle.write('{"step": 21, "loss"')  # torn last line of a killed writer
    run_dirs["ghost"] = tmp_path / "runs" / "ghost"
    page = build(tmp_path, run_dirs)
    assert "v-uniform: val_log.jsonl not found" in page
    assert "v-uniform: metrics.json not found" in page
    assert "ghost: run folder" in page
    assert "ghost: sample" not in page  # one note for the missing folder, not one per sheet cell
    # v-uniform still has its training curve, and its row says it is still training at step 20
    assert "training: step 20" in section(page, "leaderboard")


def test_empty_runs_still_build(tmp_path):
    run_dirs = {"base": tmp_path / "nothing", "x0-uniform": tmp_path / "nothing2"}
    page = build(tmp_path, run_dirs)
    assert "no data yet" in page and "No samples found" in page and "No run has a validation loss yet" in page
    assert "data:image" not in page


def test_malformed_files_become_notes_naming_the_file(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    bad = run_dirs["v-uniform"] / "metrics.json"
    bad.write_text("{not json", encoding="utf-8")
    log = run_dirs["x0-logit"] / "val_log.jsonl"
    log.write_text('{"step": 1}\nnot json\n', encoding="utf-8")
    index = run_dirs["base"] / "samples" / PROMPT_SET / "index.json"
    index.write_text(json.dumps({"images": [{"prompt_id": "cat"}]}), encoding="utf-8")
    page = build(tmp_path, run_dirs)
    for path in (bad, log, index):
        assert str(path) in page
    assert "unreadable, left out" in page and "images[0] needs" in page


def test_bad_variants_description_lists_every_problem(tmp_path):
    variants = {"variants": {"a": {"knobs": [1]}, "b": {"label": 3}}}
    with pytest.raises(ValueError, match=r"variants\.a\.knobs.*variants\.b\.label"):
        build_report({}, tmp_path / "r.html", variants=variants, provenance={}, prompt_set="demo")


def test_cli_in_fresh_process_imports_no_torch(tmp_path):
    make_runs(tmp_path / "runs")
    (tmp_path / "variants.json").write_text(json.dumps(VARIANTS), encoding="utf-8")
    (tmp_path / "prov.json").write_text(json.dumps(PROVENANCE), encoding="utf-8")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x0-logit.tsv").write_text("s\th:m:s\tmax_rss\n61.5\t0:01:01\t100\n", encoding="utf-8")
    out = tmp_path / "results" / "report.html"
    code = (
        "import json, sys\n"
        "from u1lib.report import cli\n"
        "rc = cli('report', sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
    )
    args = [
        "--runs-root",
        tmp_path / "runs",
        "--variants",
        tmp_path / "variants.json",
        "--provenance",
        tmp_path / "prov.json",
        "--prompt-set",
        PROMPT_SET,
        "--out",
        out,
        "--benchmarks",
        tmp_path / "bench",
    ]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"rc": 0, "torch": False}
    page = out.read_text(encoding="utf-8")
    assert "x0-logit" in page and "61.5 s" in section(page, "runs")


def test_cli_reports_bad_file_and_fails(tmp_path, capsys):
    (tmp_path / "variants.json").write_text("{", encoding="utf-8")
    args = [
        "--runs-root",
        str(tmp_path),
        "--variants",
        str(tmp_path / "variants.json"),
        "--provenance",
        str(tmp_path / "prov.json"),
        "--prompt-set",
        "demo",
        "--out",
        str(tmp_path / "r.html"),
    ]
    assert cli("report", args) == 1
    assert "variants.json: not valid JSON" in capsys.readouterr().err


def test_flatten_and_settings_split():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    shared, differing = settings_tables({"p": {"a": 1, "b": 2}, "q": {"a": 1, "b": 3, "c": 0}}, {"p": "#000000"})
    assert shared.rows == [["a", "1"]]
    assert differing.headers == ["variant", "b", "c"]
    assert differing.rows == [["p", "2", "(absent)"], ["q", "3", "0"]]
    assert differing.swatches == ["#000000", None]
    assert settings_tables({}, {}) is None


def test_number_formats_and_moving_average():
    assert [fmt_number(v, 3) for v in (1234.5, 0.123456, 7, None)] == ["1,234", "0.123", "7", "—"]
    assert [fmt_bytes(v) for v in (100, 1536, 5 * 2**30)] == ["100 B", "1.5 KiB", "5.0 GiB"]
    deltas = (-0.0123456, 0.5, -2.08e-5, 0, None)
    assert [fmt_delta(v, 3) for v in deltas] == ["-0.012", "+0.500", "-0.000021", "0", "—"]
    assert [fmt_percent(v) for v in (-16.7, -0.0394, 0)] == ["-16.7%", "-0.0394%", "0%"]
    assert loss_decimals([0.253795, 0.253791, math.nan]) == 7 and loss_decimals([0.25, 0.5, None]) == 3
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1.5, 2.5, 3.5]


def test_think_mode_thoughts_are_shown_once_per_prompt_and_escaped(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    for name in ("base", "x0-uniform"):
        index_path = run_dirs[name] / "samples" / PROMPT_SET / "index.json"
        index = json.loads(index_path.read_text())
        for record in index["images"]:
            text = f"<b>{record['prompt_id']}</b> needs whiskers"
            record["think"] = {"text": text, "stop": "think_end", "tokens": 7}
        index_path.write_text(json.dumps(index))
    page = build(tmp_path, run_dirs)
    assert "Think mode: the thought written before each prompt" in page
    assert page.count("&lt;b&gt;cat&lt;/b&gt; needs whiskers") == 1  # once per prompt, not per variant or seed
    assert "<b>cat</b>" not in page
    assert "Think mode" not in build(tmp_path / "plain", make_runs(tmp_path / "plain-runs"))


def test_the_banner_says_what_the_embedded_models_samples_can_show():
    from u1lib.report import tiny_banner

    random = tiny_banner({"source": "tiny", "revision": "tiny-seed-3"})
    pretrained = tiny_banner({"source": "tiny", "revision": "tiny-seed-0-pretrained"})
    assert "random weights" in random and "noise" in random
    assert "pretrained" in pretrained and "noise" not in pretrained
    assert tiny_banner({"source": "hub", "revision": "0" * 40}) == ""
