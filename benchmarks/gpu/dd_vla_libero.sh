#!/usr/bin/env bash
# dd_vla from a pretrained VLM on LIBERO, on a CUDA machine (not run on the CPU development machines).
# See benchmarks/gpu/README.md for what each step does, the expected numbers and the differences to the paper.
#
#   usage: benchmarks/gpu/dd_vla_libero.sh [check|train|bench|all]      (default: all)
#   env:   PY (python, default .venv/bin/python), DATA (LeRobot LIBERO dataset, default hf://HuggingFaceVLA/libero),
#          MODEL (transformers VLM, default HuggingFaceTB/SmolVLM-500M-Instruct), IMAGE_KEY / WRIST_KEY / STATE_KEY,
#          EPISODES (a suite's episode indices as a YAML list, default all), STEPS (default 100000),
#          BATCH (global batch, default 64 = 8 per GPU on 8 GPUs), LORA_RANK (default 32; 0 = full fine-tuning),
#          NPROC (processes, default: every GPU), OUT (run directory, default outputs/gpu/dd_vla_libero)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-hf://HuggingFaceVLA/libero}
MODEL=${MODEL:-HuggingFaceTB/SmolVLM-500M-Instruct}
IMAGE_KEY=${IMAGE_KEY:-observation.images.image}
WRIST_KEY=${WRIST_KEY:-observation.images.image2}
STATE_KEY=${STATE_KEY:-observation.state}
EPISODES=${EPISODES:-null}
STEPS=${STEPS:-100000}
BATCH=${BATCH:-64}
LORA_RANK=${LORA_RANK:-32}
OUT=${OUT:-outputs/gpu/dd_vla_libero}
STEP=${1:-all}

"$PY" -c "import torch, sys; torch.cuda.is_available() or sys.exit('no CUDA device here: run this on a GPU machine')"
NPROC=${NPROC:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}

check() {
    # peft for LoRA; the dataset's keys (the defaults are LeRobot's LIBERO layout: two 256x256 cameras, an 8-d
    # state, 7-d delta-EEF actions with the gripper last, one instruction per episode)
    "$PY" -m pip install -q -e ".[dev,vla]"
    "$PY" -m robopolicy.cli.main info "$DATA"
    "$PY" -m pytest -q -m gpu tests/gpu/test_dd_vla_cuda.py
}

train() {
    # paper / authors' repo: LoRA r=32, lr 5e-4, batch 8 per GPU, <= 200k steps (x0.1 after 100k: here the
    # trainer's cosine decay), random crop to 90% of the area, H = 8 steps x 7 dims = 56 tokens, 256 bins,
    # q01/q99 normalization, binary gripper (the last dim); the new action embedding and head train at the same lr
    local launch=("$PY" -m robopolicy.cli.main)
    if [ "$NPROC" -gt 1 ]; then
        launch=("$(dirname "$PY")/accelerate" launch --num_processes "$NPROC" --multi_gpu --mixed_precision bf16
                -m robopolicy.cli.main)
    fi
    "${launch[@]}" train \
        --policy.type=dd_vla --policy.backbone=vlm --policy.vlm.model="$MODEL" \
        --policy.vlm.lora_rank="$LORA_RANK" --policy.vlm.lora_alpha=16 --policy.vlm.image_size=0 \
        --policy.horizon=8 --policy.n_action_steps=8 --policy.bins=256 "--policy.gripper_dims=[-1]" \
        --policy.crop_ratio=0.9 --policy.action_norm=quantiles --policy.decoding.rounds=12 \
        --policy.language.max_length=48 \
        --data.uri="$DATA" "--data.input_keys=[$IMAGE_KEY,$WRIST_KEY,$STATE_KEY,task]" \
        "--data.episodes=$EPISODES" --data.num_workers=8 \
        --optim.lr=5e-4 --optim.warmup_steps=1000 --optim.weight_decay=0 --optim.grad_clip=1.0 \
        --train.steps="$STEPS" --train.batch_size="$BATCH" --train.amp=bf16 --train.ema_power=0 \
        --train.save_every=10000 --train.log_every=100 --train.output_dir="$OUT" --train.progress=false
}

bench() {
    # chunk latency against T and against left-to-right decoding (NFE = 56) of the trained policy, on this GPU
    # (the paper: 68.8 ms per chunk at T = 12 vs 136.2 ms autoregressive, H800, OpenVLA-7B)
    "$PY" benchmarks/bench_dd_vla_decoding.py --checkpoint "$OUT" --device cuda --repeats 20 \
        --json "$OUT/decoding_latency.json"
}

case "$STEP" in
    check) check ;;
    train) train ;;
    bench) bench ;;
    all) check; train; bench ;;
    *) echo "unknown step $STEP (check | train | bench | all)" >&2; exit 2 ;;
esac
