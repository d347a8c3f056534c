# The two commands of the README: `make run` and `make test`. Both set up .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Tests never wait on a model hub; PostgreSQL tests use the local server unless told otherwise.
export HF_HUB_OFFLINE ?= 1
export DRIFTD_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: setup run demo test sync-chart

# torch is installed first and pinned: it is the CPU build, and an unpinned torch would pull a
# multi-GB CUDA build as a dependency of the project.
$(BIN)/driftd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/driftd

run: setup
	$(BIN)/driftd serve -c examples/banking77/driftd.yaml

# The whole loop, offline, in ./driftd-demo: drift, policy, re-tuning, gate, promotion.
demo: setup
	$(BIN)/driftd demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The Helm chart carries copies of the alert rules and dashboards (Helm reads nothing outside it).
sync-chart:
	sh deploy/helm/sync-chart-files.sh
