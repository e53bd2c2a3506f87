# make run: set up .venv and start the simulated (or real) GPU cluster with its dashboard.
# make test: set up .venv from scratch and run lint + the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on these machines; on a GPU server use e.g. TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# PYTEST_WORKERS=N runs pytest on N xdist workers, whole files per worker (--dist loadfile: a module-scoped
# cluster starts once), long files first (tests/conftest.py); 0 runs it in one process. Two workers halve the
# suite on the 2-core machine (14 min vs 28, docs/design.md "Test suite speed"), but the task-feed security test
# failed in 2 of 3 such runs and in none of 3 single-process ones: the default stays 0 until that is understood.
PYTEST_WORKERS ?= 0
PYTEST_XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# Debian packages the tests drive for real: headless Chromium (console browser test) and Prometheus.
SYSTEM_PACKAGES ?= chromium prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv system-deps run test lint bench bench-peers screenshots clean gpu-check gpu-wheels

system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# One resolution for torch and the project; no bytecode at install (17,000 files, most never imported):
# Python writes it for what is imported, on first import.
venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH_SPEC)" -e ".[test]"

run: venv
	$(BIN)/altlas-dask up --with-console --with-api

lint: venv
	$(BIN)/ruff check altlas_dask scheduler_plugins tests bench
	$(BIN)/hadolint deploy/docker/Dockerfile

test: venv system-deps lint
	$(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The README's console pictures: the browser walk-through, saving into docs/screenshots (tests alone never do).
screenshots: venv system-deps
	SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest tests/test_console.py -k submit_tasks_reports_gpus -q

bench: venv
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/strategies.py
	$(BIN)/python bench/locality.py --touch

# The gateway vs Ray Serve (plain and @serve.batch) on the same GRU and load -> bench/RESULTS.md "serving";
# single submits: router vs plain Dask vs Ray tasks -> "submission".
# Ray lives only in $(RAY_VENV); torch and the model come from $(VENV) through a .pth file.
RAY_VENV ?= .venv-ray
RAY_SPEC ?= ray[serve]==2.58.0
bench-peers: venv
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
		"$$($(RAY_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/altlas-main-venv.pth"
	$(RAY_VENV)/bin/python -m pip install --quiet "$(RAY_SPEC)"
	$(BIN)/python bench/serving.py --ray $(RAY_VENV)/bin/python
	$(BIN)/python bench/submission.py --ray $(RAY_VENV)/bin/python

# The real-GPU check (docs/gpu.md). Where the package index is reachable: make gpu-wheels (-> gpu-wheels/, the wheels
# the offline GPU machine lacks, at most 48 MiB). On the GPU machine: make gpu-check (installs them into .venv-gpu
# with --no-index, then NVML, dask cuda worker, up, selftest, the gateway on CUDA, router vs Dask -> gpu-check-out/).
# GPU_CHECK_DRY=1 scripts/gpu-check.sh runs it here on the simulated pool (tests/test_gpu_check.py does).
GPU_CHECK_OUT ?= gpu-check-out
gpu-wheels: venv
	scripts/gpu-wheels.sh

gpu-check:
	PYTHON=$(PYTHON) scripts/gpu-check.sh $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) $(RAY_VENV) .venv-gpu gpu-wheels gpu-check-out .pytest_cache .ruff_cache dask-scratch-space *.egg-info
