# kscale: two commands do all the set-up on a fresh machine.
#   make sweep   creates .venv if needed, then runs the embedded default study (toy ladder)
#   make test    creates .venv if needed, then runs the whole test suite (what .ci/run calls)
#   make test-fast  the development loop: everything but the `slow` end-to-end tests
#
# torch is installed first and on its own, so that pip never pulls a multi-GB CUDA
# build through another package's requirement. Override TORCH_SPEC for your platform,
# e.g. `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv sweep test test-fast bench clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

sweep: venv
	$(PY) run_sweep.py $(ARGS)

test: venv
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not gpu and not slow" -q $(PYTEST_ARGS)

bench: venv
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
