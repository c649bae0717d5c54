# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision are pinned here (not in pyproject) so pip takes the wheels this machine has on disk;
# override with `make TORCH_SPEC="torch" test` elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test test-slow demo lint bench clean-venv browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,sim,real]"
	touch $(STAMP)

test: $(STAMP) browser
	$(VENV)/bin/ruff check robopolicy tests benchmarks
	MUJOCO_GL=egl $(PY) -m pytest -q --durations=25

# Debian's chromium for the page tests (tests/test_viz.py; they skip without it): installed when root can
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && timeout 600 apt-get install -y -q chromium \
		>/dev/null 2>&1; } || echo "chromium not installed: the browser tests will skip"

test-slow: $(STAMP)
	MUJOCO_GL=egl $(PY) -m pytest -q -m slow

# The embedded default: scripted robosuite Lift demos -> low-dim Diffusion Policy -> 50 unseen-seed episodes.
DEMO := outputs/demo
demo: $(STAMP)
	MUJOCO_GL=egl $(VENV)/bin/robopolicy collect --env robosuite:Lift --episodes $(or $(DEMO_EPISODES),100) \
		--out $(DEMO)/lift.zarr --overwrite
	$(VENV)/bin/robopolicy train --config configs/diffusion_lift_lowdim.yaml --data.uri=$(DEMO)/lift.zarr \
		--train.output_dir=$(DEMO)/train --train.overwrite=true
	MUJOCO_GL=egl $(VENV)/bin/robopolicy eval --checkpoint $(DEMO)/train --env robosuite:Lift --episodes 50 \
		--seed 100000 --n-envs 2 --max-steps 200 --out $(DEMO)/eval --overwrite
	@echo "checkpoint: $$(cat $(DEMO)/train/checkpoints/last) in $(DEMO)/train/checkpoints/   videos: $(DEMO)/eval/videos/"

lint: $(STAMP)
	$(VENV)/bin/ruff check robopolicy tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_loader.py

clean-venv:
	rm -rf $(VENV)
