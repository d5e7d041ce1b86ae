# posttrain — `make test` and `make sft` work as the first command on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed only when the venv has none. The default is the CPU build this project is tested
# with; GPU users install their own torch into .venv first (see README), and it is kept.
TORCH  ?= torch==2.13.0
# The TRL release installed: 1.12.0 is the tested default stack (the last with PPOTrainer, so every stage and the demo
# run). Any release in pyproject's range works for the other stages, e.g. a second venv beside the first:
# `make test VENV=.venv-trl116 TRL=1.16.0` (what .ci/run does).
TRL    ?= 1.12.0
RECIPE ?= alpaca_gpt2
PIPELINE ?= rlhf_gpt2
ARGS   ?=
TEST_ARGS ?=
# NPROC>1 launches through Accelerate with recipes/accelerate/$(ACCEL).yaml; ACCEL=auto picks ddp on a
# machine with NVIDIA GPUs and the 2-process CPU (gloo) config otherwise.
NPROC  ?= 1
ACCEL  ?= auto
ACCEL_NAME := $(if $(filter auto,$(ACCEL)),$(if $(shell command -v nvidia-smi 2>/dev/null),ddp,cpu_2proc),$(ACCEL))
POSTTRAIN := $(if $(filter-out 1,$(NPROC)),$(BIN)/accelerate launch --config_file recipes/accelerate/$(ACCEL_NAME).yaml --num_processes $(NPROC) -m posttrain,$(BIN)/posttrain)

# One make target per stage: every module in posttrain/stages/ but the shared ones is a stage (see its STAGE).
STAGES := $(filter-out __init__ common,$(basename $(notdir $(wildcard posttrain/stages/*.py))))

.PHONY: install test test-fast lint $(STAGES) pipeline validate recipes clean

INSTALLED := $(VENV)/.installed-trl$(TRL)

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]" "trl==$(TRL)"
	rm -f $(VENV)/.installed-trl*
	touch $@

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(TEST_ARGS) tests

# The unit-level tests: everything not marked slow (no training, no subprocesses, no demo).
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(TEST_ARGS) tests

lint: install
	$(BIN)/ruff check posttrain tests bench

validate: install
	$(BIN)/posttrain validate $(RECIPE) $(ARGS)

$(STAGES): install
	$(POSTTRAIN) train $(RECIPE) $(ARGS) --stage $@

recipes: install
	$(BIN)/posttrain recipes

pipeline: install
	$(POSTTRAIN) pipeline $(PIPELINE) $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# The whole pipeline offline on SmolLM2-135M-Instruct with held-out measurements (DEMO_FAST=1: a tiny model, seconds).
DEMO_FAST ?=
.PHONY: demo
demo: $(VENV)/.installed-demo
	DEMO_FAST=$(DEMO_FAST) HF_HUB_OFFLINE=1 $(BIN)/posttrain demo $(ARGS)

$(VENV)/.installed-demo: $(INSTALLED)
	$(BIN)/pip install -q -e ".[demo]"
	touch $@

# Benchmarks (bench/run.py runs the list in it; bench/<name>.py runs one): each rewrites its section of
# bench/RESULTS.md. BENCH_ARGS=--quick: a smoke run.
.PHONY: bench
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# GPU check (bench/gpu_check.py): every stage a few steps on one GPU, speed, MFU, peak memory vs `plan`, plain TRL
# side by side; writes bench/GPU.md. No network needed there: `make gpu-wheels` (here) puts the wheels the GPU
# image lacks into .whl/ for Python 3.12 x86-64, and bench/gpu_check.sh installs them into .site/.
# GPU_ARGS=--dry-run: tiny shapes, one step per row, on CPU.
GPU_ARGS ?=
GPU_WHEELS ?= trl==1.12.0 datasets==5.2.0 bitsandbytes==0.50.2 dill==0.4.1 multiprocess==0.70.19 \
	requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.3 certifi==2026.10.19.post1
.PHONY: gpu-check gpu-wheels
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash bench/gpu_check.sh $(GPU_ARGS)

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	du -sh .whl
