"""Serial transport for a servo bus: pyserial opens and configures the port (raw 8N1 at the baud rate), reads wait
on the file descriptor until a deadline (``time.perf_counter`` seconds), so no per-call termios reconfiguration.

The path can be a real adapter (/dev/ttyUSB0, /dev/ttyACM0, COM3) or a pseudo-terminal slave (the emulator).
"""

from __future__ import annotations

import contextlib
import os
import select
import time

import serial

from robopolicy.real.motors.errors import MotorBusError

_POSIX = os.name == "posix"


class SerialTransport:
    """One open serial port: ``write(data)``, ``read(deadline)``, ``reset_input()``, ``close()``."""

    def __init__(self, port: str, baudrate: int, *, exclusive: bool = True) -> None:
        self.port = port
        self.baudrate = baudrate
        self.exclusive = exclusive
        self._serial: serial.Serial | None = None
        self._fd: int | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None and self._serial.is_open

    def open(self) -> None:
        if self.is_open:
            return
        try:
            ser = serial.Serial(
                self.port,
                self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                write_timeout=1.0,
                exclusive=self.exclusive if _POSIX else None,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise MotorBusError(
                f"cannot open serial port {self.port} at {self.baudrate} baud: {exc}; check that the adapter is "
                "plugged in, the path is right (ls /dev/ttyUSB* /dev/ttyACM*), you may access it (Linux: dialout "
                "group) and no other program holds it",
                port=self.port,
            ) from exc
        if _POSIX:
            # real FTDI adapters: ask for low latency (same effect as latency_timer = 1); ptys do not support it
            with contextlib.suppress(OSError, ValueError, AttributeError, NotImplementedError):
                ser.set_low_latency_mode(True)
        self._serial = ser
        self._fd = ser.fileno() if _POSIX else None

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            finally:
                self._serial = None
                self._fd = None

    def _require(self) -> serial.Serial:
        if self._serial is None:
            raise MotorBusError(f"serial port {self.port} is not open", port=self.port)
        return self._serial

    def reset_input(self) -> None:
        """Discard bytes received but not read yet (late or stray replies)."""
        ser = self._require()
        ser.reset_input_buffer()

    def write(self, data: bytes) -> None:
        ser = self._require()
        try:
            if self._fd is not None:
                view = memoryview(data)
                while view:
                    try:
                        n = os.write(self._fd, view)
                    except BlockingIOError:
                        select.select([], [self._fd], [], 0.1)
                        continue
                    view = view[n:]
            else:
                ser.write(data)
        except (serial.SerialException, OSError) as exc:
            raise MotorBusError(
                f"writing to serial port {self.port} failed: {exc}; was the adapter unplugged?", port=self.port
            ) from exc

    def read(self, deadline: float) -> bytes:
        """The bytes available now, or the first ones arriving before ``deadline``; b"" once it passed and nothing
        is waiting. Bytes already received count even when the deadline has passed: a thread that was descheduled
        (a loaded host) past the deadline must not declare a timeout for a reply sitting in the buffer."""
        ser = self._require()
        if self._fd is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                waiting = ser.in_waiting
                return ser.read(waiting) if waiting else b""
            ser.timeout = remaining
            return ser.read(max(1, ser.in_waiting))
        while True:
            # past the deadline: one last poll that does not wait, for bytes that arrived meanwhile
            remaining = max(0.0, deadline - time.perf_counter())
            try:
                ready, _, _ = select.select([self._fd], [], [], remaining)
            except InterruptedError:
                continue
            if not ready:
                return b""
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise MotorBusError(
                    f"reading from serial port {self.port} failed: {exc}; was the adapter unplugged?", port=self.port
                ) from exc
            if data:
                return data
            # readable but empty: the other end of a pty closed, or the device disappeared
            raise MotorBusError(
                f"serial port {self.port} returned no data although readable: device disconnected?", port=self.port
            )
