"""Rule demo_dataset: write the scikit-image demo photos and their captions as a dataset folder."""

from job_setup import start_job

start_job(snakemake.log[0])

from u1lib.data.demo import write_demo_folder  # noqa: E402

write_demo_folder(captions_yaml=snakemake.input.captions, out_dir=snakemake.output.folder)
