# bankflow: the two commands a new user needs, each creating its own virtualenv on a fresh machine.
#   make demo   run the banking pipeline on the embedded `local` environment (no Docker, no cloud)
#   make test   run the test suite (unit, integration on real services, e2e)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPEC   ?= pipelines/banking.yaml

.PHONY: venv demo test test-unit lint bench clean down

$(BIN)/bankflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/bankflow

demo: venv
	$(BIN)/bankflow validate $(SPEC)
	$(BIN)/bankflow generate $(SPEC) --seed 42
	$(BIN)/bankflow apply $(SPEC)
	$(BIN)/bankflow generate $(SPEC) --seed 43
	$(BIN)/bankflow apply $(SPEC)
	$(BIN)/bankflow verify $(SPEC)
	$(BIN)/bankflow status $(SPEC)

test: venv
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-unit: venv
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check bankflow tests benchmarks
	$(BIN)/mypy

bench: venv
	$(BIN)/python benchmarks/run_all.py

down: venv
	$(BIN)/bankflow down $(SPEC)

clean:
	rm -rf .bankflow
