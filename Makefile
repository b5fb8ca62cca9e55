# One command installs and runs each job; .venv is created from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit test-ray contract test-slow benchmark lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU PyTorch wheel first (the package itself only asks for torch>=2.3)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[mujoco,atari,zoo,test,ray,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo_hopper.py

# our tests (the docs build included), the Ray cluster tests in a network namespace of their own, and the peers' own
# suites (SB3, sb3-contrib, rl-zoo3) with our classes dropped in
test: test-unit test-ray contract

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout 900 tests --ignore=tests/distributed

# Ray only inside `unshare -n` (loopback only; needs root): see tests/distributed/run.sh
test-ray: $(STAMP)
	PY=$(PY) bash tests/distributed/run.sh

contract: $(STAMP)
	$(PY) tests/contracts/run_peer_suites.py --jobs 2

# the learning runs; tests/distributed (no slow tests) runs only inside its namespace, and its conftest would shadow
# tests/conftest.py's helpers in one collection
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout 3600 tests --ignore=tests/distributed

benchmark: $(STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/matrix.py --preset classic --workers 2
	$(PY) -m reporting matrix-report

lint: $(STAMP)
	$(PIP) install ruff mypy
	$(PY) -m ruff check sb3_trpo_ext tests benchmarks reporting vine_study envs examples
	$(PY) -m ruff format --check sb3_trpo_ext tests benchmarks reporting vine_study envs examples
	$(PY) -m mypy sb3_trpo_ext

# the documentation site into docs/_build/html: warnings are errors, every cross-reference is checked (nitpicky)
docs: $(STAMP)
	$(PY) -c "import sphinx, myst_parser, sphinx_rtd_theme" 2>/dev/null || $(PIP) install -e ".[docs]"
	$(PY) -m sphinx -W --keep-going -n -b html docs docs/_build/html

clean:
	rm -rf $(VENV) demo_output benchmarks/output
