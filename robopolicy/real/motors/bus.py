"""One ``MotorsBus`` for Dynamixel Protocol 2.0 and Feetech STS servos over a serial port.

The protocol follows from the motors' models. Registers are addressed by lerobot name; ``sync_read`` and
``sync_write`` are one transaction each for all motors. Present_Position / Goal_Position can be normalized through
calibration.py (range -100..100, 0..100, degrees; host-side clamping). Transient failures (no reply in time, bad
checksum) are retried ``num_retries`` times; then the error names the port, the motor(s) and the register. Status
error bits raise ``MotorHardwareError`` with the bits in words.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from types import ModuleType

from robopolicy.real.motors import dynamixel, feetech
from robopolicy.real.motors.calibration import MotorCalibration, NormMode, normalize, unnormalize
from robopolicy.real.motors.errors import (
    EepromWriteError,
    MotorBusError,
    MotorCorruptError,
    MotorHardwareError,
    MotorModelMismatchError,
    MotorNotConnectedError,
    MotorNotFoundError,
    MotorTimeoutError,
    describe_motor,
)
from robopolicy.real.motors.packet import Packet
from robopolicy.real.motors.tables import DYNAMIXEL, FEETECH, ModelSpec, Register, model_by_number, model_spec
from robopolicy.real.motors.transport import SerialTransport

logger = logging.getLogger(__name__)

NORMALIZED_REGISTERS = ("Present_Position", "Goal_Position")
CODECS: dict[str, ModuleType] = {DYNAMIXEL: dynamixel, FEETECH: feetech}
DEFAULT_TIMEOUT_FLOOR_MS = 10.0
# a retry waits longer than the attempt before it: x2 per retry, at most x4 the first window
RETRY_WINDOW_GROWTH = 2.0
RETRY_WINDOW_MAX_FACTOR = 4.0
# reads of bytes already waiting once a reply window has passed (a descheduled host still takes its replies)
MAX_LATE_READS = 8
# connect: motors that did not answer the first ping round are asked once more after this pause (servos still
# booting after power-on, or a host that stalled for a moment); costs nothing when every motor answers
HANDSHAKE_RECHECK_S = 0.25


@dataclass(frozen=True)
class Motor:
    """A servo on the bus: its id, model name (tables.MODELS) and how Present/Goal_Position are normalized."""

    id: int
    model: str
    norm_mode: NormMode = NormMode.RANGE_M100_100


@dataclass
class BusStats:
    """Counters since connect (or ``reset()``). ``transactions`` counts every frame sent (retries included)."""

    transactions: int = 0
    retries: int = 0  # re-sent transactions (any kind)
    sync_read_retries: int = 0  # sync reads re-sent for the motors that did not answer
    timeouts: int = 0  # attempts that ended at the deadline with replies missing
    corrupt: int = 0  # frames dropped for a bad checksum/CRC or a wrong length
    hardware_errors: int = 0  # status packets with error bits set
    bytes_tx: int = 0
    bytes_rx: int = 0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MotorsBus:
    """Servos of one protocol on one serial port.

    ``timeout_ms`` is the floor of the reply timeout (default 10 ms). Each transaction waits
    max(floor, wire time of request + expected replies at 10 bits/byte + 2 * ``latency_ms`` + 2 ms); ``latency_ms``
    is the USB adapter's turnaround (FTDI latency_timer, 16 ms by default; 1 ms once lowered). A transaction is
    tried ``1 + num_retries`` times; each retry waits twice as long as the attempt before it (at most 4x the first
    window), so a reply that is late because the host (or, with the emulator, the responder thread) was starved of
    CPU is still received, while a dead motor is reported after a bounded time (1 + 2 + 4 windows with the default
    2 retries). Replies complete as soon as they arrive: the longer windows cost nothing on a healthy bus.
    ``check_eeprom`` refuses EEPROM writes while torque is on (or Feetech Lock = 1) with a clear error instead of a
    servo-side Access Error or a write that silently does not persist.
    """

    def __init__(
        self,
        port: str,
        motors: Mapping[str, Motor],
        *,
        calibration: Mapping[str, MotorCalibration] | None = None,
        baudrate: int = 1_000_000,
        timeout_ms: float | None = None,
        num_retries: int = 2,
        latency_ms: float = 16.0,
        check_eeprom: bool = True,
    ) -> None:
        if not motors:
            raise ValueError(f"MotorsBus on {port} needs at least one motor")
        if num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {num_retries}")
        self.port = port
        self.motors: dict[str, Motor] = dict(motors)
        self.baudrate = int(baudrate)
        self.num_retries = int(num_retries)
        self.check_eeprom = check_eeprom
        self.timeout_floor_s = (DEFAULT_TIMEOUT_FLOOR_MS if timeout_ms is None else float(timeout_ms)) / 1000.0
        self.margin_s = (2.0 * float(latency_ms) + 2.0) / 1000.0
        self.specs: dict[str, ModelSpec] = {name: model_spec(m.model) for name, m in self.motors.items()}
        protocols = {spec.protocol for spec in self.specs.values()}
        if len(protocols) != 1:
            by_protocol = {p: [n for n, s in self.specs.items() if s.protocol == p] for p in sorted(protocols)}
            raise ValueError(f"motors on {port} mix protocols {by_protocol}; one bus speaks one protocol")
        self.protocol: str = protocols.pop()
        self._codec = CODECS[self.protocol]
        ids: dict[int, str] = {}
        for name, motor in self.motors.items():
            if not 0 <= motor.id <= self._codec.MAX_ID:
                raise ValueError(f"motor {name!r} on {port}: id {motor.id} outside 0..{self._codec.MAX_ID}")
            if motor.id in ids:
                raise ValueError(f"motors {ids[motor.id]!r} and {name!r} on {port} share id {motor.id}")
            ids[motor.id] = name
        self._names_by_id = ids
        self.calibration: dict[str, MotorCalibration] = {}
        if calibration:
            self._set_calibration(calibration)
        # Dynamixel inverts in firmware (Drive_Mode register); Feetech inverts on the host (as lerobot does)
        self._apply_drive_mode = self.protocol == FEETECH
        self.stats = BusStats()
        self.firmware: dict[str, str] = {}
        self._transport = SerialTransport(port, self.baudrate)
        self._parser = self._codec.PacketParser("status")
        self._lock = threading.RLock()
        self._frames: dict[tuple, bytes] = {}
        self._torque_on: dict[str, bool | None] = dict.fromkeys(self.motors)
        self._locked: dict[str, bool | None] = dict.fromkeys(self.motors)

    # ------------------------------------------------------------------------------------------ connection

    @property
    def is_connected(self) -> bool:
        return self._transport.is_open

    def connect(self, handshake: bool = True) -> None:
        """Open the port; with ``handshake`` ping every motor and check its model number."""
        if self.is_connected:
            return
        self._transport.open()
        self.stats.reset()
        self._torque_on = dict.fromkeys(self.motors)
        self._locked = dict.fromkeys(self.motors)
        if handshake:
            try:
                self._handshake()
            except BaseException:
                self._transport.close()
                raise

    def _handshake(self) -> None:
        numbers: dict[str, int] = {}
        for round_ in range(2):
            missing = [name for name in self.motors if name not in numbers]
            if round_ and missing:
                time.sleep(HANDSHAKE_RECHECK_S)
            for name in missing:
                with suppress(MotorTimeoutError, MotorCorruptError):
                    numbers[name] = self.ping(name)
        missing = [name for name in self.motors if name not in numbers]
        if missing:
            raise MotorNotFoundError(self.port, missing, [self.motors[n].id for n in missing], self.baudrate)
        mismatch: list[MotorModelMismatchError] = []
        for name, motor in self.motors.items():
            number = numbers[name]
            spec = self.specs[name]
            if number != spec.model_number:
                found = model_by_number(self.protocol, number)
                mismatch.append(
                    MotorModelMismatchError(
                        self.port, name, motor.id, spec.name, spec.model_number, number, found.name if found else None
                    )
                )
        if mismatch:
            raise mismatch[0]
        if self.protocol == FEETECH:
            versions = {name: self._feetech_firmware(name) for name in self.motors}
            self.firmware = versions
            if len(set(versions.values())) > 1:
                logger.warning("servos on %s run different firmware versions: %s", self.port, versions)

    def _feetech_firmware(self, name: str) -> str:
        return f"{self.read('Firmware_Major_Version', name)}.{self.read('Firmware_Minor_Version', name)}"

    def disconnect(self, disable_torque: bool = True) -> None:
        """Optionally turn torque off, then close the port (also when turning torque off failed)."""
        if not self.is_connected:
            return
        try:
            if disable_torque:
                self.disable_torque()
        finally:
            self._transport.close()

    def __enter__(self) -> MotorsBus:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        return f"MotorsBus({self.port!r}, {self.protocol}, {len(self.motors)} motors, {self.baudrate} baud)"

    # ------------------------------------------------------------------------------------------ helpers

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise MotorNotConnectedError(f"bus on {self.port} is not connected; call connect() first", port=self.port)

    def _name(self, motor: str | int) -> str:
        if isinstance(motor, str):
            if motor not in self.motors:
                raise KeyError(f"no motor {motor!r} on {self.port}; motors: {', '.join(self.motors)}")
            return motor
        if motor not in self._names_by_id:
            raise KeyError(f"no motor with id {motor} on {self.port}; ids: {sorted(self._names_by_id)}")
        return self._names_by_id[motor]

    def _names(self, motors: str | Sequence[str] | None) -> list[str]:
        if motors is None:
            return list(self.motors)
        if isinstance(motors, (str, int)):
            return [self._name(motors)]
        return [self._name(m) for m in motors]

    def _register(self, name: str, register: str) -> Register:
        try:
            return self.specs[name].register(register)
        except KeyError as exc:
            raise KeyError(f"motor {name!r} on {self.port}: {exc.args[0]}") from None

    def _common_register(self, names: Sequence[str], register: str) -> Register:
        regs = {self._register(n, register) for n in names}
        if len(regs) != 1:
            raise ValueError(f"{register} differs between the models of {list(names)} on {self.port}; read them apart")
        return regs.pop()

    def _describe(self, name: str) -> str:
        return describe_motor(name, self.motors[name].id)

    def _timeout_s(self, n_bytes: int, attempt: int = 0) -> float:
        """Reply window of attempt ``attempt`` (0 = first) of a transaction moving ``n_bytes`` over the wire."""
        window = max(self.timeout_floor_s, n_bytes * 10.0 / self.baudrate + self.margin_s)
        return window * min(RETRY_WINDOW_GROWTH**attempt, RETRY_WINDOW_MAX_FACTOR)

    def _set_calibration(self, calibration: Mapping[str, MotorCalibration]) -> None:
        for name, calib in calibration.items():
            if name not in self.motors:
                raise KeyError(f"calibration for unknown motor {name!r} on {self.port}; motors: {list(self.motors)}")
            if calib.id != self.motors[name].id:
                raise ValueError(
                    f"calibration of motor {name!r} is for id {calib.id}, but the motor has id "
                    f"{self.motors[name].id} on {self.port}; recalibrate or fix the id"
                )
            self.calibration[name] = calib

    # ------------------------------------------------------------------------------------------ transactions

    def _exchange(self, frame: bytes, expect: Mapping[int, int], attempt: int = 0) -> tuple[dict[int, Packet], int]:
        """Send ``frame`` once; collect status packets from the ids in ``expect`` (id -> data bytes) until all
        arrived or the deadline (the window of ``attempt``, see ``_timeout_s``); bytes already received at the
        deadline are still parsed. Returns (packets by id, corrupt frames seen)."""
        transport = self._transport
        parser = self._parser
        stats = self.stats
        transport.reset_input()
        parser.reset()
        corrupt_before = parser.corrupt
        transport.write(frame)
        stats.transactions += 1
        stats.bytes_tx += len(frame)
        if not expect:
            return {}, 0
        status_length = self._codec.status_length
        rx_bytes = sum(status_length(size) for size in expect.values())
        deadline = time.perf_counter() + self._timeout_s(len(frame) + rx_bytes, attempt)
        got: dict[int, Packet] = {}
        bad = 0
        late_reads = 0  # past the deadline only bytes already waiting are read (bounded: a chattering peer)
        while len(got) < len(expect) and late_reads <= MAX_LATE_READS:
            data = transport.read(deadline)
            if not data:
                break
            if time.perf_counter() >= deadline:
                late_reads += 1
            stats.bytes_rx += len(data)
            for packet in parser.feed(data):
                size = expect.get(packet.motor_id)
                if size is None or packet.motor_id in got:
                    continue  # a stray or duplicate reply
                if packet.error == 0 and len(packet.params) != size:
                    bad += 1
                    continue
                got[packet.motor_id] = packet
        bad += parser.corrupt - corrupt_before
        stats.corrupt += bad
        return got, bad

    def _alert_only(self, error: int) -> bool:
        """Status bits that report a hardware condition although the instruction itself was executed."""
        if self.protocol == DYNAMIXEL:
            return error & 0x7F == 0
        return not error & 0x40

    def _transact(
        self, name: str, frame: bytes, size: int, register: str | None, operation: str, *, accept_alert: bool = False
    ) -> Packet:
        """One request to motor ``name`` with retries; returns its status packet. Error bits raise
        MotorHardwareError, except (``accept_alert``) alarms that did not stop the instruction (e.g. torque off
        while a Dynamixel alert is latched): those are counted and logged."""
        motor_id = self.motors[name].id
        attempts = 1 + self.num_retries
        bad = 0
        for attempt in range(attempts):
            if attempt:
                self.stats.retries += 1
            got, bad = self._exchange(frame, {motor_id: size}, attempt)
            packet = got.get(motor_id)
            if packet is not None:
                if packet.error and accept_alert and self._alert_only(packet.error):
                    self.stats.hardware_errors += 1
                    logger.warning(
                        "%s on %s: status 0x%02X (%s) while %s %s",
                        self._describe(name),
                        self.port,
                        packet.error,
                        "; ".join(self._codec.error_words(packet.error)),
                        operation,
                        register,
                    )
                elif packet.error:
                    self._raise_status_error(name, packet.error, register, operation)
                return packet
            self.stats.timeouts += 1
        error = MotorCorruptError if bad else MotorTimeoutError
        raise error(self.port, name, register, attempts, motor_id=motor_id, operation=operation)

    def _raise_status_error(self, name: str, error: int, register: str | None, operation: str) -> None:
        self.stats.hardware_errors += 1
        motor_id = self.motors[name].id
        words = self._codec.error_words(error)
        if self.protocol == DYNAMIXEL:
            refused = error & 0x7F == 7
            hint = "check supply voltage, temperature and load; a hardware alert needs a REBOOT to clear"
            if error & dynamixel.ALERT_BIT:
                words += self._dynamixel_hardware_status(name)
        else:
            refused = bool(error & 0x40)
            hint = "check supply voltage, temperature, load and the magnetic encoder"
        if refused and register is not None and self._register(name, register).eeprom:
            hint = f"{register} is in EEPROM: turn torque off first (bus.disable_torque() or bus.torque_disabled())"
        self._torque_on[name] = None
        raise MotorHardwareError(
            name,
            error,
            port=self.port,
            motor_id=motor_id,
            register=register,
            words=words,
            operation=operation,
            hint=hint,
        )

    def _dynamixel_hardware_status(self, name: str) -> list[str]:
        """Best effort: Hardware_Error_Status (70) in words, one attempt (with the longest reply window, as a last
        retry has), no error checks (the Alert stays set)."""
        reg = self._register(name, "Hardware_Error_Status")
        longest = round(math.log(RETRY_WINDOW_MAX_FACTOR, RETRY_WINDOW_GROWTH))
        try:
            got, _ = self._exchange(
                dynamixel.read(self.motors[name].id, reg.address, reg.size), {self.motors[name].id: 1}, longest
            )
        except MotorBusError:
            return []
        packet = got.get(self.motors[name].id)
        if packet is None or len(packet.params) != 1:
            return []
        return [f"Hardware_Error_Status: {w}" for w in dynamixel.hardware_error_words(packet.params[0])]

    # ------------------------------------------------------------------------------------------ values

    def _calibration_of(self, name: str) -> MotorCalibration:
        try:
            return self.calibration[name]
        except KeyError:
            raise ValueError(
                f"{self._describe(name)} on {self.port} has no calibration: calibrate it, pass calibration= to the "
                "bus, or use normalize=False for raw ticks"
            ) from None

    def _to_user(self, name: str, register: str, raw: int, normalized: bool) -> int | float:
        if not normalized or register not in NORMALIZED_REGISTERS:
            return raw
        spec = self.specs[name]
        return normalize(
            raw,
            self._calibration_of(name),
            self.motors[name].norm_mode,
            spec.resolution,
            apply_drive_mode=self._apply_drive_mode,
        )

    def _to_raw(self, name: str, register: str, value: int | float, normalized: bool) -> int:
        if normalized and register in NORMALIZED_REGISTERS:
            spec = self.specs[name]
            return int(
                unnormalize(
                    value,
                    self._calibration_of(name),
                    self.motors[name].norm_mode,
                    spec.resolution,
                    apply_drive_mode=self._apply_drive_mode,
                )
            )
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(
                f"raw value {value!r} for {register} of {self._describe(name)} on {self.port} must be an integer"
            )
        return int(value)

    def _encode(self, name: str, register: str, reg: Register, raw: int) -> bytes:
        try:
            return self._codec.encode_value(raw, reg)
        except ValueError as exc:
            raise ValueError(f"{register} of {self._describe(name)} on {self.port}: {exc}") from None

    def _check_writable(self, name: str, register: str, reg: Register) -> None:
        if reg.access != "rw":
            raise ValueError(f"{register} is read-only ({self._describe(name)} on {self.port})")
        if reg.eeprom and self.check_eeprom:
            self._check_eeprom_writable(name, register)

    def _check_eeprom_writable(self, name: str, register: str) -> None:
        if self._torque_on[name] is not False:
            on = bool(self.read("Torque_Enable", name))
            self._torque_on[name] = on
            if on:
                raise EepromWriteError(
                    f"refusing to write EEPROM register {register} of {self._describe(name)} on {self.port} while "
                    f"its torque is on (the servo would refuse or drop it); turn torque off first: "
                    f"bus.disable_torque([{name!r}]) or `with bus.torque_disabled():`",
                    port=self.port,
                    motor=name,
                )
        if self.protocol == FEETECH and self._locked[name] is not False:
            locked = bool(self.read("Lock", name))
            self._locked[name] = locked
            if locked:
                raise EepromWriteError(
                    f"refusing to write EEPROM register {register} of {self._describe(name)} on {self.port} while "
                    "Lock = 1 (the value would not persist); bus.disable_torque() writes Torque_Enable 0 and Lock 0",
                    port=self.port,
                    motor=name,
                )

    def _note_write(self, name: str, register: str, raw: int | None) -> None:
        if register == "Torque_Enable":
            self._torque_on[name] = None if raw is None else bool(raw)
        elif register == "Lock":
            self._locked[name] = None if raw is None else bool(raw)

    # ------------------------------------------------------------------------------------------ public API

    def ping(self, motor: str | int) -> int:
        """The model number the servo reports (Feetech: PING, then a read of Model_Number, as the SDK does)."""
        with self._lock:
            self._require_connected()
            name = self._name(motor)
            motor_id = self.motors[name].id
            if self.protocol == DYNAMIXEL:
                packet = self._transact(name, dynamixel.ping(motor_id), 3, None, "pinging")
                self.firmware[name] = str(packet.params[2])
                return int.from_bytes(packet.params[:2], "little")
            self._transact(name, feetech.ping(motor_id), 0, None, "pinging")
            reg = self._register(name, "Model_Number")
            packet = self._transact(
                name, feetech.read(motor_id, reg.address, reg.size), reg.size, "Model_Number", "reading"
            )
            return feetech.decode_value(packet.params, reg)

    def read(self, register: str, motor: str, *, normalize: bool = False) -> int | float:
        """One register of one motor (raw integer, or normalized Present/Goal_Position)."""
        with self._lock:
            self._require_connected()
            name = self._name(motor)
            reg = self._register(name, register)
            frame = self._codec.read(self.motors[name].id, reg.address, reg.size)
            packet = self._transact(name, frame, reg.size, register, "reading")
            return self._to_user(name, register, self._codec.decode_value(packet.params, reg), normalize)

    def write(
        self, register: str, motor: str, value: int | float, *, normalize: bool = False, accept_alert: bool = False
    ) -> None:
        """Write one register of one motor and wait for its status reply (``accept_alert``: see ``_transact``)."""
        with self._lock:
            self._require_connected()
            name = self._name(motor)
            reg = self._register(name, register)
            raw = self._to_raw(name, register, value, normalize)
            data = self._encode(name, register, reg, raw)
            self._check_writable(name, register, reg)
            frame = self._codec.write(self.motors[name].id, reg.address, data)
            try:
                self._transact(name, frame, 0, register, "writing", accept_alert=accept_alert)
            except MotorBusError:
                self._note_write(name, register, None)  # unknown whether it was applied
                raise
            self._note_write(name, register, raw)

    def sync_read(
        self, register: str, motors: Sequence[str] | None = None, *, normalize: bool = True
    ) -> dict[str, float | int]:
        """``register`` of several motors (default all) in one SYNC_READ transaction.

        Motors that did not answer are asked again (only them) up to ``num_retries`` times; then
        ``MotorTimeoutError`` names them. Normalization applies to Present/Goal_Position only.
        """
        with self._lock:
            self._require_connected()
            names = self._names(motors)
            reg = self._common_register(names, register)
            pending = {self.motors[n].id: n for n in names}
            raw: dict[str, int] = {}
            attempts = 1 + self.num_retries
            bad = 0
            for attempt in range(attempts):
                if attempt:
                    self.stats.retries += 1
                    self.stats.sync_read_retries += 1
                ids = tuple(pending)
                key = ("sr", reg.address, reg.size, ids)
                frame = self._frames.get(key)
                if frame is None:
                    frame = self._frames[key] = self._codec.sync_read(reg.address, reg.size, ids)
                got, bad = self._exchange(frame, dict.fromkeys(ids, reg.size), attempt)
                for motor_id, packet in got.items():
                    name = pending.pop(motor_id)
                    if packet.error:
                        self._raise_status_error(name, packet.error, register, "sync reading")
                    raw[name] = self._codec.decode_value(packet.params, reg)
                if not pending:
                    break
                self.stats.timeouts += 1
            if pending:
                error = MotorCorruptError if bad else MotorTimeoutError
                missing = list(pending.values())
                raise error(self.port, missing, register, attempts, motor_id=list(pending), operation="sync reading")
            return {n: self._to_user(n, register, raw[n], normalize) for n in names}

    def sync_write(self, register: str, values: Mapping[str, float | int], *, normalize: bool = True) -> None:
        """Write ``register`` of several motors in one SYNC_WRITE transaction (servos do not reply)."""
        with self._lock:
            self._require_connected()
            names = [self._name(m) for m in values]
            if not names:
                return
            reg = self._common_register(names, register)
            data_by_id = {}
            raws = {}
            for name in names:
                raw = self._to_raw(name, register, values[name], normalize)
                data_by_id[self.motors[name].id] = self._encode(name, register, reg, raw)
                raws[name] = raw
                self._check_writable(name, register, reg)
            self._exchange(self._codec.sync_write(reg.address, reg.size, data_by_id), {})
            for name, raw in raws.items():
                self._note_write(name, register, raw)

    def enable_torque(self, motors: str | Sequence[str] | None = None) -> None:
        """Torque on (Feetech: then Lock = 1, as lerobot does)."""
        for name in self._names(motors):
            self.write("Torque_Enable", name, 1)
            if self.protocol == FEETECH:
                self.write("Lock", name, 1)

    def disable_torque(self, motors: str | Sequence[str] | None = None) -> None:
        """Torque off (Feetech: then Lock = 0 so EEPROM writes persist). Works while a hardware alarm is latched."""
        for name in self._names(motors):
            self.write("Torque_Enable", name, 0, accept_alert=True)
            if self.protocol == FEETECH:
                self.write("Lock", name, 0, accept_alert=True)

    @contextmanager
    def torque_disabled(self, motors: str | Sequence[str] | None = None) -> Iterator[None]:
        """Torque off inside the block; afterwards torque goes back on for the motors that had it on."""
        names = self._names(motors)
        was_on = self.sync_read("Torque_Enable", names, normalize=False)
        self.disable_torque(names)
        try:
            yield
        finally:
            restore = [n for n in names if was_on[n]]
            if restore:
                self.enable_torque(restore)

    def _write_if_differs(self, register: str, name: str, value: int) -> bool:
        if self.read(register, name) == value:
            return False
        self.write(register, name, value)
        return True

    def write_calibration(self, calibration: Mapping[str, MotorCalibration]) -> None:
        """Homing offset and position limits (Dynamixel also Drive_Mode bit 0) to EEPROM, only where they differ;
        torque is off meanwhile (and back on afterwards where it was on). Keeps the records in ``calibration``."""
        self._set_calibration(calibration)  # validates names and ids first
        names = list(calibration)
        with self.torque_disabled(names):
            for name in names:
                calib = calibration[name]
                self._write_if_differs("Homing_Offset", name, calib.homing_offset)
                self._write_if_differs("Min_Position_Limit", name, calib.range_min)
                self._write_if_differs("Max_Position_Limit", name, calib.range_max)
                if self.protocol == DYNAMIXEL:
                    current = int(self.read("Drive_Mode", name))
                    wanted = (current & ~1) | (calib.drive_mode & 1)
                    if wanted != current:
                        self.write("Drive_Mode", name, wanted)

    def read_calibration(self) -> dict[str, MotorCalibration]:
        """The calibration stored in the servos (Feetech keeps drive mode on the host: taken from ``calibration``)."""
        offsets = self.sync_read("Homing_Offset", normalize=False)
        mins = self.sync_read("Min_Position_Limit", normalize=False)
        maxes = self.sync_read("Max_Position_Limit", normalize=False)
        if self.protocol == DYNAMIXEL:
            drive = {n: int(v) & 1 for n, v in self.sync_read("Drive_Mode", normalize=False).items()}
        else:
            drive = {n: (self.calibration[n].drive_mode if n in self.calibration else 0) for n in self.motors}
        return {
            name: MotorCalibration(
                id=motor.id,
                drive_mode=drive[name],
                homing_offset=int(offsets[name]),
                range_min=int(mins[name]),
                range_max=int(maxes[name]),
            )
            for name, motor in self.motors.items()
        }

    def configure(self) -> None:
        """Return_Delay_Time 0 (Feetech also Acceleration and Maximum_Acceleration 254), torque off meanwhile."""
        with self.torque_disabled():
            for name in self.motors:
                self._write_if_differs("Return_Delay_Time", name, 0)
                if self.protocol == FEETECH:
                    self._write_if_differs("Maximum_Acceleration", name, 254)
                    self._write_if_differs("Acceleration", name, 254)
