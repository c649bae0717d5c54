"""Dynamixel Protocol 2.0 codec against every vector in hardware.md section 1, byte for byte."""

from __future__ import annotations

import random

import pytest

from robopolicy.real.motors import dynamixel as dxl
from robopolicy.real.motors.packet import Packet
from robopolicy.real.motors.tables import model_spec

REG = model_spec("xm430-w350").registers


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


def test_crc_check_value_and_table():
    assert dxl.checksum(b"123456789") == 0xFEE8
    assert dxl._CRC_TABLE[:4] == (0x0000, 0x8005, 0x800F, 0x000A)


# (builder output, expected bytes) for every instruction vector of hardware.md section 1
INSTRUCTION_VECTORS = [
    (lambda: dxl.ping(1), "FF FF FD 00 01 03 00 01 19 4E"),
    (lambda: dxl.ping(dxl.BROADCAST_ID), "FF FF FD 00 FE 03 00 01 31 42"),
    (lambda: dxl.read(1, 132, 4), "FF FF FD 00 01 07 00 02 84 00 04 00 1D 15"),
    (
        lambda: dxl.write(1, 116, dxl.encode_value(512, REG["Goal_Position"])),
        "FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89",
    ),
    (lambda: dxl.reg_write(1, 104, (200).to_bytes(4, "little")), "FF FF FD 00 01 09 00 04 68 00 C8 00 00 00 AE 8E"),
    (lambda: dxl.action(1), "FF FF FD 00 01 03 00 05 02 CE"),
    (lambda: dxl.reboot(1), "FF FF FD 00 01 03 00 08 2F 4E"),
    (lambda: dxl.factory_reset(1, 0x01), "FF FF FD 00 01 04 00 06 01 A1 E6"),
    (lambda: dxl.sync_read(132, 4, [1, 2]), "FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"),
    (
        lambda: dxl.sync_write(116, 4, {1: (150).to_bytes(4, "little"), 2: (170).to_bytes(4, "little")}),
        "FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87",
    ),
    (lambda: dxl.bulk_read([(1, 144, 2), (2, 146, 1)]), "FF FF FD 00 FE 0D 00 92 01 90 00 02 00 02 92 00 01 00 1A 05"),
    (
        lambda: dxl.bulk_write([(1, 32, (160).to_bytes(2, "little")), (2, 31, bytes([80]))]),
        "FF FF FD 00 FE 10 00 93 01 20 00 02 00 A0 00 02 1F 00 01 00 50 B7 68",
    ),
    # derived [D]
    (lambda: dxl.write(1, 64, bytes([1])), "FF FF FD 00 01 06 00 03 40 00 01 DB 66"),
    (lambda: dxl.sync_read(132, 4, range(1, 7)), "FF FF FD 00 FE 0D 00 82 84 00 04 00 01 02 03 04 05 06 B2 9B"),
    (lambda: dxl.write(1, 116, hx("FF FF FD 00")), "FF FF FD 00 01 0A 00 03 74 00 FF FF FD FD 00 21 E7"),
]


@pytest.mark.parametrize(("build", "expected"), INSTRUCTION_VECTORS)
def test_instruction_vectors(build, expected):
    frame = build()
    assert frame == hx(expected)
    # and the servo-side parser reads it back
    (packet,) = dxl.PacketParser("instruction").feed(frame)
    assert packet.motor_id == frame[4]
    assert packet.instruction == frame[7]
    assert packet.error is None


STATUS_VECTORS = [
    # (id, error, params, expected)
    (1, 0, hx("06 04 26"), "FF FF FD 00 01 07 00 55 00 06 04 26 65 5D"),  # PING reply XM430-W210, model 1030 fw 38
    (2, 0, hx("06 04 26"), "FF FF FD 00 02 07 00 55 00 06 04 26 6F 6D"),  # broadcast ping, id 2
    (1, 0, (166).to_bytes(4, "little"), "FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"),
    (1, 0, b"", "FF FF FD 00 01 04 00 55 00 A1 0C"),
    (2, 0, (2079).to_bytes(4, "little"), "FF FF FD 00 02 08 00 55 00 1F 08 00 00 BA BE"),
]


@pytest.mark.parametrize(("motor_id", "error", "params", "expected"), STATUS_VECTORS)
def test_status_vectors(motor_id, error, params, expected):
    frame = dxl.status_packet(motor_id, error, params)
    assert frame == hx(expected)
    (packet,) = dxl.PacketParser("status").feed(frame)
    assert packet == Packet(motor_id, None, error, params)


def test_ping_reply_decodes_model_and_firmware():
    (packet,) = dxl.PacketParser("status").feed(hx("FF FF FD 00 01 07 00 55 00 06 04 26 65 5D"))
    assert int.from_bytes(packet.params[:2], "little") == 1030
    assert packet.params[2] == 38
    (packet,) = dxl.PacketParser("status").feed(hx("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"))
    assert dxl.decode_value(packet.params, REG["Present_Position"]) == 166


def test_stuffing_round_trip_on_rx():
    frame = dxl.write(1, 116, hx("FF FF FD 00"))
    (packet,) = dxl.PacketParser("instruction").feed(frame)
    assert packet.params == hx("74 00 FF FF FD 00")  # the stuffed FD is gone
    # status with a stuffed value: -196609 = 0xFFFDFFFF -> bytes FF FF FD FF
    data = hx("00 FF FF FD")
    frame = dxl.status_packet(3, 0, data)
    assert hx("FF FF FD FD") in frame
    (packet,) = dxl.PacketParser("status").feed(frame)
    assert packet.params == data


@pytest.mark.parametrize("payload", [b"", hx("FF FF FD"), hx("FF FF FD FD"), hx("FF FF FF FD FF FF FD 01"), hx("FD")])
def test_stuff_unstuff_inverse(payload):
    assert dxl.unstuff(dxl.stuff(payload)) == payload


def test_parser_split_merged_garbage_and_bad_crc():
    frames = [dxl.status_packet(i, 0, (1000 * i).to_bytes(4, "little")) for i in range(1, 7)]
    bad = bytearray(frames[2])
    bad[-3] ^= 0x01  # flip a data bit: CRC fails
    stream = b"\x00\x13\xff\xfd" + frames[0] + frames[1] + bytes(bad) + b"\xff\xff" + frames[3] + frames[4] + frames[5]
    rng = random.Random(0)
    for _ in range(20):
        parser = dxl.PacketParser("status")
        got = []
        i = 0
        while i < len(stream):
            n = rng.randint(1, 9)
            got += parser.feed(stream[i : i + n])
            i += n
        assert [p.motor_id for p in got] == [1, 2, 4, 5, 6]
        assert [dxl.decode_value(p.params, REG["Present_Position"]) for p in got] == [1000, 2000, 4000, 5000, 6000]
        assert parser.corrupt == 1
        assert parser.pending == 0


def test_parser_resyncs_inside_a_truncated_frame():
    """A truncated frame followed by a good one: the good one is found after the bad CRC of the merged bytes."""
    good = dxl.status_packet(2, 0, (7).to_bytes(4, "little"))
    truncated = dxl.status_packet(1, 0, (5).to_bytes(4, "little"))[:9]
    parser = dxl.PacketParser("status")
    got = parser.feed(truncated + good)
    assert [p.motor_id for p in got] == [2]
    assert parser.corrupt >= 1


def test_parser_kind_filters_echo():
    host = dxl.PacketParser("status")
    assert host.feed(dxl.ping(1) + dxl.status_packet(1, 0, hx("06 04 26"))) == [Packet(1, None, 0, hx("06 04 26"))]
    assert host.ignored == 1
    servo = dxl.PacketParser("instruction")
    assert servo.feed(dxl.status_packet(1, 0) + dxl.ping(3)) == [Packet(3, dxl.Instruction.PING, None, b"")]
    with pytest.raises(ValueError, match="parser kind"):
        dxl.PacketParser("host")


def test_twos_complement_values():
    reg = REG["Present_Position"]
    assert dxl.encode_value(-1, reg) == hx("FF FF FF FF")
    assert dxl.decode_value(hx("FF FF FF FF"), reg) == -1
    assert dxl.encode_value(-709, REG["Homing_Offset"]) == (-709).to_bytes(4, "little", signed=True)
    for value in (0, 1, 2047, 4095, -4096, 2**31 - 1, -(2**31)):
        assert dxl.decode_value(dxl.encode_value(value, reg), reg) == value
    assert dxl.decode_value(hx("FF FF"), REG["Model_Number"]) == 65535  # unsigned
    with pytest.raises(ValueError, match="does not fit"):
        dxl.encode_value(256, REG["Torque_Enable"])
    with pytest.raises(ValueError, match="does not fit"):
        dxl.encode_value(-1, REG["Torque_Enable"])


def test_error_words():
    assert dxl.error_words(0) == []
    assert "access error" in dxl.error_words(7)[0]
    words = dxl.error_words(0x80 | 4)
    assert words[0] == "data range error" and "hardware alert" in words[1]
    assert dxl.hardware_error_words(0b100100) == ["overheating", "overload"]


def test_builders_reject_bad_ids_and_sizes():
    with pytest.raises(ValueError, match="id must be"):
        dxl.ping(253)
    with pytest.raises(ValueError, match="expected 4"):
        dxl.sync_write(116, 4, {1: b"\x00\x00"})
