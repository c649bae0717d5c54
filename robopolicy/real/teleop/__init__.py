"""Teleoperation devices: leader arms, keyboard (+ the record loop's control keys), gamepad."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from robopolicy.real.robots.base import Teleoperator
from robopolicy.real.teleop.gamepad import GamepadTeleop
from robopolicy.real.teleop.keyboard import (
    KeyboardTeleop,
    KeyEvent,
    KeyListener,
    attach_record_keys,
    parse_terminal_input,
    wait_for_key,
)
from robopolicy.real.teleop.leader import LeaderArm

__all__ = [
    "GamepadTeleop",
    "KeyEvent",
    "KeyListener",
    "KeyboardTeleop",
    "LeaderArm",
    "Teleoperator",
    "attach_record_keys",
    "make_teleoperator",
    "parse_terminal_input",
    "wait_for_key",
]


def make_teleoperator(
    spec: str | os.PathLike | Mapping, *, robot_config: Any = None, port: str | None = None, **kwargs: Any
) -> Teleoperator:
    """``"keyboard"`` / ``"gamepad"`` (joints and limits from ``robot_config``) or a leader-arm description."""
    if spec in ("keyboard", "gamepad"):
        if robot_config is None:
            raise ValueError(f"{spec} teleop needs robot_config= (the follower's description) for its joints")
        cls = KeyboardTeleop if spec == "keyboard" else GamepadTeleop
        return cls.from_robot_config(robot_config, **kwargs)
    return LeaderArm(spec, port=port, **kwargs)
