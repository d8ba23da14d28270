"""What a person watching a training sees: resume point, step, losses and ETA, and a closing line.

Lines go to the ``u1lib.progress`` logger: the CLI prints it on stderr, and a workflow job sends it
to its log file and to the Snakemake console (workflow_scripts/job_setup.py).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("u1lib.progress")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class TrainProgress:
    def __init__(self, total: int):
        self.total = total
        # the first step after (re)starting pays compilation and warm-up: the rate counts from its end
        self.first_done: float | None = None
        self.first_step = 0
        self.last_val: float | None = None

    def resumed(self, step: int, checkpoint: str) -> None:
        log.info("resuming from step %d of %d (%s)", step, self.total, checkpoint)

    def validated(self, record: dict) -> None:
        self.last_val = record["val_loss"]
        if record["step"] == 0:
            log.info("step 0/%d val %.4f (the base model)", self.total, self.last_val)

    def step(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if self.first_done is None:
            self.first_done, self.first_step = now, step
        done = step - self.first_step
        parts = [f"step {step}/{self.total}", f"loss {loss:.4f}"]
        if self.last_val is not None:
            parts.append(f"val {self.last_val:.4f}")
        if done > 0:
            rate = (now - self.first_done) / done
            parts += [f"{rate:.2f} s/step", f"eta {_minutes(rate * (self.total - step))}"]
        log.info(" ".join(parts))

    def finished(self, metrics: dict, adapter: str) -> None:
        val, best = "", metrics["best_adapter"]
        if metrics.get("initial_val_loss") is not None and metrics.get("final_val_loss") is not None:
            val = f"; val {metrics['initial_val_loss']:.4f} -> {metrics['final_val_loss']:.4f}"
            if best["val_loss"] is not None:
                val += f" (best {best['val_loss']:.4f} at step {best['step']})"
        log.info(
            "done: %d steps, %s of training%s; adapter %s",
            metrics["steps"],
            _minutes(metrics["wall_time_s"]),
            val,
            adapter,
        )
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in metrics["job_seconds"].items() if k != "total")
        log.info("job %.1f s: %s", metrics["job_seconds"]["total"], phases)
