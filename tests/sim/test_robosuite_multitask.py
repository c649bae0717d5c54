"""robosuite multi-task data: the experts beyond Lift, the shared phase vocabulary, the padded env-state layout,
multi-task `robopolicy collect` into one dataset (both formats) and the evaluation env's matching observation."""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest

pytest.importorskip("robosuite")

from robopolicy.cli import collect as collect_cli
from robopolicy.data.dataset import open_dataset
from robopolicy.sim.collect import DONE_KEY, PHASE_KEY, REWARD_KEY, CollectConfig, collect
from robopolicy.sim.envs import EnvSpec, RobosuiteGymEnv
from robopolicy.sim.errors import EnvMismatchError
from robopolicy.sim.evaluate import env_instruction
from robopolicy.sim.experts import EXPERTS, PHASES, CanExpertConfig, NutExpertConfig, make_expert, phase_index
from robopolicy.sim.robosuite_env import (
    ACTION_KEY,
    ENV_STATE_KEY,
    NATIVE_ENV_STATE_DIMS,
    PADDED_ENV_STATE_DIM,
    STATE_KEY,
    TASK_OBJECT_STATE,
    TASK_STRINGS,
    RobosuiteConfig,
    RobosuiteEnv,
    env_state_names,
    parse_multi_env_spec,
)

TASKS = ("Lift", "Stack", "PickPlaceCan", "Door", "NutAssemblyRound")
NEW_TASKS = TASKS[1:]
ALL = "robosuite:" + ",".join(TASKS)
STEP_LIMIT = {"Stack": 300, "PickPlaceCan": 400, "Door": 300, "NutAssemblyRound": 400}


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="robopolicy collect")
    collect_cli.add_arguments(parser)
    return collect_cli.run(parser.parse_args(list(argv)))


def run_expert(env: RobosuiteEnv, task: str, seed: int, max_steps: int):
    """Roll the task's expert out until 5 steps after the first success; (phase names per step, actions, first)."""
    obs = env.reset(seed)
    expert = make_expert(task)
    phases, actions, first = [], [], None
    for t in range(max_steps):
        actions.append(expert.act(obs))
        phases.append(expert.phase)
        obs, _, success = env.step(actions[-1])
        if success and first is None:
            first = t
        if first is not None and t >= first + 5:
            break
    return phases, np.stack(actions), first


# ----- vocabulary, specs, layouts ----------------------------------------------------------------------
def test_one_phase_vocabulary_covers_every_expert():
    assert len(set(PHASES)) == len(PHASES)
    assert PHASES[:3] == ("reach", "grasp", "lift")  # Lift's own phases keep their indices
    assert set(EXPERTS) == set(TASKS) == set(TASK_STRINGS)
    for task, cls in EXPERTS.items():
        assert set(cls.phases) <= set(PHASES), task
        assert cls.phases[0] == "reach"
    assert [phase_index(p) for p in PHASES] == list(range(len(PHASES)))
    assert len(set(TASK_STRINGS.values())) == len(TASK_STRINGS)  # one distinct instruction per task


def test_multi_env_spec_and_config_checks():
    assert parse_multi_env_spec("robosuite:Lift") == ["Lift"]
    assert parse_multi_env_spec(ALL) == list(TASKS)
    with pytest.raises(ValueError, match="unsupported robosuite task 'Wipe'"):
        parse_multi_env_spec("robosuite:Lift,Wipe")
    with pytest.raises(ValueError, match="twice"):
        parse_multi_env_spec("robosuite:Lift,Lift")
    with pytest.raises(ValueError, match="padded"):
        CollectConfig(env="robosuite:Lift,Door", env_state="native")
    assert CollectConfig(env="robosuite:Lift,Door").env_state_layout == "padded"
    assert CollectConfig(env="robosuite:Lift").env_state_layout == "auto"


@pytest.mark.parametrize("task", TASKS)
def test_env_state_layouts_match_robosuite(task):
    """Native = robosuite's object-state, slot by slot as documented; padded = the same, then zeros to 23."""
    with RobosuiteEnv(RobosuiteConfig(task=task, env_state="native")) as env:
        obs = env.reset(3)
        obs, _, _ = env.step(np.zeros(7))  # relative observables are filled from the first step on
        native = env.features(obs)[ENV_STATE_KEY]
        assert native.shape == (NATIVE_ENV_STATE_DIMS[task],) == (len(env_state_names(task, "native")),)
        parts = [np.asarray(obs[name], dtype=np.float32).reshape(-1) for name, _ in TASK_OBJECT_STATE[task]]
        parts = np.concatenate(parts)
        assert np.allclose(native, parts, atol=1e-6)
        assert env.dataset_features()[ENV_STATE_KEY].shape == native.shape
    with RobosuiteEnv(RobosuiteConfig(task=task, env_state="padded")) as env:
        env.reset(3)
        padded = env.features(env.step(np.zeros(7))[0])[ENV_STATE_KEY]
        assert padded.shape == (PADDED_ENV_STATE_DIM,) == (23,)
        assert np.allclose(padded[: native.shape[0]], native, atol=1e-6)
        assert not padded[native.shape[0] :].any()
        assert env.dataset_features()[ENV_STATE_KEY].names == [f"env_state_{i}" for i in range(23)]
        assert env.task_description == env.task == TASK_STRINGS[task]
    # "auto": Lift keeps its native 10-D layout, the other tasks are padded
    assert RobosuiteConfig(task=task).env_state_dim == (10 if task == "Lift" else 23)


def test_scene_constants_of_the_experts_match_the_simulation():
    with RobosuiteEnv(RobosuiteConfig(task="PickPlaceCan")) as env:
        env.reset(0)
        raw = env.raw
        x, y = CanExpertConfig().target_xy
        bx, by = raw.bin2_pos[:2]
        # the can's quadrant of bin 2 (robosuite's not_in_bin for the can's bin id 3)
        assert bx < x < bx + raw.bin_size[0] / 2 and by < y < by + raw.bin_size[1] / 2
    with RobosuiteEnv(RobosuiteConfig(task="NutAssemblyRound")) as env:
        env.reset(0)
        peg = env.raw.sim.data.body_xpos[env.raw.peg2_body_id]
        assert np.allclose(peg[:2], NutExpertConfig().peg_xy, atol=1e-9)


# ----- experts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", NEW_TASKS)
def test_expert_succeeds_with_monotone_phases(task):
    with RobosuiteEnv(RobosuiteConfig(task=task)) as env:
        for seed in (3, 21):
            phases, actions, first = run_expert(env, task, seed, STEP_LIMIT[task])
            assert first is not None, f"{task} expert failed on seed {seed}; phases {list(dict.fromkeys(phases))}"
            assert np.all(np.abs(actions) <= 1.0) and actions.dtype == np.float32
            order = [EXPERTS[task].phases.index(p) for p in phases]
            assert order[0] == 0 and all(b in (a, a + 1) for a, b in itertools.pairwise(order)), (
                f"{task} seed {seed}: phases out of order {list(dict.fromkeys(phases))}"
            )
            # it did the task's work before succeeding: pick-and-place got to place, Door to open
            needed = "open" if task == "Door" else "place"
            assert needed in phases[: first + 1], f"{task} seed {seed}: success before {needed!r}"


@pytest.mark.slow
@pytest.mark.parametrize("task", NEW_TASKS)
def test_expert_reliable_on_twenty_seeds(task):
    """The benchmark's claim in small (benchmarks/bench_robosuite_experts.py: 50 seeds per task)."""
    with RobosuiteEnv(RobosuiteConfig(task=task)) as env:
        firsts = [run_expert(env, task, seed, STEP_LIMIT[task])[2] for seed in range(200, 220)]
    assert sum(f is not None for f in firsts) >= 19, f"{task}: first success steps {firsts}"


def test_expert_is_deterministic_given_the_initial_state():
    with RobosuiteEnv(RobosuiteConfig(task="Stack")) as env:
        a = run_expert(env, "Stack", 8, 60)
        b = run_expert(env, "Stack", 8, 60)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


# ----- collection ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["zarr", "lerobot"])
def test_multitask_collect_writes_one_dataset(tmp_path, fmt):
    out = tmp_path / ("multi.zarr" if fmt == "zarr" else "multi")
    cfg = CollectConfig(env=ALL, episodes=1, seed=4, max_steps=12)
    result = collect(cfg, out, format=fmt, progress=False)
    assert [r.task for r in result.rollouts] == list(TASKS) and all(r.seed == 4 for r in result.rollouts)
    ds = open_dataset(out)
    assert ds.num_episodes == len(TASKS) and ds.fps == 20
    assert sorted(ds.tasks) == sorted(TASK_STRINGS[t] for t in TASKS)
    assert [ep.tasks for ep in ds.episodes] == [(TASK_STRINGS[t],) for t in TASKS]
    assert len(ds.episode_success) == len(TASKS)
    phase = ds.features[PHASE_KEY]
    assert phase.dtype == "int64" and phase.shape == (1,) and list(phase.names) == list(PHASES)
    assert ds.features[ENV_STATE_KEY].shape == (PADDED_ENV_STATE_DIM,)
    assert ds.features[STATE_KEY].shape == (9,) and ds.features[ACTION_KEY].shape == (7,)
    assert ds.features[REWARD_KEY].shape == (1,) and ds.features[DONE_KEY].dtype == "bool"
    for ep, task in zip(ds.episodes, TASKS):
        assert ep.length == 12
        env_state = ds.read_episode(ENV_STATE_KEY, ep.index)
        n = NATIVE_ENV_STATE_DIMS[task]
        assert env_state.shape == (12, 23) and not env_state[:, n:].any() and np.abs(env_state[:, :n]).max() > 0.5
        phases = ds.read_episode(PHASE_KEY, ep.index)
        assert phases.dtype == np.int64 and phases.shape == (12, 1)
        assert phases[0, 0] == PHASES.index("reach") and np.all(np.diff(phases[:, 0]) >= 0)
    ds.close()


def test_collect_cli_multitask_with_camera(tmp_path):
    out = tmp_path / "cam.zarr"
    argv = ["--env", "robosuite:Lift,Door", "--episodes", "1", "--max-steps", "3", "--out", str(out)]
    assert run_cli(*argv, "--cameras", "agentview", "--image-size", "32", "--no-progress") == 0
    ds = open_dataset(out)
    assert ds.num_episodes == 2 and [ep.length for ep in ds.episodes] == [3, 3]
    frames = ds.read("observation.images.agentview", np.arange(6))
    assert frames.dtype == np.uint8 and frames.shape == (6, 3, 32, 32) and frames.std() > 5
    # the two scenes differ (a cube on a table, a door)
    assert np.abs(frames[:3].astype(float) - frames[3:].astype(float)).mean() > 5
    ds.close()


def test_single_lift_collect_keeps_10d_unless_padded(tmp_path):
    base = ["--env", "robosuite:Lift", "--episodes", "1", "--max-steps", "2", "--no-progress"]
    assert run_cli(*base, "--out", str(tmp_path / "native.zarr")) == 0
    assert run_cli(*base, "--out", str(tmp_path / "padded.zarr"), "--env-state", "padded") == 0
    native, padded = open_dataset(tmp_path / "native.zarr"), open_dataset(tmp_path / "padded.zarr")
    assert native.features[ENV_STATE_KEY].shape == (10,) and padded.features[ENV_STATE_KEY].shape == (23,)
    a, b = native.read_episode(ENV_STATE_KEY, 0), padded.read_episode(ENV_STATE_KEY, 0)
    assert np.array_equal(a, b[:, :10]) and not b[:, 10:].any()
    assert list(native.features[PHASE_KEY].names) == list(PHASES)


def test_collect_help_says_episodes_per_task():
    parser = argparse.ArgumentParser(prog="robopolicy collect")
    collect_cli.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "per task" in help_text and "robosuite:Lift,Stack,PickPlaceCan,Door,NutAssemblyRound" in help_text


# ----- evaluation env -----------------------------------------------------------------------------------
def test_eval_env_gives_the_layout_the_policy_expects():
    state = {STATE_KEY: (9,)}
    env = RobosuiteGymEnv("Lift", {**state, ENV_STATE_KEY: (23,)})  # a multi-task policy on Lift: padded
    obs, _ = env.reset(seed=2)
    assert obs[ENV_STATE_KEY].shape == (23,) and not obs[ENV_STATE_KEY][10:].any()
    assert env.task_description == TASK_STRINGS["Lift"]
    env.close()
    env = RobosuiteGymEnv("Lift", {**state, ENV_STATE_KEY: (10,)})  # a single-task Lift policy: native
    assert env.reset(seed=2)[0][ENV_STATE_KEY].shape == (10,)
    env.close()
    env = RobosuiteGymEnv("Door", {**state, ENV_STATE_KEY: (23,)})
    obs, _ = env.reset(seed=2)
    assert obs[ENV_STATE_KEY].shape == (23,) and env.task_description == "open the door"
    env.close()
    with pytest.raises(EnvMismatchError, match="environment_state"):
        RobosuiteGymEnv("Lift", {ENV_STATE_KEY: (14,)})
    assert env_instruction(EnvSpec("robosuite:Stack")) == TASK_STRINGS["Stack"]
