"""Rule sample: one variant's images (the base model has no adapter) for every prompt and seed."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.device import use_compile_cache  # noqa: E402
from u1lib.gpu_slots import claim_gpus  # noqa: E402
from u1lib.sample import sample_variant  # noqa: E402
from u1lib.sample_settings import load_prompts  # noqa: E402
from u1lib.snapshot import snapshot_dir  # noqa: E402

use_compile_cache(snakemake.params.compile_cache)
manifest = Path(snakemake.input.manifest)
with claim_gpus(snakemake.resources.gpu):
    sample_variant(
        snapshot_dir=snapshot_dir(manifest),
        manifest_path=manifest,
        adapter=Path(snakemake.input.adapter) if snakemake.input.adapter else None,
        prompts=load_prompts(Path(snakemake.input.prompts)),
        settings=snakemake.params.settings,
        prompt=snakemake.params.prompt,
        out_dir=Path(snakemake.output.index).parent,
        variant=snakemake.wildcards.variant,
        prompt_set=snakemake.wildcards.prompt_set,
    )
