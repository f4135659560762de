# make run  - create .venv if missing, install, run the whole DAG offline (dvc repro)
# make test - create .venv if missing, install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch and the CUDA packages its PyPI metadata names stay out of the lock: torch is installed first,
# exactly (torch==2.13.0, the CPU build); a looser requirement pulls a multi-GB CUDA build
NOT_LOCKED := torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti \
	nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand \
	nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink \
	nvidia-nvshmem-cu13 nvidia-nvtx

.PHONY: run test install lock lint bench clean-data

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || { echo "install: creating $(VENV)"; python3 -m venv $(VENV); }
	@echo "install: upgrading pip"
	@$(PY) -m pip install -q --upgrade pip
	@# exact pin first: a looser requirement pulls a multi-GB CUDA build
	@echo "install: torch==2.13.0, the CPU build (the largest download)"
	@$(PY) -m pip install -q torch==2.13.0
	@echo "install: requirements.lock, every other package at its locked version and hash (DVC, Prefect, MLflow, transformers, lm-eval: the longest step, quiet)"
	@$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	@echo "install: the project itself (editable)"
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@$(PY) -m pip check
	@# Vega for `dvc plots show` offline, once (keeps DVC's CDN page if the registry is unreachable)
	@echo "install: Vega scripts for offline plots"
	@$(PY) -m pipeline.vega
	@touch $(STAMP)
	@echo "install: done ($(VENV))"

# regenerate requirements.lock from pyproject.toml (newest versions that fit; exact pins and hashes)
lock: $(STAMP)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		--universal $(addprefix --no-emit-package ,$(NOT_LOCKED)) \
		-o requirements.lock

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
