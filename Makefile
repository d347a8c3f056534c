# The two commands of the README: `make run` and `make test`. Both set up .venv first if needed.
# Variables: PYTHON, VENV, TORCH_SPEC and TORCH_INDEX_URL (below).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Tests never wait on a model hub; PostgreSQL tests use the local server unless told otherwise.
export HF_HUB_OFFLINE ?= 1
export DRIFTD_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: setup run demo test sync-chart

# torch is installed first, as the CPU build: as a dependency of the project pip would take the
# public index's torch, a CUDA build that brings about 20 nvidia-* packages (several GB). Only
# CPU builds carry the `+cpu` local version, so TORCH_SPEC never resolves to CUDA: pip finds it
# where its configuration points (a wheel directory or a mirror), or in TORCH_INDEX_URL, the
# PyTorch project's CPU wheel index (its address is on the install selector of the PyTorch site;
# deploy/docker/Dockerfile takes the same build argument):
#   make setup TORCH_INDEX_URL=<that index>
# Where neither has it, setup stops (pip: no matching distribution) instead of installing CUDA.
# For a CUDA build, name one: TORCH_SPEC=torch==2.13.0 takes the public index's.
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX_URL ?=
TORCH_PIP_OPTIONS := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

$(BIN)/driftd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_OPTIONS) '$(TORCH_SPEC)' || { echo \
	  "could not install $(TORCH_SPEC); if pip found no such version, set TORCH_INDEX_URL (see the Makefile)" >&2; \
	  exit 1; }
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
