import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from u1lib.gpu_slots import GpuClaimError, claim_gpus, gpu_pool

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("U1LIB_GPUS", "0,1")
    monkeypatch.setenv("U1LIB_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path


def test_two_claims_get_different_ids_and_a_third_times_out(two_gpus):
    with claim_gpus(1) as first:
        assert first == ["0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        with claim_gpus(1) as second:
            assert second == ["1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
            with pytest.raises(GpuClaimError, match=r"no 1 free GPU\(s\) among 0, 1 after 0.2 s"):
                with claim_gpus(1, timeout_s=0.2, poll_s=0.05):
                    pass
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_waiting_claim_gets_the_id_once_it_is_released(two_gpus):
    got = []

    def wait_for_one():
        with claim_gpus(1, timeout_s=10, poll_s=0.05) as ids:
            got.extend(ids)

    with claim_gpus(2) as both:
        assert both == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        waiter = threading.Thread(target=wait_for_one)
        waiter.start()
        time.sleep(0.3)
        assert got == []  # still waiting while both ids are held
    waiter.join(timeout=10)
    assert got == ["0"]


def test_a_killed_holder_releases_its_gpu(two_gpus):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from u1lib.gpu_slots import claim_gpus\n"
            "with claim_gpus(2):\n    print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GpuClaimError):
            with claim_gpus(1, timeout_s=0.1, poll_s=0.05):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_gpus(2, timeout_s=5, poll_s=0.05) as ids:
        assert ids == ["0", "1"]


def test_asking_for_more_gpus_than_exist_fails_at_once(two_gpus):
    with pytest.raises(GpuClaimError, match="asks for 3 GPU"):
        with claim_gpus(3):
            pass


def test_zero_gpus_on_a_gpu_machine_hides_every_device(two_gpus):
    with claim_gpus(0) as ids:
        assert ids == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_only_machine_is_a_no_op(monkeypatch):
    monkeypatch.setenv("U1LIB_GPUS", "none")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with claim_gpus(0) as ids:
        assert ids == [] and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_scheduler_placed_devices_are_used_as_given(monkeypatch, tmp_path):
    monkeypatch.delenv("U1LIB_GPUS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("U1LIB_GPU_LOCK_DIR", str(tmp_path))
    with claim_gpus(1) as ids:
        assert ids == ["3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert list(tmp_path.iterdir()) == []  # nothing locked


def test_pool_comes_from_visible_devices_without_a_scheduler():
    assert gpu_pool({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert gpu_pool({"U1LIB_GPUS": " 1, 3 ", "CUDA_VISIBLE_DEVICES": "2"}) == ["1", "3"]
    assert gpu_pool({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}) is None
