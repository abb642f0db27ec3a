"""Time and peak extra host memory of a call, measured in this process.

Peak memory is the kernel's resident-set high-water mark (VmHWM), reset before each
call through /proc/self/clear_refs, minus the resident size before the call.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure(fn, repeats: int = 1):
    """Returns (best seconds, peak extra bytes, last result)."""
    best, peak, out = float("inf"), 0, None
    for _ in range(repeats):
        out = None
        gc.collect()
        reset_peak()
        base = _status_kb("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, (_status_kb("VmHWM") - base) * 1024)
    return best, peak, out
