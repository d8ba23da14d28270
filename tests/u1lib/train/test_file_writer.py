"""The background writer: order kept, a failure raised on the training thread, nothing after it written."""

from __future__ import annotations

import threading

import pytest
import torch

from u1lib.train.checkpoint import TrainState
from u1lib.train.file_writer import BackgroundWriter


def test_writes_run_in_order_off_the_calling_thread():
    writer, done, threads = BackgroundWriter(), [], set()

    def write(n):
        threads.add(threading.current_thread().name)
        done.append(n)

    for n in range(5):
        writer.submit(f"file {n}", lambda n=n: write(n))
    writer.drain()
    assert done == [0, 1, 2, 3, 4]
    assert threads == {"u1lib-file-writer"}


def test_a_failed_write_is_raised_and_the_writes_after_it_are_skipped():
    writer, done, gate = BackgroundWriter(waiting=2), [], threading.Event()

    def fail():
        gate.wait()
        raise OSError(28, "No space left on device")

    writer.submit("checkpoint", fail)
    writer.submit("prune", lambda: done.append("prune"))  # queued behind the failing write
    gate.set()
    with pytest.raises(OSError, match="No space left"):
        writer.drain()
    assert done == []
    with pytest.raises(OSError, match="No space left"):  # and again: nothing more is written
        writer.submit("next", lambda: done.append("next"))
    assert done == []


def test_submit_blocks_while_the_queue_is_full():
    writer, gate, submitted = BackgroundWriter(waiting=1), threading.Event(), threading.Event()
    writer.submit("running", gate.wait)
    writer.submit("waiting", lambda: None)

    def third():
        writer.submit("third", lambda: None)
        submitted.set()

    threading.Thread(target=third, daemon=True).start()
    assert not submitted.wait(0.2)  # one running, one waiting: the third copy is not taken yet
    gate.set()
    assert submitted.wait(5)
    writer.drain()


def test_a_checkpoint_copy_shares_nothing_with_the_live_run():
    live = torch.zeros(4)
    state = TrainState(
        step=3,
        trainable={"w": live},
        optimizer={"w.exp_avg": live * 0},
        optimizer_scalars={},
        ema={},
        rng={"generator": torch.zeros(2, dtype=torch.uint8)},
        info={"sampler": {"cursor": [1, 2]}},
        logs={"train_log.jsonl": [{"step": 1}]},
    )
    copy = state.on_cpu()
    live += 1  # the next optimizer step, in place
    state.info["sampler"]["cursor"].append(3)
    state.logs["train_log.jsonl"].append({"step": 4})
    assert copy.trainable["w"].tolist() == [0.0] * 4
    assert copy.info == {"sampler": {"cursor": [1, 2]}}
    assert copy.logs == {"train_log.jsonl": [{"step": 1}]}
