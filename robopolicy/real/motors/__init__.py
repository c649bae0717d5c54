"""Servo buses without ROS: Dynamixel Protocol 2.0 and Feetech STS codecs, one ``MotorsBus`` over pyserial."""

from robopolicy.real.motors.bus import BusStats, Motor, MotorsBus
from robopolicy.real.motors.calibration import MotorCalibration, NormMode
from robopolicy.real.motors.errors import (
    EepromWriteError,
    MotorBusError,
    MotorCorruptError,
    MotorHardwareError,
    MotorModelMismatchError,
    MotorNotConnectedError,
    MotorNotFoundError,
    MotorTimeoutError,
)
from robopolicy.real.motors.tables import BAUDRATES, MODELS, ModelSpec, Register, model_spec

__all__ = [
    "BAUDRATES",
    "MODELS",
    "BusStats",
    "EepromWriteError",
    "ModelSpec",
    "Motor",
    "MotorBusError",
    "MotorCalibration",
    "MotorCorruptError",
    "MotorHardwareError",
    "MotorModelMismatchError",
    "MotorNotConnectedError",
    "MotorNotFoundError",
    "MotorTimeoutError",
    "MotorsBus",
    "NormMode",
    "Register",
    "model_spec",
]
