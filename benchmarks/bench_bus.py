"""Bus cost per control tick for 6 motors: one sync read of Present_Position + one sync write of Goal_Position.

The servos are emulated in a separate process (`EmulatorProcess`, no shared GIL) that paces every byte at the
real baud rate (10 bits per byte, request and reply), so a tick costs at least the wire time of hardware.md
section 4. Wire time is computed from the bytes the bus sent and received; host overhead = measured - wire.
`--no-pace` also measures the same transactions with the emulator answering as fast as it can.

Usage:
  python benchmarks/bench_bus.py [--ticks 1000] [--baud 1000000] [--normalize]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from robopolicy.real.motors import Motor, MotorsBus
from robopolicy.real.motors.calibration import MotorCalibration, NormMode
from robopolicy.real.motors.emulator import EmulatorProcess
from robopolicy.runtime.loop import set_realtime_priority

MODELS = {"feetech": "sts3215", "dynamixel": "xl430-w250"}
NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def measure(protocol: str, ticks: int, baud: int, pace: bool, normalize: bool, realtime: bool) -> dict:
    servos = {i + 1: MODELS[protocol] for i in range(len(NAMES))}
    motors = {name: Motor(i + 1, MODELS[protocol], NormMode.DEGREES) for i, name in enumerate(NAMES)}
    calibration = {name: MotorCalibration(i + 1, 0, 0, 0, 4095) for i, name in enumerate(NAMES)}
    with EmulatorProcess(protocol, servos, baudrate=baud, pace=pace) as emu:
        if realtime:
            emu.set_realtime(20)
            set_realtime_priority(10)
        bus = MotorsBus(emu.port, motors, calibration=calibration, baudrate=baud, latency_ms=1.0)
        bus.connect()
        try:
            bus.configure()  # Return_Delay_Time 0 (factory 250 = 500 us per servo reply), as robots configure it
            bus.enable_torque()
            for _ in range(20):  # warm-up
                goals = bus.sync_read("Present_Position", normalize=normalize)
                bus.sync_write("Goal_Position", goals, normalize=normalize)
            bus.stats.reset()
            times = []
            for _ in range(ticks):
                t0 = time.perf_counter()
                goals = bus.sync_read("Present_Position", normalize=normalize)
                bus.sync_write("Goal_Position", goals, normalize=normalize)
                times.append(time.perf_counter() - t0)
            stats = bus.stats.as_dict()
        finally:
            bus.disconnect()
            if realtime:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    wire_s = (stats["bytes_tx"] + stats["bytes_rx"]) / ticks * 10 / baud
    times.sort()
    median, p99 = statistics.median(times), times[int(0.99 * (len(times) - 1))]
    return {"protocol": protocol, "pace": pace, "bytes_per_tick": (stats["bytes_tx"] + stats["bytes_rx"]) / ticks,
            "wire_ms": wire_s * 1e3, "median_ms": median * 1e3, "p99_ms": p99 * 1e3,
            "host_overhead_ms": (median - wire_s) * 1e3 if pace else median * 1e3,
            "retries": stats["retries"], "timeouts": stats["timeouts"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ticks", type=int, default=1000)
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument("--normalize", action="store_true", help="normalize positions (degrees) as robots do")
    p.add_argument("--no-pace", action="store_true", help="also measure with an unpaced emulator")
    p.add_argument("--realtime", action="store_true",
                   help="SCHED_FIFO for the host thread and the emulator (servos answer in hardware time)")
    args = p.parse_args()
    rows = []
    for protocol in ("feetech", "dynamixel"):
        for pace in (True, False) if args.no_pace else (True,):
            rows.append(measure(protocol, args.ticks, args.baud, pace, args.normalize, args.realtime))
    print(f"{'protocol':<10} {'paced':<6} {'bytes':>6} {'wire ms':>8} {'median ms':>10} {'p99 ms':>8} "
          f"{'host ms':>8} {'retries':>8}")
    for r in rows:
        print(f"{r['protocol']:<10} {r['pace']!s:<6} {r['bytes_per_tick']:>6.0f} {r['wire_ms']:>8.3f} "
              f"{r['median_ms']:>10.3f} {r['p99_ms']:>8.3f} {r['host_overhead_ms']:>8.3f} {r['retries']:>8}")


if __name__ == "__main__":
    main()
