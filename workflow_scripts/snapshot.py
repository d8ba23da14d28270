"""Rule snapshot: build the tiny model or download the pinned hub revision, and write the manifest."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.hub import snapshot_hub, snapshot_tiny  # noqa: E402

settings = snakemake.params.model
manifest = Path(snakemake.output.manifest)
snapshot_dir = manifest.with_name("snapshot")
if settings["source"] == "tiny":
    snapshot_tiny(snapshot_dir, manifest, seed=settings["tiny_seed"], model=settings["name"])
else:
    snapshot_hub(settings["repo_id"], settings["revision"], snapshot_dir, manifest, model=settings["name"])
