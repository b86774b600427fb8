# Two commands a newcomer runs (README): `make demo` and `make test`. Both create the virtual
# environment at .venv, install torch and the dependencies, and build the extension, each step
# only when its inputs changed, so running them again is cheap.
#
#   make demo        set up, then: backend table, train a small GPT, sample, quick benchmark
#   make test        set up (with the CUDA-emulator backend), then the whole test-suite
#   make bench       set up, then the full side-by-side benchmark
#   make clean       remove build outputs (keeps .venv)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Compile jobs: all cores by default.
export MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# The test build adds babygpt_ext._C_emu (csrc/cuda kernels run on the CPU).
export BABYGPT_EXT_EMU ?= 1

SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

# Fails early when directory $(1) has less than $(2) GB free. Torch and its CUDA libraries take
# ~6 GB in .venv and the build writes ~1 GB to $TMPDIR; a disk that fills up mid-build surfaces
# as a compiler error that hides the cause.
define need_disk
	@free=$$(df -Pk "$(1)" | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(2) ]; then \
	  echo "error: $(1) has $$free GB free, setup needs $(2) GB: free some disk (or point TMPDIR elsewhere)" >&2; \
	  exit 1; fi
endef

.PHONY: demo test bench clean setup

setup: $(VENV)/.built

$(VENV)/.deps: pyproject.toml
	$(call need_disk,.,7)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel ninja
	$(BIN)/python -m pip install --quiet "torch>=2.5"
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(call need_disk,$${TMPDIR:-/tmp},2)
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test]"
	touch $@

demo: setup
	$(BIN)/babygpt demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/babygpt bench

clean:
	rm -rf build *.egg-info babygpt_ext/*.so $(VENV)/.built
