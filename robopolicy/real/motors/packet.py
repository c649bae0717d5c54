"""The decoded packet both codecs (dynamixel.py, feetech.py) return."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Packet:
    """One checksum-valid frame.

    Instruction packets have ``instruction`` set and ``error`` None; status packets (what a servo sends) have
    ``instruction`` None and ``error`` the status/error byte. ``params`` are the parameter bytes (Dynamixel:
    unstuffed; status packets: the data after the error byte).
    """

    motor_id: int
    instruction: int | None
    error: int | None
    params: bytes


PARSER_KINDS = ("status", "instruction")


def check_parser_kind(kind: str) -> str:
    if kind not in PARSER_KINDS:
        raise ValueError(f"parser kind must be 'status' (host side) or 'instruction' (servo side), got {kind!r}")
    return kind
