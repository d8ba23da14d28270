"""Rule bench: full-size random-weight speed and memory figures (no download needed)."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.bench import run_bench  # noqa: E402
from u1lib.gpu_slots import claim_gpus  # noqa: E402

with claim_gpus(snakemake.resources.gpu):
    run_bench(snakemake.params.settings, Path(snakemake.output.result))
