"""What reruns the snapshot, and what a snapshot rerun reruns: the model's identity decides, not code.

The stages that read the model take the manifest as ancient() input and identity.json (rule
model_identity) as a plain one. Plans come from dry runs of a faked finished run, as in
test_rerun.py; the last tests run the snapshot rule for real, offline, on a hand-built Hugging Face
cache and on a model folder of the user's.
"""

import hashlib
import json
import os

import pytest

from tests.workflow.conftest import copy_workflow
from tests.workflow.test_rerun import edited_module

REVISION = "0123456789abcdef0123456789abcdef01234567"
EVERYTHING_READING_THE_MODEL = {
    "model_identity": 1,
    "snapshot": 1,
    "install_modeling": 1,
    "cache": 1,
    "train": 4,
    "export": 4,
    "sample": 5,
    "report": 1,
    "all": 1,
}
LAYERS_READERS = {"cache": 1, "train": 4, "export": 4, "sample": 5, "report": 1, "all": 1}


def hub_config(workflow, revision: str = REVISION, name: str = "hub.yaml") -> str:
    config = workflow.config()
    config["model"].update(source="hub", name="u1", repo_id="org/U1", revision=revision)
    return workflow.write_config(name, config)


@pytest.fixture(scope="module")
def hub_finished(tmp_path_factory):
    """A finished (faked) run of a hub model, and its config file."""
    workflow = copy_workflow(tmp_path_factory.mktemp("hub"))
    config = hub_config(workflow)
    workflow.fake_complete("--configfile", config)
    return workflow, config


def test_hub_snapshot_code_and_unrelated_engine_edits_plan_no_snapshot(hub_finished):
    workflow, config = hub_finished
    assert workflow.planned_jobs("--configfile", config) == {}
    for module in ("snapshot.py", "tiny.py", "model/config.py"):  # the files are pinned by the revision
        with edited_module(workflow, module):
            plan = workflow.planned_jobs("--configfile", config)
            assert "snapshot" not in plan and "model_identity" not in plan, module
    with edited_module(workflow, "snapshot.py"):  # the weight check run by cache, train, sample changes no result
        assert workflow.planned_jobs("--configfile", config) == {}
    with edited_module(workflow, "model/layers.py"):  # reruns the stages that run it, and only because of that
        assert workflow.planned_jobs("--configfile", config) == LAYERS_READERS


def test_a_snapshot_rule_rerun_reruns_nothing_downstream(hub_finished):
    workflow, config = hub_finished
    assert workflow.planned_jobs("--configfile", config, "--forcerun", "snapshot") == {"snapshot": 1}


def test_a_new_revision_reruns_everything_that_reads_the_model(hub_finished):
    workflow, _ = hub_finished
    config = hub_config(workflow, revision="f" * 40, name="new-revision.yaml")
    assert workflow.planned_jobs("--configfile", config) == EVERYTHING_READING_THE_MODEL


def test_other_changes_wait_for_the_next_run_while_the_snapshot_is_forced(hub_finished):
    """Snakemake's limit, pinned because config/README.md documents it: jobs downstream of a job
    that must run are not checked for their own reasons (dag.py update_needrun masks them), and
    ancient() inputs then skip them. The next run does them."""
    workflow, _ = hub_finished
    config = workflow.config()
    config["model"].update(source="hub", name="u1", repo_id="org/U1", revision=REVISION)
    config["sample"]["cfg_scale"] = 2.0
    changed = workflow.write_config("cfg.yaml", config)
    assert workflow.planned_jobs("--configfile", changed, "--forcerun", "snapshot") == {"snapshot": 1}
    assert workflow.planned_jobs("--configfile", changed) == {"sample": 5, "report": 1, "all": 1}


def test_tiny_snapshots_follow_their_builder_code(finished):
    with edited_module(finished, "snapshot.py"):
        assert finished.planned_jobs() == {}
    with edited_module(finished, "tiny.py"):  # other weights, perhaps: everything that reads them reruns
        assert finished.planned_jobs() == EVERYTHING_READING_THE_MODEL
    plan = finished.planned_jobs("--configfile", tiny_seed_config(finished))
    assert plan == EVERYTHING_READING_THE_MODEL
    assert finished.planned_jobs() == {}


def tiny_seed_config(workflow) -> str:
    config = workflow.config()
    config["model"]["tiny_seed"] = 1
    return workflow.write_config("seed.yaml", config)


# --- the snapshot rule for real --------------------------------------------------------------------


def hf_cache(cache, repo_id: str, revision: str, snapshot) -> None:
    """The layout huggingface_hub writes: blobs by content, snapshots/<commit>/ of symlinks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / revision).mkdir(parents=True)
    for path in snapshot.iterdir():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (repo / "blobs" / digest).write_bytes(path.read_bytes())
        (repo / "snapshots" / revision / path.name).symlink_to(f"../../blobs/{digest}")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from u1lib.tiny import build_tiny_snapshot

    return build_tiny_snapshot(tmp_path_factory.mktemp("tiny") / "snapshot", seed=0)


def tree(folder) -> dict:
    return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in sorted(folder.rglob("*"))}


@pytest.mark.integration
def test_offline_hub_snapshot_runs_from_the_hf_cache_and_a_forced_rerun_fetches_nothing(
    workflow, tmp_path, tiny_files, monkeypatch
):
    cache = tmp_path / "hf-cache"
    hf_cache(cache, "org/U1", REVISION, tiny_files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    config = hub_config(workflow)
    targets = ("results/models/u1/manifest.json", "results/models/u1/identity.json", "--configfile", config)
    before = tree(cache)
    workflow.snakemake("--cores", "1", *targets)
    manifest = json.loads((workflow.workdir / "results/models/u1/manifest.json").read_text())
    assert manifest["snapshot_dir"] == str(cache / "models--org--U1" / "snapshots" / REVISION)
    assert manifest["read_only"] is True and not (workflow.workdir / "results/models/u1/snapshot").exists()
    workflow.snakemake("--cores", "1", *targets, "--forcerun", "snapshot")  # Snakemake deletes the manifest first
    log = (workflow.workdir / "results/logs/snapshot/u1.log").read_text()
    assert "recognising the snapshot" in log and "nothing to download" in log
    assert json.loads((workflow.workdir / "results/models/u1/manifest.json").read_text()) == manifest
    assert tree(cache) == before
    assert workflow.planned_jobs(*targets) == {}


@pytest.mark.integration
def test_a_model_folder_of_the_user_is_verified_in_place_and_watched(workflow, tmp_path, tiny_files):
    folder = tmp_path / "my-model"
    folder.mkdir()
    for path in tiny_files.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    before = tree(folder)
    config = workflow.config()
    config["model"].update(source=str(folder), name="mine")
    path = workflow.write_config("mine.yaml", config)
    targets = ("results/models/mine/manifest.json", "results/models/mine/identity.json", "--configfile", path)
    workflow.snakemake("--cores", "1", *targets)
    manifest = json.loads((workflow.workdir / "results/models/mine/manifest.json").read_text())
    assert (manifest["source"], manifest["snapshot_dir"], manifest["read_only"]) == ("local", str(folder), True)
    assert tree(folder) == before  # nothing written there, not even a stamp
    assert workflow.planned_jobs(*targets) == {}
    os.utime(folder / "model.safetensors", ns=(1, 10**18))  # the folder changed: its identity with it
    assert workflow.planned_jobs(*targets) == {"model_identity": 1, "snapshot": 1}
