"""The report as a tool for choosing: ranking, axis effects, colours, links, banner, speed, previews.

Run folders come from tests/u1lib/test_report.py (``make_runs``: 3 hand-checked variants; ``make_grid``:
N variants of a 12-point grid).
"""

from __future__ import annotations

import copy
import html
import json
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image
from test_report import (
    BASE_VAL,
    NUMBERS,
    PROMPT_SET,
    PROMPTS,
    PROVENANCE,
    VARIANTS,
    build,
    grid_variants,
    make_grid,
    make_runs,
    section,
    write_previews,
)

from u1lib.report import build_report
from u1lib.report.colors import PALETTE, variant_styles
from u1lib.report.ranking import Standing, axis_effects, steady_median, warmup_records


def _rows(table_html: str) -> list[list[str]]:
    """Cell texts of every body row, tags stripped."""
    body = table_html[table_html.index("<tbody>") :]
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL)
    ]


def _leaderboard_rows(page: str) -> list[list[str]]:
    part = section(page, "leaderboard")
    start = part.index('<table class="leaderboard">')
    return _rows(part[start : part.index("</table>", start)])


@pytest.fixture(scope="module")
def hand_checked(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("choosing")
    return root, build(root, make_runs(root / "runs"))


def test_leaderboard_ranks_best_first_with_differences_from_base_and_best(hand_checked):
    _, page = hand_checked
    rows = _leaderboard_rows(page)
    # columns: #, variant, train.loss_type, train.t_dist, loss (step), vs base, vs best, last, status
    assert [(r[0], r[1].splitlines()[0]) for r in rows] == [
        ("1", "x0-logit"),
        ("2", "x0-uniform"),
        ("3", "v-uniform"),
        ("ref", "base model (step 0)"),
    ]
    assert [r[4:7] for r in rows] == [
        ["0.250 (step 10)", "-0.750 (-75.0%)", "best"],
        ["0.500 (step 15)", "-0.500 (-50.0%)", "+0.250"],
        ["0.750 (step 20)", "-0.250 (-25.0%)", "+0.500"],
        ["1.000", "0", "+0.750"],
    ]
    assert rows[0][2:4] == ["x0", "logit_normal"]
    assert "Best: <strong>x0-logit</strong>" in page
    assert "Validation loss = x0-MSE on 2 held-out images over the t grid [0.1, 0.5], lower is better." in page


def test_leaderboard_comes_first_and_provenance_last(hand_checked):
    _, page = hand_checked
    anchors = re.findall(r'<section id="([a-z]+)">', page)
    assert anchors[0] == "leaderboard" and anchors[-1] == "provenance"


def test_axis_effects_by_hand():
    standings = [Standing(name, best, step, best, BASE_VAL, 20, True) for name, (_, best, step) in NUMBERS.items()]
    knobs = {name: entry["knobs"] for name, entry in VARIANTS["variants"].items()}
    knobs["extra"] = {"train.lr": 1e-3}  # an explicit variant: an axis with one value does not count
    standings.append(Standing("extra", 0.1, 5, 0.1, BASE_VAL, 5, True))
    effects = axis_effects(standings, knobs)
    assert set(effects) == {"train.loss_type", "train.t_dist"}
    # loss type: x0 = mean(0.5, 0.25) = 0.375, v = 0.75, axis mean (0.5 + 0.75 + 0.25) / 3 = 0.5
    mean, values = effects["train.loss_type"]
    assert mean == pytest.approx(0.5)
    assert [(v.value, v.mean, v.effect, set(v.variants)) for v in values] == [
        ("x0", pytest.approx(0.375), pytest.approx(-0.125), {"x0-uniform", "x0-logit"}),
        ("v", pytest.approx(0.75), pytest.approx(0.25), {"v-uniform"}),
    ]
    # t distribution: logit_normal = 0.25, uniform = mean(0.5, 0.75) = 0.625
    _, values = effects["train.t_dist"]
    assert [(v.value, v.effect) for v in values] == [
        ("logit_normal", pytest.approx(-0.25)),
        ("uniform", pytest.approx(0.125)),
    ]


def test_axis_effects_on_the_page(hand_checked):
    _, page = hand_checked
    part = section(page, "leaderboard")
    start = part.index("Average effect")
    rows = _rows(part[start : part.index("</table>", start)])
    assert rows[0] == ["train.loss_type", "x0", "2", "0.375", "0.500", "-0.125 (-25.0%)"]
    assert rows[1] == ["", "v", "1", "0.750", "", "+0.250 (+50.0%)"]
    assert "Largest average gain: <strong>train.t_dist = logit_normal</strong>" in page


def test_runs_without_a_validation_rank_last_and_a_running_leader_is_flagged(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    (run_dirs["x0-logit"] / "metrics.json").unlink()  # the leader is still training
    val_log = run_dirs["v-uniform"] / "val_log.jsonl"
    val_log.write_text(val_log.read_text().splitlines()[0] + "\n")  # only the step-0 record so far
    page = build(tmp_path, run_dirs)
    rows = _leaderboard_rows(page)
    assert [r[1].splitlines()[0] for r in rows] == ["x0-logit", "x0-uniform", "base model (step 0)", "v-uniform"]
    assert rows[0][-1] == "training: step 20" and rows[-1][0] == "—"
    assert "(still training)" in page
    assert "validated differently" not in page  # a run without metrics.json yet is no different run


def test_colours_stay_when_variants_are_added():
    names = list(grid_variants(12)["variants"])
    for count in (2, 6):  # the grids the report was looked at with
        small = variant_styles(names[:count])
        assert small == {name: style for name, style in variant_styles(names).items() if name in small}
    assert variant_styles(names) == variant_styles(names[::-1])  # the order of the names does not matter
    assert len({style.color for style in variant_styles(names).values()}) == len(PALETTE) == 12
    styles = variant_styles([f"v{i}" for i in range(13)])
    assert sorted(s.linestyle for s in styles.values()).count("--") == 1  # the 13th reuses a colour, dashed


def test_colour_on_the_page_survives_an_added_variant(tmp_path):
    def swatch(page: str, name: str) -> str:
        runs = section(page, "runs")
        return re.search(r'background:(#[0-9a-f]{6})"></span>' + re.escape(name) + "</td>", runs).group(1)

    three = build(tmp_path / "a", make_runs(tmp_path / "a" / "runs"))
    run_dirs = make_runs(tmp_path / "b" / "runs")
    # a newcomer whose preferred colour is free (u1lib/report/colors.py says when one is not)
    run_dirs["x0-logit-ema"] = run_dirs["x0-logit"]
    variants = copy.deepcopy(VARIANTS)
    variants["variants"]["x0-logit-ema"] = variants["variants"]["x0-logit"]
    four = build(tmp_path / "b", run_dirs, variants=variants)
    for name in VARIANTS["variants"]:
        assert swatch(three, name) == swatch(four, name)


def _hrefs(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]+)"', page) if not h.startswith("#")]


def test_links_are_relative_and_point_at_existing_files(tmp_path):
    run_dirs = make_runs(tmp_path / "results" / "runs")
    write_previews(run_dirs["x0-logit"], [10, 20], (0, 0, 0))
    logs = tmp_path / "results" / "logs" / "train"
    logs.mkdir(parents=True)
    (logs / "x0-logit.log").write_text("log\n")
    out = tmp_path / "results" / "report.html"
    build_report(
        run_dirs,
        out,
        variants=VARIANTS,
        provenance=PROVENANCE,
        prompt_set=PROMPT_SET,
        job_logs={"x0-logit": logs / "x0-logit.log"},
    )
    page = out.read_text(encoding="utf-8")
    hrefs = _hrefs(page)
    for href in hrefs:
        parsed = urlparse(href)
        assert not parsed.scheme and not parsed.netloc and not href.startswith("/"), href
        assert (out.parent / unquote(href)).is_file(), href
    assert "runs/x0-uniform/samples/demo/cat_seed0.png" in hrefs  # a contact sheet cell opens the full image
    assert "runs/x0-logit/previews/step-00000010/cat_seed0.png" in hrefs
    for name in ("adapter.safetensors", "train_log.jsonl", "val_log.jsonl", "config.json", "metrics.json"):
        assert f"runs/x0-logit/{name}" in hrefs
    assert "logs/train/x0-logit.log" in hrefs
    assert "runs/x0-logit/samples/demo/rocket_seed1.png" not in hrefs  # the missing image links nowhere


def test_banner_only_for_the_tiny_model(hand_checked, tmp_path):
    _, page = hand_checked
    assert 'class="banner">The embedded tiny model has random weights' in page
    hub = {**PROVENANCE, "model": {**PROVENANCE["model"], "source": "hub", "name": "u1-8b"}}
    assert 'class="banner"' not in build(tmp_path, make_runs(tmp_path / "runs"), provenance=hub)


def test_steady_state_seconds_per_step_leave_out_the_warm_up(hand_checked):
    assert [warmup_records(n) for n in (5, 30, 31, 200)] == [3, 3, 4, 20]
    records = [{"seconds": s} for s in (9.0, 9.0, 9.0, 1.0, 2.0)]
    assert steady_median(records, "seconds") == 1.5
    slow_tenth = [{"seconds": 50.0}] * 20 + [{"seconds": 1.0}] * 160 + [{"seconds": 3.0}] * 20
    assert steady_median(slow_tenth, "seconds") == 1.0  # all 20 warm-up steps left out: the median of the rest
    assert steady_median(records[:3], "seconds") is None  # nothing but warm-up
    _, page = hand_checked
    runs = section(page, "runs")
    rows = _rows(runs[: runs.index("Inside each train job")])  # the speed table, not the phases below it
    assert {row[0]: row[2] for row in rows} == {name: "0.5" for name in NUMBERS}  # the mean would be 1.775


def test_previews_grid_when_present(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    write_previews(run_dirs["base"], [0], (255, 255, 255))
    for name in ("x0-logit", "v-uniform"):
        write_previews(run_dirs[name], [10, 20], (0, 0, 0))
    page = build(tmp_path, run_dirs)
    previews = section(page, "previews")
    assert "<h3>cat · seed 0</h3>" in previews
    assert re.findall(r"<th>(step [\d,]+)</th>", previews) == ["step 0", "step 10", "step 20"]
    rows = re.findall(r'<th class="row">.*?</span>(.*?)</th>', previews)
    assert [row.replace("<wbr>", "") for row in rows] == ["base (untrained)", "#1 x0-logit", "#3 v-uniform"]
    assert previews.count("<img ") == 1 + 2 * 2 and previews.count('<td class="blank"') == 2 + 2


def test_previews_start_with_the_real_held_out_image(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    for name in ("x0-logit", "v-uniform"):
        write_previews(run_dirs[name], [10, 20], (0, 0, 0))
    reference = run_dirs["x0-logit"] / "previews" / "reference"
    reference.mkdir()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(
        reference / "00.png"
    )  # what the trainer writes: {sample_id, prompt, file}
    (reference / "index.json").write_text(
        json.dumps({"images": [{"sample_id": "cat", "prompt": PROMPTS[0][1], "file": "00.png"}]})
    )
    page = build(tmp_path, run_dirs)
    previews = section(page, "previews")
    rows = [r.replace("<wbr>", "") for r in re.findall(r'<th class="row">(?:<span[^>]*></span>)?(.*?)</th>', previews)]
    assert rows == ["real image (held out)", "#1 x0-logit", "#3 v-uniform"]
    first_row = previews[previews.index("real image (held out)") : previews.index("#1 x0-logit")]
    assert "previews/reference/00.png" in first_row and first_row.count("<img ") == 1
    # a torn reference index is one note naming it, and the previews still show
    (reference / "index.json").write_text("{", encoding="utf-8")
    page = build(tmp_path, run_dirs)
    assert page.count(f"x0-logit: {reference / 'index.json'}") == 1
    assert "real image (held out)" not in section(page, "previews") and "#1 x0-logit" in section(page, "previews")


def test_previews_absent_is_a_note_and_a_bad_index_a_note(hand_checked, tmp_path):
    _, page = hand_checked
    assert "No previews" in section(page, "previews")
    run_dirs = make_runs(tmp_path / "runs")
    write_previews(run_dirs["x0-logit"], [10], (0, 0, 0))
    bad = run_dirs["x0-logit"] / "previews" / "step-00000020" / "index.json"
    bad.parent.mkdir()
    bad.write_text("{", encoding="utf-8")
    (run_dirs["x0-logit"] / "previews" / "step-00000010" / "cat_seed0.png").unlink()
    page = build(tmp_path, run_dirs)
    assert f"x0-logit: {bad} unreadable, left out" in page
    assert "x0-logit: 1 preview images listed in an index.json but not readable" in page


def test_twelve_variants_build_in_seconds_and_stay_small(tmp_path):
    run_dirs, variants = make_grid(tmp_path / "runs", 12)
    out = tmp_path / "report.html"
    started = time.perf_counter()
    build_report(run_dirs, out, variants=variants, provenance=PROVENANCE, prompt_set=PROMPT_SET)
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    assert seconds < 30 and size < 8 * 2**20, (seconds, size)  # measured: about 1 s and 4.5 MB
    page = out.read_text(encoding="utf-8")
    assert len(_leaderboard_rows(page)) == 13 and "<script" not in page
    assert "e-0" not in section(page, "leaderboard")  # differences in plain decimals, never in e-notation


def test_definition_says_when_the_validation_images_are_training_images(tmp_path):
    run_dirs = make_runs(tmp_path / "runs")
    for name in VARIANTS["variants"]:
        metrics_path = run_dirs[name] / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["dataset"]["validation"] = {"source": "train", **metrics["dataset"]["train"]}
        metrics_path.write_text(json.dumps(metrics))
    page = build(tmp_path, run_dirs)
    assert "Validation loss = x0-MSE on 6 training images (no held-out set" in page
