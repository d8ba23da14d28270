"""Experiment trackers of one run: TensorBoard events in ``run_dir/tensorboard``, W&B when asked.

The event files are a view of the run's history, which lives in its checkpoints: when a run
starts or resumes, the folder is rewritten from the history up to that step (train and validation
records, preview images), so an interrupted run shows each step once, exactly as an uninterrupted
one does. W&B cannot rewrite a run, so it only receives what happens from then on.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from u1lib.train.previews import preview_steps, read_step, step_folder
from u1lib.train.run_folder import TRAIN_LOG, VAL_LOG

TENSORBOARD_DIR = "tensorboard"
TRAIN_SCALARS = ("loss", "x0_mse", "v_mse", "lr", "grad_norm", "images_per_s")
# TensorBoard's event writer checksums every byte in Python: a 1024² preview costs it ~0.5 s on a
# CI core against ~0.15 s at this size. The full-size images stay in previews/ and in the report.
TENSORBOARD_IMAGE_SIDE = 512


def _png_array(png: bytes, max_side: int | None = None) -> np.ndarray:
    """[H, W, 3] uint8; with ``max_side``, shrunk (aspect kept) so that neither side exceeds it."""
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.array(rgb)


class Trackers:
    """Where the trainer's records and preview images go besides the JSONL logs (main rank only)."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb_project: str | None, config: dict):
        self.run_dir = run_dir
        self.tensorboard, self.writer, self.wandb = tensorboard, None, None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ValueError(
                    f"train.wandb_project is {wandb_project!r} but the wandb package is not installed: "
                    "pip install wandb (and `wandb login`), or set train.wandb_project: null"
                ) from None
            run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]  # one W&B run per folder
            self.wandb = wandb.init(
                project=wandb_project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir), config=config
            )

    def open(self, step: int, records: dict[str, list[dict]], previews_root: Path) -> None:
        """Start the event files over from the history up to ``step`` (``records``: train/val logs)."""
        if not self.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package: only when used

        folder = self.run_dir / TENSORBOARD_DIR
        shutil.rmtree(folder, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(folder))
        for record in records[TRAIN_LOG]:
            self._scalars(record, wandb=False)
        for record in records[VAL_LOG]:
            self._validation(record, wandb=False)
        for preview_step in (s for s in preview_steps(previews_root) if s <= step):
            folder_path = step_folder(previews_root, preview_step)
            index = read_step(previews_root, preview_step)
            images = [(r, (folder_path / r["file"]).read_bytes()) for r in index["images"]]
            self._images(preview_step, images, wandb=False)
        self.writer.flush()

    def trained(self, record: dict) -> None:
        self._scalars(record, wandb=True)

    def validated(self, record: dict) -> None:
        self._validation(record, wandb=True)

    def previewed(self, step: int, images: list[tuple[dict, bytes]]) -> None:
        self._images(step, images, wandb=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def _scalars(self, record: dict, *, wandb: bool) -> None:
        values = {f"train/{k}": record[k] for k in TRAIN_SCALARS if record.get(k) is not None}
        self._emit(record["step"], values, wandb)

    def _validation(self, record: dict, *, wandb: bool) -> None:
        values = {"val/x0_mse": record["val_loss"], "val/v_mse": record["val_v_mse"]}
        values.update({f"val/x0_mse_t{t}": v for t, v in record["per_t"].items()})
        self._emit(record["step"], values, wandb)

    def _emit(self, step: int, values: dict[str, float], wandb: bool) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        if wandb and self.wandb is not None:
            self.wandb.log(values, step=step)

    def _images(self, step: int, images: list[tuple[dict, bytes]], wandb: bool) -> None:
        tagged = {f"preview/{r['file'].removesuffix('.png')}": (r, png) for r, png in images}
        if self.writer is not None:
            for tag, (_, png) in tagged.items():
                self.writer.add_image(tag, _png_array(png, TENSORBOARD_IMAGE_SIDE), step, dataformats="HWC")
            self.writer.flush()
        if wandb and self.wandb is not None:
            import wandb as wandb_module

            logged = {tag: wandb_module.Image(_png_array(png), caption=r["prompt"]) for tag, (r, png) in tagged.items()}
            self.wandb.log(logged, step=step)
