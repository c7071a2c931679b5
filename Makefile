# The README's two commands: `make demo` (the main job on the embedded defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Pinned here because this machine carries these builds on disk; elsewhere `make TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-1thread demo lint format clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) lint
	$(PY) -m pytest -q

# The tests whose numbers come out of float reductions (clustering, sampling, DDP, resume, kNN, probes, MoE balancing),
# once more on one thread: summation order changes with the thread count, so a bound tuned to one machine shows here.
FLOAT_TESTS := tests/test_hkmeans.py tests/test_sampling.py tests/test_curation_cli.py tests/test_distributed.py \
	tests/test_resume.py tests/test_knn.py tests/test_linear_probe.py tests/test_moe.py tests/test_embed.py
test-1thread: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q $(FLOAT_TESTS)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/demo
