"""Peak memory of one call, shared by the benchmarks (run it in a fresh child process per variant)."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

import torch


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux), so that the peak of building the models does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory_mb(run: Callable[[], None], device: str) -> float:
    """Memory ``run()`` needs above what is already held: peak allocated on CUDA, peak RSS on CPU."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/statm") as statm:
        base_kb = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    if _reset_peak_rss():
        run()
        return (_status_kb("VmHWM") - base_kb) / 1024
    run()  # without clear_refs the lifetime peak is all there is; it may include the build
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024
