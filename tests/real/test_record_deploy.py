"""`robopolicy record` and deployment end to end against emulated arms (servo emulators on ptys, MuJoCo arm)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.cli.main import main
from robopolicy.data.dataset import open_dataset
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.policies.registry import from_plain, get_config_class
from robopolicy.real.deploy import DeployConfig, Deployer
from robopolicy.real.emulated import SimArmRig
from robopolicy.real.motors.emulator import Faults
from robopolicy.real.record import RecordConfig, Recorder, RecordEvents
from robopolicy.real.robots import make_robot
from robopolicy.real.teleop import make_teleoperator

REPO = Path(__file__).resolve().parents[2]
FOLLOWER, LEADER = REPO / "real" / "so101_follower.yaml", REPO / "real" / "so101_leader.yaml"


@pytest.mark.timeout(120)
def test_record_cli_against_emulated_leader_and_follower(tmp_path, capsys):
    out = tmp_path / "reach"
    rc = main(["record", "--robot", str(FOLLOWER), "--teleop", str(LEADER), "--emulate", "--out", str(out),
               "--episodes", "2", "--episode-time", "2", "--reset-time", "0.5", "--fps", "30", "--no-keys",
               "--task", "reach the target"])
    assert rc == 0
    assert "recorded 2 episode(s), 120 frames" in capsys.readouterr().out
    ds = open_dataset(out)
    assert [e.length for e in ds.episodes] == [60, 60]
    assert ds.features["observation.state"].shape == (6,) and ds.features["action"].shape == (6,)
    assert ds.features["action"].names == [f"{j}.pos" for j in
                                           ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll",
                                            "gripper")]
    state = ds.read("observation.state", list(range(120)))
    action = ds.read("action", list(range(120)))
    # the follower tracks the leader: by the end of each episode the state sits close to the commanded action
    for ep in ds.episodes:
        last = ep.start + ep.length - 1
        np.testing.assert_allclose(state[last, :5], action[last, :5], atol=3.0)
    # the scripted operator reaches the same (fixed) target in both episodes from different start poses
    assert np.abs(state[0] - state[60]).max() > 5.0
    np.testing.assert_allclose(state[59, :4], state[119, :4], atol=2.0)
    assert ds.tasks == ["reach the target"] or list(ds.tasks.values()) == ["reach the target"]


def _rig_robot_teleop():
    rig = SimArmRig(FOLLOWER, LEADER, seed=3)
    robot = make_robot(FOLLOWER, port=rig.follower.port, calibration="defaults")
    teleop = make_teleoperator(LEADER, port=rig.leader.port, calibration="defaults")
    robot.connect()
    teleop.connect()
    return rig, robot, teleop


@pytest.mark.timeout(120)
def test_rerecord_discards_the_episode_and_records_it_again(tmp_path):
    rig, robot, teleop = _rig_robot_teleop()
    events = RecordEvents()
    phases = []

    def on_phase(phase, episode):
        phases.append((phase, episode))
        rig.on_phase(phase, episode)
        if len(phases) == 1:  # first episode: ask for a re-record half-way through
            threading.Timer(0.4, events.rerecord.set).start()

    try:
        cfg = RecordConfig(root=str(tmp_path / "ds"), fps=30, episodes=1, episode_time_s=1.5, reset_time_s=0.2)
        result = Recorder(robot, teleop, cfg, events=events, on_phase=on_phase).run()
    finally:
        robot.disconnect()
        teleop.disconnect()
        rig.stop()
    assert result.rerecorded == 1 and result.saved == [0]
    assert phases[:3] == [("episode", 0), ("reset", 0), ("episode", 0)]
    assert [e.length for e in open_dataset(tmp_path / "ds").episodes] == [45]


@pytest.mark.timeout(120)
def test_killing_record_mid_episode_loses_only_that_episode(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "robopolicy.cli.main", "record", "--robot", str(FOLLOWER), "--teleop", str(LEADER),
           "--emulate", "--out", str(out), "--episodes", "5", "--episode-time", "1", "--reset-time", "0.3",
           "--no-keys"]
    log = tmp_path / "record.stderr"
    with open(log, "wb") as stderr:  # a file, not a pipe nobody reads (a full pipe would block the recorder)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # wait until two episodes are saved (no fixed deadline that a loaded machine could miss: the process
        # start-up alone takes seconds there), then kill during the third
        deadline = time.monotonic() + 100
        saved = 0
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(Exception):  # not created yet, or being written
                saved = len(open_dataset(out).episodes)
            if saved >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"record exited ({proc.returncode}) before the kill: {log.read_text()[-2000:]}"
        assert saved >= 2, f"2 episodes not saved within 100 s: {log.read_text()[-2000:]}"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    ds = open_dataset(out)
    assert len(ds.episodes) in (2, 3)  # the episode being recorded at the kill is gone, earlier ones intact
    assert all(e.length == 30 for e in ds.episodes)
    ds.read("observation.state", list(range(sum(e.length for e in ds.episodes))))


def _near_pose_policy(center: np.ndarray, spread: float = 2.0, seed: int = 0) -> Policy:
    """An untrained flow policy whose actions stay within center +- spread (min/max normalization)."""
    cls = get_config_class("flow")
    typed = from_plain(cls, {"denoiser": {"unet": {"down_dims": (32, 64), "step_embed_dim": 32}}})
    cfg = cls(input_features={"observation.state": FeatureSpec((6,), "state")},
              output_features={"action": FeatureSpec((6,), "action")}, denoiser=typed.denoiser)
    stats = {k: {"min": center - spread, "max": center + spread, "mean": center, "std": np.ones(6)}
             for k in ("observation.state", "action")}
    torch.manual_seed(seed)
    return Policy(cfg, make_normalizer(cfg, stats)).eval()


@pytest.mark.timeout(120)
def test_deploy_sync_loop_runs_at_rate_and_respects_limits():
    rig = SimArmRig(FOLLOWER, seed=0)
    robot = make_robot(FOLLOWER, port=rig.follower.port, calibration="defaults")
    try:
        robot.connect()
        center = np.array(list(robot.last_commanded.values()))
        policy = _near_pose_policy(center)
        deployer = Deployer(robot, DeployConfig(fps=30, episode_time_s=1.0, max_velocity=30.0), policy=policy)
        report = deployer.run_episode()
        sent = np.array(list(robot.last_commanded.values()))
    finally:
        robot.disconnect()
        rig.stop()
    assert report.stopped is None and report.ticks == 30 and report.bus_faults == 0
    assert report.loop["ticks"] == 30 and report.loop["sections"]["policy"]["count"] == 30
    # 30 deg/s at 30 Hz: never more than 1 degree per tick away from the previous target
    assert np.all(np.abs(sent - center) <= 30.0 * 1.0 + 1e-6)
    assert np.all(np.abs(sent - center) <= 2.0 + 0.2)  # the actions stay inside the policy's range


@pytest.mark.timeout(120)
def test_deploy_stops_with_the_failing_motor_named_and_holds_position():
    rig = SimArmRig(FOLLOWER, seed=0)
    robot = make_robot(FOLLOWER, port=rig.follower.port, calibration="defaults")
    try:
        robot.connect()
        center = np.array(list(robot.last_commanded.values()))
        deployer = Deployer(robot, DeployConfig(fps=30, episode_time_s=3.0, max_consecutive_faults=3),
                            policy=_near_pose_policy(center))

        def unplug(t):
            if t == 10:
                rig.follower.emulator.faults = Faults(dead_ids=frozenset({3}))

        report = deployer.run_episode(on_tick=unplug)
        goal_after_stop = rig.follower.emulator.register(1, "Goal_Position")
        torque = rig.follower.emulator.register(1, "Torque_Enable")
    finally:
        rig.follower.emulator.faults = Faults()
        robot.disconnect()
        rig.stop()
    assert report.stopped is not None and "elbow_flex" in report.stopped
    assert report.bus_faults >= 3 and report.ticks < 90
    assert torque == 1  # "hold" e-stop: torque stays on (the arm does not fall)
    assert abs(goal_after_stop - rig.arm.qpos_to_ticks(rig.arm.qpos)[1]) < 60


@pytest.mark.timeout(120)
def test_deploy_cli_with_a_remote_policy_server(tmp_path, capsys):
    from robopolicy.runtime.policy_server import PolicyServer, PolicyService

    center = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 10.0])
    policy = _near_pose_policy(center, spread=5.0)
    checkpoint = policy.save(tmp_path / "ckpt")
    server = PolicyServer(PolicyService(policy))
    host, port = server.start()
    threads = torch.get_num_threads()
    # the server shares this process (and 2 cores) with the control loop: with torch's 2 threads a chunk took
    # up to 3.4 s on a loaded machine (20 ms idle), with one 80 ms (as the policy worker process uses)
    torch.set_num_threads(1)
    try:
        # a generous watchdog: the robot holds while a chunk is late, which this test allows
        # (tests/real/test_deploy_faults.py tests the e-stop)
        rc = main(["deploy", "--checkpoint", str(checkpoint), "--robot", str(FOLLOWER), "--emulate", "--episodes", "2",
                   "--episode-time", "1", "--reset-time", "0.5", "--inference", "server", "--server", f"{host}:{port}",
                   "--watchdog", "30", "--out", str(tmp_path / "report.json")])
    finally:
        server.stop()
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0 and "success rate:" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["episodes"] == 2 and not report["summary"]["stopped"]
    episodes = report["episodes"]
    assert [e["ticks"] + e["bus_faults"] for e in episodes] == [30, 30]  # a bus timeout under load skips a tick
    # every episode waits for its first chunk and asks for the next one 8 steps later; a request still in flight
    # when episode 1 ends is abandoned (its reply is discarded in episode 2), never a crash
    assert all(e["inference"]["chunks"] >= 1 and e["inference"]["requests"] >= 2 for e in episodes)
    assert episodes[1]["inference"]["abandoned"] <= 1
    assert sum(e["inference"]["chunks"] for e in episodes) >= 3  # chunks kept arriving from the server


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sim_arm_record_train_deploy_reaches_the_target(tmp_path):
    """The whole path on the simulated arm: 40 scripted teleop demonstrations -> flow policy -> 10 deployments
    from unseen start poses; the gripper tip must end within 2 cm of the target in at least 8."""
    data, run = tmp_path / "reach", tmp_path / "run"
    assert main(["record", "--robot", str(FOLLOWER), "--teleop", str(LEADER), "--emulate", "--out", str(data),
                 "--episodes", "40", "--episode-time", "4", "--reset-time", "2", "--no-keys"]) == 0
    assert main(["train", "--config", str(REPO / "configs" / "flow_simarm_reach.yaml"), f"--data.uri={data}",
                 f"--train.output_dir={run}", "--train.progress=false"]) == 0
    assert main(["deploy", "--checkpoint", str(run), "--robot", str(FOLLOWER), "--emulate", "--episodes", "10",
                 "--episode-time", "4", "--seed", "1000", "--out", str(tmp_path / "deploy.json")]) == 0
    summary = json.loads((tmp_path / "deploy.json").read_text())["summary"]
    assert summary["n_success"] >= 8, summary


@pytest.mark.timeout(120)
def test_deploy_passes_the_instruction_to_a_language_policy():
    from robopolicy.config_parsing import ConfigError
    from robopolicy.policies.common.text_encoder import LanguageConfig
    from robopolicy.policies.processor import Processor

    rig = SimArmRig(FOLLOWER, seed=0)
    robot = make_robot(FOLLOWER, port=rig.follower.port, calibration="defaults")
    threads = torch.get_num_threads()
    try:
        robot.connect()
        center = np.array(list(robot.last_commanded.values()))
        base = _near_pose_policy(center)
        cfg = base.config.replace(input_features={**base.config.input_features, "task": FeatureSpec((), "language")},
                                  language=LanguageConfig(tasks=("wave", "rest"), embed_dim=8))
        policy = Policy(cfg, base.normalizer, Processor(cfg.processor_steps(["wave", "rest"]))).eval()
        seen = []
        predict = policy.predict_chunk
        policy.predict_chunk = lambda obs, *a, **k: (seen.append(obs["task"]), predict(obs, *a, **k))[1]
        with pytest.raises(ConfigError, match="--task"):
            Deployer(robot, DeployConfig(fps=30, episode_time_s=0.3), policy=policy)
        with pytest.raises(ConfigError, match="takes no instruction"):  # an instruction is never silently ignored
            Deployer(robot, DeployConfig(fps=30, episode_time_s=0.3, task="wave"), policy=base)
        # one torch thread beside the emulated arm's threads (see test_deploy_cli_with_a_remote_policy_server:
        # with two, a chunk took seconds on a loaded machine)
        torch.set_num_threads(1)
        report = Deployer(robot, DeployConfig(fps=30, episode_time_s=0.3, task="wave"), policy=policy).run_episode()
    finally:
        torch.set_num_threads(threads)
        robot.disconnect()
        rig.stop()
    assert report.stopped is None and seen and set(seen) == {"wave"}
