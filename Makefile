# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format docs experiments real-data bench clean

# the package alone (what `make demo` needs): the CPU build of torch first (2.13.0 from local
# disk; the package's own torch range admits it, so nothing else is fetched for it), then the
# package and the rest of its dependencies. torch's modules are byte-compiled by compileall on
# the side while pip waits on the network (pip's own compile would do it serially, and without
# .pyc files every run compiles torch again where PYTHONDONTWRITEBYTECODE is set).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	$(PY) -m compileall -q -j 0 "$$site/torch" > /dev/null & \
	$(PY) -m pip install --quiet --no-compile -e .; status=$$?; wait; exit $$status
	touch $(STAMP)

# the test tools on top (pytest, ruff, nbclient, anndata, ...)
TEST_STAMP := $(VENV)/.test-installed
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(PY) -m pyrovae.demo

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(TEST_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# the API reference and user guide; warnings are errors
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(TEST_STAMP)
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# multi-seed tables of the simulation experiments (benchmarks/results/*_seeds.csv, tables.md)
experiments: $(TEST_STAMP)
	$(PY) benchmarks/seed_experiments.py

# real-data benchmark; scVI and scanpy rows need `pip install -e '.[bench]'`
real-data: $(TEST_STAMP)
	$(PY) benchmarks/real_data.py

bench: $(TEST_STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/reference_protocol.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache docs/_build
