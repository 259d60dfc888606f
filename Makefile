# The two commands of the README: `make demo` and `make test`. Everything they need is
# installed from scratch: Debian build dependencies of ffcv, a virtualenv, the package.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev g++
TRITON36 := build/triton36
export WANDB_MODE ?= offline

.PHONY: setup test test-fast demo clean system-deps gpu-check

setup: system-deps $(VENV)/.installed

# ffcv compiles against OpenCV and libjpeg-turbo: install them (once) when missing
system-deps:
	@if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null || ! command -v g++ >/dev/null; then \
		echo "installing ffcv's build dependencies: $(APT_PACKAGES)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# GPU images ship torch 2.11 with triton 3.6, which lowers our kernels differently from the
# registry's: the tests also compile every kernel with it (beside the venv, never imported by it)
$(TRITON36)/.installed: | $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --target $(TRITON36) triton==3.6.0
	@touch $@

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# two workers (pytest-xdist); tests that share a costly session fixture stay on one worker
# (xdist_group marks, --dist loadgroup)
PYTEST := $(PY) -m pytest -q -n 2 --dist loadgroup
test: setup $(TRITON36)/.installed
	$(PYTEST) --durations=25

# the inner loop: everything but the end-to-end tests marked slow (CI runs them all)
test-fast: setup $(TRITON36)/.installed
	$(PYTEST) -m "not slow"

# the whole pipeline on a generated dataset: convert, train CrAM+ and SGD, prune and compare
demo: setup
	$(PY) -m ffcv_cram.demo --out demo_out

# everything we need to know from a GPU, in one run of a few minutes (bench/gpu_check.py). A GPU
# machine may have no network: it runs on the interpreter that holds torch there, without the
# virtualenv, and installs ffcv from build/ffcv_carry.tar.xz (bench/pack_ffcv.sh) when missing
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

# the CrAM cost study on real CIFAR-10 (bench/cram_cost_study.py): ARCHIVE=<cifar10-train-jpeg.tar.gz>
# on a GPU machine (its python, like gpu-check); without ARCHIVE the CPU smoke run on generated data
.PHONY: cost-study
cost-study:
	$(GPU_PY) bench/cram_cost_study.py $(if $(ARCHIVE),--archive $(ARCHIVE) --budget-s 480,--smoke) $(COST_STUDY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info demo_out
