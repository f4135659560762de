# make run  - create .venv if missing, install, run the whole DAG offline (dvc repro)
# make test - create .venv if missing, install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install lint bench clean-data

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "install: creating $(VENV)"; python3 -m venv $(VENV); }
	@echo "install: upgrading pip"
	@$(PY) -m pip install -q --upgrade pip
	@# exact pin first: a looser requirement pulls a multi-GB CUDA build
	@echo "install: torch 2.13.0 (the largest download)"
	@$(PY) -m pip install -q torch==2.13.0
	@echo "install: the project and its libraries (DVC, Prefect, MLflow, transformers, lm-eval: the longest step)"
	@$(PY) -m pip install -q -e '.[dev]'
	@# Vega for `dvc plots show` offline, once (keeps DVC's CDN page if the registry is unreachable)
	@echo "install: Vega scripts for offline plots"
	@$(PY) -m pipeline.vega
	@touch $(STAMP)
	@echo "install: done ($(VENV))"

run: $(STAMP)
	$(VENV)/bin/lineage run

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline stages tests bench
	$(VENV)/bin/ruff format --check pipeline stages tests bench

bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/orchestration.py
	$(PY) bench/train_throughput.py
	$(PY) bench/shakespeare_char.py
