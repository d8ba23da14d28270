"""dataset.source and model.source are checked before anything is planned, naming the key and path."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def dry_run_error(workflow, name: str, section: str, **values) -> str:
    config = workflow.config()
    config[section].update(values)
    result = workflow.snakemake("--dry-run", "--configfile", workflow.write_config(name, config), check=False)
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_a_dataset_folder_gone_after_a_finished_run_is_an_error_not_old_results(workflow, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not read by a dry run")
    (folder / "a.txt").write_text("a caption")
    config = workflow.config()
    config["dataset"].update(source=str(folder), name="photos")
    path = workflow.write_config("photos.yaml", config)
    workflow.fake_complete("--configfile", path)
    assert workflow.planned_jobs("--configfile", path) == {}
    (folder / "a.png").unlink()
    (folder / "a.txt").unlink()
    folder.rmdir()
    result = workflow.snakemake("--configfile", path, "--cores", "1", check=False)
    assert result.returncode != 0
    assert f"dataset.source {str(folder)!r}: no such file or folder" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "files, expected",
    [({}, "the folder holds no images"), ({"a.txt": b"a caption", ".b.png": b""}, "the folder holds no images")],
    ids=["empty", "captions-only"],
)
def test_a_dataset_folder_without_images_is_an_error(workflow, tmp_path, files, expected):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    output = dry_run_error(workflow, "empty.yaml", "dataset", source=str(folder))
    assert f"dataset.source {str(folder)!r}: {expected}" in output


def test_a_parquet_without_rows_or_not_parquet_is_an_error(workflow, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([], pa.string())}), empty)
    assert f"dataset.source {str(empty)!r}: the parquet file has no rows" in dry_run_error(
        workflow, "rows.yaml", "dataset", source=str(empty)
    )
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    assert f"dataset.source {str(garbage)!r}: not a readable parquet file" in dry_run_error(
        workflow, "garbage.yaml", "dataset", source=str(garbage)
    )


def test_a_model_folder_that_does_not_exist_is_an_error(workflow, tmp_path):
    output = dry_run_error(workflow, "model.yaml", "model", source=str(tmp_path / "nowhere"))
    assert f"model.source {str(tmp_path / 'nowhere')!r}: no such folder" in output


def test_a_model_folder_of_the_user_gets_no_modeling_files(workflow, tmp_path):
    (tmp_path / "mine").mkdir()
    output = dry_run_error(workflow, "model.yaml", "model", source=str(tmp_path / "mine"), modeling_source="git")
    assert "model.modeling_source 'git'" in output and "set model.modeling_source: none" in output
