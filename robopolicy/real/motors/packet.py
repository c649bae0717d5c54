"""What both codecs (dynamixel.py, feetech.py) share: the decoded packet and the parser's bookkeeping."""

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


class FrameParserBase:
    """State of an incremental parser: the byte buffer and its counters. ``kind`` = "status" (host side: keeps
    status packets) or "instruction" (servo side); subclasses implement ``feed(data) -> list[Packet]``."""

    def __init__(self, kind: str) -> None:
        if kind not in PARSER_KINDS:
            raise ValueError(f"parser kind must be 'status' (host side) or 'instruction' (servo side), got {kind!r}")
        self.kind = kind
        self.corrupt = 0  # frames dropped for a bad checksum or an impossible length
        self.ignored = 0  # valid frames of the other kind
        self.garbage_bytes = 0  # bytes skipped while looking for a header
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet consumed (a partial frame)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop any buffered partial frame (e.g. before a new transaction)."""
        self._buf.clear()
