"""Policy speed at the Diffusion Policy paper's PushT image config, robopolicy vs LeRobot 0.4.4, side by side.

Config (both sides): PushT 96x96 images + agent (x, y) state from pusht_cchi_v7_replay.zarr, ResNet-18 with
GroupNorm, spatial softmax (32 keypoints), random crop 84 (centre crop at inference), UNet down_dims 512/1024/2048,
T_o=2, horizon 16; ACT with LeRobot's defaults (chunk 100, dim 512, 4+1 layers, VAE), no crop, no pretrained weights.

Cases:
  diffusion_train   samples/s of a full training step at batch 64: forward, backward, grad clipping, optimizer
                    step (robopolicy: its trainer's fused AdamW + EMA update; LeRobot: its preset, Adam). Fixed
                    in-memory batches: data loading is excluded.
  diffusion_ddim    s per chunk, batch 1, 10 DDIM steps (robopolicy `Policy.predict_chunk`, incl. normalization)
  diffusion_ddpm    s per chunk, batch 1, 100 DDPM steps
  act_train         samples/s at batch 8; step i trains on its own batch of windows drawn uniformly from the
                    dataset (12 batches, the same sequence on both sides): robopolicy skips padded actions, so
                    its cost depends on the data (39% of the actions in PushT's 100-step windows are padding)
  act_chunk         s per chunk, batch 1

Each measurement runs in a fresh process (model built, one warm-up step, then timed steps); robopolicy (A) and
LeRobot (B) alternate A, B, A, B, ... so both see the same background load. Reported: median over the repeats,
and the speedup (robopolicy / LeRobot throughput, LeRobot / robopolicy latency). Both sides use the same torch
(2.14.1, shared by the LeRobot venv) and the same `torch.set_num_threads`.

`--kernels-off` adds a third side, robopolicy with its CPU kernels switched off (ROBOPOLICY_CPU_KERNELS=off:
plain torch modules, policies/common/kernels.py), alternating with the other two: the "kernels" column is what the
switch buys (robopolicy on / off, as a speedup).

`--presets` also times `predict_chunk` (batch 1) of the CPU-practical presets in configs/ (robopolicy only).

Usage:
  .venv/bin/python benchmarks/bench_policy_speed.py [--repeats 3] [--threads 2] [--cases a,b] [--json out.json]
      [--lerobot-python /work/lrvenv/bin/python | --no-lerobot] [--kernels-off] [--presets] [--no-act-padding]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ZARR = DATA / "pusht_cchi_v7_replay.zarr"
LEROBOT_SCRIPT = REPO / "benchmarks" / "lerobot_policy_reference.py"
DEFAULT_LEROBOT_PYTHON = "/work/lrvenv/bin/python"
IMAGE, STATE, ACTION = "observation.image", "observation.state", "action"
ACT_BATCHES = 12  # 1 warm-up + 11 timed ACT training steps, each on its own batch
KERNELS_OFF = "robopolicy_kernels_off"  # the side run with ROBOPOLICY_CPU_KERNELS=off
PRESETS = ("diffusion_pusht_image_cpu", "flow_pusht_state_cpu", "act_pusht_cpu", "diffusion_pusht_state_cpu")


@dataclass(frozen=True)
class Case:
    name: str
    train: bool  # True: samples/s (higher is better); False: s per chunk (lower is better)
    steps: int  # timed steps (train) or chunks per process
    reference: float  # LeRobot 0.4.4 on this machine, medians of 3 (issue 3)
    goal: float  # required speedup over LeRobot
    warmup: int = 1  # untimed steps per process (0 for DDPM-100: one chunk already amortizes first-call costs)

    @property
    def unit(self) -> str:
        return "samples/s" if self.train else "s/chunk"


CASES = {
    c.name: c
    for c in (
        Case("diffusion_train", True, 2, 3.75, 1.5),
        Case("diffusion_ddim", False, 3, 2.38, 2.0),
        Case("diffusion_ddpm", False, 1, 23.6, 2.0, warmup=0),
        Case("act_train", True, 11, 4.5, 1.5),
        Case("act_chunk", False, 10, 0.065, 2.0),
    )
}


# ----------------------------------------------------------------------------------------- pure logic
def schedule(cases: list[str], repeats: int, sides: list[str]) -> list[tuple[str, int, str]]:
    """Run order: for each case, repeat r, every side in turn (A, B, A, B, ...)."""
    return [(case, r, side) for case in cases for r in range(repeats) for side in sides]


def speedup(case: Case, ours: float, theirs: float) -> float:
    """How many times better robopolicy is: throughput ratio for training, latency ratio for chunks."""
    return ours / theirs if case.train else theirs / ours


def summarize(case: Case, values: dict[str, list[float]]) -> dict:
    """Medians per side, the speedup over LeRobot measured side by side (or over the reference figure), and the
    speedup of the CPU kernels over robopolicy without them (when that side ran)."""
    ours = statistics.median(values["robopolicy"])
    row = {"case": case.name, "unit": case.unit, "robopolicy": ours, "robopolicy_runs": values["robopolicy"],
           "reference": case.reference, "goal": case.goal, "vs_reference": speedup(case, ours, case.reference)}
    if values.get("lerobot"):
        theirs = statistics.median(values["lerobot"])
        row |= {"lerobot": theirs, "lerobot_runs": values["lerobot"], "speedup": speedup(case, ours, theirs)}
    else:
        row |= {"lerobot": None, "lerobot_runs": [], "speedup": row["vs_reference"]}
    row["goal_met"] = row["speedup"] >= case.goal
    if values.get(KERNELS_OFF):
        off = statistics.median(values[KERNELS_OFF])
        row |= {"kernels_off": off, "kernels_off_runs": values[KERNELS_OFF], "kernels": speedup(case, ours, off)}
    return row


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s/chunk":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.2f}"


def format_table(rows: list[dict]) -> str:
    head = f"{'case':<16} {'unit':<10} {'robopolicy':>11} {'LeRobot':>11} {'speedup':>8} {'goal':>6} {'met':>4}" \
           f"  {'LeRobot ref':>11}  {'kernels off':>11} {'kernels':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        kernels = f"{r['kernels']:>7.2f}x" if "kernels" in r else f"{'-':>8}"
        lines.append(
            f"{r['case']:<16} {r['unit']:<10} {fmt(r['robopolicy'], r['unit']):>11} {fmt(r['lerobot'], r['unit']):>11}"
            f" {r['speedup']:>7.2f}x {r['goal']:>5.1f}x {'yes' if r['goal_met'] else 'NO':>4}"
            f"  {fmt(r['reference'], r['unit']):>11}  {fmt(r.get('kernels_off'), r['unit']):>11} {kernels}"
        )
    return "\n".join(lines)


def last_json_line(stdout: str) -> dict:
    """The result line a worker printed (the last line that parses as a JSON object)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"worker printed no JSON result line; output ended with: {stdout[-500:]!r}")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# ----------------------------------------------------------------------------------------- batches
def write_batches(path: Path, seed: int = 0, act_padding: bool = True) -> None:
    """Fixed raw windows from the PushT zarr (uint8 images, agent x,y state, actions) + stats, for both sides."""
    import numpy as np
    import torch

    from robopolicy.data.sampler import WindowSampler
    from robopolicy.data.zarr_format import ZarrDataset

    if not ZARR.exists():
        raise FileNotFoundError(f"{ZARR} is missing: the benchmark needs the PushT zarr from ../shared/data")
    ds = ZarrDataset(ZARR)
    everything = np.arange(ds.num_frames)
    state = torch.from_numpy(np.asarray(ds.read("state", everything), dtype=np.float32)[:, :2])
    action = torch.from_numpy(np.asarray(ds.read("action", everything), dtype=np.float32))
    stats = {k: {"min": v.min(0).values, "max": v.max(0).values, "mean": v.mean(0), "std": v.std(0)}
             for k, v in ((STATE, state), (ACTION, action))}
    rng = np.random.default_rng(seed)

    def windows(obs_steps: list[int], act_steps: list[int], batch: int) -> dict:
        sampler = WindowSampler(ds, {"img": obs_steps, "state": obs_steps, "action": act_steps})
        raw = sampler.get_batch(rng.choice(len(sampler), batch, replace=False).tolist())
        return {IMAGE: raw["img"], STATE: raw["state"][..., :2].float().contiguous(),
                ACTION: raw["action"].float(), f"{ACTION}_is_pad": raw["action_is_pad"]}

    def obs_of(w: dict) -> dict:
        return {IMAGE: w[IMAGE][:1].clone(), STATE: w[STATE][:1].clone()}

    dp = windows([-1, 0], list(range(-1, 15)), 64)
    # ACT's cost depends on how many of a chunk's 100 actions are padding (robopolicy skips them): time it over
    # ACT_BATCHES batches drawn the way training draws them, the same batches on both sides
    act = [windows([0], list(range(100)), 8) for _ in range(ACT_BATCHES)]
    if not act_padding:  # what a dataset of long episodes looks like: no chunk runs past its episode's end
        for w in act:
            w[f"{ACTION}_is_pad"] = torch.zeros_like(w[f"{ACTION}_is_pad"])
    parts = {"diffusion": {"batches": [dp], "obs": obs_of(dp)}, "act": {"batches": act, "obs": obs_of(act[0])}}
    torch.save({"stats": stats, **parts}, path)


# ----------------------------------------------------------------------------------------- robopolicy worker
def paper_policy(family: str, stats: dict):
    from robopolicy.policies.base import FeatureSpec
    from robopolicy.policies.policy import Policy, make_normalizer

    inputs = {IMAGE: FeatureSpec((3, 96, 96), "image"), STATE: FeatureSpec((2,), "state")}
    outputs = {ACTION: FeatureSpec((2,), "action")}
    if family == "act":
        from robopolicy.policies.act.configuration import ACTConfig

        config = ACTConfig(input_features=inputs, output_features=outputs)
    else:
        from robopolicy.policies.common.denoiser import DenoiserConfig, UnetConfig
        from robopolicy.policies.common.encoders import EncoderConfig
        from robopolicy.policies.diffusion.configuration import DiffusionConfig

        ddpm = family == "diffusion_ddpm"
        config = DiffusionConfig(
            input_features=inputs, output_features=outputs, n_obs_steps=2, horizon=16, n_action_steps=8,
            denoiser=DenoiserConfig(unet=UnetConfig(down_dims=(512, 1024, 2048)),
                                    encoder=EncoderConfig(crop_shape=(84, 84))),
            inference_scheduler="ddpm" if ddpm else "ddim", num_inference_steps=100 if ddpm else 10,
        )
    numeric = {k: {s: v.numpy() for s, v in st.items()} for k, st in stats.items()}
    return Policy(config, make_normalizer(config, numeric))


def time_policy(policy, batches: list[dict] | None, obs: dict | None, steps: int, warmup: int, ema: bool = True
                ) -> tuple[float, list[float]]:
    """Train steps exactly as robopolicy's trainer runs them (minus data loading; step i on batches[i % len]; the EMA
    update when the head's presets use one), or predict_chunk calls."""
    import torch

    from robopolicy.train.config import OptimConfig
    from robopolicy.train.ema import EMA
    from robopolicy.train.trainer import make_optimizer

    times = []
    if batches is not None:
        optimizer = make_optimizer(policy.head.parameters(), OptimConfig())
        ema = EMA(policy.head) if ema else None
        params = list(policy.parameters())
        policy.train()
        for i in range(warmup + steps):
            batch = batches[i % len(batches)]
            t0 = time.perf_counter()
            out = policy(batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, OptimConfig().grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(policy.head)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return batches[0][ACTION].shape[0] * len(times) / sum(times), times
    policy.eval()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        policy.predict_chunk(obs)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def robopolicy_worker(case: str, batches: Path, steps: int, warmup: int) -> dict:
    import torch

    from robopolicy.policies.common import kernels

    torch.manual_seed(0)
    data = torch.load(batches, weights_only=False)
    family = "act" if case.startswith("act") else "diffusion"
    policy = paper_policy(case if case == "diffusion_ddpm" else family, data["stats"])
    part = data[family]
    train = CASES[case].train
    # EMA as in the presets: diffusion keeps one (power 0.75), ACT's presets train without (as the paper and LeRobot)
    value, times = time_policy(policy, part["batches"] if train else None, None if train else part["obs"], steps,
                               warmup, ema=family == "diffusion")
    return {"side": "robopolicy", "case": case, "value": value, "unit": CASES[case].unit, "times": times,
            "params": sum(p.numel() for p in policy.head.parameters()), "threads": torch.get_num_threads(),
            "kernels": kernels.mode(), "kernels_enabled": kernels.enabled("cpu")}


def preset_worker(name: str, steps: int, warmup: int) -> dict:
    """predict_chunk latency (batch 1) of a training preset, with stats from its dataset."""
    import torch

    from robopolicy.data.dataset import open_dataset
    from robopolicy.train.config import load_config
    from robopolicy.train.trainer import build_policy

    path = REPO / "configs" / f"{name}.yaml"
    cfg = load_config(path, [f"--data.uri={DATA / Path(load_config(path).data.uri).name}"])
    policy = build_policy(cfg, open_dataset(cfg.data.uri))
    torch.manual_seed(0)
    obs = policy.config.fake_obs(1)
    for key, spec in policy.config.input_features.items():
        if spec.kind == "image":
            obs[key] = (obs[key] * 255).to(torch.uint8)
    value, times = time_policy(policy, None, obs, steps, warmup)
    return {"side": "robopolicy", "case": f"preset:{name}", "value": value, "unit": "s/chunk", "times": times,
            "params": sum(p.numel() for p in policy.head.parameters()), "threads": torch.get_num_threads(),
            "horizon": policy.config.horizon, "n_action_steps": policy.config.n_action_steps}


# ----------------------------------------------------------------------------------------- driver
def run_worker(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return last_json_line(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same on both sides")
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--lerobot-python", default=os.environ.get("LEROBOT_PYTHON", DEFAULT_LEROBOT_PYTHON))
    ap.add_argument("--no-lerobot", action="store_true", help="compare against the reference figures only")
    ap.add_argument("--presets", action="store_true", help="also time the CPU-practical presets' predict_chunk")
    ap.add_argument("--kernels-off", action="store_true",
                    help="also run robopolicy with ROBOPOLICY_CPU_KERNELS=off, alternating with the other sides")
    ap.add_argument("--no-act-padding", action="store_true",
                    help="mark every action of the ACT batches as real (no padding): the worst case for robopolicy")
    ap.add_argument("--preset-names", default=",".join(PRESETS))
    ap.add_argument("--json", type=Path, help="write all results here")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["robopolicy", "preset"], help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.worker:
        torch.set_num_threads(args.threads)
        if args.worker == "robopolicy":
            result = robopolicy_worker(args.case, args.batches, args.steps, args.warmup)
        else:
            result = preset_worker(args.case, args.steps, args.warmup)
        print(json.dumps(result))
        return 0

    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    sides = ["robopolicy"]
    lerobot_python = Path(args.lerobot_python)
    if not args.no_lerobot:
        if not lerobot_python.exists():
            ap.error(f"{lerobot_python} not found: create the LeRobot venv (benchmarks/setup_lerobot_venv.sh) "
                     "or pass --no-lerobot to compare against the reference figures")
        sides.append("lerobot")
    if args.kernels_off:
        sides.append(KERNELS_OFF)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    loads = [load_average()]
    print(f"threads {args.threads}, repeats {args.repeats}, load average at start {loads[0]}", flush=True)
    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        batches = Path(tmp) / "batches.pt"
        write_batches(batches, act_padding=not args.no_act_padding)
        import torch

        pads = torch.cat([b[f"{ACTION}_is_pad"] for b in torch.load(batches, weights_only=False)["act"]["batches"]])
        print(f"ACT batches: {pads.float().mean().item():.1%} of the action steps are padding", flush=True)
        for case in cases:
            values: dict[str, list[float]] = {s: [] for s in sides}
            for _, rep, side in schedule([case], args.repeats, sides):
                steps = str(CASES[case].steps)
                common = ["--case", case, "--batches", str(batches), "--steps", steps,
                          "--warmup", str(CASES[case].warmup), "--threads", str(args.threads)]
                side_env = env
                if side == "lerobot":
                    cmd = [str(lerobot_python), str(LEROBOT_SCRIPT), *common]
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "robopolicy", *common]
                    if side == KERNELS_OFF:
                        side_env = {**env, "ROBOPOLICY_CPU_KERNELS": "off"}
                t0 = time.perf_counter()
                result = run_worker(cmd, side_env)
                result |= {"repeat": rep, "wall_s": time.perf_counter() - t0, "load_after": load_average()}
                raw.append(result)
                values[side].append(result["value"])
                print(f"  {case:<15} run {rep + 1} {side:<22} {fmt(result['value'], result['unit']):>10} "
                      f"{result['unit']}  (load {result['load_after'][0]:.2f})", flush=True)
            rows.append(summarize(CASES[case], values))
    loads.append(load_average())

    preset_rows = []
    if args.presets:
        for name in [n for n in args.preset_names.split(",") if n]:
            values = []
            for rep in range(args.repeats):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "preset", "--case", name,
                       "--steps", "10", "--warmup", "2", "--threads", str(args.threads)]
                result = run_worker(cmd, env) | {"repeat": rep, "load_after": load_average()}
                raw.append(result)
                values.append(result["value"])
            preset_rows.append({"preset": name, "s_per_chunk": statistics.median(values), "runs": values,
                                "params": result["params"], "horizon": result["horizon"],
                                "n_action_steps": result["n_action_steps"],
                                "fits_10hz": statistics.median(values) < 0.1})
        loads.append(load_average())

    print()
    print(f"Paper image config (PushT 96x96, ResNet-18 GN, crop 84, UNet 512/1024/2048, T_o=2, H=16, batch 64; "
          f"ACT chunk 100, batch 8). torch threads {args.threads} on both sides; medians of {args.repeats} "
          "interleaved runs; training excludes data loading (fixed in-memory batches).")
    print(format_table(rows))
    if preset_rows:
        print("\nCPU-practical presets, predict_chunk at batch 1 (median of runs, each the median of 10 chunks):")
        for p in preset_rows:
            print(f"  {p['preset']:<28} {p['s_per_chunk'] * 1000:7.1f} ms  H={p['horizon']:<3} "
                  f"params {p['params'] / 1e6:6.2f}M  {'fits' if p['fits_10hz'] else 'DOES NOT fit'} a 10 Hz loop")
    print(f"\nload average (1, 5, 15 min): start {loads[0]}, end {loads[-1]} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "presets": preset_rows, "runs": raw, "loads": loads,
                                         "threads": args.threads, "repeats": args.repeats}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
