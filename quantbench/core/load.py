"""The machine's load while something is measured: the 1-minute load average at the start and the
share of all CPUs' time other processes used meanwhile (psutil's system and process CPU times).

Calibrations (arith.hardware) and every measured workload (measure.worker) carry both, so a figure
taken beside another job says so in its own record.
"""
from __future__ import annotations

import os
import time

# Other processes using more than this share of all CPUs while the machine is measured make the
# figures read low (a compiler beside a calibration once gave 7.5 GB/s for a quiet 46): such a
# calibration is retried, and never cached; a workload's record and the report flag it.
BUSY_PCT = 10.0


class LoadWatch:
    """Watches the machine while a block measures: the 1-minute load average at the start and the
    share of all CPUs' time that other processes used meanwhile (total busy − this process)."""

    def __init__(self):
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.load_avg_1m = os.getloadavg()[0]
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()

    def _busy_s(self) -> float:
        t = self.psutil.cpu_times()
        # Linux counts guest time inside user time; iowait is idle time waiting on a disk.
        total = sum(t) - getattr(t, "guest", 0) - getattr(t, "guest_nice", 0)
        return total - t.idle - getattr(t, "iowait", 0)

    def _own_s(self) -> float:
        c = self.me.cpu_times()
        return c.user + c.system

    def others_busy_pct(self) -> float:
        """Returns other processes' CPU time since the start, in % of all CPUs' wall time."""
        wall_s = time.perf_counter() - self.t0
        others_s = (self._busy_s() - self.busy0) - (self._own_s() - self.own0)
        return max(0.0, 100 * others_s / (wall_s * (self.psutil.cpu_count() or 1)))
