"""Rule export: one variant's adapter as every consumer's file, each verified (python -m u1lib export)."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.lora.export import export_adapter  # noqa: E402
from u1lib.snapshot import snapshot_dir  # noqa: E402

settings = snakemake.params.settings
export_adapter(
    snakemake.input.adapter,
    Path(snakemake.output.report).parent,
    snapshot=snapshot_dir(Path(snakemake.input.manifest)),
    merged=settings["merged"],
    strict_upstream=settings["strict_upstream"],
    overwrite=True,  # the folder is this rule's own: a rerun replaces what the last run wrote
)
