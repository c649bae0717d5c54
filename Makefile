# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision are pinned here (not in pyproject) so pip takes the wheels this machine has on disk;
# override with `make TORCH_SPEC="torch" test` elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test test-slow demo lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,sim]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check robopolicy tests benchmarks
	MUJOCO_GL=egl $(PY) -m pytest -q

test-slow: $(STAMP)
	MUJOCO_GL=egl $(PY) -m pytest -q -m slow

demo: $(STAMP)
	MUJOCO_GL=egl $(VENV)/bin/robopolicy collect --env robosuite:Lift --episodes 20 --out outputs/demo/lift.zarr --overwrite
	$(VENV)/bin/robopolicy info outputs/demo/lift.zarr

lint: $(STAMP)
	$(VENV)/bin/ruff check robopolicy tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_loader.py

clean-venv:
	rm -rf $(VENV)
