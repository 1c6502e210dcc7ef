# Two commands, each self-contained on a fresh machine with Python >= 3.11 and pip:
#   make demo   train the tiny GPT on CPython's docs (~3 min on 2 cores), then sample from it
#   make test   run the whole test suite
# Both create (or reuse) the virtual environment .venv/ and install what they need into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record what was installed; they are redone when pyproject.toml changes.
$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/lmjax train tiny-gpt --run-dir $(RUN_DIR)
	$(BIN)/lmjax generate --run-dir $(RUN_DIR) --prompt "The" --prompt "A list" \
	  --max-new-tokens 48 --temperature 0.8 --top-k 40

# The layering contracts (pyproject.toml, import-linter) first: a broken one fails in seconds.
test: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests

clean:
	rm -rf runs .pytest_cache
