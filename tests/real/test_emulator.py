"""Servo emulator (robopolicy.real.motors.emulator) on a pty: hardware.md test vectors byte for byte, the vendor
SDKs (dynamixel_sdk, scservo_sdk) as independent drivers, register semantics, motion, faults and pacing."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

serial = pytest.importorskip("serial")

from robopolicy.real.motors import dynamixel, feetech  # noqa: E402
from robopolicy.real.motors.emulator import FEETECH_REFUSED, Faults, ServoEmulator  # noqa: E402
from robopolicy.real.motors.motion import FirstOrderBackend  # noqa: E402

pytestmark = pytest.mark.timeout(30)
H = bytes.fromhex


class Host:
    """A bare serial port on the emulator's pty: send raw bytes, collect the raw answer."""

    def __init__(self, port: str, baudrate: int = 1_000_000) -> None:
        self.ser = serial.Serial(port, baudrate, timeout=0)

    def send(self, data: bytes) -> None:
        self.ser.reset_input_buffer()
        self.ser.write(data)

    def recv(self, n: int, timeout: float = 1.0) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            out += self.ser.read(n - len(out))
            if len(out) < n:
                time.sleep(0.0002)
        return out

    def transact(self, request: bytes, n: int, timeout: float = 1.0) -> bytes:
        self.send(request)
        return self.recv(n, timeout)

    def silence(self, seconds: float = 0.05) -> bytes:
        time.sleep(seconds)
        return self.ser.read(4096)

    def close(self) -> None:
        self.ser.close()


@pytest.fixture
def make():
    """make(protocol, servos, **kw) -> (emulator, host); everything is stopped at teardown."""
    created = []

    def factory(protocol, servos, host_baud=1_000_000, **kwargs):
        emu = ServoEmulator(protocol, servos, **kwargs)
        emu.start()
        host = Host(emu.port, host_baud)
        created.append((emu, host))
        return emu, host

    yield factory
    for emu, host in created:
        host.close()
        emu.stop()
        assert not emu.errors


def wait_for(predicate, timeout=2.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# ---------------------------------------------------------------- hardware.md section 1 vectors (Dynamixel)


def test_dynamixel_manual_vectors(make):
    emu, host = make("dynamixel", {2: "xm430-w210", 1: "xm430-w210"}, initial_positions={1: 166, 2: 2079})
    for i in (1, 2):
        emu.set_register(i, "Firmware_Version", 38)  # the e-manual's servo runs firmware 38
    assert emu.register(1, "Present_Position") == 166
    ok1 = H("FF FF FD 00 01 04 00 55 00 A1 0C")
    # PING id1 -> model 1030, fw 38
    assert host.transact(H("FF FF FD 00 01 03 00 01 19 4E"), 14) == H("FF FF FD 00 01 07 00 55 00 06 04 26 65 5D")
    # broadcast PING: every servo answers, in id order
    answer = host.transact(H("FF FF FD 00 FE 03 00 01 31 42"), 28)
    assert answer == H("FF FF FD 00 01 07 00 55 00 06 04 26 65 5D") + H("FF FF FD 00 02 07 00 55 00 06 04 26 6F 6D")
    # READ id1 @132 len 4 -> 166
    assert host.transact(H("FF FF FD 00 01 07 00 02 84 00 04 00 1D 15"), 15) == \
        H("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    # WRITE id1 @116 = 512 -> ok status
    assert host.transact(H("FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89"), 11) == ok1
    assert emu.register(1, "Goal_Position") == 512
    # SYNC_READ @132x4 ids 1,2 -> one status per id in the listed order
    answer = host.transact(H("FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"), 30)
    assert answer[:15] == H("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    assert answer[15:] == H("FF FF FD 00 02 08 00 55 00 1F 08 00 00 BA BE")  # 2079
    answer = host.transact(dynamixel.sync_read(132, 4, [2, 9, 1]), 30)  # listed order kept, missing id 9 skipped
    assert answer == H("FF FF FD 00 02 08 00 55 00 1F 08 00 00 BA BE FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    # SYNC_WRITE @116x4 1=150, 2=170: no reply
    host.send(H("FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87"))
    assert host.silence() == b""
    assert (emu.register(1, "Goal_Position"), emu.register(2, "Goal_Position")) == (150, 170)
    # BULK_READ 1@144x2 (input voltage), 2@146x1 (temperature)
    answer = host.transact(H("FF FF FD 00 FE 0D 00 92 01 90 00 02 00 02 92 00 01 00 1A 05"), 13 + 12)
    volts, temp = emu.register(1, "Present_Input_Voltage"), emu.register(2, "Present_Temperature")
    assert (volts, temp) == (120, 30)
    assert answer == dynamixel.status_packet(1, 0, H("78 00")) + dynamixel.status_packet(2, 0, H("1E"))
    # BULK_WRITE 1@32=160 (2 bytes), 2@31=80 (1 byte): no reply
    host.send(H("FF FF FD 00 FE 10 00 93 01 20 00 02 00 A0 00 02 1F 00 01 00 50 B7 68"))
    assert host.silence() == b""
    assert emu.register(1, "Max_Voltage_Limit") == 160 and emu.register(2, "Temperature_Limit") == 80
    # REG_WRITE @104 = 200 waits for ACTION
    assert host.transact(H("FF FF FD 00 01 09 00 04 68 00 C8 00 00 00 AE 8E"), 11) == ok1
    assert emu.register(1, "Goal_Velocity") == 0 and emu.register(1, "Registered_Instruction") == 1
    assert host.transact(H("FF FF FD 00 01 03 00 05 02 CE"), 11) == ok1
    assert emu.register(1, "Goal_Velocity") == 200 and emu.register(1, "Registered_Instruction") == 0
    # derived vector: torque on for id 1
    assert host.transact(H("FF FF FD 00 01 06 00 03 40 00 01 DB 66"), 11) == ok1
    assert emu.register(1, "Torque_Enable") == 1
    # REBOOT id1: status, then torque off and RAM defaults; EEPROM kept
    host.transact(dynamixel.write(1, 31, bytes([70])), 11)  # EEPROM under torque: refused
    assert emu.register(1, "Temperature_Limit") == 80
    assert host.transact(H("FF FF FD 00 01 03 00 08 2F 4E"), 11) == ok1
    assert emu.register(1, "Torque_Enable") == 0 and emu.register(1, "Goal_Velocity") == 0
    assert host.transact(dynamixel.write(1, 31, bytes([70])), 11) == ok1
    # FACTORY_RESET 0x01 (keep ID): status, EEPROM back to factory values
    assert host.transact(H("FF FF FD 00 01 04 00 06 01 A1 E6"), 11) == ok1
    assert emu.register(1, "Temperature_Limit") == 80 and emu.register(1, "ID") == 1
    assert emu.register(2, "Temperature_Limit") == 80
    assert emu.counts["rx_ping"] == 2 and emu.counts["rx_sync_read"] == 2 and emu.counts["rx_bulk_write"] == 1


def test_dynamixel_factory_reset_modes_and_id_change(make):
    emu, host = make("dynamixel", {5: "xm430-w350", 6: "xm430-w350"}, baudrate=57_600, host_baud=57_600)
    assert host.transact(dynamixel.write(5, 7, bytes([9])), 11) == dynamixel.status_packet(5, 0)  # ID 5 -> 9
    assert emu.ids == [6, 9]
    assert len(host.transact(dynamixel.ping(9), 14)) == 14
    host.send(dynamixel.ping(5))
    assert host.silence() == b""
    host.transact(dynamixel.write(9, 8, bytes([1])), 11)  # Baud_Rate index 1 (57600): unchanged
    host.transact(dynamixel.write(9, 20, (77).to_bytes(4, "little")), 11)
    assert host.transact(dynamixel.factory_reset(9, 0x02), 11) == dynamixel.status_packet(9, 0)
    assert emu.register(9, "Homing_Offset") == 0 and emu.ids == [6, 9]
    host.send(dynamixel.factory_reset(dynamixel.BROADCAST_ID, 0xFF))  # refused by the firmware
    assert host.silence() == b"" and emu.ids == [6, 9]
    assert host.transact(dynamixel.factory_reset(6, 0xFF), 11) == dynamixel.status_packet(6, 0)
    assert emu.ids == [1, 9]


def test_dynamixel_derived_vectors_stuffing_and_six_servo_sync_read(make):
    emu, host = make("dynamixel", {i: "xl430-w250" for i in range(1, 7)},
                     initial_positions={i: 1000 + 10 * i for i in range(1, 7)})
    answer = host.transact(H("FF FF FD 00 FE 0D 00 82 84 00 04 00 01 02 03 04 05 06 B2 9B"), 6 * 15)
    expected = b"".join(dynamixel.status_packet(i, 0, (1000 + 10 * i).to_bytes(4, "little")) for i in range(1, 7))
    assert answer == expected
    # stuffing: WRITE @116 with data FF FF FD 00 -> goal 0x00FDFFFF (needs extended position mode)
    stuffed = H("FF FF FD 00 01 0A 00 03 74 00 FF FF FD FD 00 21 E7")
    assert host.transact(stuffed, 11) == dynamixel.status_packet(1, 6)  # mode 3: beyond Max_Position_Limit
    host.transact(dynamixel.write(1, 11, bytes([4])), 11)  # Operating_Mode 4 (extended position)
    assert host.transact(stuffed, 11) == dynamixel.status_packet(1, 0)
    assert emu.register(1, "Goal_Position") == 0x00FDFFFF
    # a status packet whose data needs stuffing is stuffed on the wire and parses back
    emu.set_register(2, "Goal_Position", 0x00FDFFFF)
    raw = host.transact(dynamixel.read(2, 116, 4), 16)
    assert raw == dynamixel.status_packet(2, 0, H("FFFFFD00")) and len(raw) == 16
    assert dynamixel.PacketParser("status").feed(raw)[0].params == H("FFFFFD00")


def test_dynamixel_split_merged_and_garbage_frames(make):
    emu, host = make("dynamixel", {1: "xm430-w350", 2: "xm430-w350"})
    ping1, ping2 = dynamixel.ping(1), dynamixel.ping(2)
    host.ser.reset_input_buffer()
    for byte in ping1:  # one byte at a time
        host.ser.write(bytes([byte]))
        time.sleep(0.001)
    assert host.recv(14) == dynamixel.status_packet(1, 0, bytes([1020 & 0xFF, 1020 >> 8, 46]))
    # garbage + two merged frames + a corrupted frame
    bad = bytearray(dynamixel.ping(1))
    bad[-1] ^= 0xFF
    answer = host.transact(b"\x00\xff\x13" + ping2 + bytes(bad) + ping1, 28)
    assert [p.motor_id for p in dynamixel.PacketParser("status").feed(answer)] == [2, 1]
    assert host.silence() == b""
    assert emu.counts["bad_frames"] >= 1


# ---------------------------------------------------------------- hardware.md section 2 vectors (Feetech)


def test_feetech_document_vectors(make):
    emu, host = make("feetech", {i: "sts3215" for i in range(1, 7)}, initial_positions={1: 1304})
    ok1 = H("FF FF 01 02 00 FC")
    assert host.transact(H("FF FF 01 02 01 FB"), 6) == ok1
    assert host.transact(H("FF FF 01 04 02 38 02 BE"), 8) == H("FF FF 01 04 00 18 05 DD")  # present 1304
    # WRITE id1 @0x2A: position 2048, time 0, speed 1000
    assert host.transact(H("FF FF 01 09 03 2A 00 08 00 00 E8 03 D5"), 6) == ok1
    assert [emu.register(1, r) for r in ("Goal_Position", "Goal_Time", "Goal_Velocity")] == [2048, 0, 1000]
    host.send(H("FF FF FE 02 05 FA"))  # ACTION broadcast: silent
    assert host.silence() == b""
    # SYNC_WRITE @0x2A L6 ids 1-4: no reply
    host.send(H("FF FF FE 20 83 2A 06 01 00 08 00 00 E8 03 02 00 08 00 00 E8 03"
                "03 00 08 00 00 E8 03 04 00 08 00 00 E8 03 58"))
    assert host.silence() == b""
    assert all(emu.register(i, "Goal_Position") == 2048 and emu.register(i, "Goal_Velocity") == 1000
               for i in range(1, 5))
    assert host.transact(H("FF FF 01 02 0A F2"), 6) == ok1  # RESET id1
    # derived: SYNC_READ @56 len 2 ids 1-6 -> six replies in order; a servo at 2048 answers FF FF 01 04 00 00 08 F2
    answer = host.transact(H("FF FF FE 0A 82 38 02 01 02 03 04 05 06 26"), 6 * 8)
    assert answer[:8] == H("FF FF 01 04 00 18 05 DD")
    assert answer[8:] == b"".join(feetech.status_packet(i, 0, H("00 08")) for i in range(2, 7))
    assert feetech.status_packet(1, 0, H("00 08")) == H("FF FF 01 04 00 00 08 F2")
    # broadcast PING: all six, in id order
    answer = host.transact(feetech.ping(feetech.BROADCAST_ID), 36)
    assert answer == b"".join(feetech.status_packet(i, 0) for i in range(1, 7))
    # derived: SYNC_WRITE of 2048 to ids 1-6, then torque on for id 1
    host.send(H("FF FF FE 16 83 2A 02 01 00 08 02 00 08 03 00 08 04 00 08 05 00 08 06 00 08 F7"))
    assert host.silence() == b""
    assert [emu.register(i, "Goal_Position") for i in range(1, 7)] == [2048] * 6
    assert host.transact(H("FF FF 01 04 03 28 01 CE"), 6) == ok1
    assert emu.register(1, "Torque_Enable") == 1
    # split across writes with garbage in between
    host.ser.reset_input_buffer()
    host.ser.write(b"\x13\xff" + H("FF FF 01 04"))
    time.sleep(0.005)
    host.ser.write(H("02 38 02 BE"))
    assert host.recv(8) == feetech.status_packet(1, 0, (emu.register(1, "Present_Position")).to_bytes(2, "little"))


def test_feetech_sign_magnitude_and_homing(make):
    emu, host = make("feetech", {1: "sts3215", 2: "sts3215"}, initial_positions={1: 2048, 2: 1000})
    offset = feetech.encode_value(-709, emu._servos[0].spec.register("Homing_Offset"))
    assert offset == H("C50A")  # -709 at bit 11 = 0x0AC5
    host.transact(feetech.write(1, 55, b"\x00"), 6)  # Lock 0
    assert host.transact(feetech.write(1, 31, offset), 6) == H("FFFF010200FC")
    assert emu.register(1, "Homing_Offset") == -709
    assert emu.register(1, "Present_Position") == 2048 + 709  # Present = Actual - Homing_Offset
    # Phase bit 4 (angle feedback mode): positions leave 0..4095 and use bit 15 for the sign
    emu.set_register(2, "Phase", emu.register(2, "Phase") | 0x10)
    emu.set_register(2, "Homing_Offset", 2047)
    raw = host.transact(feetech.read(2, 56, 2), 8)
    assert raw == feetech.status_packet(2, 0, (0x8000 | 1047).to_bytes(2, "little"))  # 1000 - 2047 = -1047
    # without bit 4 the STS3215 wraps into 0..4095
    emu.set_register(2, "Phase", 12)
    assert emu.register(2, "Present_Position") == (1000 - 2047) % 4096


def test_feetech_eeprom_lock_and_torque(make):
    emu, host = make("feetech", {1: "sts3215"})
    assert emu.register(1, "Lock") == 1  # factory: locked
    # Lock = 1: the write takes effect but is not persisted; a reboot (no reply) restores the old value
    assert host.transact(feetech.write(1, 9, (100).to_bytes(2, "little")), 6) == feetech.status_packet(1, 0)
    assert emu.register(1, "Min_Position_Limit") == 100
    host.send(feetech.reboot(1))
    assert host.silence() == b""
    assert emu.register(1, "Min_Position_Limit") == 0
    # Lock = 0: persisted across a reboot
    host.transact(feetech.write(1, 55, b"\x00"), 6)
    host.transact(feetech.write(1, 9, (100).to_bytes(2, "little")), 6)
    host.send(feetech.reboot(1))
    host.silence()
    assert emu.register(1, "Min_Position_Limit") == 100 and emu.register(1, "Lock") == 1
    # torque on: EEPROM writes are refused with FEETECH_REFUSED in the status byte (documented choice)
    host.transact(feetech.write(1, 55, b"\x00"), 6)
    host.transact(feetech.write(1, 40, b"\x01"), 6)
    answer = host.transact(feetech.write(1, 9, (200).to_bytes(2, "little")), 6)
    assert answer == feetech.status_packet(1, FEETECH_REFUSED)
    assert emu.register(1, "Min_Position_Limit") == 100
    # read-only item
    assert host.transact(feetech.write(1, 56, b"\x00\x00"), 6) == feetech.status_packet(1, FEETECH_REFUSED)
    # CALIBRATE (0x0B): present becomes 2048
    host.transact(feetech.write(1, 40, b"\x00"), 6)
    emu.set_register(1, "Homing_Offset", 0)
    assert host.transact(feetech.instruction_packet(1, feetech.Instruction.CALIBRATE), 6) == feetech.status_packet(1, 0)
    assert emu.register(1, "Present_Position") == 2048


def test_feetech_hardware_error_unloads_and_reboot_clears(make):
    emu, host = make("feetech", {1: "sts3215"})
    host.transact(feetech.write(1, 40, b"\x01"), 6)
    emu.inject_hardware_error(1, 0x01)  # voltage: not in Unloading_Condition (44): torque stays
    assert emu.register(1, "Torque_Enable") == 1
    assert host.transact(feetech.ping(1), 6) == feetech.status_packet(1, 0x01)
    emu.inject_hardware_error(1, 0x20)  # overload: unloads
    assert emu.register(1, "Torque_Enable") == 0
    assert host.transact(feetech.read(1, 65, 1), 7) == feetech.status_packet(1, 0x21, b"\x21")
    host.send(feetech.reboot(1))
    assert host.silence() == b""
    assert host.transact(feetech.ping(1), 6) == feetech.status_packet(1, 0)


def test_feetech_goal_clamped_to_limits_and_response_level(make):
    emu, host = make("feetech", {1: "sts3215"}, backend=FirstOrderBackend(tau_s=0.005, max_speed_ticks_s=1e6))
    host.transact(feetech.write(1, 55, b"\x00"), 6)
    host.transact(feetech.write(1, 11, (3000).to_bytes(2, "little")), 6)  # Max_Position_Limit
    host.transact(feetech.write(1, 40, b"\x01"), 6)
    host.transact(feetech.write(1, 42, (3500).to_bytes(2, "little")), 6)
    assert wait_for(lambda: emu.register(1, "Present_Position") == 3000)
    emu.set_register(1, "Response_Status_Level", 0)  # only PING and READ answer
    host.send(feetech.write(1, 42, (2500).to_bytes(2, "little")))
    assert host.silence() == b""
    assert host.transact(feetech.read(1, 42, 2), 8) == feetech.status_packet(1, 0, (2500).to_bytes(2, "little"))


# ---------------------------------------------------------------- Dynamixel register semantics


def test_dynamixel_eeprom_access_error_and_status_return_level(make):
    emu, host = make("dynamixel", {1: "xm430-w350"})
    assert host.transact(dynamixel.write(1, 20, (-500).to_bytes(4, "little", signed=True)), 11) == \
        dynamixel.status_packet(1, 0)
    assert emu.register(1, "Homing_Offset") == -500
    host.transact(dynamixel.write(1, 64, b"\x01"), 11)
    # EEPROM while torqued -> Access error 7, nothing written
    answer = host.transact(dynamixel.write(1, 20, (100).to_bytes(4, "little", signed=True)), 11)
    assert answer == dynamixel.status_packet(1, 7)
    assert emu.register(1, "Homing_Offset") == -500
    # read-only item -> Access; half of a 4-byte item -> Data Length (5); unknown instruction -> 2
    assert host.transact(dynamixel.write(1, 132, b"\x00\x00\x00\x00"), 11) == dynamixel.status_packet(1, 7)
    assert host.transact(dynamixel.write(1, 116, b"\x00\x08"), 11) == dynamixel.status_packet(1, 5)
    assert host.transact(dynamixel.instruction_packet(1, 0x77), 11) == dynamixel.status_packet(1, 2)
    # broadcast WRITE is silent but applies
    host.send(dynamixel.write(dynamixel.BROADCAST_ID, 65, b"\x01"))
    assert host.silence() == b"" and emu.register(1, "LED") == 1
    # Status_Return_Level 1: READ answers, WRITE does not; 0: only PING
    host.send(dynamixel.write(1, 68, b"\x01"))  # the new level already applies to this write's status
    assert host.silence() == b""
    host.send(dynamixel.write(1, 65, b"\x00"))
    assert host.silence() == b""
    assert len(host.transact(dynamixel.read(1, 65, 1), 12)) == 12
    host.send(dynamixel.write(1, 68, b"\x00"))
    host.silence(0.01)
    host.send(dynamixel.read(1, 65, 1))
    assert host.silence() == b""
    assert len(host.transact(dynamixel.ping(1), 14)) == 14


def test_dynamixel_homing_drive_mode_and_negative_positions(make):
    emu, host = make("dynamixel", {1: "xl330-m288"}, initial_positions={1: 1000},
                     backend=FirstOrderBackend(tau_s=0.005, max_speed_ticks_s=1e6, initial={1: 1000}))
    host.transact(dynamixel.write(1, 20, (-3000).to_bytes(4, "little", signed=True)), 11)
    raw = host.transact(dynamixel.read(1, 132, 4), 15)
    assert raw == dynamixel.status_packet(1, 0, (-2000).to_bytes(4, "little", signed=True))  # two's complement
    host.transact(dynamixel.write(1, 10, b"\x01"), 11)  # Drive_Mode reverse: Present = -Actual + offset
    assert emu.register(1, "Present_Position") == -1000 - 3000
    host.transact(dynamixel.write(1, 11, b"\x04"), 11)  # extended position: no limits on the goal
    host.transact(dynamixel.write(1, 64, b"\x01"), 11)
    assert emu.register(1, "Goal_Position") == -4000  # torque on holds the present position
    host.transact(dynamixel.write(1, 116, (-4500).to_bytes(4, "little", signed=True)), 11)
    assert wait_for(lambda: emu.register(1, "Present_Position") == -4500)
    assert emu.actual_position(1) == pytest.approx(1500, abs=0.5)  # reversed: the actual angle went up


def test_dynamixel_hardware_error_alert_and_reboot(make):
    emu, host = make("dynamixel", {1: "xm430-w350"})
    host.transact(dynamixel.write(1, 64, b"\x01"), 11)
    emu.inject_hardware_error(1, 0x20)  # overload: selected by Shutdown (52) -> torque off
    assert emu.register(1, "Torque_Enable") == 0
    answer = host.transact(dynamixel.read(1, 70, 1), 12)
    assert answer == dynamixel.status_packet(1, 0x80, b"\x20")
    assert host.transact(dynamixel.reboot(1), 11) == dynamixel.status_packet(1, 0x80)  # answered before reboot
    assert host.transact(dynamixel.read(1, 70, 1), 12) == dynamixel.status_packet(1, 0, b"\x00")


def test_dynamixel_bus_watchdog(make):
    emu, host = make("dynamixel", {1: "xm430-w350"})
    host.transact(dynamixel.write(1, 98, b"\x02"), 11)  # 40 ms
    host.transact(dynamixel.write(1, 64, b"\x01"), 11)
    assert wait_for(lambda: emu.register(1, "Bus_Watchdog") == -1, timeout=1.0)
    assert host.transact(dynamixel.write(1, 116, (100).to_bytes(4, "little")), 11) == dynamixel.status_packet(1, 7)
    host.transact(dynamixel.write(1, 98, b"\x00"), 11)
    assert host.transact(dynamixel.write(1, 116, (100).to_bytes(4, "little")), 11) == dynamixel.status_packet(1, 0)


def test_baud_mismatch_gets_no_answer(make):
    emu, host = make("dynamixel", {1: "xm430-w350"}, host_baud=57_600)
    host.send(dynamixel.ping(1))
    assert host.silence() == b""
    assert emu.counts["baud_mismatch"] == 1
    host.ser.baudrate = 1_000_000
    assert len(host.transact(dynamixel.ping(1), 14)) == 14


# ---------------------------------------------------------------- motion


def test_first_order_motion_and_torque_off(make):
    emu, host = make("feetech", {1: "sts3215"}, backend=FirstOrderBackend(tau_s=0.02, max_speed_ticks_s=4000))
    host.transact(feetech.write(1, 40, b"\x01"), 6)
    host.transact(feetech.write(1, 42, (1048).to_bytes(2, "little")), 6)
    time.sleep(0.05)
    velocity = feetech.decode_value(host.transact(feetech.read(1, 58, 2), 8)[5:7],
                                    emu._servos[0].spec.register("Present_Velocity"))
    assert velocity < -100  # moving down: sign-magnitude bit 15
    assert wait_for(lambda: emu.register(1, "Present_Position") == 1048)
    assert wait_for(lambda: emu.register(1, "Moving") == 0)
    host.transact(feetech.write(1, 40, b"\x00"), 6)
    host.transact(feetech.write(1, 42, (3000).to_bytes(2, "little")), 6)
    time.sleep(0.05)
    assert emu.register(1, "Present_Position") == 1048  # not held, not driven: stays


# ---------------------------------------------------------------- vendor SDKs as independent drivers


@pytest.fixture
def patient_sdk(monkeypatch):
    """The SDKs time out after 2 x LATENCY_TIMER (16 ms) + 2 ms and poll the port in a GIL-holding busy loop. On this
    shared 2-core machine a thread is sometimes descheduled for ~100 ms (measured), so the tests give the SDKs a
    longer latency budget (as lerobot patches the Feetech SDK's timeout) and a short GIL switch interval."""
    for module in ("dynamixel_sdk.port_handler", "scservo_sdk.port_handler"):
        monkeypatch.setattr(f"{module}.LATENCY_TIMER", 250, raising=True)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    yield
    sys.setswitchinterval(previous)


def test_dynamixel_sdk_against_emulator(make, patient_sdk):
    dxl = pytest.importorskip("dynamixel_sdk")
    ids = list(range(1, 7))
    emu, _host = make("dynamixel", {i: "xl430-w250" for i in ids},
                      backend=FirstOrderBackend(tau_s=0.01, max_speed_ticks_s=1e5))
    _host.close()
    port = dxl.PortHandler(emu.port)
    packet = dxl.PacketHandler(2.0)
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        assert packet.ping(port, 3) == (1060, dxl.COMM_SUCCESS, 0)
        found, result = packet.broadcastPing(port)
        assert result == dxl.COMM_SUCCESS and sorted(found) == ids and found[1] == [1060, 46]
        # homing offsets -> negative present positions (two's complement)
        for i in ids:
            assert packet.write4ByteTxRx(port, i, 20, (-100 * i) & 0xFFFFFFFF) == (dxl.COMM_SUCCESS, 0)
            assert packet.write1ByteTxRx(port, i, 11, 4) == (dxl.COMM_SUCCESS, 0)  # extended position
        value, result, error = packet.read4ByteTxRx(port, 2, 20)
        assert (result, error) == (dxl.COMM_SUCCESS, 0) and value - (1 << 32) == -200
        for i in ids:
            assert packet.write1ByteTxRx(port, i, 64, 1) == (dxl.COMM_SUCCESS, 0)
        assert packet.write4ByteTxRx(port, 1, 20, 0)[1] == 7  # EEPROM under torque: Access error
        writer = dxl.GroupSyncWrite(port, packet, 116, 4)
        goals = {i: -300 * i for i in ids}
        for i, goal in goals.items():
            assert writer.addParam(i, list(goal.to_bytes(4, "little", signed=True)))
        assert writer.txPacket() == dxl.COMM_SUCCESS
        reader = dxl.GroupSyncRead(port, packet, 132, 4)
        for i in ids:
            assert reader.addParam(i)

        def reached():
            assert reader.txRxPacket() == dxl.COMM_SUCCESS
            got = {i: int.from_bytes(reader.getData(i, 132, 4).to_bytes(4, "little"), "little", signed=True)
                   for i in ids}
            return got == goals

        assert wait_for(reached)
        assert all(emu.register(i, "Present_Position") == goals[i] for i in ids)
    finally:
        port.closePort()


def test_feetech_sdk_against_emulator(make, patient_sdk):
    scs = pytest.importorskip("scservo_sdk")
    ids = list(range(1, 7))
    emu, _host = make("feetech", {i: "sts3215" for i in ids},
                      backend=FirstOrderBackend(tau_s=0.01, max_speed_ticks_s=1e5))
    _host.close()
    port = scs.PortHandler(emu.port)
    packet = scs.PacketHandler(0)
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        assert packet.ping(port, 4) == (777, scs.COMM_SUCCESS, 0)
        value, result, error = packet.read2ByteTxRx(port, 5, 56)
        assert (value, result, error) == (2048, scs.COMM_SUCCESS, 0)
        # homing offsets written the lerobot way (torque off, Lock 0), sign-magnitude bit 11
        for i in ids:
            assert packet.write1ByteTxRx(port, i, 55, 0) == (scs.COMM_SUCCESS, 0)
            assert packet.write2ByteTxRx(port, i, 31, (1 << 11) | (50 * i)) == (scs.COMM_SUCCESS, 0)
        assert emu.register(3, "Homing_Offset") == -150
        value, result, error = packet.read2ByteTxRx(port, 3, 56)
        assert value == 2048 + 150
        for i in ids:
            assert packet.write1ByteTxRx(port, i, 40, 1) == (scs.COMM_SUCCESS, 0)
        writer = scs.GroupSyncWrite(port, packet, 42, 2)
        goals = {i: 1000 + 200 * i for i in ids}
        for i, goal in goals.items():
            assert writer.addParam(i, [goal & 0xFF, goal >> 8])
        assert writer.txPacket() == scs.COMM_SUCCESS
        reader = scs.GroupSyncRead(port, packet, 56, 2)
        for i in ids:
            assert reader.addParam(i)

        def reached():
            if reader.txRxPacket() != scs.COMM_SUCCESS:
                return False
            return {i: reader.getData(i, 56, 2) for i in ids} == goals

        assert wait_for(reached)
        # the servo's actual angle absorbed the homing offset: Actual = Present + Offset
        assert emu.actual_position(2) == pytest.approx(goals[2] - 100, abs=0.5)
    finally:
        port.closePort()


# ---------------------------------------------------------------- faults


def test_fault_injection_counts_and_effects(make):
    emu, host = make("dynamixel", {1: "xm430-w350", 2: "xm430-w350", 3: "xm430-w350"}, seed=7)
    ok = dynamixel.status_packet(1, 0, bytes([1020 & 0xFF, 1020 >> 8, 46]))
    emu.faults = Faults(drop_rate=1.0)
    host.send(dynamixel.ping(1))
    assert host.silence() == b"" and emu.counts["dropped"] == 1
    emu.faults = Faults(corrupt_rate=1.0)
    answer = host.transact(dynamixel.ping(1), 14)
    assert len(answer) == 14 and answer != ok and emu.counts["corrupted"] == 1
    assert sum(a != b for a, b in zip(answer, ok)) == 1
    emu.faults = Faults(partial_rate=1.0)
    host.send(dynamixel.ping(1))
    partial = host.silence()
    assert 0 < len(partial) < 14 and ok.startswith(partial) and emu.counts["partial"] == 1
    emu.faults = Faults(error_rate=1.0, error_bits=0x80)
    assert host.transact(dynamixel.ping(1), 14) == dynamixel.status_packet(1, 0x80, ok[9:12])
    emu.faults = Faults(delay_rate=1.0, delay_s=0.05)
    start = time.perf_counter()
    assert host.transact(dynamixel.ping(1), 14) == ok
    assert time.perf_counter() - start >= 0.05 and emu.counts["delayed"] == 1
    # dead id: a sync read skips it; the others still answer in order
    emu.faults = Faults(dead_ids=frozenset({2}))
    answer = host.transact(dynamixel.sync_read(132, 4, [1, 2, 3]), 30)
    assert [p.motor_id for p in dynamixel.PacketParser("status").feed(answer)] == [1, 3]
    host.send(dynamixel.write(2, 65, b"\x01"))
    assert host.silence() == b"" and emu.register(2, "LED") == 0  # dead servos do not act either
    assert emu.counts["dead"] == 2
    emu.faults = Faults()
    assert host.transact(dynamixel.ping(1), 14) == ok


def test_fault_rates_are_seeded_and_statistical(make):
    def run(seed):
        emu, host = make("feetech", {1: "sts3215"}, seed=seed, faults=Faults(drop_rate=0.3, corrupt_rate=0.2))
        pattern = []
        for k in range(1, 201):
            replies = emu.counts["replies"]
            host.send(feetech.ping(1))
            assert wait_for(lambda k=k: emu.counts["replies"] + emu.counts["dropped"] == k, interval=0.0002)
            pattern.append(host.recv(6) if emu.counts["replies"] > replies else b"")
        return emu, pattern

    emu_a, pattern_a = run(5)
    _, pattern_b = run(5)
    assert pattern_a == pattern_b
    assert 40 <= emu_a.counts["dropped"] <= 80  # 30 % of 200
    assert 20 <= emu_a.counts["corrupted"] <= 45  # 20 % of the 140 sent
    assert sum(p == b"" for p in pattern_a) == emu_a.counts["dropped"]


def test_faults_validation():
    with pytest.raises(ValueError, match="drop_rate"):
        Faults(drop_rate=1.5)
    with pytest.raises(ValueError, match="sts3215"):
        ServoEmulator("dynamixel", {1: "sts3215"})
    with pytest.raises(KeyError, match="unknown servo model"):
        ServoEmulator("feetech", {1: "sts9999"})


# ---------------------------------------------------------------- pacing


def _sync_read_latency(host, request, n_reply, repeats=30):
    return _sync_read_latencies([host], request, n_reply, repeats)[0]


def _sync_read_latencies(hosts, request, n_reply, repeats=30):
    """Median round trip per host, the hosts measured in turn within each repeat so that load on the machine
    falls on all of them alike."""
    samples = [[] for _ in hosts]
    for _ in range(repeats):
        for host, out in zip(hosts, samples, strict=True):
            host.ser.reset_input_buffer()
            start = time.perf_counter()
            host.ser.write(request)
            got = host.recv(n_reply, timeout=0.5)
            out.append(time.perf_counter() - start)
            assert len(got) == n_reply
    return [float(np.median(x)) for x in samples]


def test_pacing_matches_the_wire_budget(make):
    ids = list(range(1, 7))
    request = feetech.sync_read(56, 2, ids)  # 14 bytes out, 6 x 8 = 48 bytes back: 62 bytes = 0.62 ms at 1 Mbps
    emu, host = make("feetech", {i: "sts3215" for i in ids}, pace=True)
    for i in ids:
        emu.set_register(i, "Return_Delay_Time", 0)
    _fast_emu, fast_host = make("feetech", {i: "sts3215" for i in ids}, pace=False)
    paced, unpaced = _sync_read_latencies([host, fast_host], request, 48)
    assert paced >= 0.00062
    assert paced < 0.0045  # wire time + scheduling noise on a busy 2-core machine
    assert unpaced < paced
    # Return_Delay_Time (factory 250 x 2 us per servo) adds 6 x 0.5 ms: why configure() sets it to 0
    for i in ids:
        emu.set_register(i, "Return_Delay_Time", 250)
    assert _sync_read_latency(host, request, 48, repeats=5) >= 0.00062 + 0.003


# ---------------------------------------------------------------- out-of-process emulator (for benchmarks)


def test_emulator_process_serves_the_pty_from_a_child_process():
    import functools

    from robopolicy.real.motors.emulator import EmulatorProcess

    factory = functools.partial(FirstOrderBackend, tau_s=0.005, max_speed_ticks_s=1e6, initial={1: 1500.0})
    with EmulatorProcess("feetech", {1: "sts3215", 2: "sts3215"}, backend_factory=factory, seed=1) as emu:
        host = Host(emu.port)
        try:
            assert host.transact(feetech.ping(2), 6) == feetech.status_packet(2, 0)
            assert emu.register(1, "Present_Position") == 1500
            host.transact(feetech.write(1, 40, b"\x01"), 6)
            host.transact(feetech.write(1, 42, (1700).to_bytes(2, "little")), 6)
            assert wait_for(lambda: emu.register(1, "Present_Position") == 1700)
            assert emu.actual_position(1) == pytest.approx(1700, abs=0.5)
            emu.set_register(2, "Homing_Offset", -10)
            assert emu.register(2, "Present_Position") == 2058
            emu.faults = Faults(drop_rate=1.0)
            host.send(feetech.ping(2))
            assert host.silence() == b""
            assert emu.counts["dropped"] == 1 and emu.faults.drop_rate == 1.0
            with pytest.raises(RuntimeError, match="no emulated servo with id 9"):
                emu.register(9, "ID")
            assert emu.errors == []
        finally:
            host.close()
    assert emu.port is None


def test_emulator_process_reports_start_failures():
    from robopolicy.real.motors.emulator import EmulatorProcess

    with pytest.raises(RuntimeError, match="unknown servo model"):
        EmulatorProcess("feetech", {1: "sts9999"}).start()
    with pytest.raises(ValueError, match="backend_factory"):
        EmulatorProcess("feetech", {1: "sts3215"}, backend=FirstOrderBackend())
