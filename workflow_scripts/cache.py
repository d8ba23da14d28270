"""Rule cache: prefix K/V of every caption for one (model, dataset, prompt settings)."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.cache import build_cache  # noqa: E402
from u1lib.gpu_slots import claim_gpus  # noqa: E402
from u1lib.snapshot import snapshot_dir  # noqa: E402

manifest = Path(snakemake.input.manifest)
with claim_gpus(snakemake.resources.gpu):
    build_cache(
        snapshot_dir=snapshot_dir(manifest),
        manifest_path=manifest,
        data_paths=[Path(snakemake.input.train), Path(snakemake.input.val)],
        out_dir=Path(snakemake.output.manifest).parent,
        **snakemake.params.prompt,
        **snakemake.params.settings,
    )
