#!/usr/bin/env bash
# GPU smoke check for a CUDA machine, under 10 minutes:
#   1. pytest -m gpu (tests/gpu: training with EMA + bf16 and resume, every head's chunk, RTC, server round trips)
#   2. chunk latency of the paper-size ACT and diffusion (DDIM-10) policies on the GPU (batch 1, median of 5),
#      built by benchmarks/bench_policy_speed.py
#   3. a short bench_policy_speed.py run (CPU side, its own reference figures: act_chunk, diffusion_ddim)
# and one summary line at the end. Steps 2-3 need ../shared/data/pusht_cchi_v7_replay.zarr (reported as skipped
# without it). Exits 2 without CUDA, 1 when a step fails.
#   usage: benchmarks/gpu_smoke.sh        (PY=path/to/python to use another interpreter than .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export MUJOCO_GL=${MUJOCO_GL:-egl}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if ! device=$("$PY" -c "import torch, sys; torch.cuda.is_available() or sys.exit(1); print(torch.cuda.get_device_name(0))"); then
    echo "gpu smoke: FAILED: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
status=0

echo "== 1/3 pytest -m gpu on $device"
timeout 360 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu --junitxml "$out/gpu.xml" || status=1
tests=$("$PY" - "$out/gpu.xml" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("pytest did not finish")
    raise SystemExit
suite = root if root.tag == "testsuite" else root.find("testsuite")
n, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"{n - failed - errors - skipped} passed, {failed + errors} failed, {skipped} skipped/xfailed")
PYEOF
)

echo "== 2/3 paper-size chunk latency on $device"
timeout 180 "$PY" - > "$out/cuda_speed.txt" <<'PYEOF' || true
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
import bench_policy_speed as bench  # noqa: E402

if not bench.ZARR.exists():
    print(json.dumps({"skipped": f"no {bench.ZARR}"}))
    raise SystemExit
with tempfile.TemporaryDirectory() as tmp:
    bench.write_batches(Path(tmp) / "batches.pt")
    data = torch.load(Path(tmp) / "batches.pt", weights_only=False)
result = {}
for family in ("act", "diffusion"):
    torch.manual_seed(0)
    policy = bench.paper_policy(family, data["stats"]).to("cuda").eval()
    times = []
    for i in range(6):  # the first call warms up (cuDNN autotuning, lazy init)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        policy.predict_chunk(data[family]["obs"])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result[family] = statistics.median(times[1:])
print(json.dumps(result))
PYEOF
cuda_speed=$("$PY" - "$out/cuda_speed.txt" <<'PYEOF'
import json
import sys

try:
    r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except (OSError, IndexError, ValueError):
    print("FAILED")
    raise SystemExit
print(f"skipped ({r['skipped']})" if "skipped" in r else
      f"ACT chunk {r['act'] * 1e3:.1f} ms, diffusion DDIM-10 chunk {r['diffusion'] * 1e3:.1f} ms")
PYEOF
)
[[ $cuda_speed == FAILED ]] && status=1

echo "== 3/3 bench_policy_speed.py, short run"
timeout 240 "$PY" benchmarks/bench_policy_speed.py --cases act_chunk,diffusion_ddim --repeats 1 --threads 4 \
    --no-lerobot --json "$out/bench.json" || true
cpu_speed=$("$PY" - "$out/bench.json" <<'PYEOF'
import json
import sys

try:
    rows = {r["case"]: r["robopolicy"] for r in json.load(open(sys.argv[1]))["rows"]}
except (OSError, KeyError, ValueError):
    print("skipped or FAILED (see above)")
    raise SystemExit
print(f"ACT {rows['act_chunk'] * 1e3:.0f} ms, diffusion {rows['diffusion_ddim'] * 1e3:.0f} ms")
PYEOF
)

[[ $tests == *" 0 failed"* && $tests != "0 passed"* ]] || status=1  # nothing run is no pass
verdict=$([[ $status == 0 ]] && echo PASS || echo FAIL)
echo "gpu smoke: $tests; $cuda_speed on $device; CPU bench (4 threads): $cpu_speed; $verdict"
exit $status
