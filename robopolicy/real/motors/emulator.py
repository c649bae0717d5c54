"""Stateful servo-bus emulator on a pseudo-terminal, for Dynamixel Protocol 2.0 and Feetech STS (protocol 0).

The emulator owns the master side of an `os.openpty()` pair (raw mode); the driver under test opens the slave path
(`ServoEmulator.start()` / `.port`) exactly like /dev/ttyUSB0. One thread parses instruction packets incrementally
(split / merged frames, garbage, Dynamixel byte stuffing) and answers like the servos on a real bus would; a motion
thread (every `motion_period_s`, default 2 ms) advances a MotionBackend (first-order by default, or the MuJoCo arm
in robopolicy.real.sim_arm) and writes Present_Position / Present_Velocity / load registers.

Servo behaviour (see hardware.md sections 1, 2, 5, 6):
- register file per id (the model's address space), seeded from the model's factory defaults; the Baud_Rate
  register is set to the emulator's baud rate. A servo only hears the host when the host's port speed (termios of
  the pty) matches its Baud_Rate (`check_baud`), like a real bus at the wrong baud.
- PING (broadcast: every servo replies, in id order), READ, WRITE, REG_WRITE / ACTION, SYNC_READ (one status per
  listed id, in the listed order, missing ids skipped), SYNC_WRITE (no reply), Dynamixel BULK_READ / BULK_WRITE,
  REBOOT, FACTORY_RESET, CLEAR; Feetech RESET, BACKUP and CALIBRATE (0x0B: present becomes 2048).
  Broadcast READ/WRITE are silent. Replies follow Status_Return_Level (Dynamixel: 0 PING only, 1 + READ, 2 all)
  and Response_Status_Level (Feetech: 0 PING/READ only, 1 all).
- Dynamixel: Present = Actual + Homing_Offset, with Drive_Mode bit 0 reversing direction (Present = -Actual +
  Homing_Offset), two's complement values. EEPROM (addresses < 64) written with torque on -> Access error (7) and
  no write; read-only items -> Access error; a write covering part of an item -> Data Length error (5); a
  Goal_Position outside Min/Max_Position_Limit in position mode (3) -> Data Limit error (6). Hardware errors
  (`inject_hardware_error`) set Hardware_Error_Status and the Alert bit; those selected by Shutdown turn torque
  off; only REBOOT clears them. Bus_Watchdog (98): with torque on and no packet for watchdog x 20 ms the servo
  holds its position, the register reads -1 and Goal_* writes are refused (Access error) until it is written 0.
- Feetech: Present = (Actual - Homing_Offset) wrapped to 0..4095 (Phase bit 4 clear, as lerobot configures the
  STS3215; with the bit set positions are not wrapped and may go negative), sign-magnitude values (bit 15
  positions / velocities, bit 11 homing offset, bit 10 load). Goals are clamped to Min/Max_Position_Limit.
  Hardware errors set Status (65) and the status byte; those selected by Unloading_Condition (19) drop torque.
  EEPROM writes with Lock (55) = 1 change the live value but are not persisted: REBOOT (0x08, no reply) restores
  the persisted EEPROM. *Choice* (the STS firmware behaviour is undocumented): an EEPROM write while torque is on
  is refused and the status byte carries FEETECH_REFUSED (bit 6, the "instruction error" bit of the older SCS
  map); hardware.md section 5 says to write EEPROM only with torque off and Lock = 0, so a correct bus never sees it.
- A WRITE to ID answers from the old id. Reads past the control table: Dynamixel Access error, Feetech zeros.
- Torque 0 -> 1 sets Goal_Position to Present_Position (the servo holds where it is). Torque off: the joint is
  not driven (first-order backend: it stays; MuJoCo: its actuator is disabled and gravity acts).

Faults (`Faults`, settable at runtime through `emulator.faults`, drawn from a seeded RNG, counted in `counts`):
dropped replies, one corrupted byte, delayed replies, error bits OR-ed into the status byte, truncated replies
and dead ids (never answer, never act). With `pace=True` each status packet is released when its last byte would
have arrived at 10 bits per byte, after the request's own wire time and each servo's Return_Delay_Time (2 us units),
so benchmarks see the real wire budget (a 6-servo Feetech SYNC_READ: 14 + 48 bytes = 0.62 ms at 1 Mbps).

`EmulatorProcess` runs the same emulator in a child Python process (no GIL shared with the driver under test);
use it for timing benchmarks.

Not emulated: velocity / current / PWM operating modes (every mode moves to Goal_Position), acceleration profiles,
Feetech Torque_Enable = 128 (midpoint calibration), Dynamixel indirect addresses and the multi-turn CLEAR effect.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any

import numpy as np

from robopolicy.real.motors import dynamixel, feetech
from robopolicy.real.motors.motion import FirstOrderBackend, MotionBackend, ServoCommand, ServoFeedback
from robopolicy.real.motors.tables import BAUDRATES, DYNAMIXEL, FEETECH, ModelSpec, Register, model_spec

# Dynamixel status error numbers (bits 0-6) and the Alert bit
DXL_ERR_INSTRUCTION = 2
DXL_ERR_DATA_LENGTH = 5
DXL_ERR_DATA_LIMIT = 6
DXL_ERR_ACCESS = 7
DXL_ALERT = 0x80
# Feetech: status bit the emulator sets when it refuses a write (EEPROM under torque, read-only item, bad address)
FEETECH_REFUSED = 0x40
# Dynamixel velocity unit: 0.229 rev/min -> ticks/s
DXL_VELOCITY_UNIT_TICKS_S = 0.229 * 4096 / 60.0
BITS_PER_BYTE = 10  # 8N1


@dataclass(frozen=True)
class Faults:
    """Fault injection, applied per status packet the emulator would send (rates are probabilities 0..1)."""

    drop_rate: float = 0.0  # reply not sent
    corrupt_rate: float = 0.0  # one byte of the reply XOR-ed with a random non-zero value
    delay_rate: float = 0.0  # reply held back by delay_s
    delay_s: float = 0.0
    error_rate: float = 0.0  # error_bits OR-ed into the status byte
    error_bits: int = 0
    partial_rate: float = 0.0  # reply truncated to a random shorter length
    dead_ids: frozenset[int] = frozenset()  # never answer, never act (servo unplugged)

    def __post_init__(self) -> None:
        for name in ("drop_rate", "corrupt_rate", "delay_rate", "error_rate", "partial_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be within 0..1, got {value}")
        if self.delay_s < 0:
            raise ValueError(f"Faults.delay_s must be >= 0, got {self.delay_s}")
        object.__setattr__(self, "dead_ids", frozenset(int(i) for i in self.dead_ids))


FAULT_COUNTERS = ("dropped", "corrupted", "delayed", "error_bits", "partial", "dead")


@dataclass
class _Servo:
    spec: ModelSpec
    regs: bytearray
    persisted: bytearray  # EEPROM as stored in flash (Feetech Lock semantics)
    key: int  # stable key for the motion backend (the id given at construction)
    actual: float = 2048.0  # actual ticks (before homing offset / drive mode)
    velocity: float = 0.0  # actual ticks/s
    load: float = 0.0  # -1..1
    pending: tuple[int, bytes] | None = None  # REG_WRITE (address, data) awaiting ACTION
    last_rx: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Reply:
    motor_id: int
    error: int
    params: bytes
    return_delay_s: float


class ServoEmulator:
    """A bus of emulated servos on a pty. `servos` = {id: model name}; all models must share `protocol`.

    baudrate: the servos' configured baud rate (Baud_Rate register; pacing uses it). pace: send reply bytes at the
    wire rate. faults: see Faults. backend: MotionBackend keyed by the construction ids (default FirstOrderBackend
    starting at `initial_positions` actual ticks, else 2048). seed: RNG for faults. motion_period_s: motion thread
    period. check_baud: ignore packets when the host port speed differs from the servo's baud rate.
    """

    def __init__(
        self,
        protocol: str,
        servos: Mapping[int, str],
        *,
        baudrate: int = 1_000_000,
        pace: bool = False,
        faults: Faults = Faults(),
        backend: MotionBackend | None = None,
        seed: int = 0,
        motion_period_s: float = 0.002,
        initial_positions: Mapping[int, float] | None = None,
        check_baud: bool = True,
    ) -> None:
        if protocol not in (DYNAMIXEL, FEETECH):
            raise ValueError(f"protocol must be {DYNAMIXEL!r} or {FEETECH!r}, got {protocol!r}")
        if not servos:
            raise ValueError("ServoEmulator needs at least one servo ({id: model})")
        if baudrate not in BAUDRATES[protocol].values():
            raise ValueError(
                f"{protocol} servos do not support {baudrate} baud; supported: {sorted(BAUDRATES[protocol].values())}"
            )
        self.protocol = protocol
        self._dxl = protocol == DYNAMIXEL
        self.codec: ModuleType = dynamixel if self._dxl else feetech
        self.baudrate = int(baudrate)
        self.pace = bool(pace)
        self.faults = faults
        self.motion_period_s = float(motion_period_s)
        self.check_baud = bool(check_baud)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                *FAULT_COUNTERS,
                "packets",
                "replies",
                "bytes_rx",
                "bytes_tx",
                "bad_frames",
                "baud_mismatch",
                "id_collisions",
                "tx_overflow",
            ),
            0,
        )
        self._servos: list[_Servo] = []
        for motor_id, model in servos.items():
            spec = model_spec(model)
            if spec.protocol != protocol:
                raise ValueError(f"servo id {motor_id} is a {spec.name} ({spec.protocol}), not a {protocol} servo")
            max_id = self.codec.MAX_ID
            if not 0 <= int(motor_id) <= max_id:
                raise ValueError(f"servo id {motor_id} outside 0..{max_id}")
            servo = self._new_servo(spec, int(motor_id))
            if initial_positions and motor_id in initial_positions:
                servo.actual = float(initial_positions[motor_id])
            self._servos.append(servo)
        self.backend: MotionBackend = (
            backend if backend is not None else FirstOrderBackend(initial={s.key: s.actual for s in self._servos})
        )
        self.port: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._parser = self.codec.PacketParser(kind="instruction")
        self._wire_free_at = 0.0
        self._start_time = time.perf_counter()
        self.errors: list[BaseException] = []  # exceptions raised inside the emulator threads

    # ----------------------------------------------------------------- register file
    def _new_servo(self, spec: ModelSpec, motor_id: int) -> _Servo:
        size = max(r.address + r.size for r in spec.registers.values())
        servo = _Servo(spec, bytearray(size), bytearray(size), key=motor_id)
        self._seed_registers(servo, motor_id, keep_baud=False)
        servo.persisted[:] = servo.regs
        return servo

    def _seed_registers(self, servo: _Servo, motor_id: int, *, keep_baud: bool, eeprom: bool = True) -> None:
        baud_reg = servo.spec.registers.get("Baud_Rate")
        old_baud = self._get(servo, "Baud_Rate") if keep_baud and baud_reg is not None else None
        for name, value in servo.spec.defaults.items():
            reg = servo.spec.registers.get(name)
            if reg is None or (reg.eeprom and not eeprom):
                continue
            self._set(servo, name, value)
        self._set(servo, "Model_Number", servo.spec.model_number)
        if eeprom:
            self._set(servo, "ID", motor_id)
            baud_index = {b: i for i, b in BAUDRATES[self.protocol].items()}[self.baudrate]
            self._set(servo, "Baud_Rate", old_baud if old_baud is not None else baud_index)

    def _reg(self, servo: _Servo, name: str) -> Register | None:
        return servo.spec.registers.get(name)

    def _get(self, servo: _Servo, name: str, default: int = 0) -> int:
        reg = servo.spec.registers.get(name)
        if reg is None:
            return default
        return self.codec.decode_value(bytes(servo.regs[reg.address : reg.address + reg.size]), reg)

    def _set(self, servo: _Servo, name: str, value: float) -> None:
        """Store a decoded value (clamped to what the register can hold); unknown names are ignored."""
        reg = servo.spec.registers.get(name)
        if reg is None:
            return
        value = round(float(min(max(value, reg.min_value), reg.max_value)))
        servo.regs[reg.address : reg.address + reg.size] = self.codec.encode_value(value, reg)

    def _id(self, servo: _Servo) -> int:
        return servo.regs[servo.spec.registers["ID"].address]

    def _servo(self, motor_id: int) -> _Servo:
        with self._lock:
            for servo in self._servos:
                if self._id(servo) == motor_id:
                    return servo
        raise KeyError(f"no emulated servo with id {motor_id} (ids: {self.ids})")

    @property
    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._id(s) for s in self._servos)

    def register(self, motor_id: int, name: str) -> int:
        """Decoded value of register `name` of servo `motor_id` (test access, no bus traffic)."""
        with self._lock:
            servo = self._servo(motor_id)
            servo.spec.register(name)  # KeyError naming the known registers
            return self._get(servo, name)

    def set_register(self, motor_id: int, name: str, value: int) -> None:
        """Set a register directly (test access: no EEPROM/torque checks, no reply)."""
        with self._lock:
            servo = self._servo(motor_id)
            servo.spec.register(name)
            torque_before = self._torque(servo)
            self._set(servo, name, value)
            if servo.spec.register(name).eeprom:
                reg = servo.spec.register(name)
                servo.persisted[reg.address : reg.address + reg.size] = servo.regs[reg.address : reg.address + reg.size]
            self._after_write(servo, torque_before)

    def actual_position(self, motor_id: int) -> float:
        """The servo's actual position in ticks (before homing offset / drive mode)."""
        with self._lock:
            return self._servo(motor_id).actual

    def inject_hardware_error(self, motor_id: int, bits: int) -> None:
        """Raise a hardware fault (cleared by REBOOT). Dynamixel: Hardware_Error_Status |= bits, the Alert bit on
        every status, torque off if Shutdown (63) selects one of the bits. Feetech: Status (65) |= bits, the bits in
        every status byte, torque off if Unloading_Condition (19) selects one of them."""
        with self._lock:
            servo = self._servo(motor_id)
            register, cutoff = ("Hardware_Error_Status", "Shutdown") if self._dxl else ("Status", "Unloading_Condition")
            self._set(servo, register, self._get(servo, register) | bits)
            if self._get(servo, cutoff) & bits:
                self._set(servo, "Torque_Enable", 0)

    # ----------------------------------------------------------------- position conversions
    def _torque(self, servo: _Servo) -> bool:
        return self._get(servo, "Torque_Enable") != 0

    def _wraps(self, servo: _Servo) -> bool:
        return (not self._dxl) and not (self._get(servo, "Phase") & 0x10) and self._get(servo, "Operating_Mode") == 0

    def _present_from_actual(self, servo: _Servo, actual: float) -> int:
        offset = self._get(servo, "Homing_Offset")
        if self._dxl:
            sign = -1 if self._get(servo, "Drive_Mode") & 1 else 1
            return round(float(sign * actual)) + offset
        present = round(float(actual)) - offset
        resolution = servo.spec.resolution
        return present % resolution if self._wraps(servo) else present

    def _goal_actual(self, servo: _Servo) -> float:
        goal = self._get(servo, "Goal_Position")
        offset = self._get(servo, "Homing_Offset")
        if self._dxl:
            sign = -1 if self._get(servo, "Drive_Mode") & 1 else 1
            return float(sign * (goal - offset))
        lo, hi = self._get(servo, "Min_Position_Limit"), self._get(servo, "Max_Position_Limit")
        if hi > lo:
            goal = min(max(goal, lo), hi)
        if not self._wraps(servo):
            return float(goal + offset)
        resolution = servo.spec.resolution
        raw_goal = (goal + offset) % resolution
        return servo.actual + (raw_goal - servo.actual % resolution)

    def _max_speed(self, servo: _Servo) -> float | None:
        if self._dxl:
            profile = self._get(servo, "Profile_Velocity")
            return profile * DXL_VELOCITY_UNIT_TICKS_S if profile > 0 else None
        speed = abs(self._get(servo, "Goal_Velocity"))
        return float(speed) if speed > 0 else None

    def _update_present(self, servo: _Servo) -> None:
        self._set(servo, "Present_Position", self._present_from_actual(servo, servo.actual))
        if self._dxl:
            sign = -1 if self._get(servo, "Drive_Mode") & 1 else 1
            vel = sign * servo.velocity
            self._set(servo, "Present_Velocity", vel / DXL_VELOCITY_UNIT_TICKS_S)
            current_scale = self._get(servo, "Current_Limit") or 1000
            self._set(servo, "Present_Current", sign * servo.load * current_scale)
            self._set(servo, "Present_PWM", sign * servo.load * (self._get(servo, "PWM_Limit") or 885))
            moving = abs(vel) > self._get(servo, "Moving_Threshold") * DXL_VELOCITY_UNIT_TICKS_S
            self._set(servo, "Moving", int(moving))
        else:
            self._set(servo, "Present_Velocity", servo.velocity)
            self._set(servo, "Present_Load", servo.load * 1000)
            self._set(servo, "Present_Current", abs(servo.load) * self._get(servo, "Protection_Current"))
            moving = abs(servo.velocity) > max(1, self._get(servo, "Moving_Velocity_Threshold")) * 10
            self._set(servo, "Moving", int(moving))

    def _after_write(self, servo: _Servo, torque_before: bool) -> None:
        """Side effects of a register change: hold position when torque comes on; refresh Present_*."""
        if self._torque(servo) and not torque_before:
            self._set(servo, "Goal_Position", self._present_from_actual(servo, servo.actual))
        self._update_present(servo)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Open the pty, start the threads, return the slave path (the 'serial port' to open)."""
        if self.port is not None:
            return self.port
        master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.port = os.ttyname(slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        with self._lock:
            commands = {s.key: ServoCommand(goal=s.actual, torque=False) for s in self._servos}
        feedback = self.backend.step(0.0, commands)
        with self._lock:
            self._apply_feedback(feedback, time.perf_counter())
            for servo in self._servos:
                self._set(servo, "Goal_Position", self._get(servo, "Present_Position"))
        self._threads = [
            threading.Thread(target=self._io_loop, name="servo-emulator-io", daemon=True),
            threading.Thread(target=self._motion_loop, name="servo-emulator-motion", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.port

    def stop(self) -> None:
        """Stop the threads and close the pty."""
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads = []
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = None
        self.port = None

    def __enter__(self) -> ServoEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- motion thread
    def _motion_loop(self) -> None:
        last = time.perf_counter()
        deadline = last
        try:
            while not self._stop.is_set():
                now = time.perf_counter()
                dt, last = now - last, now
                with self._lock:
                    self._check_watchdogs(now)
                    commands = {
                        s.key: ServoCommand(self._goal_actual(s), self._torque(s), self._max_speed(s))
                        for s in self._servos
                    }
                feedback = self.backend.step(dt, commands)
                with self._lock:
                    self._apply_feedback(feedback, now)
                deadline += self.motion_period_s
                delay = deadline - time.perf_counter()
                if delay < -self.motion_period_s:
                    deadline = time.perf_counter()  # fell behind: do not burst
                elif delay > 0:
                    self._stop.wait(delay)
        except BaseException as exc:  # surfaced through .errors (threads cannot raise into tests)
            self.errors.append(exc)
            raise

    def _apply_feedback(self, feedback: Mapping[int, ServoFeedback], now: float) -> None:
        tick = int((now - self._start_time) * 1000) % 32768
        for servo in self._servos:
            fb = feedback.get(servo.key)
            if fb is not None:
                servo.actual, servo.velocity, servo.load = fb.position, fb.velocity, fb.load
            self._update_present(servo)
            if self._dxl:
                self._set(servo, "Realtime_Tick", tick)

    def _check_watchdogs(self, now: float) -> None:
        if not self._dxl:
            return
        for servo in self._servos:
            watchdog = self._get(servo, "Bus_Watchdog")
            if watchdog > 0 and self._torque(servo) and now - servo.last_rx > watchdog * 0.020:
                self._set(servo, "Bus_Watchdog", -1)
                self._set(servo, "Goal_Position", self._present_from_actual(servo, servo.actual))

    # ----------------------------------------------------------------- I/O thread
    def _io_loop(self) -> None:
        master, wake = self._master, self._wake_r
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([master, wake], [], [], 0.2)
                if wake in ready or self._stop.is_set():
                    return
                if master not in ready:
                    continue
                try:
                    data = os.read(master, 4096)
                except OSError:  # no reader on the slave side yet / transient
                    time.sleep(0.001)
                    continue
                if not data:
                    continue
                now = time.perf_counter()
                self.counts["bytes_rx"] += len(data)
                # the request occupies the wire for len * 10 / baud after it started
                self._wire_free_at = max(self._wire_free_at, now) + len(data) * BITS_PER_BYTE / self.baudrate
                corrupt_before = self._parser.corrupt
                packets = self._parser.feed(data)
                self.counts["bad_frames"] += self._parser.corrupt - corrupt_before
                for packet in packets:
                    self.counts["packets"] += 1
                    if not self._host_baud_ok():
                        self.counts["baud_mismatch"] += 1
                        continue
                    try:
                        replies = self._handle(packet)
                    except Exception as exc:  # an emulator bug must not silence the bus: record it, keep serving
                        self.errors.append(exc)
                        continue
                    if replies:
                        self._send(replies)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _host_baud_ok(self) -> bool:
        if not self.check_baud or self._slave is None:
            return True
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except termios.error:
            return True
        host = _TERMIOS_SPEEDS.get(speed)
        return host is None or host == self.baudrate

    def _servo_hears(self, servo: _Servo) -> bool:
        baud = BAUDRATES[self.protocol].get(self._get(servo, "Baud_Rate"))
        return (not self.check_baud) or baud == self.baudrate

    # ----------------------------------------------------------------- replies, pacing, faults
    def _send(self, replies: list[_Reply]) -> None:
        faults = self.faults
        frames: list[tuple[bytes, float, float]] = []  # (bytes, extra delay, return delay)
        for reply in replies:
            error = reply.error
            if faults.error_rate and self._rng.random() < faults.error_rate:
                error |= faults.error_bits
                self.counts["error_bits"] += 1
            frame = self.codec.status_packet(reply.motor_id, error, reply.params)
            if faults.drop_rate and self._rng.random() < faults.drop_rate:
                self.counts["dropped"] += 1
                continue
            if faults.corrupt_rate and self._rng.random() < faults.corrupt_rate:
                index = int(self._rng.integers(0, len(frame)))
                flipped = bytearray(frame)
                flipped[index] ^= int(self._rng.integers(1, 256))
                frame = bytes(flipped)
                self.counts["corrupted"] += 1
            if faults.partial_rate and self._rng.random() < faults.partial_rate:
                frame = frame[: int(self._rng.integers(1, len(frame)))]
                self.counts["partial"] += 1
            delay = 0.0
            if faults.delay_rate and self._rng.random() < faults.delay_rate:
                delay = faults.delay_s
                self.counts["delayed"] += 1
            frames.append((frame, delay, reply.return_delay_s))
            self.counts["replies"] += 1
        if not frames:
            return
        if not self.pace and not any(d for _, d, _ in frames):
            self._write(b"".join(f for f, _, _ in frames))
            return
        if not self.pace:
            for frame, delay, _ in frames:
                if delay:
                    time.sleep(delay)
                self._write(frame)
            return
        # paced: status packets follow each other on the wire; each is released when its last byte would arrive
        # (10 bits per byte), after the request's own wire time and the servo's Return_Delay_Time. Deadlines are
        # chained from the plan, so emulator scheduling lateness does not accumulate over a SYNC_READ.
        byte_time = BITS_PER_BYTE / self.baudrate
        end = max(time.perf_counter(), self._wire_free_at)
        for frame, delay, return_delay in frames:
            end += delay + return_delay + len(frame) * byte_time
            _wait_until(end)
            self._write(frame)
        self._wire_free_at = end

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:  # nobody drains the port: a real adapter drops bytes too
                self.counts["tx_overflow"] += len(view)
                return
            except OSError:
                return
            view = view[written:]
            self.counts["bytes_tx"] += written

    # ----------------------------------------------------------------- instruction handling
    def _handle(self, packet) -> list[_Reply]:
        with self._lock:
            now = time.perf_counter()
            dead = self.faults.dead_ids
            target = packet.motor_id
            broadcast = target == self.codec.BROADCAST_ID
            live = [s for s in self._servos if self._id(s) not in dead and self._servo_hears(s)]
            addressed = [s for s in live if broadcast or self._id(s) == target]
            if not broadcast and not addressed and target in dead:
                self.counts["dead"] += 1
            if len(addressed) > 1 and not broadcast:
                self.counts["id_collisions"] += 1  # several servos answer at once: garbage on the wire
                return []
            for servo in addressed:
                servo.last_rx = now
            inst = packet.instruction
            name = _instruction_name(self.codec, inst)
            self.counts[f"rx_{name}"] = self.counts.get(f"rx_{name}", 0) + 1
            if inst in (self.codec.Instruction.SYNC_READ, self.codec.Instruction.SYNC_WRITE) or (
                self._dxl and inst in (dynamixel.Instruction.BULK_READ, dynamixel.Instruction.BULK_WRITE)
            ):
                return self._handle_group(packet, live, dead, now)
            if not addressed:
                return []
            replies: list[_Reply] = []
            for servo in sorted(addressed, key=self._id):
                reply = self._handle_single(servo, packet, broadcast)
                if reply is not None:
                    replies.append(reply)
            return replies

    def _status(self, servo: _Servo, error: int = 0, params: bytes = b"", *, motor_id: int | None = None) -> _Reply:
        if self._dxl:
            if self._get(servo, "Hardware_Error_Status"):
                error |= DXL_ALERT
        else:
            error |= self._get(servo, "Status")
        return_delay = 2e-6 * self._get(servo, "Return_Delay_Time")
        return _Reply(self._id(servo) if motor_id is None else motor_id, error, bytes(params), return_delay)

    def _replies_to(self, servo: _Servo, kind: str) -> bool:
        """Status return policy: kind is 'ping', 'read' or 'other'."""
        if kind == "ping":
            return True
        if self._dxl:
            level = self._get(servo, "Status_Return_Level", 2)
            return level >= 2 or (level == 1 and kind == "read")
        level = self._get(servo, "Response_Status_Level", 1)
        return level >= 1 or kind == "read"

    def _handle_single(self, servo: _Servo, packet, broadcast: bool) -> _Reply | None:
        codec, inst, params = self.codec, packet.instruction, packet.params
        ins = codec.Instruction
        addr_size = 2 if self._dxl else 1
        if inst == ins.PING:
            model = servo.spec.model_number
            if self._dxl:
                data = bytes((model & 0xFF, model >> 8, self._get(servo, "Firmware_Version")))
                return self._status(servo, 0, data)
            return self._status(servo)
        if inst == ins.READ:
            if broadcast:
                return None
            if len(params) != 2 * addr_size:
                return self._error_reply(servo, DXL_ERR_INSTRUCTION, "read")
            address, size = _addr_len(params, addr_size)
            error, data = self._read(servo, address, size)
            return self._status(servo, error, data) if self._replies_to(servo, "read") else None
        if inst in (ins.WRITE, ins.REG_WRITE):
            if len(params) < addr_size + 1:
                return None if broadcast else self._error_reply(servo, DXL_ERR_INSTRUCTION, "other")
            address = _u(params[:addr_size])
            data = bytes(params[addr_size:])
            motor_id = self._id(servo)  # a write to ID answers from the old id
            if inst == ins.WRITE:
                error = self._write_registers(servo, address, data)
            else:
                error = self._check_write(servo, address, data)
                if not error:
                    servo.pending = (address, data)
                    self._set(servo, "Registered_Instruction", 1)
            if broadcast or not self._replies_to(servo, "other"):
                return None
            return self._status(servo, error, motor_id=motor_id)
        if inst == ins.ACTION:
            if servo.pending is not None:
                address, data = servo.pending
                servo.pending = None
                self._set(servo, "Registered_Instruction", 0)
                self._write_registers(servo, address, data)
            return None if broadcast or not self._replies_to(servo, "other") else self._status(servo)
        if inst == ins.REBOOT:
            reply = None if broadcast or not self._dxl or not self._replies_to(servo, "other") else self._status(servo)
            self._reboot(servo)
            return reply  # Feetech reboots without a reply
        if inst == ins.FACTORY_RESET:
            mode = params[0] if params else 0xFF
            if self._dxl and broadcast and mode == 0xFF:
                return None  # refused by firmware >= 42
            reply = None if broadcast or not self._replies_to(servo, "other") else self._status(servo)
            self._factory_reset(servo, mode if self._dxl else 0x01)
            return reply
        if self._dxl and inst == dynamixel.Instruction.CLEAR:
            return None if broadcast or not self._replies_to(servo, "other") else self._status(servo)
        if not self._dxl and inst == feetech.Instruction.CALIBRATE:
            # current position becomes 2048: Present = Actual - Offset -> Offset = Actual - 2048
            offset = round(float(servo.actual)) % servo.spec.resolution - servo.spec.resolution // 2
            self._set(servo, "Homing_Offset", offset)
            self._persist_if_unlocked(servo, servo.spec.register("Homing_Offset"))
            self._update_present(servo)
            return None if broadcast or not self._replies_to(servo, "other") else self._status(servo)
        if not self._dxl and inst in (feetech.Instruction.RESET, feetech.Instruction.BACKUP):
            return None if broadcast or not self._replies_to(servo, "other") else self._status(servo)
        # unknown instruction
        if self._dxl and not broadcast:
            return self._status(servo, DXL_ERR_INSTRUCTION)
        return None

    def _error_reply(self, servo: _Servo, dxl_error: int, kind: str) -> _Reply | None:
        if not self._replies_to(servo, kind):
            return None
        return self._status(servo, dxl_error if self._dxl else FEETECH_REFUSED)

    def _handle_group(self, packet, live: list[_Servo], dead: frozenset[int], now: float) -> list[_Reply]:
        ins, params = packet.instruction, packet.params
        addr_size = 2 if self._dxl else 1
        by_id = {}
        for servo in live:
            by_id.setdefault(self._id(servo), []).append(servo)

        def lookup(motor_id: int) -> _Servo | None:
            group = by_id.get(motor_id)
            if not group:
                if motor_id in dead:
                    self.counts["dead"] += 1
                return None
            if len(group) > 1:
                self.counts["id_collisions"] += 1
                return None
            group[0].last_rx = now
            return group[0]

        replies: list[_Reply] = []
        if ins == self.codec.Instruction.SYNC_READ:
            if len(params) < 2 * addr_size:
                return []
            address, size = _addr_len(params, addr_size)
            for motor_id in params[2 * addr_size :]:
                servo = lookup(motor_id)
                if servo is not None and self._replies_to(servo, "read"):
                    error, data = self._read(servo, address, size)
                    replies.append(self._status(servo, error, data))
            return replies
        if ins == self.codec.Instruction.SYNC_WRITE:
            if len(params) < 2 * addr_size:
                return []
            address, size = _addr_len(params, addr_size)
            body = params[2 * addr_size :]
            step = size + 1
            for k in range(0, len(body) - step + 1, step):
                servo = lookup(body[k])
                if servo is not None:
                    self._write_registers(servo, address, bytes(body[k + 1 : k + step]))
            return []
        if ins == dynamixel.Instruction.BULK_READ:
            for k in range(0, len(params) - 4, 5):
                address, size = _addr_len(params[k + 1 : k + 5], 2)
                servo = lookup(params[k])
                if servo is not None and self._replies_to(servo, "read"):
                    error, data = self._read(servo, address, size)
                    replies.append(self._status(servo, error, data))
            return replies
        if ins == dynamixel.Instruction.BULK_WRITE:
            k = 0
            while k + 5 <= len(params):
                address, size = _addr_len(params[k + 1 : k + 5], 2)
                data = bytes(params[k + 5 : k + 5 + size])
                servo = lookup(params[k])
                if servo is not None and len(data) == size:
                    self._write_registers(servo, address, data)
                k += 5 + size
            return []
        return []

    # ----------------------------------------------------------------- register semantics
    def _read(self, servo: _Servo, address: int, size: int) -> tuple[int, bytes]:
        end = address + size
        if end > len(servo.regs) or size == 0:
            if self._dxl:
                return DXL_ERR_ACCESS, b""
            data = bytes(servo.regs[address:end]) if address < len(servo.regs) else b""
            return 0, data + bytes(size - len(data))  # beyond the table a Feetech reads zeros
        return 0, bytes(servo.regs[address:end])

    def _check_write(self, servo: _Servo, address: int, data: bytes) -> int:
        """Error code (0 = ok) for writing `data` at `address`, without writing."""
        refused = DXL_ERR_ACCESS if self._dxl else FEETECH_REFUSED
        end = address + len(data)
        if end > len(servo.regs) or not data:
            return refused
        torque = self._torque(servo)
        for name, reg in servo.spec.registers.items():
            if reg.address >= end or reg.address + reg.size <= address:
                continue
            if reg.access == "r":
                return refused
            if self._dxl and (reg.address < address or reg.address + reg.size > end):
                return DXL_ERR_DATA_LENGTH
            if reg.eeprom and torque:
                return refused
            if self._dxl and name.startswith("Goal_") and self._get(servo, "Bus_Watchdog") == -1:
                return DXL_ERR_ACCESS
            if self._dxl and name == "Goal_Position" and self._get(servo, "Operating_Mode") == 3:
                value = self.codec.decode_value(data[reg.address - address : reg.address - address + reg.size], reg)
                if not self._get(servo, "Min_Position_Limit") <= value <= self._get(servo, "Max_Position_Limit"):
                    return DXL_ERR_DATA_LIMIT
        return 0

    def _write_registers(self, servo: _Servo, address: int, data: bytes) -> int:
        error = self._check_write(servo, address, data)
        if error:
            return error
        torque_before = self._torque(servo)
        end = address + len(data)
        servo.regs[address:end] = data
        for reg in servo.spec.registers.values():
            if reg.eeprom and reg.address < end and reg.address + reg.size > address:
                self._persist_if_unlocked(servo, reg)
        self._after_write(servo, torque_before)
        return 0

    def _persist_if_unlocked(self, servo: _Servo, reg: Register) -> None:
        """Dynamixel EEPROM always persists; Feetech only with Lock = 0."""
        if self._dxl or self._get(servo, "Lock") == 0:
            servo.persisted[reg.address : reg.address + reg.size] = servo.regs[reg.address : reg.address + reg.size]

    def _reboot(self, servo: _Servo) -> None:
        """Power cycle: EEPROM from flash, RAM from defaults, torque off, goal = present, errors cleared."""
        for reg in servo.spec.registers.values():
            if reg.eeprom:
                servo.regs[reg.address : reg.address + reg.size] = servo.persisted[reg.address : reg.address + reg.size]
        self._seed_registers(servo, self._id(servo), keep_baud=True, eeprom=False)
        self._set(servo, "Hardware_Error_Status", 0)
        self._set(servo, "Status", 0)
        servo.pending = None
        self._update_present(servo)
        self._set(servo, "Goal_Position", self._get(servo, "Present_Position"))

    def _factory_reset(self, servo: _Servo, mode: int) -> None:
        """mode 0xFF: everything (ID 1, default baud); 0x01 keep ID; 0x02 keep ID and baud."""
        motor_id = self._id(servo)
        baud_index = self._get(servo, "Baud_Rate")
        for name, value in servo.spec.defaults.items():
            self._set(servo, name, value)
        self._set(servo, "Model_Number", servo.spec.model_number)
        self._set(servo, "ID", 1 if mode == 0xFF else motor_id)
        if mode == 0x02:
            self._set(servo, "Baud_Rate", baud_index)
        servo.persisted[:] = servo.regs
        servo.pending = None
        self._update_present(servo)
        self._set(servo, "Goal_Position", self._get(servo, "Present_Position"))


# ----------------------------------------------------------------- out-of-process emulator
_REMOTE_METHODS = ("register", "set_register", "actual_position", "inject_hardware_error")


class EmulatorProcess:
    """A ServoEmulator running in a child Python process, so it shares no GIL with the driver under test.

    Use it for timing benchmarks (bus cost per tick, control-loop jitter): an in-process emulator's threads take
    the GIL from the loop being measured. Same arguments as ServoEmulator, except that the motion backend is given
    as a picklable zero-argument `backend_factory` (e.g. `functools.partial(MujocoArmBackend, path)`), built in
    the child. Test access goes through a pipe: register / set_register / actual_position / inject_hardware_error,
    `faults` (settable), `counts`, `errors` (repr of exceptions inside the child's emulator threads).
    """

    def __init__(
        self,
        protocol: str,
        servos: Mapping[int, str],
        *,
        backend_factory: Callable[[], MotionBackend] | None = None,
        start_timeout_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        if "backend" in kwargs:
            raise ValueError("EmulatorProcess builds its backend in the child: pass backend_factory, not backend")
        self._args = (protocol, dict(servos), backend_factory, kwargs)
        self._faults: Faults = kwargs.get("faults", Faults())
        self.start_timeout_s = float(start_timeout_s)
        self.port: str | None = None
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._call_lock = threading.Lock()

    def start(self) -> str:
        """Launch `python -c ...` (no multiprocessing bootstrapping, so no __main__ guard needed), return the port."""
        if self.port is not None:
            return self.port
        parent_sock, child_sock = socket.socketpair()
        code = "import sys; from robopolicy.real.motors.emulator import _child_main; _child_main(int(sys.argv[1]))"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, str(child_sock.fileno())], pass_fds=(child_sock.fileno(),)
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._conn.send(self._args)
        try:
            ready = self._conn.poll(self.start_timeout_s)
            status, value = self._conn.recv() if ready else ("error", f"no answer within {self.start_timeout_s} s")
        except EOFError:
            status, value = "error", f"the child exited with code {self._proc.wait(5.0)}"
        if status != "ok":
            self.stop()
            raise RuntimeError(f"servo emulator process failed to start: {value}")
        self.port = value
        return value

    def set_realtime(self, priority: int = 20) -> None:
        """SCHED_FIFO for every thread of the child (Linux, root or an rtprio limit): the emulator stands in for
        servos, which answer in hardware time whatever the host's load; use it in timing benchmarks."""
        if self._proc is None:
            raise RuntimeError("EmulatorProcess is not running: call start() first")
        for tid in os.listdir(f"/proc/{self._proc.pid}/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))

    def _call(self, method: str, *args: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("EmulatorProcess is not running: call start() first")
        with self._call_lock:
            self._conn.send((method, args))
            status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"servo emulator process: {method}{args} failed: {value}")
        return value

    def register(self, motor_id: int, name: str) -> int:
        return self._call("register", motor_id, name)

    def set_register(self, motor_id: int, name: str, value: int) -> None:
        self._call("set_register", motor_id, name, value)

    def actual_position(self, motor_id: int) -> float:
        return self._call("actual_position", motor_id)

    def inject_hardware_error(self, motor_id: int, bits: int) -> None:
        self._call("inject_hardware_error", motor_id, bits)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._call("set_faults", faults)
        self._faults = faults

    @property
    def counts(self) -> dict[str, int]:
        return self._call("counts")

    @property
    def errors(self) -> list[str]:
        return self._call("errors")

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, EOFError, BrokenPipeError):
                self._conn.send(None)
                self._conn.poll(5.0)
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                self._proc.wait(timeout=2.0)
            self._proc = None
        self.port = None

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_main(fd: int) -> None:
    """Entry point of the EmulatorProcess child: read the configuration from the inherited socket, then serve."""
    conn = Connection(fd)
    protocol, servos, backend_factory, kwargs = conn.recv()
    _serve_emulator(conn, protocol, servos, backend_factory, kwargs)


def _serve_emulator(conn, protocol, servos, backend_factory, kwargs) -> None:
    """Run the emulator, answer test-access calls until told to stop (None) or orphaned."""
    try:
        backend = backend_factory() if backend_factory is not None else None
        emulator = ServoEmulator(protocol, servos, backend=backend, **kwargs)
        port = emulator.start()
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ok", port))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent went away
                return
            if message is None:
                conn.send(("ok", None))
                return
            method, args = message
            try:
                if method in _REMOTE_METHODS:
                    value = getattr(emulator, method)(*args)
                elif method == "set_faults":
                    emulator.faults = args[0]
                    value = None
                elif method == "counts":
                    value = dict(emulator.counts)
                elif method == "errors":
                    value = [repr(e) for e in emulator.errors]
                else:
                    raise ValueError(f"unknown emulator call {method!r}")
                conn.send(("ok", value))
            except Exception as exc:
                conn.send(("error", repr(exc)))
    finally:
        emulator.stop()


# ----------------------------------------------------------------- helpers
def _u(data: bytes) -> int:
    return int.from_bytes(bytes(data), "little")


def _addr_len(params: bytes, addr_size: int) -> tuple[int, int]:
    return _u(params[:addr_size]), _u(params[addr_size : 2 * addr_size])


def _instruction_name(codec: ModuleType, inst: int | None) -> str:
    try:
        return codec.Instruction(inst).name.lower()
    except ValueError:
        return f"0x{inst:02x}"


def _wait_until(deadline: float) -> None:
    """Sleep while more than 1.5 ms remain (time.sleep overshoots), then yield-spin: time.sleep(0) releases the GIL,
    so a driver polling in another thread of the same process keeps running."""
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        time.sleep(remaining - 0.001 if remaining > 0.0015 else 0)


_TERMIOS_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (
        9600,
        19200,
        38400,
        57600,
        115200,
        230400,
        460800,
        500000,
        576000,
        921600,
        1000000,
        1152000,
        1500000,
        2000000,
        2500000,
        3000000,
        3500000,
        4000000,
    )
    if hasattr(termios, f"B{rate}")
}
