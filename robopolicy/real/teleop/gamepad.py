"""Gamepad joint teleop through pygame (SDL joysticks): sticks and buttons move joint targets at a set speed.

pygame is optional: without it ``GamepadTeleop.connect`` raises an ImportError naming what to install.
Default layout (Xbox-style SDL numbering): left stick X/Y -> joints 1/2, right stick X/Y -> joints 3/4 (axes 3/4),
shoulder buttons LB/RB (4/5) -> joint 5 -/+, A/B (0/1) -> joint 6 (gripper) -/+. Stick values inside the
``deadzone`` (0.1) are zero; outside it they are rescaled to 0..1 so motion starts smoothly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from robopolicy.real.robots.base import DeviceAlreadyConnectedError
from robopolicy.real.teleop.joint_targets import JointTargetTeleop

INSTALL_HINT = "gamepad teleop needs pygame: pip install pygame (or pip install 'robopolicy[gamepad]')"


def _pygame():
    try:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return pygame


def apply_deadzone(value: float, deadzone: float) -> float:
    """0 inside the deadzone, else rescaled so that |value| in [deadzone, 1] maps to [0, 1] (sign kept)."""
    magnitude = abs(value)
    if magnitude <= deadzone:
        return 0.0
    return (1.0 if value > 0 else -1.0) * min(1.0, (magnitude - deadzone) / (1.0 - deadzone))


def default_layout(joints: Sequence[str]) -> tuple[dict[int, tuple[str, float]], dict[int, tuple[str, float]]]:
    """(axis map, button map) for up to six joints; SDL's stick Y axes point down, hence the -1 on axes 1 and 4."""
    axes = {0: 1.0, 1: -1.0, 3: 1.0, 4: -1.0}
    axis_map = {axis: (joints[i], sign) for i, (axis, sign) in enumerate(axes.items()) if i < len(joints)}
    button_map: dict[int, tuple[str, float]] = {}
    if len(joints) > 4:
        button_map.update({4: (joints[4], -1.0), 5: (joints[4], 1.0)})
    if len(joints) > 5:
        button_map.update({0: (joints[5], -1.0), 1: (joints[5], 1.0)})
    return axis_map, button_map


class GamepadTeleop(JointTargetTeleop):
    """Joint velocity teleop: target += input * speed * dt (dt measured between get_action calls, <= 0.1 s).

    ``speed``: normalized units per second (per joint mapping or one value). ``joystick``: an object with
    ``get_numaxes/get_axis/get_numbuttons/get_button`` to use instead of pygame (tests, other libraries).
    """

    def __init__(
        self,
        joints: Sequence[str],
        *,
        speed: float | Mapping[str, float] = 60.0,
        deadzone: float = 0.1,
        limits: Mapping[str, tuple[float, float]] | None = None,
        axis_map: Mapping[int, tuple[str, float]] | None = None,
        button_map: Mapping[int, tuple[str, float]] | None = None,
        index: int = 0,
        joystick: Any = None,
        initial: Mapping[str, float] | None = None,
        clock=time.perf_counter,
        name: str = "gamepad",
    ):
        if not 0.0 <= deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {deadzone}")
        super().__init__(joints, limits=limits, initial=initial, name=name)
        default_axes, default_buttons = default_layout(self.joints)
        self.axis_map = dict(axis_map) if axis_map is not None else default_axes
        self.button_map = dict(button_map) if button_map is not None else default_buttons
        unknown = {j for j, _ in [*self.axis_map.values(), *self.button_map.values()]} - set(self.joints)
        if unknown:
            raise ValueError(f"gamepad map moves unknown joints {sorted(unknown)}; joints are {self.joints}")
        self.speeds = {j: float(speed[j] if isinstance(speed, Mapping) else speed) for j in self.joints}
        self.deadzone = deadzone
        self.index = index
        self._injected = joystick
        self.joystick = None
        self._pygame = None
        self._clock = clock
        self._last_time: float | None = None

    @property
    def is_connected(self) -> bool:
        return self.joystick is not None

    def connect(self, calibrate: bool = True) -> None:
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self.name} is already connected")
        if self._injected is not None:
            self.joystick = self._injected
        else:
            pygame = _pygame()
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # joysticks need no window
            pygame.init()
            pygame.joystick.init()
            count = pygame.joystick.get_count()
            if count <= self.index:
                pygame.quit()
                raise RuntimeError(f"{self.name}: gamepad {self.index} not found ({count} connected); plug one in")
            joystick = pygame.joystick.Joystick(self.index)
            joystick.init()
            self._pygame, self.joystick = pygame, joystick
        needed_axes = max(self.axis_map, default=-1) + 1
        needed_buttons = max(self.button_map, default=-1) + 1
        if self.joystick.get_numaxes() < needed_axes or self.joystick.get_numbuttons() < needed_buttons:
            found = (self.joystick.get_numaxes(), self.joystick.get_numbuttons())
            self.disconnect()
            raise RuntimeError(
                f"{self.name}: the mapping needs {needed_axes} axes and {needed_buttons} buttons, the gamepad has "
                f"{found[0]} axes and {found[1]} buttons; pass axis_map/button_map"
            )
        self._last_time = None

    def disconnect(self) -> None:
        self._require_connected()
        if self._pygame is not None:
            self._pygame.joystick.quit()
            self._pygame = None
        self.joystick = None

    def get_action(self) -> dict[str, float]:
        self._require_connected()
        if self._pygame is not None:
            self._pygame.event.pump()  # SDL updates joystick state from its event queue
        now = self._clock()
        dt = 0.0 if self._last_time is None else min(max(now - self._last_time, 0.0), 0.1)
        self._last_time = now
        rates = dict.fromkeys(self.joints, 0.0)
        for axis, (joint, sign) in self.axis_map.items():
            rates[joint] += sign * apply_deadzone(float(self.joystick.get_axis(axis)), self.deadzone)
        for button, (joint, sign) in self.button_map.items():
            if self.joystick.get_button(button):
                rates[joint] += sign
        for joint, rate in rates.items():
            if rate:
                self._nudge(joint, rate * self.speeds[joint] * dt)
        return self._targets()
