"""MotorsBus over a pty: against the servo emulator (both protocols) and a tiny byte-level responder."""

from __future__ import annotations

import os
import threading
import time
import tty

import pytest

from robopolicy.real.motors import (
    EepromWriteError,
    Motor,
    MotorCalibration,
    MotorCorruptError,
    MotorHardwareError,
    MotorModelMismatchError,
    MotorNotConnectedError,
    MotorNotFoundError,
    MotorsBus,
    MotorTimeoutError,
    NormMode,
)
from robopolicy.real.motors import dynamixel as dxl
from robopolicy.real.motors import feetech as ft
from robopolicy.real.motors.bus import HANDSHAKE_RECHECK_S
from robopolicy.real.motors.calibration import unnormalize
from robopolicy.real.motors.tables import model_spec

emulator = pytest.importorskip("robopolicy.real.motors.emulator", reason="servo emulator (emulator.py) not present")
Faults, ServoEmulator = emulator.Faults, emulator.ServoEmulator

pytestmark = pytest.mark.timeout(30)

MODELS = {"dynamixel": "xl430-w250", "feetech": "sts3215"}
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
# The emulator / responder is a thread of this process: on a loaded machine it can be starved of CPU (and the GIL)
# for tens of ms. PATIENT (the default of make_bus) is a reply window no healthy responder misses, so tests that
# count transactions or assert "no retry" hold under load, while a parser or codec bug still costs a timeout and a
# retry. FAST keeps the tests that inject lost or bad replies quick: windows of 30, 60, 120 ms (the bus doubles
# the window per retry), so a healthy motor next to a faulty one is still heard after 210 ms of starvation.
PATIENT = {"latency_ms": 2.0, "timeout_ms": 1000.0}
FAST = {"latency_ms": 2.0, "timeout_ms": 30.0}


def make_bus(port: str, protocol: str, *, model: str | None = None, ids=range(1, 7), **kwargs) -> MotorsBus:
    model = model or MODELS[protocol]
    motors = {name: Motor(i, model) for name, i in zip(JOINTS, ids)}
    return MotorsBus(port, motors, **{**PATIENT, **kwargs})


@pytest.fixture(params=["dynamixel", "feetech"])
def protocol(request) -> str:
    return request.param


@pytest.fixture
def emu(protocol):
    with ServoEmulator(protocol, {i: MODELS[protocol] for i in range(1, 7)}, seed=0) as emulator_:
        yield emulator_


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ------------------------------------------------------------------------------------------------ construction


def test_bus_validates_motors():
    with pytest.raises(ValueError, match="mix protocols"):
        MotorsBus("/dev/null", {"a": Motor(1, "sts3215"), "b": Motor(2, "xl430-w250")})
    with pytest.raises(ValueError, match="share id 1"):
        MotorsBus("/dev/null", {"a": Motor(1, "sts3215"), "b": Motor(1, "sts3215")})
    with pytest.raises(KeyError, match="unknown servo model"):
        MotorsBus("/dev/null", {"a": Motor(1, "sts9999")})
    with pytest.raises(ValueError, match="id 253 outside"):
        MotorsBus("/dev/null", {"a": Motor(253, "xl430-w250")})
    bus = MotorsBus("/dev/null", {"a": Motor(1, "sts3215")})
    assert bus.protocol == "feetech"
    with pytest.raises(MotorNotConnectedError, match="call connect"):
        bus.read("Present_Position", "a")
    with pytest.raises(ValueError, match="is for id 2"):
        MotorsBus("/dev/null", {"a": Motor(1, "sts3215")}, calibration={"a": MotorCalibration(2, 0, 0, 0, 4095)})


def test_open_failure_names_port():
    bus = MotorsBus("/dev/does-not-exist-ttyUSB9", {"a": Motor(1, "sts3215")})
    with pytest.raises(Exception, match="cannot open serial port /dev/does-not-exist-ttyUSB9"):
        bus.connect()


def test_timeout_from_byte_count():
    bus = MotorsBus("/dev/null", {"a": Motor(1, "xl430-w250")}, baudrate=57_600, latency_ms=16.0)
    # 110 bytes at 57600 baud = 19.1 ms wire + 2*16 + 2 ms margin
    assert bus._timeout_s(110) == pytest.approx(110 * 10 / 57_600 + 0.034)
    bus = MotorsBus("/dev/null", {"a": Motor(1, "xl430-w250")}, latency_ms=1.0, timeout_ms=10.0)
    assert bus._timeout_s(20) == pytest.approx(0.010)  # floor
    # each retry waits twice as long as the attempt before it, at most 4x the first window
    assert [bus._timeout_s(20, attempt) for attempt in range(5)] == pytest.approx([0.010, 0.020, 0.040, 0.040, 0.040])


# ------------------------------------------------------------------------------------------------ emulator


def test_handshake_and_ping(emu, protocol):
    bus = make_bus(emu.port, protocol)
    bus.connect()
    try:
        assert bus.is_connected
        assert bus.ping("elbow_flex") == model_spec(MODELS[protocol]).model_number
        assert bus.ping(3) == model_spec(MODELS[protocol]).model_number
        assert set(bus.firmware) == set(JOINTS)
    finally:
        bus.disconnect()
    assert not bus.is_connected


def test_model_mismatch(emu, protocol):
    wrong = "xl330-m288" if protocol == "dynamixel" else "sts3250"
    bus = make_bus(emu.port, protocol, model=wrong)
    with pytest.raises(MotorModelMismatchError) as info:
        bus.connect()
    message = str(info.value)
    assert emu.port in message and "'shoulder_pan' (id 1)" in message
    assert MODELS[protocol] in message and wrong in message
    assert not bus.is_connected


def test_missing_motor_not_found(emu, protocol):
    bus = make_bus(emu.port, protocol, ids=[1, 2, 3, 4, 5, 9], **FAST)
    with pytest.raises(MotorNotFoundError) as info:
        bus.connect()
    assert "'gripper' (id 9)" in str(info.value) and emu.port in str(info.value)
    assert info.value.motor_ids == (9,)
    assert not bus.is_connected


def test_motors_that_answer_late_are_found_by_the_second_handshake_round(emu, protocol, monkeypatch):
    """Servos still booting (or a host that stalled) miss the first ping round; connect asks them again after
    HANDSHAKE_RECHECK_S instead of reporting them missing."""
    import robopolicy.real.motors.bus as bus_module

    pauses = []

    class Clock:  # the bus's `time`, reviving the motors during the pause between the rounds
        def __getattr__(self, name):
            return getattr(time, name)

        def sleep(self, seconds):
            pauses.append(seconds)
            emu.faults = Faults()
            time.sleep(seconds)

    monkeypatch.setattr(bus_module, "time", Clock())
    bus = make_bus(emu.port, protocol, **FAST)
    emu.faults = Faults(dead_ids=frozenset({1, 2, 3}))
    bus.connect()
    assert bus.is_connected and bus.stats.timeouts == 3 * 3  # three motors, three attempts each, in round 1
    assert pauses == [HANDSHAKE_RECHECK_S]
    bus.disconnect()
    # still silent after the pause: reported missing, after both rounds
    bus = make_bus(emu.port, protocol, **FAST)
    emu.faults = Faults(dead_ids=frozenset({2}))
    monkeypatch.setattr(Clock, "sleep", lambda self, seconds: pauses.append(seconds))
    with pytest.raises(MotorNotFoundError) as info:
        bus.connect()
    assert info.value.motor_ids == (2,) and len(pauses) == 2 and bus.stats.timeouts == 2 * 3


def test_sync_read_write_six_motors(emu, protocol):
    with make_bus(emu.port, protocol) as bus:
        assert bus.sync_read("Present_Position", normalize=False) == dict.fromkeys(JOINTS, 2048)
        bus.enable_torque()
        for i in range(1, 7):
            assert emu.register(i, "Torque_Enable") == 1
            if protocol == "feetech":
                assert emu.register(i, "Lock") == 1
        goals = {name: 1000 + 250 * k for k, name in enumerate(JOINTS)}
        before = bus.stats.transactions
        bus.sync_write("Goal_Position", goals, normalize=False)
        assert bus.stats.transactions == before + 1
        # no reply to a sync write: wait for the emulator to have applied it
        assert wait_until(
            lambda: {name: emu.register(k + 1, "Goal_Position") for k, name in enumerate(JOINTS)} == goals
        )
        assert wait_until(lambda: bus.sync_read("Present_Position", normalize=False) == goals)
        before = bus.stats.transactions
        bus.sync_read("Present_Position", normalize=False)
        assert bus.stats.transactions == before + 1  # one transaction for six motors
        assert bus.stats.retries == 0 and bus.stats.corrupt == 0
        sub = bus.sync_read("Present_Position", ["elbow_flex", "gripper"], normalize=False)
        assert sub == {"elbow_flex": goals["elbow_flex"], "gripper": goals["gripper"]}
    # disconnect turned torque off
    assert all(emu.register(i, "Torque_Enable") == 0 for i in range(1, 7))


def test_signed_values_round_trip(emu, protocol):
    with make_bus(emu.port, protocol) as bus:
        bus.disable_torque()
        bus.write("Homing_Offset", "elbow_flex", -709)
        assert emu.register(3, "Homing_Offset") == -709
        assert bus.read("Homing_Offset", "elbow_flex") == -709
        assert bus.sync_read("Homing_Offset", normalize=False)["elbow_flex"] == -709


def test_normalized_read_write(emu, protocol):
    calib = {name: MotorCalibration(k + 1, 0, 0, 1000, 3000) for k, name in enumerate(JOINTS)}
    motors = {name: Motor(k + 1, MODELS[protocol], NormMode.RANGE_M100_100) for k, name in enumerate(JOINTS)}
    motors["gripper"] = Motor(6, MODELS[protocol], NormMode.RANGE_0_100)
    motors["wrist_roll"] = Motor(5, MODELS[protocol], NormMode.DEGREES)
    with MotorsBus(emu.port, motors, calibration=calib, **PATIENT) as bus:
        present = bus.sync_read("Present_Position")  # 2048 raw
        assert present["shoulder_pan"] == pytest.approx((2048 - 1000) / 2000 * 200 - 100)
        assert present["gripper"] == pytest.approx((2048 - 1000) / 2000 * 100)
        assert present["wrist_roll"] == pytest.approx((2048 - 2000) * 360 / 4095)
        bus.enable_torque()
        targets = {name: 50.0 for name in JOINTS}
        targets["wrist_roll"] = 400.0  # degrees far outside the range: clamped on the host
        bus.sync_write("Goal_Position", targets)
        expected = {k + 1: unnormalize(targets[n], calib[n], motors[n].norm_mode, 4096) for k, n in enumerate(JOINTS)}
        assert wait_until(lambda: {i: emu.register(i, "Goal_Position") for i in expected} == expected)
        assert expected[5] == 3000
        assert bus.read("Goal_Position", "shoulder_pan", normalize=True) == pytest.approx(50.0)
        bus.write("Goal_Position", "gripper", 25.0, normalize=True)
        assert emu.register(6, "Goal_Position") == 1500
    with MotorsBus(emu.port, motors, **PATIENT) as bus, pytest.raises(ValueError, match="has no calibration"):
        bus.sync_read("Present_Position")


def test_eeprom_write_refused_under_torque(emu, protocol):
    with make_bus(emu.port, protocol) as bus:
        bus.enable_torque()
        with pytest.raises(EepromWriteError, match=r"Homing_Offset of motor 'wrist_flex' \(id 4\).*torque is on"):
            bus.write("Homing_Offset", "wrist_flex", 100)
        assert emu.register(4, "Homing_Offset") == 0
        # without the host-side check the servo refuses it: a hardware error in words
        bus.check_eeprom = False
        with pytest.raises(MotorHardwareError, match="Homing_Offset is in EEPROM: turn torque off") as info:
            bus.write("Homing_Offset", "wrist_flex", 100)
        assert emu.port in str(info.value) and "'wrist_flex' (id 4)" in str(info.value)
        assert bus.stats.hardware_errors == 1
        bus.check_eeprom = True
        with bus.torque_disabled():
            bus.write("Homing_Offset", "wrist_flex", 100)
            assert emu.register(4, "Torque_Enable") == 0
        assert emu.register(4, "Homing_Offset") == 100
        assert emu.register(4, "Torque_Enable") == 1  # restored


def test_feetech_lock_checked():
    with ServoEmulator("feetech", {1: "sts3215"}) as emu:
        bus = MotorsBus(emu.port, {"a": Motor(1, "sts3215")}, **PATIENT)
        with bus:
            bus.write("Torque_Enable", "a", 0)  # torque off but Lock still 1 (factory)
            with pytest.raises(EepromWriteError, match="Lock = 1"):
                bus.write("Min_Position_Limit", "a", 10)
            bus.disable_torque()
            bus.write("Min_Position_Limit", "a", 10)
            assert emu.register(1, "Lock") == 0 and emu.register(1, "Min_Position_Limit") == 10


def test_calibration_round_trip_and_configure(emu, protocol):
    calib = {name: MotorCalibration(k + 1, k % 2, -100 * k, 500 + k, 3500 - k) for k, name in enumerate(JOINTS)}
    if protocol == "feetech":
        calib = {
            n: MotorCalibration(c.id, c.drive_mode, c.homing_offset, c.range_min, c.range_max) for n, c in calib.items()
        }
    with make_bus(emu.port, protocol) as bus:
        bus.enable_torque()
        bus.write_calibration(calib)
        assert bus.calibration == calib
        assert bus.read_calibration() == calib
        for k in range(6):
            assert emu.register(k + 1, "Homing_Offset") == -100 * k
            assert emu.register(k + 1, "Torque_Enable") == 1  # back on
        tx = bus.stats.transactions
        bus.write_calibration(calib)  # nothing differs: reads only, no EEPROM writes
        assert bus.stats.transactions - tx < 6 * 8
        bus.configure()
        assert all(emu.register(i, "Return_Delay_Time") == 0 for i in range(1, 7))
        if protocol == "feetech":
            assert all(emu.register(i, "Acceleration") == 254 for i in range(1, 7))
        else:
            assert all(emu.register(k + 1, "Drive_Mode") & 1 == k % 2 for k in range(6))


def test_dropped_replies_are_retried(emu, protocol):
    with make_bus(emu.port, protocol, num_retries=6, **FAST) as bus:
        emu.faults = Faults(drop_rate=0.3)
        for _ in range(20):
            assert bus.sync_read("Present_Position", normalize=False) == dict.fromkeys(JOINTS, 2048)
            assert bus.read("Present_Position", "gripper") == 2048
        emu.faults = Faults()
        assert emu.counts["dropped"] > 0
        assert bus.stats.retries > 0 and bus.stats.sync_read_retries > 0 and bus.stats.timeouts > 0


def test_corrupt_and_partial_replies_are_retried(emu, protocol):
    with make_bus(emu.port, protocol, num_retries=6, **FAST) as bus:
        emu.faults = Faults(corrupt_rate=0.2, partial_rate=0.1)
        for _ in range(20):
            assert bus.sync_read("Present_Position", normalize=False) == dict.fromkeys(JOINTS, 2048)
        emu.faults = Faults()
        assert emu.counts["corrupted"] > 0
        assert bus.stats.corrupt > 0 and bus.stats.retries > 0


def test_dead_motor_raises_naming_it(emu, protocol):
    with make_bus(emu.port, protocol, num_retries=2, **FAST) as bus:
        emu.faults = Faults(dead_ids=frozenset({3}))
        with pytest.raises(MotorTimeoutError) as info:
            bus.sync_read("Present_Position", normalize=False)
        message = str(info.value)
        assert "motor 'elbow_flex' (id 3)" in message and emu.port in message
        assert "Present_Position after 3 attempts" in message and "check power" in message
        assert info.value.motors == ("elbow_flex",)
        assert bus.stats.sync_read_retries == 2
        with pytest.raises(MotorTimeoutError, match=r"'elbow_flex' \(id 3\).*reading Torque_Enable after 3"):
            bus.read("Torque_Enable", "elbow_flex")
        others = [n for n in JOINTS if n != "elbow_flex"]
        assert bus.sync_read("Present_Position", others, normalize=False) == dict.fromkeys(others, 2048)
        # disconnect still closes the port when turning torque off fails on the dead motor
        with pytest.raises(MotorTimeoutError, match="elbow_flex"):
            bus.disconnect()
        assert not bus.is_connected
        emu.faults = Faults()


def test_status_error_bits_in_words(emu, protocol):
    bits, words = (0x06, "data limit error") if protocol == "dynamixel" else (0x21, "input voltage error; overload")
    with make_bus(emu.port, protocol) as bus:
        emu.faults = Faults(error_rate=1.0, error_bits=bits)
        with pytest.raises(MotorHardwareError) as info:
            bus.sync_read("Present_Position", normalize=False)
        emu.faults = Faults()
        message = str(info.value)
        assert emu.port in message and "motor 'shoulder_pan' (id 1)" in message
        assert f"error 0x{bits:02X} sync reading Present_Position: {words}" in message
        assert info.value.error_bits == bits
        assert bus.stats.hardware_errors == 1


def test_dynamixel_hardware_alert_decoded():
    with (
        ServoEmulator("dynamixel", {1: "xm430-w350"}) as emu,
        MotorsBus(emu.port, {"e": Motor(1, "xm430-w350")}, **PATIENT) as bus,
    ):
        emu.inject_hardware_error(1, 0b100000)  # overload
        with pytest.raises(MotorHardwareError) as info:
            bus.read("Present_Position", "e")
        message = str(info.value)
        assert "hardware alert" in message and "Hardware_Error_Status: overload" in message
        assert "REBOOT" in message


def test_register_errors(emu, protocol):
    with make_bus(emu.port, protocol) as bus:
        with pytest.raises(KeyError, match="no register 'Goal_Pos'"):
            bus.read("Goal_Pos", "gripper")
        with pytest.raises(KeyError, match="no motor 'hand'"):
            bus.read("Goal_Position", "hand")
        with pytest.raises(ValueError, match="read-only"):
            bus.write("Present_Position", "gripper", 10)
        with pytest.raises(ValueError, match=r"Torque_Enable of motor 'gripper' \(id 6\).*does not fit"):
            bus.write("Torque_Enable", "gripper", 300)
        with pytest.raises(ValueError, match="must be an integer"):
            bus.write("Goal_Position", "gripper", 10.5)


# ------------------------------------------------------------------------------------------------ byte-level responder


class Responder:
    """A pty servo stand-in built on our codec: answers PING/READ/SYNC_READ of Present_Position with fixed values,
    sending each reply with leading garbage and in 1..3-byte pieces (split frames)."""

    def __init__(self, protocol: str, positions: dict[int, int], *, garbage: bytes = b"\x00\xff\x13") -> None:
        self.codec = dxl if protocol == "dynamixel" else ft
        self.spec = model_spec(MODELS[protocol])
        self.positions = positions
        self.garbage = garbage
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _reply(self, motor_id: int, params: bytes) -> bytes:
        return self.codec.status_packet(motor_id, 0, params)

    def _memory(self, motor_id: int) -> bytearray:
        memory = bytearray(256)
        values = {**self.spec.defaults, "Present_Position": self.positions[motor_id]}
        for name, value in values.items():
            reg = self.spec.register(name)
            memory[reg.address : reg.address + reg.size] = self.codec.encode_value(value, reg)
        return memory

    def _run(self) -> None:
        import select

        parser = self.codec.PacketParser("instruction")
        reg = self.spec.register("Present_Position")
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for packet in parser.feed(data):
                out = bytearray(self.garbage)
                if packet.instruction == self.codec.Instruction.PING:
                    model = self.spec.model_number.to_bytes(2, "little")
                    out += self._reply(packet.motor_id, model + b"\x2e" if self.codec is dxl else b"")
                elif packet.instruction == self.codec.Instruction.READ:
                    if self.codec is dxl:
                        address, size = int.from_bytes(packet.params[:2], "little"), packet.params[2]
                    else:
                        address, size = packet.params[0], packet.params[1]
                    memory = self._memory(packet.motor_id)
                    out += self._reply(packet.motor_id, bytes(memory[address : address + size]))
                elif packet.instruction == self.codec.Instruction.SYNC_READ:
                    ids = packet.params[4:] if self.codec is dxl else packet.params[2:]
                    for motor_id in ids:
                        out += self._reply(motor_id, self.codec.encode_value(self.positions[motor_id], reg))
                else:
                    continue
                for i in range(0, len(out), 3):
                    os.write(self.master, out[i : i + 3])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        os.close(self.master)
        os.close(self.slave)


def test_split_frames_and_garbage_from_responder(protocol):
    positions = {i: 100 * i - 300 for i in range(1, 7)}
    responder = Responder(protocol, positions)
    try:
        with make_bus(responder.port, protocol) as bus:
            values = bus.sync_read("Present_Position", normalize=False)
            assert values == {name: positions[k + 1] for k, name in enumerate(JOINTS)}
            assert bus.read("Present_Position", "elbow_flex") == 0
            assert bus.stats.retries == 0 and bus.stats.corrupt == 0
            bus.disconnect(disable_torque=False)
    finally:
        responder.close()


def test_corrupt_reply_raises_corrupt_error(protocol):
    """A responder whose replies always fail the checksum: MotorCorruptError after the retry budget."""
    responder = Responder(protocol, dict.fromkeys(range(1, 7), 5))
    responder._reply = lambda motor_id, params: bytes(
        bytearray(responder.codec.status_packet(motor_id, 0, params))[:-1] + b"\x00"
    )
    try:
        # every reply is corrupt, so each window runs out: 200 + 400 ms, long enough to see a starved responder's
        bus = make_bus(responder.port, protocol, num_retries=1, latency_ms=2.0, timeout_ms=200.0)
        bus.connect(handshake=False)
        with pytest.raises(MotorCorruptError, match=r"corrupt status packets from motor 'gripper' \(id 6\)"):
            bus.read("Present_Position", "gripper")
        assert bus.stats.corrupt >= 2 and bus.stats.retries == 1
        bus.disconnect(disable_torque=False)
    finally:
        responder.close()
