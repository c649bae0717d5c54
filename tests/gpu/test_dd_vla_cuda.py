"""dd_vla on a CUDA device: the tiny Idefics3 backbone trains in bf16 and decodes with its cached prefix, LoRA
merges on the device, and accelerate's FSDP2 plugin (refused on a CPU, see tests/policies/test_dd_vla.py) shards
the VLM over every visible GPU (torchrun; one GPU is enough). Skipped without CUDA; `pytest -m gpu`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robopolicy.policies.dd_vla.modeling import merge_lora
from tests.policies.test_dd_vla import _policy, _raw_batch, _raw_obs, _vlm, write_tiny_idefics3

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available()"
                                 " is False); run benchmarks/gpu_smoke.sh on a GPU machine")]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return write_tiny_idefics3(tmp_path_factory.mktemp("vlm") / "tiny-idefics3")


def test_vlm_head_trains_in_bf16_and_decodes_on_cuda(tiny_vlm):
    policy = _policy(_vlm(tiny_vlm, lora_rank=4)).to("cuda")
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = policy.loss(_raw_batch()).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    policy.eval()
    chunk = policy.predict_chunk(_raw_obs(2), torch.Generator("cuda").manual_seed(0), num_samples=3)
    assert chunk.device.type == "cuda" and chunk.shape == (2, 3, 4, 3)
    merged = merge_lora(policy).eval()
    assert merged.device.type == "cuda"
    bf16 = merged.to(torch.bfloat16)
    assert bf16.predict_chunk(_raw_obs(2), torch.Generator("cuda").manual_seed(0)).dtype == torch.bfloat16


WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator

    from robopolicy.policies.dd_vla.modeling import fsdp_plugin
    from tests.policies.test_dd_vla import _policy, _raw_batch, _vlm

    policy = _policy(_vlm(Path(sys.argv[1])))
    acc = Accelerator(fsdp_plugin=fsdp_plugin(policy.head))
    assert acc.distributed_type.value == "FSDP", acc.distributed_type
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    model, opt = acc.prepare(policy, opt)
    for _ in range(2):
        loss = model(_raw_batch()).loss
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss)
    if acc.is_main_process:
        Path(sys.argv[2]).write_text(str(float(loss)))
""")


def test_accelerate_fsdp2_shards_the_vlm_head(tiny_vlm, tmp_path):
    script = tmp_path / "fsdp_worker.py"
    script.write_text(WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc_per_node={torch.cuda.device_count()}", str(script),
           str(tiny_vlm), str(tmp_path / "loss.txt")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert float((tmp_path / "loss.txt").read_text()) > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="train.fsdp shards over processes, one per GPU: needs 2 GPUs "
                    "(tests/train/test_distributed.py runs it on two CPU processes)")
def test_train_fsdp_on_every_gpu_in_bf16(pusht_zarr, tmp_path):
    from robopolicy.policies.policy import Policy

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "run"
    cmd = [str(torchrun), "--standalone", f"--nproc_per_node={torch.cuda.device_count()}", "-m",
           "robopolicy.cli.main", "train", f"--data.uri={pusht_zarr}", "--data.input_keys=[img,state]",
           "--data.episodes=[0,1,2,3]", "--policy.type=dd_vla", "--policy.small.encoder.backbone=resnet10t",
           "--train.steps=4", "--train.batch_size=16", "--train.save_every=2", "--train.amp=bf16",
           "--train.ema_power=0", "--train.fsdp=true", "--train.progress=false", "--train.tensorboard=false",
           f"--train.output_dir={out}"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fsdp: the policy sharded over" in res.stdout
    policy = Policy.load(out)
    obs = {"img": torch.randint(0, 256, (1, 1, 3, 96, 96), dtype=torch.uint8), "state": torch.rand(1, 1, 5) * 400}
    assert torch.isfinite(policy.predict_chunk(obs, torch.Generator().manual_seed(0))).all()
