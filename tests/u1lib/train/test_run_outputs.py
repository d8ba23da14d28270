"""What a run leaves for judging it while it trains: previews, periodic and best adapters, TensorBoard."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from u1lib.io import read_json, read_jsonl
from u1lib.train import loop
from u1lib.train.loop import train
from u1lib.train.settings import TrainSettings

SETTINGS = {
    "steps": 6,
    "batch_size": 2,
    "lr": 3e-3,
    "lora": "attn=r4a4;mlp=r4a4",
    "val_every": 2,
    "val_max_items": 2,
    "ckpt_every": 2,
    "keep_checkpoints": 1,
    "log_every": 100,
    "save_every": 4,
    "preview_every": 3,
    "preview": {"count": 2, "seeds": [0, 5], "steps": 3},
}


class Killed(BaseException):
    """Stands in for SIGKILL."""


def _run(ws, run_dir, on_incompatible="refuse", **overrides):
    paths = {k: ws[k] for k in ("snapshot_dir", "manifest_path", "train_parquet", "val_parquet", "cache_dir")}
    return train({**SETTINGS, **overrides}, run_dir=run_dir, on_incompatible=on_incompatible, **paths)


def _events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _scalar_steps(events, tag):
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def straight(tiny_workspace, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    return run_dir, _run(tiny_workspace, run_dir)


def test_previews_at_step_zero_every_n_steps_and_the_last(straight):
    run_dir, _ = straight
    summary = read_json(run_dir / "previews" / "index.json")
    assert [s["step"] for s in summary["steps"]] == [0, 3, 6]
    first = read_json(run_dir / "previews" / summary["steps"][0]["index"])
    assert first["step"] == 0
    assert [(i["seed"], i["file"]) for i in first["images"]] == [
        (0, "00_seed0.png"),
        (5, "00_seed5.png"),
        (0, "01_seed0.png"),
        (5, "01_seed5.png"),
    ]
    for entry in summary["steps"]:
        folder = (run_dir / "previews" / entry["index"]).parent
        assert all((folder / i["file"]).stat().st_size > 0 for i in read_json(folder / "index.json")["images"])
    reference = read_json(run_dir / "previews" / summary["reference"])
    assert [r["prompt_id"] for r in first["images"][::2]] == [r["sample_id"] for r in reference["images"]]
    # training changes the picture: the last preview differs from the base model's
    last = (run_dir / "previews" / summary["steps"][-1]["index"]).parent
    assert (last / "00_seed0.png").read_bytes() != (
        run_dir / "previews" / "step-00000000" / "00_seed0.png"
    ).read_bytes()


def test_periodic_and_best_adapters(straight):
    run_dir, metrics = straight
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == [
        "step-00000004.safetensors",
        "step-00000006.safetensors",
    ]
    val = read_jsonl(run_dir / "val_log.jsonl")
    best = min((r for r in val if r["step"] >= 1), key=lambda r: r["val_loss"])
    assert metrics["best_adapter"]["step"] == best["step"]
    assert metrics["best_adapter"]["val_loss"] == best["val_loss"]
    assert metrics["initial_val_loss"] == val[0]["val_loss"]  # the base model: a reference, never the best
    assert not {"best_val_loss", "best_val_step"} & metrics.keys()  # one meaning of best per metrics.json
    assert (run_dir / "adapter_best.safetensors").read_bytes() == (
        run_dir / "best" / f"step-{best['step']:08d}.safetensors"
    ).read_bytes()
    # the periodic adapter of the last step holds the same tensors as the final adapter (no EMA here)
    final, periodic = (
        load_file(run_dir / "adapter.safetensors"),
        load_file(run_dir / "adapters" / "step-00000006.safetensors"),
    )
    assert final.keys() == periodic.keys() and all((final[k] == periodic[k]).all() for k in final)


def test_metrics_say_where_the_job_time_went(straight):
    _, metrics = straight
    seconds = metrics["job_seconds"]
    phases = {"inputs", "load", "surface", "batches", "prefixes", "lineage", "monitor"}
    phases |= {"first_step", "steps", "steps_after_pause"}
    phases |= {"validation", "previews", "adapters"}
    phases |= {"checkpoints", "logs", "save", "other"}
    assert set(seconds) == {"total"} | phases
    assert all(v >= 0 for v in seconds.values())
    assert sum(seconds[k] for k in phases) == pytest.approx(seconds["total"], abs=0.1)
    # the step phases hold exactly the step times that the training time sums
    steps = seconds["first_step"] + seconds["steps"] + seconds["steps_after_pause"]
    assert steps == pytest.approx(metrics["wall_time_s"], abs=0.02)


def test_tensorboard_events_hold_the_run(straight):
    run_dir, _ = straight
    events = _events(run_dir)
    train_log = read_jsonl(run_dir / "train_log.jsonl")
    assert _scalar_steps(events, "train/loss") == [(r["step"], round(r["loss"], 6)) for r in train_log]
    for tag in ("train/lr", "train/grad_norm", "train/images_per_s"):
        assert [s for s, _ in _scalar_steps(events, tag)] == list(range(1, 7))
    assert [s for s, _ in _scalar_steps(events, "val/x0_mse")] == [0, 2, 4, 6]
    assert any(tag.startswith("val/x0_mse_t") for tag in events.Tags()["scalars"])
    images = events.Images("preview/00_seed0")
    assert [i.step for i in images] == [0, 3, 6]
    preview = Image.open(run_dir / "previews" / "step-00000000" / "00_seed0.png")
    assert (images[0].width, images[0].height) == preview.size  # small previews keep their size


def test_tensorboard_shrinks_large_previews_only(tmp_path):
    from u1lib.train.tracking import TENSORBOARD_IMAGE_SIDE, _png_array

    large = io.BytesIO()
    Image.new("RGB", (2048, 1024), (200, 10, 10)).save(large, format="PNG")
    assert _png_array(large.getvalue(), TENSORBOARD_IMAGE_SIDE).shape == (256, 512, 3)  # aspect kept
    assert _png_array(large.getvalue()).shape == (1024, 2048, 3)


def test_a_killed_run_resumes_to_the_same_outputs(tiny_workspace, straight, tmp_path, monkeypatch):
    straight_dir, _ = straight
    real, calls = loop.flow_loss, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 5: after the step-4 checkpoint, the step-3 preview and step-4 adapter
            raise Killed()
        return real(*args, **kwargs)

    run_dir = tmp_path / "resumed"
    monkeypatch.setattr(loop, "flow_loss", dying)
    with pytest.raises(Killed):
        _run(tiny_workspace, run_dir)
    monkeypatch.setattr(loop, "flow_loss", real)
    _run(tiny_workspace, run_dir)
    a, b = _events(straight_dir), _events(run_dir)
    for tag in ("train/loss", "val/x0_mse"):
        assert _scalar_steps(a, tag) == _scalar_steps(b, tag), tag  # each step once, same values
    assert [i.step for i in b.Images("preview/01_seed5")] == [0, 3, 6]
    for name in (
        "adapter_best.safetensors",
        "adapters/step-00000004.safetensors",
        "previews/step-00000006/00_seed0.png",
    ):
        assert (run_dir / name).read_bytes() == (straight_dir / name).read_bytes(), name


def test_a_fresh_start_clears_an_abandoned_runs_files(tiny_workspace, tmp_path):
    run_dir = tmp_path / "run"
    _run(tiny_workspace, run_dir)
    _run(tiny_workspace, run_dir, steps=4, lr=1e-3, on_incompatible="restart")  # other math: the workflow's restart
    assert [s["step"] for s in read_json(run_dir / "previews" / "index.json")["steps"]] == [0, 3, 4]
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == ["step-00000004.safetensors"]
    assert [p.name for p in (run_dir / "best").iterdir()] == [
        f"step-{read_json(run_dir / 'metrics.json')['best_adapter']['step']:08d}.safetensors"
    ]


@pytest.mark.parametrize(
    ("preview", "message"),
    [
        ({"count": 0}, "train.preview.count and .steps must be positive"),
        ({"width": 64}, "give both"),
        ({"size": 64}, "unknown train.preview setting"),
    ],
)
def test_bad_preview_settings_name_the_key(preview, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_dict({"preview": preview})


def test_previews_of_one_size_share_a_batch_and_draw_the_same_images(tiny_workspace, tmp_path, monkeypatch):
    """Two captions at one preview size take one denoising pass instead of two, and each image is
    what its caption alone gives (to one PNG level: batched float32 sums round differently)."""
    from u1lib.data.pixels import load_image_tensor
    from u1lib.train import previews

    real, calls = previews.euler_sample, []

    def counting(model, cond, uncond, noise, **kwargs):
        calls.append(noise.shape[0])
        return real(model, cond, uncond, noise, **kwargs)

    monkeypatch.setattr(previews, "euler_sample", counting)
    preview = {"count": 2, "seeds": [0, 5], "steps": 2, "width": 32, "height": 32}
    settings = dict(steps=1, val_every=0, ckpt_every=0, save_every=0, preview_every=1, preview=preview)
    _run(tiny_workspace, tmp_path / "batched", **settings)
    assert calls == [4, 4]  # steps 0 and 1: 2 captions x 2 seeds in one batch each
    calls.clear()
    monkeypatch.setattr(previews, "PREVIEW_BATCH_TOKENS", 1)  # one caption a batch, as before batching
    _run(tiny_workspace, tmp_path / "one_by_one", **settings)
    assert calls == [2, 2] * 2
    folder = "previews/step-00000001"
    index = read_json(tmp_path / "batched" / folder / "index.json")
    assert index == read_json(tmp_path / "one_by_one" / folder / "index.json")
    for record in index["images"]:
        a, b = (
            load_image_tensor((tmp_path / run / folder / record["file"]).read_bytes())
            for run in ("batched", "one_by_one")
        )
        assert (a - b).abs().max() <= 2 / 255 + 1e-6, record["file"]
