#!/usr/bin/env bash
# The GPU bench, ready for one H100 in under 8 minutes: the seed notes' recipe against our training path on a
# random-weight model with TinyLlama-1.1B's architecture (built locally, nothing downloaded), QLoRA r=16 on all
# linear layers, sequences up to 2048 tokens (log-normal, median ~900). Prints tokens/s, CUDA peak memory and
# model-FLOPs utilisation for both sides, then each technique alone (set TECHNIQUES=0 to skip that part).
#
#   bench/gpu.sh fetch   # here, where PyPI answers: the wheels the GPU image lacks, into .whl/ (git-ignored)
#   bench/gpu.sh         # on the GPU machine (device tool: carry [".whl"]); installs .whl/ into /tmp/site
#
# Ours runs in-process there (bench.ours_direct: worker.training.recipe.run), since that machine has no Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
# What the GPU image (torch, transformers, accelerate, pandas, pyarrow ...) lacks for the worker's import chain,
# ~49 MiB with bitsandbytes' CUDA kernels; the carry limit is 64 MiB with the work tree. The image's transformers
# (5.17 when last seen) is used unless WITH_TRANSFORMERS=1 adds ours (+13 MiB: drop liger-kernel or others then).
NEEDED="bitsandbytes trl peft datasets dill multiprocess pydantic pydantic-core pydantic-settings python-dotenv
typing-inspection annotated-types fastapi starlette annotated-doc python-multipart redis liger-kernel"
if [ "${WITH_TRANSFORMERS:-0}" = 1 ]; then NEEDED="$NEEDED transformers"; fi

if [ "${1:-}" = fetch ]; then
    mkdir -p "$WHEELS"
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    pins=""
    for name in $NEEDED; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
        pins="$pins $name${version:+==$version}"
    done
    # shellcheck disable=SC2086 # one argument per pin
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $pins
    du -sh "$WHEELS"
    exit 0
fi

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Fail in seconds, not after the model is built; and say which versions ran.
"$PY" -c "import bitsandbytes, peft, torch, transformers, trl, worker.training.recipe as r
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
      'trl', trl.__version__, 'bitsandbytes', bitsandbytes.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# The model (2.2 GB) stays in /tmp; only the figures go to $OUT, where the device tool returns files from.
args=(--gpu --workdir /tmp/bench-gpu)
if [ "${TECHNIQUES:-1}" = 1 ]; then args+=(--techniques); fi
status=0
timeout "${BENCH_TIMEOUT:-460}" "$PY" -m bench.run "${args[@]}" 2>&1 | tee /tmp/bench-gpu.log |
    grep -v -e Warning -e warnings.warn -e "Loading weights" || status=$?
if [ -n "${OUT:-}" ]; then cp /tmp/bench-gpu.log /tmp/bench-gpu/results.json "$OUT"/ 2>/dev/null || true; fi
exit "$status"
