# Set-up and entry points. The virtual environment lives outside the clone, keyed on the
# dependency files, so a second run (or a second clone) installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV_ROOT ?= $(HOME)/.cache/ttt-checks
DEPS_KEY := $(shell $(PYTHON) .ci/deps-key)
VENV ?= $(VENV_ROOT)/venv-$(DEPS_KEY)
PY := $(VENV)/bin/python
EXTRAS ?= dev,asr,moshi,train
PYTEST_ARGS ?=
export NO_TORCH_COMPILE := 1
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: venv system-deps demo test test-gpu bench zoo clean-venv

# Dependencies are installed once per DEPS_KEY; the project itself is (re)installed in
# editable mode whenever the venv last pointed at another clone.
$(VENV)/.deps-ok:
	@mkdir -p $(VENV_ROOT)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

venv: $(VENV)/.deps-ok
	@if [ "$$(cat $(VENV)/.project-path 2>/dev/null)" != "$(CURDIR)" ]; then \
	  $(PY) -m pip install -q --no-deps --no-build-isolation -e . && echo "$(CURDIR)" > $(VENV)/.project-path; fi

# Debian packages (espeak-ng for speech; Slurm, munge and Chromium for the tests). Needs root;
# skipped when present.
system-deps:
	@bash .ci/system-deps test

demo: venv
	@bash .ci/system-deps demo
	$(VENV)/bin/ttt-checks demo

# pytest's exit code 5 (no tests collected) is a failure here, said plainly.
test: system-deps venv
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "ttt-checks: pytest collected no tests (exit 5): treated as a failure" >&2; fi; \
	  exit $$rc

test-gpu: system-deps venv
	$(PY) -m pytest -m gpu tests_gpu $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench_figure5.py

clean-venv:
	rm -rf $(VENV)
