"""Rule report: the self-contained HTML comparison of every variant, with provenance."""

import platform
from importlib import metadata
from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

import u1lib  # noqa: E402
from u1lib.io import read_json  # noqa: E402
from u1lib.report import build_report  # noqa: E402

PACKAGES = ("torch", "safetensors", "tokenizers", "pyarrow", "pillow", "snakemake")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "u1lib": u1lib.__version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


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
    {name: Path(folder) for name, folder in snakemake.params.run_dirs.items()},
    Path(snakemake.output.html),
    variants=read_json(snakemake.input.variants),
    provenance=provenance,
    prompt_set=snakemake.params.prompt_set,
)
