"""Rule pack: a folder or parquet file of captioned images -> train/val parquet + stats.json."""

from pathlib import Path

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.data.buckets import BucketSpec  # noqa: E402
from u1lib.data.pack import pack  # noqa: E402
from u1lib.model.config import U1Config  # noqa: E402
from u1lib.snapshot import snapshot_dir  # noqa: E402

settings = snakemake.params.settings
buckets = dict(settings["buckets"])
if buckets["token_size"] == "auto":  # a hub model (rules/common.smk, pack_model): the snapshot says
    manifest = Path(snakemake.input.model)
    buckets["token_size"] = U1Config.from_file(snapshot_dir(manifest)).token_size
    print(f"dataset.buckets.token_size auto: {buckets['token_size']}, the token size of {manifest.parent.name}")
pack(
    Path(snakemake.input.source),
    Path(snakemake.output.train).parent,
    buckets=BucketSpec.from_dict(buckets),
    val_count=settings["val_count"],
    split_seed=settings["split_seed"],
    strict=settings["strict"],
)
