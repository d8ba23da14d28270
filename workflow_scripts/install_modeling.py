"""Rule install_modeling: verify upstream's modeling files against their pins and copy them in."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.modeling import install_modeling  # noqa: E402

install_modeling(
    Path(snakemake.input.manifest),
    source_dir=Path(snakemake.input.source) if snakemake.input.source else None,
    pins_path=Path(snakemake.input.pins),
    report_path=Path(snakemake.output.report),
)
