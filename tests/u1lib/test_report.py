"""The HTML ablation report, built from fabricated run folders (3 variants + base)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from u1lib.report import build_report, cli
from u1lib.report.collect import Run
from u1lib.report.plots import moving_average
from u1lib.report.sheets import CELL
from u1lib.report.tables import config_diff_table, flatten, fmt_bytes, fmt_number

REPO = Path(__file__).resolve().parents[2]
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
    "device": "cpu",
}
# per variant: trainable params, best val loss, its step; x0-logit has the lowest best loss
NUMBERS = {"x0-uniform": (12345, 0.5, 15), "v-uniform": (23456, 0.75, 20), "x0-logit": (34567, 0.25, 10)}
GREY = (200, 200, 200)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _write_samples(folder: Path, name: str, color: tuple[int, int, int]) -> None:
    samples = folder / "samples" / PROMPT_SET
    samples.mkdir(parents=True)
    images = []
    for prompt_id, prompt in PROMPTS:
        for seed in SEEDS:
            file = f"{prompt_id}-{seed}.png"
            Image.new("RGB", (48, 32), color).save(samples / file)
            images.append({"prompt_id": prompt_id, "prompt": prompt, "seed": seed, "file": file})
    _write_json(samples / "index.json", {"variant": name, "prompt_set": PROMPT_SET, "sampler": {}, "images": images})


def _write_trained(folder: Path, name: str, index: int) -> None:
    params, best, best_step = NUMBERS[name]
    _write_jsonl(folder / "train_log.jsonl", [
        {"step": s, "loss": 1.0 / (s + index), "x0_mse": 0.1, "v_mse": 0.2, "t": [0.5], "lr": 1e-4,
         "grad_norm": 1.0, "images_per_s": 4.0, "dropped": s % 2}
        for s in range(1, 21)
    ])
    _write_jsonl(folder / "val_log.jsonl", [
        {"step": s, "val_loss": best if s == best_step else best + 0.1, "per_t": {"0.1": 0.2 + index, "0.5": 0.3}}
        for s in (5, 10, 15, 20)
    ])
    _write_json(folder / "metrics.json", {
        "steps": 20, "images_seen": 40, "wall_time_s": 5.0, "s_per_step": 0.25, "images_per_s": 8.0,
        "peak_gpu_mem_bytes": 3 * 2**30, "peak_host_rss_bytes": 512 * 2**20, "final_train_loss": 0.05,
        "final_val_loss": best + 0.1, "best_val_loss": best, "best_val_step": best_step,
        "trainable_params": params, "adapter_bytes": 2 * 2**20, "device": "cpu", "versions": {},
        "git_commit": "abc123def", "t_hist": {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [index, 5, 5, 5]},
        "dropout_count": 4 + index,
        "dataset": {
            "train": {"file": "train.parquet", "rows": 6, "fingerprint": f"fp{index}train"},
            "validation": {"source": "held-out", "file": "val.parquet", "rows": 2, "fingerprint": "fpval"},
        },
    })
    knobs = VARIANTS["variants"][name]["knobs"]
    _write_json(folder / "config.json", {
        "train": {"loss_type": knobs["train.loss_type"], "t_dist": knobs["train.t_dist"], "lr": 1e-4},
        "optim": {"weight_decay": 0.0, "betas": [0.9, 0.999]},
        "lora": {"rank": 4 if name == "x0-logit" else 8},
    })


def make_runs(root: Path) -> dict[str, Path]:
    run_dirs = {"base": root / "base"}
    _write_samples(root / "base", "base", (250, 250, 250))
    for index, name in enumerate(VARIANTS["variants"]):
        run_dirs[name] = root / name
        _write_samples(root / name, name, (40 * index, 100, 200))
        _write_trained(root / name, name, index)
    (root / "x0-logit" / "samples" / PROMPT_SET / "rocket-1.png").unlink()  # one missing image
    return run_dirs


def _build(tmp_path: Path, run_dirs: dict[str, Path]) -> str:
    out = tmp_path / "out" / "report.html"
    build_report(run_dirs, out, variants=VARIANTS, provenance=PROVENANCE, prompt_set=PROMPT_SET)
    return out.read_text(encoding="utf-8")


def _embedded_pngs(page: str) -> list[Image.Image]:
    encoded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in encoded]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    return root, _build(root, make_runs(root / "runs"))


def test_page_names_every_variant_and_provenance(built):
    _, page = built
    for name in ["base", *VARIANTS["variants"]]:
        assert name in page
    for text in ("abc123def", "tiny-seed-0", "f00dcafe", "2.13.0", "x0 loss"):
        assert text in page


def test_run_table_numbers_and_best_highlight(built):
    _, page = built
    for params, _, _ in NUMBERS.values():
        assert f"{params:,}" in page
    for text in ("0.25", "3.0 GiB", "512.0 MiB", "2.0 MiB", "0.05", "0.75 (step 20)", "train.t_dist = logit_normal"):
        assert text in page
    best_cells = re.findall(r'<td class="num best">([^<]*)</td>', page)
    assert best_cells == ["0.25 (step 10)"]


def test_run_table_names_the_data_each_adapter_was_trained_on(built):
    _, page = built
    for index in range(len(NUMBERS)):
        assert f"train.parquet fp{index}train (6 rows)" in page
    assert "val val.parquet fpval (2 rows)" in page


def test_images_are_embedded_and_contact_sheet_has_grid_and_placeholder(built):
    root, page = built
    pngs = _embedded_pngs(page)
    assert len(pngs) == 5  # training, validation, per-t, t histogram, contact sheet
    assert "http://" not in page and "https://" not in page
    sheet = max(pngs, key=lambda image: image.height)
    columns, rows = 4, len(PROMPTS) * len(SEEDS)
    assert sheet.width > columns * CELL and sheet.height > rows * CELL
    # the missing rocket/seed 1 image of x0-logit (last column, last row) is a grey placeholder
    x = sheet.width - CELL // 2 - 20
    y = sheet.height - CELL // 4
    assert sheet.convert("RGB").getpixel((x, y)) == GREY
    assert "x0-logit: sample &#x27;rocket&#x27; seed 1" in page
    assert not list((root / "out").glob(".*tmp"))  # atomic write left no temp file


def test_config_diff_shows_only_differing_keys(built):
    _, page = built
    diff = page[page.index("Config differences"):]
    for key in ("train.loss_type", "train.t_dist", "lora.rank"):
        assert f"<td>{key}</td>" in diff
    for key in ("train.lr", "optim.weight_decay", "optim.betas"):
        assert key not in page


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
    page = _build(tmp_path, run_dirs)
    assert "v-uniform: val_log.jsonl not found" in page
    assert "v-uniform: metrics.json not found" in page
    assert "ghost: run folder" in page
    assert "ghost: sample" not in page  # one note for the missing folder, not one per sheet cell
    assert page.count('src="data:image/png;base64,') == 5
    # v-uniform's row falls back to its training log: 20 steps, last loss 1/(20+1)
    row = re.search(r"<tr><td>v-uniform\n.*?</tr>", page, re.S).group(0)
    assert "<td class=\"num\">20</td>" in row and "0.04762" in row


def test_empty_runs_still_build(tmp_path):
    run_dirs = {"base": tmp_path / "nothing", "x0-uniform": tmp_path / "nothing2"}
    page = _build(tmp_path, run_dirs)
    assert "no data yet" in page and "No samples found" in page
    assert "data:image" not in page


def test_malformed_json_names_the_file(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    bad = run_dirs["v-uniform"] / "metrics.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        _build(tmp_path, run_dirs)
    assert not (tmp_path / "out" / "report.html").exists()


def test_malformed_jsonl_and_index_name_the_file(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    log = run_dirs["x0-logit"] / "val_log.jsonl"
    log.write_text('{"step": 1}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(log))):
        _build(tmp_path, run_dirs)
    log.unlink()
    index = run_dirs["base"] / "samples" / PROMPT_SET / "index.json"
    index.write_text(json.dumps({"images": [{"prompt_id": "cat"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"index\.json: images\[0\] needs"):
        _build(tmp_path, run_dirs)


def test_bad_variants_description_lists_every_problem(tmp_path):
    variants = {"variants": {"a": {"knobs": [1]}, "b": {"label": 3}}}
    with pytest.raises(ValueError, match=r"variants\.a\.knobs.*variants\.b\.label"):
        build_report({}, tmp_path / "r.html", variants=variants, provenance={}, prompt_set="demo")


def test_cli_in_fresh_process_imports_no_torch(tmp_path):
    make_runs(tmp_path / "runs")
    (tmp_path / "variants.json").write_text(json.dumps(VARIANTS), encoding="utf-8")
    (tmp_path / "prov.json").write_text(json.dumps(PROVENANCE), encoding="utf-8")
    out = tmp_path / "results" / "report.html"
    code = (
        "import json, sys\n"
        "from u1lib.report import cli\n"
        "rc = cli('report', sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
    )
    args = ["--runs-root", tmp_path / "runs", "--variants", tmp_path / "variants.json",
            "--provenance", tmp_path / "prov.json", "--prompt-set", PROMPT_SET, "--out", out]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"rc": 0, "torch": False}
    assert "x0-logit" in out.read_text(encoding="utf-8")


def test_cli_reports_bad_file_and_fails(tmp_path, capsys):
    (tmp_path / "variants.json").write_text("{", encoding="utf-8")
    args = ["--runs-root", str(tmp_path), "--variants", str(tmp_path / "variants.json"),
            "--provenance", str(tmp_path / "prov.json"), "--prompt-set", "demo", "--out", str(tmp_path / "r.html")]
    assert cli("report", args) == 1
    assert "variants.json: not valid JSON" in capsys.readouterr().err


def test_flatten_and_config_diff():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    runs = [
        Run("p", Path("."), trained=True, config={"a": 1, "b": 2}),
        Run("q", Path("."), trained=True, config={"a": 1, "b": 3, "c": 0}),
    ]
    diff = config_diff_table(runs)
    assert diff.headers == ["config key", "p", "q"]
    assert diff.rows == [["b", "2", "3"], ["c", "(absent)", "0"]]
    assert config_diff_table(runs[:1]) is None


def test_number_formats_and_moving_average():
    assert [fmt_number(v, 3) for v in (1234.5, 0.123456, 7, None)] == ["1,234", "0.123", "7", "—"]
    assert [fmt_bytes(v) for v in (100, 1536, 5 * 2**30)] == ["100 B", "1.5 KiB", "5.0 GiB"]
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1.5, 2.5, 3.5]
