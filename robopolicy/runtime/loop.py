"""A fixed-rate control loop with absolute deadlines and per-section timing.

    loop = FixedRateLoop(50)
    while running:
        tick = loop.wait()                  # sleeps until the next deadline
        with loop.section("read"):
            obs = robot.get_observation()
        with loop.section("send"):
            robot.send_action(action)
    print(loop.report())

Deadline k is `t0 + k * period` (computed, never accumulated, so there is no drift). When the work of a tick
ends after the next deadline (an overrun) the loop does not run the missed ticks back to back: it skips to the
first deadline still in the future and counts the skipped ones, so the robot never sees a burst of commands.

Waiting is `time.sleep` until `spin_s` before the deadline, then a busy spin. Under CPU contention the sleep's
wake-up is at the scheduler's mercy (measured on a loaded 2-core machine: p99 lateness 2-10 ms with SCHED_OTHER,
0.08 ms with SCHED_FIFO); `set_realtime_priority` asks the kernel for a real-time class (root or rtprio limit).
Threads started afterwards inherit it, so start helper threads first; policy worker processes
(async_inference.ProcessChunkSource) reset themselves to SCHED_OTHER. A Python thread in the same process that
computes while holding the GIL still delays the loop (up to sys.getswitchinterval(), 5 ms): keep inference in
another process.
"""

from __future__ import annotations

import math
import os
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DEFAULT_SPIN_S = 0.0002  # busy-wait for the last 0.2 ms: costs ~1% CPU at 50 Hz, removes the sleep's timer slack


@dataclass(frozen=True)
class TickInfo:
    """One tick. index: deadline number k (jumps by 1 + skipped); deadline / woke_at: clock seconds;
    lateness_s: woke_at - deadline (>= 0 unless the clock is coarse); period_error_s: (woke_at - previous woke_at)
    - (deadline - previous deadline), i.e. the change in lateness (0 for the first tick); overrun: the previous
    tick's work ended after this tick's original deadline; skipped: deadlines skipped because of it."""

    index: int
    deadline: float
    woke_at: float
    lateness_s: float
    period_error_s: float
    overrun: bool
    skipped: int


def _percentiles(values: array) -> dict[str, float]:
    """p50 / p99 / max / mean of a sample, in milliseconds (nearest-rank percentiles)."""
    if not values:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "mean_ms": 0.0}
    s = sorted(values)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    return {"p50_ms": rank(0.50) * 1e3, "p99_ms": rank(0.99) * 1e3, "max_ms": s[-1] * 1e3,
            "mean_ms": sum(s) / len(s) * 1e3}


class FixedRateLoop:
    """Absolute-deadline loop at `fps`. clock() -> seconds (monotonic); sleep(seconds) blocks; both injectable
    so tests can drive a fake clock (pass spin_s=0 then, or a sleep that advances the fake clock)."""

    def __init__(
        self,
        fps: float,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        spin_s: float | None = None,
    ):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self.clock = clock
        self.sleep = sleep
        # spinning on a fake clock would never end; a custom sleep means a custom clock, so spin only by default
        self.spin_s = (DEFAULT_SPIN_S if sleep is time.sleep else 0.0) if spin_s is None else float(spin_s)
        if self.spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, got {spin_s}")
        self.reset()

    def reset(self) -> None:
        """Forget all ticks and timings; the next `wait()` starts a new schedule."""
        self._t0: float | None = None
        self._k = 0
        self._last: TickInfo | None = None
        self.ticks = 0
        self.overruns = 0
        self.skipped = 0
        self._lateness = array("d")
        self._period_error = array("d")
        self._sections: dict[str, array] = {}

    # ----- waiting --------------------------------------------------------------------------------
    def _deadline(self, k: int) -> float:
        return self._t0 + k * self.period

    def _sleep_until(self, deadline: float) -> float:
        remaining = deadline - self.clock()
        if remaining > self.spin_s:
            self.sleep(remaining - self.spin_s)
        now = self.clock()
        while now < deadline:  # only reached with spin_s > 0 or a sleep that woke early
            if self.spin_s == 0.0:
                self.sleep(deadline - now)
            now = self.clock()
        return now

    def wait(self) -> TickInfo:
        """Block until the next deadline and return its TickInfo. The first call starts the schedule (t0 = now)
        and returns at once."""
        now = self.clock()
        overrun, skipped = False, 0
        if self._t0 is None:
            self._t0, self._k = now, 0
            woke = now
        else:
            self._k += 1
            deadline = self._deadline(self._k)
            if now > deadline:  # the work ran past this deadline: skip to the first one not yet past
                overrun = True
                skipped = math.ceil((now - deadline) / self.period)
                self._k += skipped
                if self._deadline(self._k) < now:  # float rounding
                    self._k += 1
                    skipped += 1
            woke = self._sleep_until(self._deadline(self._k))
        deadline = self._deadline(self._k)
        lateness = woke - deadline
        period_error = 0.0 if self._last is None else lateness - self._last.lateness_s
        info = TickInfo(self._k, deadline, woke, lateness, period_error, overrun, skipped)
        self._last = info
        self.ticks += 1
        self.overruns += int(overrun)
        self.skipped += skipped
        if self.ticks > 1:  # the first tick starts the schedule: no sleep, nothing to measure
            self._lateness.append(lateness)
        if self.ticks > 2:
            self._period_error.append(abs(period_error))
        return info

    def __iter__(self) -> Iterator[TickInfo]:
        """`for tick in loop:` waits for every tick forever (break out of it)."""
        while True:
            yield self.wait()

    # ----- timing ---------------------------------------------------------------------------------
    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the enclosed block (clock seconds) under `name`; reported per section."""
        start = self.clock()
        try:
            yield
        finally:
            self._sections.setdefault(name, array("d")).append(self.clock() - start)

    def record(self, name: str, seconds: float) -> None:
        """Add a duration measured elsewhere (e.g. the inference time returned by a worker)."""
        self._sections.setdefault(name, array("d")).append(float(seconds))

    @property
    def last(self) -> TickInfo | None:
        return self._last

    def report(self) -> dict:
        """Counts plus p50/p99/max/mean in ms of |period error|, lateness and every section; JSON-able.

        The first tick (schedule origin) is left out of lateness, the first two out of period error.
        drift_ms: lateness of the last tick minus that of the second (absolute deadlines keep it near 0)."""
        elapsed = (self._last.woke_at - self._t0) if self._last is not None else 0.0
        return {
            "fps": self.fps,
            "ticks": self.ticks,
            "elapsed_s": elapsed,
            "achieved_fps": (self.ticks - 1) / elapsed if elapsed > 0 else 0.0,
            "overruns": self.overruns,
            "skipped": self.skipped,
            "period_error": _percentiles(self._period_error),
            "lateness": _percentiles(self._lateness),
            "late_over_period": sum(1 for x in self._lateness if x > self.period),
            "drift_ms": (self._lateness[-1] - self._lateness[0]) * 1e3 if self._lateness else 0.0,
            "sections": {name: {"count": len(v), **_percentiles(v)} for name, v in self._sections.items()},
        }


def set_realtime_priority(priority: int = 10) -> str | None:
    """Move the calling thread to SCHED_FIFO at `priority` (1-99). Returns None on success, else why not (no
    permission: run as root or grant `rtprio` in /etc/security/limits.conf; not Linux). Never raises."""
    if not hasattr(os, "sched_setscheduler"):
        return "real-time scheduling is only available on Linux"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return ("no permission for SCHED_FIFO; run as root, or allow it with 'rtprio' in "
                "/etc/security/limits.conf (or CAP_SYS_NICE)")
    except OSError as exc:
        return f"SCHED_FIFO priority {priority} refused: {exc}"
    return None
