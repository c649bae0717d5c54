"""FixedRateLoop: drift-free absolute deadlines, skip-ahead after overruns, timing report (fake and real clock)."""

from __future__ import annotations

import itertools
import time

import pytest

from robopolicy.runtime.loop import FixedRateLoop, TickInfo


class FakeClock:
    """A clock that only moves when someone sleeps or works; sleep adds a fixed wake-up latency."""

    def __init__(self, start: float = 1000.0, wake_latency: float = 0.0):
        self.t = start
        self.wake_latency = wake_latency
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds + self.wake_latency

    def work(self, seconds: float) -> None:
        self.t += seconds


@pytest.mark.timeout(30)
def test_drift_free_over_10000_ticks_with_jittery_work():
    clock = FakeClock(wake_latency=0.0001)
    loop = FixedRateLoop(50, clock=clock, sleep=clock.sleep)
    first = loop.wait()
    assert first.index == 0 and first.deadline == clock.t
    for i in range(1, 10_001):
        clock.work(0.005 + 0.01 * ((i * 7919) % 13) / 13)  # 5-15 ms of work, always < period
        tick = loop.wait()
        assert tick.index == i and not tick.overrun and tick.skipped == 0
        # deadline is computed from t0, never accumulated: exactly t0 + i / 50 up to float rounding
        assert tick.deadline == pytest.approx(first.deadline + i * 0.02, abs=1e-9)
        assert tick.lateness_s == pytest.approx(0.0001, abs=1e-9)
    rep = loop.report()
    assert rep["ticks"] == 10_001 and rep["overruns"] == 0 and rep["skipped"] == 0
    assert abs(rep["drift_ms"]) < 1e-6
    assert rep["period_error"]["max_ms"] < 1e-6  # constant latency -> zero period error
    assert rep["achieved_fps"] == pytest.approx(50.0, rel=1e-5)


def test_overrun_skips_to_next_future_deadline_without_burst():
    clock = FakeClock(start=0.0)
    loop = FixedRateLoop(10, clock=clock, sleep=clock.sleep)  # period 0.1 s
    loop.wait()  # t0 = 0
    clock.work(0.05)
    assert loop.wait().deadline == pytest.approx(0.1)
    clock.work(0.25)  # now 0.35: deadlines 0.2 and 0.3 are missed
    tick = loop.wait()
    assert tick.overrun and tick.skipped == 2 and tick.index == 4
    assert tick.deadline == pytest.approx(0.4) and clock.t == pytest.approx(0.4)
    # the next tick is one full period later: no catch-up burst
    clock.work(0.01)
    nxt = loop.wait()
    assert nxt.index == 5 and nxt.deadline == pytest.approx(0.5) and not nxt.overrun
    assert loop.overruns == 1 and loop.skipped == 2


def test_overrun_by_exactly_one_period_boundary():
    clock = FakeClock(start=0.0)
    loop = FixedRateLoop(4, clock=clock, sleep=clock.sleep)  # period 0.25 s, exact in binary
    loop.wait()
    clock.work(0.5)  # lands exactly on deadline 2: deadline 1 missed, deadline 2 is "now" (not in the future)
    tick = loop.wait()
    assert tick.overrun and tick.skipped == 1 and tick.index == 2 and tick.deadline == 0.5


def test_no_burst_ticks_are_never_closer_than_a_period():
    clock = FakeClock(start=5.0)
    loop = FixedRateLoop(50, clock=clock, sleep=clock.sleep)
    woke = [loop.wait().woke_at]
    for i in range(200):
        clock.work(0.05 if i % 17 == 0 else 0.001)  # occasional 2.5-period stall
        woke.append(loop.wait().woke_at)
    gaps = [b - a for a, b in itertools.pairwise(woke)]
    assert min(gaps) >= 0.02 - 1e-9
    assert loop.overruns == 12 and loop.skipped == 24  # i = 0, 17, ..., 187; each 50 ms stall skips 2 deadlines


def test_sections_and_report():
    clock = FakeClock(start=0.0)
    loop = FixedRateLoop(100, clock=clock, sleep=clock.sleep)
    for i in range(100):
        loop.wait()
        with loop.section("read"):
            clock.work(0.001 * (i + 1) / 100)  # 0.01 .. 1 ms
        with loop.section("infer"):
            clock.work(0.002)
    loop.record("remote", 0.5)
    rep = loop.report()
    read = rep["sections"]["read"]
    assert read["count"] == 100
    assert read["p50_ms"] == pytest.approx(0.50) and read["p99_ms"] == pytest.approx(0.99)
    assert read["max_ms"] == pytest.approx(1.0)
    assert rep["sections"]["infer"]["mean_ms"] == pytest.approx(2.0)
    assert rep["sections"]["remote"]["max_ms"] == pytest.approx(500.0)
    assert rep["ticks"] == 100 and rep["overruns"] == 0
    assert isinstance(loop.last, TickInfo) and loop.last.index == 99


def test_section_records_even_when_the_block_raises():
    clock = FakeClock()
    loop = FixedRateLoop(10, clock=clock, sleep=clock.sleep)
    with pytest.raises(RuntimeError), loop.section("send"):
        clock.work(0.003)
        raise RuntimeError("bus fault")
    assert loop.report()["sections"]["send"]["max_ms"] == pytest.approx(3.0)


def test_bad_fps():
    with pytest.raises(ValueError, match="fps"):
        FixedRateLoop(0)


@pytest.mark.timeout(30)
def test_real_clock_50hz_loose_bounds():
    """~200 real ticks at 50 Hz with 2 ms of work; bounds are loose because CI machines are shared."""
    loop = FixedRateLoop(50)
    start = time.perf_counter()
    for _ in range(200):
        loop.wait()
        with loop.section("work"):
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                pass
    elapsed = time.perf_counter() - start
    rep = loop.report()
    # 199 periods = 3.98 s; skipped ticks (if the machine stalls) add whole periods but never remove any
    assert 3.95 < elapsed < 3.98 + 0.02 * (loop.skipped + 1) + 0.5
    assert rep["ticks"] == 200
    assert rep["lateness"]["p50_ms"] < 5.0
    assert abs(rep["drift_ms"]) < 20.0
    assert rep["sections"]["work"]["count"] == 200 and rep["sections"]["work"]["p50_ms"] >= 2.0
