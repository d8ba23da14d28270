"""Rule report: the self-contained HTML comparison of every variant, with provenance."""

from dataclasses import fields
from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.io import read_json  # noqa: E402
from u1lib.provenance import versions  # noqa: E402
from u1lib.report import build_report  # noqa: E402
from u1lib.report.artifacts import ArtifactFolders  # noqa: E402

# each variant's run folder, from the sample index the rule declares for it:
# results/runs/<variant>/samples/<prompt set>/index.json (the base model's too)
run_dirs = {Path(index).parents[2].name: Path(index).parents[2] for index in snakemake.input.samples}
manifest = read_json(snakemake.input.manifest)
provenance = {
    "git_commit": snakemake.params.git_commit,
    "model": {
        "name": manifest.get("model"),
        **{key: manifest.get(key) for key in ("source", "repo_id", "revision", "manifest_hash")},
    },
    "versions": versions(),
}
build_report(
    run_dirs,
    Path(snakemake.output.html),
    variants=read_json(snakemake.input.variants),
    provenance=provenance,
    prompt_set=snakemake.params.prompt_set,
    benchmarks=snakemake.params.benchmarks,
    job_logs=snakemake.params.job_logs,
    # the rule declares one output per kind of part, named as ArtifactFolders' fields
    artifacts=ArtifactFolders(**{kind.name: Path(snakemake.output[kind.name]) for kind in fields(ArtifactFolders)}),
)
