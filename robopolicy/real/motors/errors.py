"""Motor-bus errors. Every message names the serial port and the motor(s), and says what to check."""

from __future__ import annotations

from collections.abc import Sequence


def describe_motor(name: str | None, motor_id: int | None) -> str:
    """ "motor 'elbow' (id 3)", "motor id 3" or "motor 'elbow'"."""
    if name is not None and motor_id is not None:
        return f"motor {name!r} (id {motor_id})"
    if name is not None:
        return f"motor {name!r}"
    return f"motor id {motor_id}"


def describe_motors(names: Sequence[str | None], ids: Sequence[int | None]) -> str:
    parts = [describe_motor(n, i).removeprefix("motor ") for n, i in zip(names, ids)]
    return ("motor " if len(parts) == 1 else "motors ") + ", ".join(parts)


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        return (value,)
    return tuple(value)


class MotorBusError(Exception):
    """Base class: something went wrong talking to servos on ``port``."""

    def __init__(self, message: str, *, port: str | None = None, motor: str | None = None) -> None:
        super().__init__(message)
        self.port = port
        self.motor = motor


class MotorNotConnectedError(MotorBusError):
    """The bus is used before ``connect()`` (or after ``disconnect()``)."""


class _ReplyError(MotorBusError):
    """No usable status packet from one or more motors after all attempts (shared by timeout/corrupt)."""

    summary = "no usable status packet from"
    hint = "check power, cable, id and baud rate"

    def __init__(
        self,
        port: str,
        motor: str | Sequence[str] | None,
        register: str | None = None,
        attempts: int = 1,
        *,
        motor_id: int | Sequence[int] | None = None,
        operation: str = "reading",
        detail: str = "",
    ) -> None:
        names = _as_tuple(motor)
        ids = _as_tuple(motor_id)
        names = names or (None,) * len(ids)
        ids = ids or (None,) * len(names)
        self.motors = names
        self.motor_ids = ids
        self.register = register
        self.attempts = attempts
        what = f" {operation} {register}" if register else f" ({operation})"
        extra = f" ({detail})" if detail else ""
        message = (
            f"{self.summary} {describe_motors(names, ids)} on {port}{what} after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}{extra}; {self.hint}"
        )
        super().__init__(message, port=port, motor=names[0] if len(names) == 1 else None)


class MotorTimeoutError(_ReplyError, TimeoutError):
    """No (complete) status packet arrived in time, after all retries.

    ``motor`` may be one name or several (a sync read where several motors stayed silent); ``motor_id`` likewise.
    """

    summary = "no status packet from"
    hint = "check power, cable, id and baud rate"


class MotorCorruptError(_ReplyError):
    """Status packets arrived but failed the checksum/CRC or had the wrong length, after all retries."""

    summary = "corrupt status packets from"
    hint = "check the cable and connectors, the baud rate, and that no two servos share an id"


class MotorNotFoundError(MotorBusError):
    """The handshake found no servo at the configured id(s)."""

    def __init__(self, port: str, motors: Sequence[str], motor_ids: Sequence[int], baudrate: int) -> None:
        self.motors = tuple(motors)
        self.motor_ids = tuple(motor_ids)
        self.baudrate = baudrate
        message = (
            f"no answer from {describe_motors(self.motors, self.motor_ids)} on {port} at {baudrate} baud; check "
            "power (servos need their own supply), the cable, that each servo has its configured id and baud rate "
            "(new servos ship with id 1; Dynamixel at 57600 baud, Feetech at 1 Mbps)"
        )
        super().__init__(message, port=port, motor=self.motors[0] if len(self.motors) == 1 else None)


class MotorModelMismatchError(MotorBusError):
    """A servo answered, but with another model number than the configuration says."""

    def __init__(
        self,
        port: str,
        motor: str,
        motor_id: int,
        expected_model: str,
        expected_number: int,
        found_number: int,
        found_model: str | None = None,
    ) -> None:
        self.motor_id = motor_id
        self.expected_model = expected_model
        self.found_number = found_number
        found = f"{found_number} ({found_model})" if found_model else f"{found_number} (unknown model)"
        message = (
            f"{describe_motor(motor, motor_id)} on {port} reports model number {found}, but the configuration says "
            f"{expected_model} ({expected_number}); fix the model in the robot description, or check that the right "
            "servo has this id"
        )
        super().__init__(message, port=port, motor=motor)


class MotorHardwareError(MotorBusError):
    """The servo answered with error/status bits set (instruction refused, or a hardware alert)."""

    def __init__(
        self,
        motor: str | None,
        error_bits: int,
        *,
        port: str | None = None,
        motor_id: int | None = None,
        register: str | None = None,
        words: Sequence[str] = (),
        operation: str = "reading",
        hint: str = "",
    ) -> None:
        self.error_bits = error_bits
        self.motor_id = motor_id
        self.register = register
        self.words = tuple(words)
        what = f" {operation} {register}" if register else f" ({operation})"
        decoded = "; ".join(self.words) if self.words else "unknown error"
        hint = hint or (
            "check supply voltage, temperature and mechanical load; a Dynamixel hardware alert needs a REBOOT"
        )
        message = (
            f"{describe_motor(motor, motor_id)} on {port or '<unknown port>'} reported error 0x{error_bits:02X}"
            f"{what}: {decoded}; {hint}"
        )
        super().__init__(message, port=port, motor=motor)


class EepromWriteError(MotorBusError):
    """An EEPROM register was about to be written while torque is on (or, Feetech, while Lock = 1)."""
