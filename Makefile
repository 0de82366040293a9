# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format experiments bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch first (from local disk here); the package's own range then installs nothing more
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pyrovae.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	PYROVAE_SLOW=1 $(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

experiments: $(STAMP)
	$(PY) benchmarks/seed_experiments.py

bench: $(STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/reference_protocol.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
