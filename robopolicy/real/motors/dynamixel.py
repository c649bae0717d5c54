"""Dynamixel Protocol 2.0 codec: frames, CRC-16/BUYPASS, byte stuffing, incremental parser, value encoding.

Frame: ``FF FF FD 00 | ID | LEN_L LEN_H | INST | params | CRC_L CRC_H``; LEN counts INST..CRC (after stuffing).
Status packets carry INST = 0x55 followed by the error byte. See hardware.md section 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    "hardware_error_words",
    "instruction_packet",
    "ping",
    "read",
    "status_length",
    "status_packet",
    "stuff",
    "sync_read",
    "sync_write",
    "unstuff",
    "write",
]

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
MAX_ID = 252
STATUS = 0x55  # the instruction byte of a status packet
MAX_PACKET_LENGTH = 1024  # LEN values above this are treated as corrupt (the SDK's RXPACKET_MAX_LEN)
ALERT_BIT = 0x80


class Instruction(IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    FACTORY_RESET = 0x06
    REBOOT = 0x08
    CLEAR = 0x10
    CONTROL_TABLE_BACKUP = 0x20
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83
    FAST_SYNC_READ = 0x8A
    BULK_READ = 0x92
    BULK_WRITE = 0x93
    FAST_BULK_READ = 0x9A


ERROR_NUMBERS = {
    1: "result fail",
    2: "instruction error",
    3: "CRC error",
    4: "data range error",
    5: "data length error",
    6: "data limit error",
    7: "access error (read-only/undefined address, or an EEPROM write while torque is on)",
}
HARDWARE_ERROR_BITS = {
    0: "input voltage error",
    2: "overheating",
    3: "motor encoder error",
    4: "electrical shock",
    5: "overload",
}


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def checksum(data: bytes) -> int:
    """CRC-16/BUYPASS (poly 0x8005, init 0, MSB first) of ``data`` (header..last param, as sent)."""
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) ^ table[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Insert an extra 0xFD after every ``FF FF FD`` in ``payload`` (the INST..params region)."""
    if b"\xff\xff\xfd" not in payload:
        return bytes(payload)
    out = bytearray()
    for byte in payload:
        out.append(byte)
        if byte == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    """Drop the 0xFD that follows every ``FF FF FD`` in a received INST..params region."""
    if b"\xff\xff\xfd\xfd" not in payload:
        return bytes(payload)
    out = bytearray()
    i = 0
    n = len(payload)
    while i < n:
        out.append(payload[i])
        stuffed = payload[i] == 0xFD and i >= 2 and payload[i - 2] == 0xFF and payload[i - 1] == 0xFF
        if stuffed and i + 1 < n and payload[i + 1] == 0xFD:
            i += 1  # skip the stuffed byte
        i += 1
    return bytes(out)


def _check_id(motor_id: int, *, broadcast_ok: bool = True) -> None:
    if not (0 <= motor_id <= MAX_ID or (broadcast_ok and motor_id == BROADCAST_ID)):
        raise ValueError(f"Dynamixel id must be 0..{MAX_ID} (or {BROADCAST_ID} broadcast), got {motor_id}")


def _frame(motor_id: int, body: bytes) -> bytes:
    """HEADER + ID + LEN + stuffed body + CRC."""
    body = stuff(body)
    length = len(body) + 2
    if length > 0xFFFF:
        raise ValueError(f"Dynamixel packet too long ({length} bytes after the LEN field)")
    head = HEADER + bytes((motor_id, length & 0xFF, length >> 8))
    crc = checksum(head + body)
    return head + body + bytes((crc & 0xFF, crc >> 8))


def instruction_packet(motor_id: int, instruction: int, params: bytes = b"") -> bytes:
    """The full (stuffed) frame of an instruction packet."""
    _check_id(motor_id)
    if instruction == STATUS:
        raise ValueError("0x55 is the status instruction; build status packets with status_packet()")
    return _frame(motor_id, bytes((instruction,)) + bytes(params))


def status_packet(motor_id: int, error: int, params: bytes = b"") -> bytes:
    """The full (stuffed) frame of a status packet, as a servo sends it."""
    _check_id(motor_id, broadcast_ok=False)
    return _frame(motor_id, bytes((STATUS, error & 0xFF)) + bytes(params))


def status_length(n_params: int) -> int:
    """Bytes of a status packet with ``n_params`` data bytes (without stuffing)."""
    return 11 + n_params


def _u16(value: int) -> bytes:
    return bytes((value & 0xFF, (value >> 8) & 0xFF))


def ping(motor_id: int) -> bytes:
    return instruction_packet(motor_id, Instruction.PING)


def read(motor_id: int, address: int, size: int) -> bytes:
    _check_id(motor_id, broadcast_ok=False)
    return instruction_packet(motor_id, Instruction.READ, _u16(address) + _u16(size))


def write(motor_id: int, address: int, data: bytes) -> bytes:
    return instruction_packet(motor_id, Instruction.WRITE, _u16(address) + bytes(data))


def reg_write(motor_id: int, address: int, data: bytes) -> bytes:
    return instruction_packet(motor_id, Instruction.REG_WRITE, _u16(address) + bytes(data))


def action(motor_id: int = BROADCAST_ID) -> bytes:
    return instruction_packet(motor_id, Instruction.ACTION)


def reboot(motor_id: int) -> bytes:
    return instruction_packet(motor_id, Instruction.REBOOT)


def factory_reset(motor_id: int, mode: int = 0x02) -> bytes:
    """mode 0xFF resets everything, 0x01 keeps the ID, 0x02 keeps ID and baud rate."""
    return instruction_packet(motor_id, Instruction.FACTORY_RESET, bytes((mode,)))


def sync_read(address: int, size: int, ids: Iterable[int]) -> bytes:
    ids = list(ids)
    for motor_id in ids:
        _check_id(motor_id, broadcast_ok=False)
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_READ, _u16(address) + _u16(size) + bytes(ids))


def sync_write(address: int, size: int, data_by_id: Mapping[int, bytes]) -> bytes:
    params = bytearray(_u16(address) + _u16(size))
    for motor_id, data in data_by_id.items():
        _check_id(motor_id, broadcast_ok=False)
        if len(data) != size:
            raise ValueError(f"sync_write data for id {motor_id} has {len(data)} bytes, expected {size}")
        params.append(motor_id)
        params += data
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))


def bulk_read(items: Sequence[tuple[int, int, int]]) -> bytes:
    """items: (id, address, size) per motor, each id once."""
    params = bytearray()
    for motor_id, address, size in items:
        _check_id(motor_id, broadcast_ok=False)
        params += bytes((motor_id,)) + _u16(address) + _u16(size)
    return instruction_packet(BROADCAST_ID, Instruction.BULK_READ, bytes(params))


def bulk_write(items: Sequence[tuple[int, int, bytes]]) -> bytes:
    """items: (id, address, data) per motor, each id once."""
    params = bytearray()
    for motor_id, address, data in items:
        _check_id(motor_id, broadcast_ok=False)
        params += bytes((motor_id,)) + _u16(address) + _u16(len(data)) + bytes(data)
    return instruction_packet(BROADCAST_ID, Instruction.BULK_WRITE, bytes(params))


class PacketParser(FrameParserBase):
    """Incremental frame parser.

    ``feed()`` takes arbitrary byte chunks (split or merged frames, garbage, stuffed data) and returns the complete,
    CRC-valid packets in order. A frame with a bad CRC or impossible length is counted in ``corrupt`` and parsing
    resumes one byte after its header. ``kind`` = "status" (host side: keeps status packets) or "instruction"
    (servo side: keeps instruction packets); frames of the other kind are counted in ``ignored``.
    """

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        while True:
            start = buf.find(HEADER)
            if start < 0:
                # keep a possible header prefix at the end
                keep = 0
                for k in (3, 2, 1):
                    if len(buf) >= k and buf[-k:] == HEADER[:k]:
                        keep = k
                        break
                self.garbage_bytes += len(buf) - keep
                del buf[: len(buf) - keep]
                return packets
            if start:
                self.garbage_bytes += start
                del buf[:start]
            if len(buf) < 7:
                return packets
            length = buf[5] | (buf[6] << 8)
            if length < 3 or length > MAX_PACKET_LENGTH or buf[4] == 0xFF or buf[4] == 0xFD:
                self.corrupt += 1
                del buf[:1]
                continue
            total = 7 + length
            if len(buf) < total:
                return packets
            received = (buf[total - 2]) | (buf[total - 1] << 8)
            if checksum(buf[: total - 2]) != received:
                self.corrupt += 1
                del buf[:1]
                continue
            motor_id = buf[4]
            body = unstuff(bytes(buf[7 : total - 2]))
            del buf[:total]
            packet = self._packet(motor_id, body)
            if packet is not None:
                packets.append(packet)

    def _packet(self, motor_id: int, body: bytes) -> Packet | None:
        instruction = body[0]
        if instruction == STATUS:
            if self.kind != "status" or len(body) < 2:
                self.ignored += 1
                return None
            return Packet(motor_id, None, body[1], body[2:])
        if self.kind != "instruction":
            self.ignored += 1  # e.g. our own instruction echoed by a half-duplex adapter
            return None
        return Packet(motor_id, instruction, None, body[1:])


def encode_value(value: int, register: Register) -> bytes:
    """Little-endian bytes of ``value`` for ``register`` (two's complement if ``register.signed``)."""
    value = register.check(value)
    return value.to_bytes(register.size, "little", signed=register.signed)


def decode_value(data: bytes, register: Register) -> int:
    """The integer stored in ``data`` (little-endian, ``register.size`` bytes)."""
    if len(data) != register.size:
        raise ValueError(f"register @{register.address} has {register.size} bytes, got {len(data)}")
    return int.from_bytes(data, "little", signed=register.signed)


def error_words(error: int) -> list[str]:
    """The status error byte in words: the error number (bits 0-6) and the Alert bit (7)."""
    words = []
    number = error & 0x7F
    if number:
        words.append(ERROR_NUMBERS.get(number, f"unknown error number {number}"))
    if error & ALERT_BIT:
        words.append("hardware alert (read Hardware_Error_Status @70 for the cause; recovery needs a REBOOT)")
    return words


def hardware_error_words(status: int) -> list[str]:
    """Hardware_Error_Status (address 70) bits in words."""
    return [name for bit, name in HARDWARE_ERROR_BITS.items() if status & (1 << bit)] + [
        f"unknown bit {bit}" for bit in range(8) if status & (1 << bit) and bit not in HARDWARE_ERROR_BITS
    ]
