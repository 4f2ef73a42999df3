# The project's command index. `make demo` and `make test` are the README's two quick-start commands.
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
export CHURN_HOME ?= $(CURDIR)/.churn_home

.PHONY: install services demo test test-fast ui audit-ui mlflow-ui lint bench clean

$(BIN)/churn-platform: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# The Spark driver's class-data archive: every Spark start about 4 s shorter (built once, ~1 min).
# Only an optimisation: if it cannot be built, make says so and goes on.
install: $(BIN)/churn-platform
	-$(BIN)/churn-platform jvm-archive

# System packages (PostgreSQL, JDBC driver, OpenBLAS, Chromium) and the test PostgreSQL server.
services:
	bash scripts/services.sh

demo: install services
	$(BIN)/churn-platform fetch-data
	$(BIN)/churn-platform run

# Two worker processes (pytest-xdist; a file, and every user of the session pipeline run, stays
# on one worker), taking the groups in conftest.py's order, longest first; a plain `pytest FILE`
# runs in one process.
test: install services lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

# The pure logic only: no JVM, no service, no pipeline run (conftest.py marks the rest), ~2 min.
test-fast: install
	$(BIN)/python -m pytest -m "not integration"

ui: install
	$(BIN)/churn-platform serve

audit-ui: install
	$(BIN)/churn-platform serve --read-only

# MLflow's UI on the state root's tracking store; prints the URL of the experiment's runs.
mlflow-ui: install
	$(BIN)/churn-platform mlflow-ui

# Style, formatting and the layers (import-linter contracts in pyproject.toml).
lint: install
	$(BIN)/python -m ruff check churn_platform churn_platform_tests benchmarks
	$(BIN)/python -m ruff format --check churn_platform churn_platform_tests benchmarks
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/pipeline.py --rows 100000 --compare

clean:
	rm -rf $(CHURN_HOME)
