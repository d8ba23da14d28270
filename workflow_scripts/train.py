"""Rule train: one variant's LoRA; resumable state stays in the undeclared checkpoints/ folder."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.gpu_slots import claim_gpus  # noqa: E402
from u1lib.train.loop import train  # noqa: E402

manifest = Path(snakemake.input.manifest)
with claim_gpus(snakemake.resources.gpu):
    train(
        snakemake.params.settings,
        snapshot_dir=manifest.with_name("snapshot"),
        manifest_path=manifest,
        train_parquet=Path(snakemake.input.train),
        val_parquet=Path(snakemake.input.val),
        cache_dir=Path(snakemake.input.cache).parent,
        run_dir=Path(snakemake.output.adapter).parent,
        prompt=snakemake.params.prompt,
    )
