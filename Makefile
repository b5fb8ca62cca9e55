# One command installs and runs each job; .venv is created from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow benchmark lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU PyTorch wheel first (the package itself only asks for torch>=2.3)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[mujoco,atari,zoo,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo_hopper.py

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout 900 tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout 3600 tests

benchmark: $(STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/matrix.py --preset classic --workers 2
	$(PY) benchmarks/report.py

lint: $(STAMP)
	$(PIP) install ruff mypy
	$(PY) -m ruff check sb3_trpo_ext tests benchmarks examples
	$(PY) -m ruff format --check sb3_trpo_ext tests benchmarks examples
	$(PY) -m mypy sb3_trpo_ext

clean:
	rm -rf $(VENV) demo_output benchmarks/output
