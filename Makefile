# bankflow: the two commands a new user needs, each creating its own virtualenv on a fresh machine.
#   make demo   run the banking pipeline on the embedded `local` environment (no Docker, no cloud)
#   make test   run the test suite (unit, integration on real services, e2e)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPEC   ?= pipelines/banking.yaml

.PHONY: venv airflow-venv demo test test-unit lint wheel-smoke constraints bench clean down

# constraints.txt pins the whole resolution, so the pip a new virtualenv ships installs it without backtracking (no
# pip upgrade first). Through PIP_CONSTRAINT (rather than -c) it also pins the build backend in pip's build env.
$(BIN)/bankflow: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/bankflow

# apache-airflow in a venv of its own, for the test that loads the rendered DAGs with Airflow's DagBag
# (tests/integration/test_airflow_dagbag.py): its pins collide with constraints.txt, so never in $(VENV).
AIRFLOW_VENV ?= .venv-airflow
$(AIRFLOW_VENV)/bin/airflow: .ci/airflow-constraints.txt
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	PIP_CONSTRAINT=$(CURDIR)/.ci/airflow-constraints.txt $(AIRFLOW_VENV)/bin/pip install --quiet 'apache-airflow==3.3.2'
	@touch $@

airflow-venv: $(AIRFLOW_VENV)/bin/airflow

demo: venv
	$(BIN)/bankflow validate $(SPEC)
	$(BIN)/bankflow generate $(SPEC) --seed 42
	$(BIN)/bankflow apply $(SPEC)
	$(BIN)/bankflow generate $(SPEC) --seed 43
	$(BIN)/bankflow apply $(SPEC)
	$(BIN)/bankflow verify $(SPEC)
	$(BIN)/bankflow status $(SPEC)

test: venv airflow-venv
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-unit: venv
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check bankflow tests benchmarks
	$(BIN)/mypy

# The built wheel, installed into a new venv outside the checkout, runs the local pipeline from a temp folder.
wheel-smoke:
	PYTHON=$(PYTHON) bash .ci/wheel_smoke.sh

# After changing a dependency in pyproject.toml: resolve again and rewrite constraints.txt (one interpreter per
# Python version the pins must cover, oldest first; e.g. CONSTRAINT_PYTHONS="/opt/py310/bin/python3 python3.11").
CONSTRAINT_PYTHONS ?= python3.10 python3.11
constraints:
	bash .ci/update_constraints.sh $(CONSTRAINT_PYTHONS)

bench: venv
	$(BIN)/python benchmarks/run_all.py

down: venv
	$(BIN)/bankflow down $(SPEC)

clean:
	rm -rf .bankflow
