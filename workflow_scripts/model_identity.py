"""Rule model_identity: identity.json, what names the model (source, repo and revision, tiny seed and
builder code, or folder); stages that read the model rerun when it changes, not when the snapshot rule
merely reran."""

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.io import write_json  # noqa: E402

write_json(snakemake.output.identity, snakemake.params.identity)
