# `make demo` and `make test` set everything up themselves (a Python 3.12 venv in .venv; the tests
# run in .venv-aot, which adds the TPU and GPU compile toolchains of requirements-aot.txt).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
AOT_VENV := .venv-aot
AOT_PY := $(AOT_VENV)/bin/python
DEMO_WORKDIR ?= workdirs/demo

REF_VENV := .venv-ref
REF_PY := $(REF_VENV)/bin/python

.PHONY: demo test lint venv aot-venv reference-venv clean

# A Python >= 3.12: $PYTHON, python3.12/python3 on PATH, pyenv's versions, or a clear error.
define find_python
for candidate in "$${PYTHON:-}" python3.12 python3.13 python3 \
    $$(ls -d "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
  [ -n "$$candidate" ] || continue; \
  if "$$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
    echo "$$candidate"; exit 0; fi; \
done; \
echo "error: no Python >= 3.12 found. Install one (python.org, pyenv install 3.12, or your OS's python3.12)" \
  "and rerun, or point to it: make PYTHON=/path/to/python3.12 ..." >&2; exit 1
endef

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	@python_bin=$$($(find_python)) || exit 1; \
	  echo "Creating $(VENV) with $$python_bin ($$($$python_bin --version))"; \
	  "$$python_bin" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --editable .  # commands work from any directory
	touch $@

venv: $(VENV)/.installed

# .venv plus the compile toolchains (focusclip_jax.aot), kept apart so that nothing else loads
# libtpu or the CUDA plugin: .venv's packages are seen through a site dir added at start-up.
$(AOT_VENV)/.installed: requirements-aot.txt $(VENV)/.installed
	rm -rf $(AOT_VENV)
	$(PY) -m venv $(AOT_VENV)
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  aot_site=$$($(AOT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  echo "import site; site.addsitedir('$$(realpath $$site)')" > "$$aot_site/focusclip_venv.pth"
	$(AOT_PY) -m pip install --quiet --no-deps -r requirements-aot.txt
	touch $@

aot-venv: $(AOT_VENV)/.installed

# Python 3.11 for the reference venv: the CPU torch wheel of requirements-reference.txt is built
# for it. $$PYTHON_REF, python3.11/python3 on PATH, pyenv's 3.11 versions, or a clear error.
define find_python_reference
for candidate in "$${PYTHON_REF:-}" python3.11 python3 \
    $$(ls -d "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.11*/bin/python3 2>/dev/null); do \
  [ -n "$$candidate" ] || continue; \
  if "$$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
    echo "$$candidate"; exit 0; fi; \
done; \
echo "error: no Python 3.11 found. Install one (python.org, pyenv install 3.11, or your OS's" \
  "python3.11) and rerun, or point to it: make PYTHON_REF=/path/to/python3.11 reference-venv" >&2; exit 1
endef

# The PyTorch references (bench/compare.py, bench/make_parity_goldens.py, bench/export_roundtrip.py):
# torch, timm, open_clip and transformers on CPU, never needed by focusclip_jax or its tests. Plain
# pip, which takes torch 2.13.0+cpu from a local wheel where pip's find-links has one.
$(REF_VENV)/.installed: requirements-reference.txt
	rm -rf $(REF_VENV)
	@python_bin=$$($(find_python_reference)) || exit 1; \
	  echo "Creating $(REF_VENV) with $$python_bin ($$($$python_bin --version))"; \
	  "$$python_bin" -m venv $(REF_VENV)
	$(REF_PY) -m pip install --quiet --upgrade pip
	$(REF_PY) -m pip install --quiet -r requirements-reference.txt
	touch $@

reference-venv: $(REF_VENV)/.installed

demo: venv
	rm -rf $(DEMO_WORKDIR)
	$(PY) -m focusclip_jax.main --config=configs/demo.py --workdir=$(DEMO_WORKDIR)

# CLIP vs FocusCLIP on SynthPose, 3 seeds, zero-shot with and without distractors (~9 min on 2 cores).
.PHONY: synthpose-bench
synthpose-bench: venv
	$(PY) -m bench.synthpose

# Test processes: each holds 8 fake CPU devices and 1-3 GB; tests go to whichever is free.
PYTEST_WORKERS ?= 2
test: aot-venv
	$(VENV)/bin/ruff check .
	$(AOT_PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(AOT_VENV) $(REF_VENV) workdirs
