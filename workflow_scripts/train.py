"""Rule train: one variant's LoRA (torchrun when given several GPUs); resumable state stays in checkpoints/."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.device import use_compile_cache  # noqa: E402
from u1lib.gpu_slots import claim_gpus  # noqa: E402
from u1lib.snapshot import snapshot_dir  # noqa: E402
from u1lib.train.inputs import RunFiles  # noqa: E402
from u1lib.train.launch import run_training  # noqa: E402

use_compile_cache(snakemake.params.compile_cache)
manifest = Path(snakemake.input.manifest)
with claim_gpus(snakemake.resources.gpu):
    files = RunFiles(
        snapshot_dir=snapshot_dir(manifest),
        manifest_path=manifest,
        train_parquet=Path(snakemake.input.train),
        run_dir=Path(snakemake.output.adapter).parent,
        val_parquet=Path(snakemake.input.val) if snakemake.params.held_out else None,
        cache_dir=Path(snakemake.input.cache).parent,
    )
    run_training(
        snakemake.params.settings,
        files,
        gpus=snakemake.resources.gpu,
        prompt=snakemake.params.prompt,
        # Snakemake reruns this job exactly when its settings, data or code changed: stale checkpoints
        # are moved aside; a killed job rerun with the same inputs resumes
        on_incompatible="restart",
    )
