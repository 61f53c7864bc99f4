# Everything installs into virtual environments this Makefile creates; never the system Python.
#   .venv     the default install: current JAX, no TensorFlow (README's commands use it)
#   .venv-nt  the neural-tangents extra with its pinned JAX 0.4.35 (exact-NTK and stax cross-checks)
PYTHON  ?= python3
VENV    ?= .venv
VENV_NT ?= .venv-nt
PY      := $(VENV)/bin/python
PY_NT   := $(VENV_NT)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: venv venv-nt demo test test-slow test-nt bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv-nt: $(VENV_NT)/.installed

$(VENV_NT)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_NT)
	$(PY_NT) -m pip install --quiet --upgrade pip
	$(PY_NT) -m pip install --quiet -e '.[nt]'
	touch $@

# Main job on bundled data: scores, detection, summarization and an HTML report.
demo: venv
	$(VENV)/bin/ntk-info demo --out results/demo --force

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

test-nt: venv-nt
	$(PY_NT) -m pytest -q -o addopts="-p no:cacheprovider" -m nt tests/nt

bench: venv
	$(PY) experiments/bench_loo.py
	$(PY) experiments/bench_features.py

clean:
	rm -rf $(VENV) $(VENV_NT) results
