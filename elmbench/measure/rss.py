"""The process's peak resident memory (CPU peak memory), with a window that restarts on Linux.

`getrusage` keeps the peak since the process started; Linux lets a process restart it at its
current resident size by writing 5 to `/proc/self/clear_refs` (proc(5)), which is how a case's
peak leaves out what the worker did before it (loading, the bandwidth probes' buffers).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_peak_bytes() -> int:
    """Peak resident set size of this process since start or the last reset (bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def reset_rss_peak(clear_refs: Path = CLEAR_REFS) -> bool:
    """Restart the peak at the current resident size; False where the system does not allow it."""
    try:
        clear_refs.write_text("5")
    except OSError:  # not Linux, or /proc is not writable here
        return False
    return True
