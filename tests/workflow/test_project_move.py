"""A finished project moved or copied with its .snakemake/ and mtimes (cp -a) reruns nothing:
no input or params value holds an absolute path of the project."""

import shutil
import subprocess

from tests.workflow.conftest import Workflow, copy_workflow


def test_a_moved_finished_project_plans_nothing(tmp_path):
    original = copy_workflow(tmp_path / "here")
    original.fake_complete()
    assert original.planned_jobs() == {}
    subprocess.run(["cp", "-a", str(tmp_path / "here"), str(tmp_path / "there")], check=True)
    shutil.rmtree(tmp_path / "here")  # nothing may still point at the old place
    moved = Workflow(tmp_path / "there" / "workflow", tmp_path / "there" / "run")
    assert moved.planned_jobs() == {}
