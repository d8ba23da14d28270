"""What a change reruns: each knob reaches exactly the stages whose output it changes.

A finished run is faked (`snakemake --touch`, which records params like a real run) and each test
reads the plan of a dry run; tests/workflow/test_pipeline.py checks the same on real outputs.
"""

import contextlib
import os


def plan_with(workflow, name: str, edit) -> dict[str, int]:
    config = workflow.config()
    edit(config)
    return workflow.planned_jobs("--configfile", workflow.write_config(name, config))


@contextlib.contextmanager
def edited_module(workflow, relative: str):
    """Append a comment to a u1lib module of the copy (creating it if the stage is not written yet)."""
    path = workflow.root / "u1lib" / relative
    original = path.read_bytes() if path.exists() else None
    with open(path, "a") as handle:
        handle.write("\n# changed\n")
    try:
        yield
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


def test_a_finished_run_has_nothing_to_do(finished):
    assert finished.planned_jobs() == {}


def test_reordered_config_keys_rerun_nothing(finished):
    def reverse(value):
        return {key: reverse(value[key]) for key in reversed(list(value))} if isinstance(value, dict) else value

    assert (
        finished.planned_jobs("--configfile", finished.write_config("reversed.yaml", reverse(finished.config()))) == {}
    )


def test_sampler_knob_reruns_sample_and_report_only(finished):
    plan = plan_with(finished, "cfg.yaml", lambda config: config["sample"].update(cfg_scale=2.0))
    assert plan == {"sample": 5, "report": 1, "all": 1}


def test_new_trigger_reruns_cache_train_sample_report_but_not_pack(finished):
    plan = plan_with(finished, "trigger.yaml", lambda config: config["prompt"].update(trigger="ohwx"))
    assert plan == {"cache": 1, "train": 4, "export": 4, "sample": 5, "report": 1, "all": 1}


def test_new_axis_value_trains_only_the_new_variants(finished):
    plan = plan_with(finished, "axis.yaml", lambda config: config["grid"]["axes"]["train.loss_type"].append("huber_x0"))
    assert plan == {"train": 2, "export": 2, "sample": 2, "write_variants": 1, "report": 1, "all": 1}
    dry_run = finished.snakemake("--dry-run", "--configfile", str(finished.root / "config" / "axis.yaml")).stdout
    assert "results/runs/loss-huber_x0_t-uniform/adapter.safetensors" in dry_run
    assert "results/runs/loss-x0_t-uniform/adapter.safetensors" not in dry_run.split("rule report:")[0]


def test_pack_knob_reruns_everything_after_pack_but_the_base_samples(finished):
    plan = plan_with(finished, "val.yaml", lambda config: config["dataset"].update(val_count=3))
    assert plan == {"pack": 1, "cache": 1, "train": 4, "export": 4, "sample": 4, "report": 1, "all": 1}


def test_u1lib_code_changes_rerun_the_stages_that_import_them(finished):
    with edited_module(finished, "report/html.py"):
        assert finished.planned_jobs() == {"report": 1, "all": 1}
    with edited_module(finished, "lora/spec.py"):
        assert finished.planned_jobs() == {"train": 4, "export": 4, "sample": 5, "report": 1, "all": 1}
    with edited_module(finished, "cache.py"):  # the sampler computes its prefixes itself: base samples stay
        assert finished.planned_jobs() == {"cache": 1, "train": 4, "export": 4, "sample": 4, "report": 1, "all": 1}
    assert finished.planned_jobs() == {}


def test_editing_the_prompt_set_reruns_sample_and_report(finished):
    prompts = finished.root / "config" / "prompts" / "demo.yaml"
    original, stat = prompts.read_bytes(), prompts.stat()
    prompts.write_text(original.decode() + "  - {id: extra, prompt: a green apple}\n")
    try:
        assert finished.planned_jobs() == {"sample": 5, "report": 1, "all": 1}
    finally:
        prompts.write_bytes(original)
        os.utime(prompts, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert finished.planned_jobs() == {}


def test_editing_a_caption_in_a_source_folder_reruns_pack(workflow, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.png").write_bytes(b"not read by a dry run")
        (folder / f"{name}.txt").write_text(f"caption {name}")
    config = workflow.config()
    config["dataset"].update(source=str(folder), name="photos")
    path = workflow.write_config("photos.yaml", config)
    workflow.fake_complete("--configfile", path)
    assert workflow.planned_jobs("--configfile", path) == {}
    (folder / "a.txt").write_text("a longer caption of a")
    assert workflow.planned_jobs("--configfile", path)["pack"] == 1
