#!/usr/bin/env bash
# Create a separate venv with LeRobot 0.4.4 for the opt-in LeRobot comparison scripts in benchmarks/.
#
# LeRobot 0.4.4 pins torch<2.11 (a multi-GB download); instead the venv reuses torch 2.14.1 / torchvision /
# numpy / pyarrow from the project venv through a .pth file appended to sys.path, installs LeRobot without
# its dependencies, and installs into itself (so they shadow the project venv's) the packages that importing
# `lerobot.datasets.lerobot_dataset` needs, at LeRobot's pins. torchcodec is not installed: it needs system
# FFmpeg shared libraries and its 0.10 build targets torch 2.10; the scripts use video_backend="pyav".
# LeRobot's pyav path needs torchvision.io.VideoReader (gone in torchvision 0.26+): benchmarks/lerobot_runtime.py
# supplies it at run time. transformers is installed at LeRobot's pin (<5) because `lerobot.policies` imports it
# whenever it is importable, and the project venv's transformers 5 needs a newer huggingface-hub than LeRobot's.
#
# Usage: bash benchmarks/setup_lerobot_venv.sh [VENV_DIR]   (default /work/lrvenv; never the project venv)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-/work/lrvenv}"
MAIN_SITE="$REPO/.venv/lib/python3.11/site-packages"

if [[ "$(realpath -m "$VENV")" == "$(realpath -m "$REPO/.venv")" ]]; then
    echo "refusing to install LeRobot into the project venv $REPO/.venv" >&2
    exit 2
fi
if [[ ! -d "$MAIN_SITE/torch" ]]; then
    echo "$MAIN_SITE has no torch: create the project venv first" >&2
    exit 2
fi

python3 -m venv "$VENV"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$MAIN_SITE" > "$SITE/zz_robopolicy_main_venv.pth"

PIP=("$VENV/bin/pip" install --disable-pip-version-check)
"${PIP[@]}" --no-deps "lerobot==0.4.4"
"${PIP[@]}" \
    "datasets>=4.0.0,<5.0.0" \
    "huggingface-hub>=0.34.2,<0.36.0" \
    "av>=15.0.0,<16.0.0" \
    "draccus==0.10.0" \
    "einops>=0.8.0,<0.9.0" \
    "jsonlines>=4.0.0,<5.0.0" \
    "deepdiff>=7.0.1,<9.0.0" \
    "termcolor>=2.4.0,<4.0.0" \
    "packaging>=24.2,<26.0" \
    "imageio>=2.34.0,<3.0.0" \
    "accelerate>=1.10.0,<2.0.0" \
    "setuptools>=77.0.3,<81.0.0" \
    "pandas>=2.2.2,<2.4.0" \
    "diffusers==0.35.2" \
    "pyserial==3.5" \
    "transformers>=4.57.1,<5.0.0"

"$VENV/bin/python" -c 'import torch, lerobot.datasets.lerobot_dataset; print("LeRobot venv ready; torch", torch.__version__, "from", torch.__file__)'
