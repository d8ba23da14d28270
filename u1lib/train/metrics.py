"""Run records: peak memory, device, and the t histogram the report plots."""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path

import torch


def peak_host_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM on Linux (resettable through clear_refs), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # macOS reports bytes, Linux KiB


def peak_gpu_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class THistogram:
    """Counts of sampled training t in fixed bins over [0, 1]; survives resume through its counts."""

    def __init__(self, bins: int = 20, counts: list[int] | None = None):
        self.edges = torch.linspace(0, 1, bins + 1)
        self.counts = torch.tensor(counts or [0] * bins, dtype=torch.long)

    def add(self, t: torch.Tensor) -> None:
        self.counts += torch.histc(t.float().cpu(), bins=len(self.counts), min=0, max=1).long()

    def to_dict(self) -> dict:
        return {"edges": [round(e, 6) for e in self.edges.tolist()], "counts": self.counts.tolist()}
