"""The report's parts as files (what ``snakemake --report`` collects): figures, tables, samples, previews."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from test_report import PROMPT_SET, PROVENANCE, make_grid, section

from u1lib.io import ForeignFilesError
from u1lib.report import build_report, cli
from u1lib.report.artifacts import ArtifactFolders


def test_figures_tables_and_images_as_files(tmp_path):
    run_dirs, variants = make_grid(tmp_path / "runs", 4, steps=40)
    files = tmp_path / "report_files"
    build_report(
        run_dirs,
        tmp_path / "report.html",
        variants=variants,
        provenance=PROVENANCE,
        prompt_set=PROMPT_SET,
        artifacts=ArtifactFolders.under(files),
    )
    assert sorted(p.name for p in files.iterdir()) == ["figures", "previews", "samples", "tables"]
    figures = sorted(p.name for p in (files / "figures").iterdir())
    assert figures == [
        "best_validation_loss_per_variant.png",
        "sampled_training_t.png",
        "training_loss_x0_mse.png",
        "validation_loss.png",
        "validation_loss_per_t.png",
    ]
    assert all(Image.open(files / "figures" / name).format == "PNG" for name in figures)
    with open(files / "tables" / "leaderboard.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    board = section((tmp_path / "report.html").read_text(), "leaderboard")
    ranked = [row[1] for row in rows[1:] if row[1] in variants["variants"]]
    assert sorted(ranked) == sorted(variants["variants"])
    assert ranked == sorted(ranked, key=lambda name: board.index(f"{name}</td>"))  # the page's order
    tables = {p.name for p in (files / "tables").iterdir()}
    assert tables == {"leaderboard.tsv", "axis_effects.tsv", "runs.tsv"}  # no job_seconds here: no phases table
    for name, folder in run_dirs.items():
        samples = sorted(p.name for p in (files / "samples" / name).iterdir())
        assert samples == sorted(p.name for p in (folder / "samples" / PROMPT_SET).glob("*.png"))
        assert (files / "samples" / name / samples[0]).read_bytes() == (
            folder / "samples" / PROMPT_SET / samples[0]
        ).read_bytes()
    first = next(iter(variants["variants"]))
    steps = sorted(p.name for p in (files / "previews" / first).iterdir())
    assert steps == sorted(p.name for p in (run_dirs[first] / "previews").glob("step-*")) and len(steps) > 1


def test_a_rebuild_replaces_the_files_of_a_variant_that_left(tmp_path):
    run_dirs, variants = make_grid(tmp_path / "runs", 2, steps=40)
    files, options = tmp_path / "files", {"provenance": PROVENANCE, "prompt_set": PROMPT_SET}
    build_report(run_dirs, tmp_path / "r.html", variants=variants, artifacts=ArtifactFolders.under(files), **options)
    gone = list(variants["variants"])[1]
    del variants["variants"][gone], run_dirs[gone]
    build_report(run_dirs, tmp_path / "r.html", variants=variants, artifacts=ArtifactFolders.under(files), **options)
    assert not (files / "samples" / gone).exists() and not (files / "previews" / gone).exists()


def test_the_report_verb_writes_the_files_where_files_points(tmp_path):
    run_dirs, variants = make_grid(tmp_path / "runs", 2, steps=40)
    (tmp_path / "variants.json").write_text(json.dumps(variants))
    (tmp_path / "provenance.json").write_text(json.dumps(PROVENANCE))
    argv = ["--runs-root", str(tmp_path / "runs"), "--variants", str(tmp_path / "variants.json")]
    argv += ["--provenance", str(tmp_path / "provenance.json"), "--prompt-set", PROMPT_SET]
    argv += ["--out", str(tmp_path / "report.html"), "--files", str(tmp_path / "parts")]
    assert cli("report", argv) == 0
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["figures", "previews", "samples", "tables"]
    assert (tmp_path / "parts" / "tables" / "leaderboard.tsv").is_file()


def test_a_files_folder_holding_the_users_files_is_refused_before_anything_is_written(tmp_path):
    run_dirs, variants = make_grid(tmp_path / "runs", 2, steps=40)
    files, options = tmp_path / "pictures", {"provenance": PROVENANCE, "prompt_set": PROMPT_SET}
    (files / "samples" / "holiday").mkdir(parents=True)
    (files / "samples" / "holiday" / "beach.jpg").write_bytes(b"mine")
    (files / "figures").mkdir()
    (files / "figures" / "plot.png").write_bytes(b"mine, named as the report names its figures")
    with pytest.raises(ForeignFilesError, match=r"samples holds files `u1lib report` did not write \(holiday/beach"):
        build_report(
            run_dirs, tmp_path / "r.html", variants=variants, artifacts=ArtifactFolders.under(files), **options
        )
    assert not (tmp_path / "r.html").exists() and not (files / "tables").exists()
    assert (files / "samples" / "holiday" / "beach.jpg").read_bytes() == b"mine"
    assert (files / "figures" / "plot.png").is_file()
    (files / "samples" / "holiday" / "beach.jpg").unlink()  # left: only what a report writes, and empty folders
    build_report(run_dirs, tmp_path / "r.html", variants=variants, artifacts=ArtifactFolders.under(files), **options)
    # and a second report over the first one's parts
    build_report(run_dirs, tmp_path / "r.html", variants=variants, artifacts=ArtifactFolders.under(files), **options)
    assert not (files / "figures" / "plot.png").exists()  # a name of the report's kind is the report's to replace
    assert sorted(p.name for p in (files / "samples").iterdir()) == sorted(run_dirs)
