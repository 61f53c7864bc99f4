# Everything installs into a virtual environment this Makefile creates; never the system Python.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: venv demo test test-slow bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Main job on bundled data: scores, detection, summarization and an HTML report.
demo: venv
	$(VENV)/bin/ntk-info demo --out results/demo --force

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) experiments/bench_loo.py
	$(PY) experiments/bench_features.py

clean:
	rm -rf $(VENV) results
