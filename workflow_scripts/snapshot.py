"""Rule snapshot: build the tiny model, download the pinned hub revision or verify a model folder in place,
and write the manifest (a rerun verifies what is there instead of fetching it again)."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.snapshot_sources import make_snapshot  # noqa: E402

identity = snakemake.params.identity
make_snapshot(
    identity["source"],
    Path(snakemake.output.manifest),
    model=snakemake.wildcards.model,
    repo_id=identity.get("repo_id"),
    revision=identity.get("revision"),
    seed=identity.get("tiny_seed", 0),
    variant=identity.get("tiny_variant", "u1"),
    weights=identity.get("tiny_weights", "auto"),
)
