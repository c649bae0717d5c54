"""Feetech STS (protocol 0) codec against every vector in hardware.md section 2, byte for byte."""

from __future__ import annotations

import random

import pytest

from robopolicy.real.motors import feetech as ft
from robopolicy.real.motors.packet import Packet
from robopolicy.real.motors.tables import model_spec

REG = model_spec("sts3215").registers


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


def goal_pos_time_speed(position: int, time: int, speed: int) -> bytes:
    return (
        ft.encode_value(position, REG["Goal_Position"])
        + ft.encode_value(time, REG["Goal_Time"])
        + ft.encode_value(speed, REG["Goal_Velocity"])
    )


INSTRUCTION_VECTORS = [
    (lambda: ft.ping(1), "FF FF 01 02 01 FB"),
    (lambda: ft.read(1, 0x38, 2), "FF FF 01 04 02 38 02 BE"),
    (lambda: ft.write(1, 0x2A, goal_pos_time_speed(2048, 0, 1000)), "FF FF 01 09 03 2A 00 08 00 00 E8 03 D5"),
    (lambda: ft.action(), "FF FF FE 02 05 FA"),
    (
        lambda: ft.sync_write(0x2A, 6, {i: goal_pos_time_speed(2048, 0, 1000) for i in (1, 2, 3, 4)}),
        "FF FF FE 20 83 2A 06 01 00 08 00 00 E8 03 02 00 08 00 00 E8 03 03 00 08 00 00 E8 03 04 00 08 00 00 E8 03 58",
    ),
    (lambda: ft.reset(1), "FF FF 01 02 0A F2"),
    # derived [D]
    (lambda: ft.write(1, 40, bytes([1])), "FF FF 01 04 03 28 01 CE"),
    (lambda: ft.sync_read(56, 2, range(1, 7)), "FF FF FE 0A 82 38 02 01 02 03 04 05 06 26"),
    (
        lambda: ft.sync_write(42, 2, {i: ft.encode_value(2048, REG["Goal_Position"]) for i in range(1, 7)}),
        "FF FF FE 16 83 2A 02 01 00 08 02 00 08 03 00 08 04 00 08 05 00 08 06 00 08 F7",
    ),
]


@pytest.mark.parametrize(("build", "expected"), INSTRUCTION_VECTORS)
def test_instruction_vectors(build, expected):
    frame = build()
    assert frame == hx(expected)
    (packet,) = ft.PacketParser("instruction").feed(frame)
    assert (packet.motor_id, packet.instruction, packet.error) == (frame[2], frame[4], None)
    assert packet.params == frame[5:-1]


STATUS_VECTORS = [
    (1, 0, b"", "FF FF 01 02 00 FC"),
    (1, 0, hx("18 05"), "FF FF 01 04 00 18 05 DD"),
    (1, 0, hx("00 08"), "FF FF 01 04 00 00 08 F2"),
]


@pytest.mark.parametrize(("motor_id", "error", "params", "expected"), STATUS_VECTORS)
def test_status_vectors(motor_id, error, params, expected):
    frame = ft.status_packet(motor_id, error, params)
    assert frame == hx(expected)
    (packet,) = ft.PacketParser("status").feed(frame)
    assert packet == Packet(motor_id, None, error, params)


def test_read_reply_values():
    (packet,) = ft.PacketParser("status").feed(hx("FF FF 01 04 00 18 05 DD"))
    assert ft.decode_value(packet.params, REG["Present_Position"]) == 1304
    (packet,) = ft.PacketParser("status").feed(hx("FF FF 01 04 00 00 08 F2"))
    assert ft.decode_value(packet.params, REG["Present_Position"]) == 2048


def test_sign_magnitude_examples():
    assert ft.encode_value(-709, REG["Homing_Offset"]) == (0x0AC5).to_bytes(2, "little")
    assert ft.decode_value((0x0AC5).to_bytes(2, "little"), REG["Homing_Offset"]) == -709
    assert ft.encode_value(-100, REG["Goal_Velocity"]) == (0x8064).to_bytes(2, "little")
    assert ft.decode_value((0x8064).to_bytes(2, "little"), REG["Present_Velocity"]) == -100
    assert ft.encode_value(-100, REG["Present_Position"]) == (0x8064).to_bytes(2, "little")
    # load: bit 10
    assert ft.decode_value((0x0400 | 300).to_bytes(2, "little"), REG["Present_Load"]) == -300
    # ranges: homing +-2047, position +-32767
    assert ft.encode_value(2047, REG["Homing_Offset"]) == (2047).to_bytes(2, "little")
    with pytest.raises(ValueError, match="does not fit"):
        ft.encode_value(-2048, REG["Homing_Offset"])
    with pytest.raises(ValueError, match="does not fit"):
        ft.encode_value(-1, REG["Min_Position_Limit"])
    for value in (0, 1, -1, 4095, -4095, 32767, -32767):
        assert ft.decode_value(ft.encode_value(value, REG["Goal_Position"]), REG["Goal_Position"]) == value
    # negative zero decodes to 0
    assert ft.decode_value((0x8000).to_bytes(2, "little"), REG["Present_Position"]) == 0


def test_parser_split_merged_garbage_and_bad_checksum():
    frames = [ft.status_packet(i, 0, ft.encode_value(100 * i, REG["Present_Position"])) for i in range(1, 7)]
    bad = bytearray(frames[1])
    bad[5] ^= 0x10
    stream = b"\x12\xff\x00" + frames[0] + bytes(bad) + b"\xff" + frames[2] + frames[3] + b"\xfe\xfe"
    stream += frames[4] + frames[5]
    rng = random.Random(1)
    for _ in range(20):
        parser = ft.PacketParser("status")
        got = []
        i = 0
        while i < len(stream):
            n = rng.randint(1, 7)
            got += parser.feed(stream[i : i + n])
            i += n
        assert [p.motor_id for p in got] == [1, 3, 4, 5, 6]
        assert [ft.decode_value(p.params, REG["Present_Position"]) for p in got] == [100, 300, 400, 500, 600]
        assert parser.corrupt == 1
        assert parser.pending == 0


def test_parser_extra_ff_before_header():
    parser = ft.PacketParser("status")
    assert parser.feed(b"\xff\xff\xff" + hx("01 02 00 FC")) == [Packet(1, None, 0, b"")]


def test_parser_truncated_then_good():
    good = ft.status_packet(2, 0, hx("00 08"))
    parser = ft.PacketParser("status")
    got = parser.feed(ft.status_packet(1, 0, hx("00 08"))[:5] + good)
    assert [p.motor_id for p in got] == [2]
    assert parser.corrupt >= 1


def test_status_words():
    assert ft.error_words(0) == []
    assert ft.error_words(0b100101) == ["input voltage error", "overheating", "overload"]
    assert ft.error_words(0b10) == ["magnetic encoder (angle sensor) error"]


def test_builders_reject_bad_input():
    with pytest.raises(ValueError, match="id must be"):
        ft.ping(255)
    with pytest.raises(ValueError, match="one byte"):
        ft.read(1, 300, 2)
    with pytest.raises(ValueError, match="too long"):
        ft.write(1, 0, bytes(250))
