"""Rule write_variants: variants.json, the grid as the report reads it."""

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.io import write_json  # noqa: E402

write_json(snakemake.output.variants, snakemake.params.variants)
