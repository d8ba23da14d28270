"""Rule pack: a folder or parquet file of captioned images -> train/val parquet + stats.json."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.data.buckets import BucketSpec  # noqa: E402
from u1lib.data.pack import pack  # noqa: E402

settings = snakemake.params.settings
pack(
    Path(snakemake.input.source),
    Path(snakemake.output.train).parent,
    buckets=BucketSpec.from_dict(settings["buckets"]),
    val_count=settings["val_count"],
    split_seed=settings["split_seed"],
    strict=settings["strict"],
)
