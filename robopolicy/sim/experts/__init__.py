"""Scripted experts for robosuite 1.5 tasks (Panda, default OSC_POSE controller, privileged object state).

Every expert has `reset()`, `act(obs) -> float32 (7,)` (the raw robosuite observation dict in, an OSC_POSE
action in [-1, 1] out), `phase` (the name of the phase that chose the last action) and `phases` (the phases
it goes through, in order). Phase switches depend only on the observations, so a demonstration is a
deterministic function of the initial state.

`PHASES` is the one phase vocabulary shared by all tasks; recordings store the per-frame phase as the index
into it (feature `phase`, int64 (1,), names = PHASES):

  task              phases (indices into PHASES)
  Lift              reach, grasp, lift
  Stack             reach, grasp, lift, move, place, release, retreat
  PickPlaceCan      reach, grasp, lift, move, place, release, retreat
  NutAssemblyRound  reach, grasp, lift, move, place, release, retreat
  Door              reach, grasp, unlatch, open

Modules: `control` (the shared P-law and orientation math), `lift`, `pick_place` (Stack, PickPlaceCan,
NutAssemblyRound), `door`.
"""

from __future__ import annotations

from robopolicy.sim.experts.control import DOWN_QUAT_XYZW, orientation_error
from robopolicy.sim.experts.control import quat_mul as _quat_mul
from robopolicy.sim.experts.door import DoorExpert, DoorExpertConfig
from robopolicy.sim.experts.lift import LiftExpert, LiftExpertConfig
from robopolicy.sim.experts.pick_place import (
    CanExpert,
    CanExpertConfig,
    NutExpert,
    NutExpertConfig,
    PickPlaceConfig,
    PickPlaceExpert,
    StackExpert,
    StackExpertConfig,
)

PHASES = ("reach", "grasp", "lift", "move", "place", "release", "retreat", "unlatch", "open")

EXPERTS = {
    "Lift": LiftExpert,
    "Stack": StackExpert,
    "PickPlaceCan": CanExpert,
    "NutAssemblyRound": NutExpert,
    "Door": DoorExpert,
}


def phase_index(name: str) -> int:
    """Index of a phase name in `PHASES` (what the `phase` feature stores)."""
    return PHASES.index(name)


def make_expert(task: str):
    """The scripted expert (default config) for a robosuite task name."""
    if task not in EXPERTS:
        raise ValueError(f"no scripted expert for robosuite task {task!r}; available: {sorted(EXPERTS)}")
    return EXPERTS[task]()


__all__ = [
    "DOWN_QUAT_XYZW",
    "EXPERTS",
    "PHASES",
    "CanExpert",
    "CanExpertConfig",
    "DoorExpert",
    "DoorExpertConfig",
    "LiftExpert",
    "LiftExpertConfig",
    "NutExpert",
    "NutExpertConfig",
    "PickPlaceConfig",
    "PickPlaceExpert",
    "StackExpert",
    "StackExpertConfig",
    "_quat_mul",
    "make_expert",
    "orientation_error",
    "phase_index",
]
