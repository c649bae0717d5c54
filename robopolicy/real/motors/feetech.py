"""Feetech STS/SMS (lerobot "protocol 0") codec: frames, checksum, incremental parser, sign-magnitude values.

Frame: ``FF FF | ID | LEN | INST | params | CHK`` with LEN = params + 2 and CHK = ~(ID + LEN + INST + params) & 0xFF.
Status packets carry the status byte where the instruction goes. No CRC, no stuffing: resync on the next
``FF FF``. Multi-byte values are little-endian (STS/SMS). See hardware.md section 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum

from robopolicy.real.motors.packet import FrameParserBase, Packet
from robopolicy.real.motors.tables import Register

__all__ = [
    "BROADCAST_ID",
    "HEADER",
    "MAX_ID",
    "STATUS",
    "Instruction",
    "Packet",
    "PacketParser",
    "checksum",
    "decode_value",
    "encode_value",
    "error_words",
    "instruction_packet",
    "ping",
    "read",
    "status_length",
    "status_packet",
    "sync_read",
    "sync_write",
    "write",
]

HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE
MAX_ID = 253
STATUS = None  # Feetech status packets have no instruction byte: the status byte sits in its place
MAX_PACKET_LENGTH = 250  # whole frame, as in the vendor SDK (TXPACKET_MAX_LEN / RXPACKET_MAX_LEN)


class Instruction(IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    FACTORY_RESET = 0x06  # restore defaults, keeps the ID
    REBOOT = 0x08
    BACKUP = 0x09
    RESET = 0x0A  # reset the multi-turn count
    CALIBRATE = 0x0B  # current position becomes 2048 (STS >= 3.10)
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83


STATUS_BITS = {
    0: "input voltage error",
    1: "magnetic encoder (angle sensor) error",
    2: "overheating",
    3: "overcurrent",
    5: "overload",
    6: "instruction error (bit 6 in the SCS map; e.g. an EEPROM write refused while torque is on)",
}


def checksum(data: bytes) -> int:
    """``~sum(data) & 0xFF`` over ID, LEN, INST/status and params."""
    return ~sum(data) & 0xFF


def _check_id(motor_id: int, *, broadcast_ok: bool = True) -> None:
    if not (0 <= motor_id <= MAX_ID or (broadcast_ok and motor_id == BROADCAST_ID)):
        raise ValueError(f"Feetech id must be 0..{MAX_ID} (or {BROADCAST_ID} broadcast), got {motor_id}")


def _frame(motor_id: int, first: int, params: bytes) -> bytes:
    length = len(params) + 2
    if length + 4 > MAX_PACKET_LENGTH:
        raise ValueError(f"Feetech packet too long ({length + 4} bytes; at most {MAX_PACKET_LENGTH})")
    body = bytes((motor_id, length, first)) + bytes(params)
    return HEADER + body + bytes((checksum(body),))


def instruction_packet(motor_id: int, instruction: int, params: bytes = b"") -> bytes:
    """The full frame of an instruction packet."""
    _check_id(motor_id)
    return _frame(motor_id, instruction, params)


def status_packet(motor_id: int, error: int, params: bytes = b"") -> bytes:
    """The full frame of a status packet, as a servo sends it (``error`` = status byte)."""
    _check_id(motor_id, broadcast_ok=False)
    return _frame(motor_id, error & 0xFF, params)


def status_length(n_params: int) -> int:
    """Bytes of a status packet with ``n_params`` data bytes."""
    return 6 + n_params


def _byte(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"Feetech {name} must fit one byte (0..255), got {value}")
    return value


def ping(motor_id: int) -> bytes:
    return instruction_packet(motor_id, Instruction.PING)


def read(motor_id: int, address: int, size: int) -> bytes:
    _check_id(motor_id, broadcast_ok=False)
    return instruction_packet(motor_id, Instruction.READ, bytes((_byte("address", address), _byte("size", size))))


def write(motor_id: int, address: int, data: bytes) -> bytes:
    return instruction_packet(motor_id, Instruction.WRITE, bytes((_byte("address", address),)) + bytes(data))


def reg_write(motor_id: int, address: int, data: bytes) -> bytes:
    return instruction_packet(motor_id, Instruction.REG_WRITE, bytes((_byte("address", address),)) + bytes(data))


def action(motor_id: int = BROADCAST_ID) -> bytes:
    return instruction_packet(motor_id, Instruction.ACTION)


def reset(motor_id: int) -> bytes:
    return instruction_packet(motor_id, Instruction.RESET)


def reboot(motor_id: int) -> bytes:
    return instruction_packet(motor_id, Instruction.REBOOT)


def sync_read(address: int, size: int, ids: Iterable[int]) -> bytes:
    ids = list(ids)
    for motor_id in ids:
        _check_id(motor_id, broadcast_ok=False)
    params = bytes((_byte("address", address), _byte("size", size))) + bytes(ids)
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_READ, params)


def sync_write(address: int, size: int, data_by_id: Mapping[int, bytes]) -> bytes:
    params = bytearray((_byte("address", address), _byte("size", size)))
    for motor_id, data in data_by_id.items():
        _check_id(motor_id, broadcast_ok=False)
        if len(data) != size:
            raise ValueError(f"sync_write data for id {motor_id} has {len(data)} bytes, expected {size}")
        params.append(motor_id)
        params += data
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))


class PacketParser(FrameParserBase):
    """Incremental frame parser.

    ``feed()`` takes arbitrary byte chunks (split or merged frames, garbage) and returns the complete,
    checksum-valid packets in order. A frame with a bad checksum or impossible length is counted in ``corrupt``
    and parsing resumes one byte after its header. Feetech frames do not say whether they are instructions or
    status replies, so ``kind`` decides: "status" (host side: byte 4 is the status byte) or "instruction"
    (servo side: byte 4 is the instruction).
    """

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        while True:
            start = buf.find(HEADER)
            if start < 0:
                keep = 1 if buf[-1:] == b"\xff" else 0
                self.garbage_bytes += len(buf) - keep
                del buf[: len(buf) - keep]
                return packets
            # FF FF FF ... : the header is the last two FFs (an id is never 0xFF)
            while start + 2 < len(buf) and buf[start + 2] == 0xFF:
                start += 1
            if start:
                self.garbage_bytes += start
                del buf[:start]
            if len(buf) < 4:
                return packets
            length = buf[3]
            if length < 2 or length + 4 > MAX_PACKET_LENGTH:
                self.corrupt += 1
                del buf[:1]
                continue
            total = 4 + length
            if len(buf) < total:
                return packets
            if checksum(buf[2 : total - 1]) != buf[total - 1]:
                self.corrupt += 1
                del buf[:1]
                continue
            motor_id, first, params = buf[2], buf[4], bytes(buf[5 : total - 1])
            del buf[:total]
            if self.kind == "status":
                packets.append(Packet(motor_id, None, first, params))
            else:
                packets.append(Packet(motor_id, first, None, params))


def encode_value(value: int, register: Register) -> bytes:
    """Little-endian bytes of ``value``; sign-magnitude at ``register.sign_bit`` if it has one."""
    value = register.check(value)
    raw = value
    if register.sign_bit is not None and value < 0:
        raw = (1 << register.sign_bit) | -value
    return raw.to_bytes(register.size, "little")


def decode_value(data: bytes, register: Register) -> int:
    """The integer stored in ``data``; sign-magnitude at ``register.sign_bit`` if it has one."""
    if len(data) != register.size:
        raise ValueError(f"register @{register.address} has {register.size} bytes, got {len(data)}")
    raw = int.from_bytes(data, "little")
    if register.sign_bit is None:
        return raw
    magnitude = raw & ((1 << register.sign_bit) - 1)
    return -magnitude if raw >> register.sign_bit & 1 else magnitude


def error_words(error: int) -> list[str]:
    """The status byte (also register 65 Status) in words."""
    return [name for bit, name in STATUS_BITS.items() if error & (1 << bit)] + [
        f"unknown status bit {bit}" for bit in range(8) if error & (1 << bit) and bit not in STATUS_BITS
    ]
