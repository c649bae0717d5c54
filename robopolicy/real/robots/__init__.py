"""Robots described by YAML files (real/*.yaml): configs, the Robot/Teleoperator contracts, the generic Arm."""

from robopolicy.real.robots.arm import Arm, make_robot
from robopolicy.real.robots.base import DeviceAlreadyConnectedError, DeviceNotConnectedError, Robot, Teleoperator
from robopolicy.real.robots.config import CameraConfig, MotorConfig, RobotConfig, RobotConfigError, resolve_config

__all__ = [
    "Arm",
    "CameraConfig",
    "DeviceAlreadyConnectedError",
    "DeviceNotConnectedError",
    "MotorConfig",
    "Robot",
    "RobotConfig",
    "RobotConfigError",
    "Teleoperator",
    "make_robot",
    "resolve_config",
]
