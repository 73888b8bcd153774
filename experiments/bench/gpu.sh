#!/bin/bash
# The GPU checks in one run (a few minutes on one H100/H200): versions, float32 parity at each matmul
# precision, and the bf16 training-step benchmark against PyTorch. Packages missing from the machine's
# image travel as wheels in .whl/ (e.g. ml_collections); nothing is downloaded.
#   bash experiments/bench/gpu.sh [BATCH]
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__,
  'optax', optax.__version__, 'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"
filter() { grep -v -e "Loading weights" -e "^$"; }
timeout 150 python3 -m experiments.bench.parity 2>&1 | filter
timeout 300 python3 -m experiments.bench.train_step --gpu --batch "${1:-256}" --steps 5 2>&1 | filter
# Training fed by the real PhraseCut+ loader (grain workers: grain must be installed or travel in .whl/)
# against the step alone, then inference against transformers (1 x 21 zero-shot, 64 x 1; f32 and bf16).
timeout 400 python3 -m experiments.bench.train_step --gpu --end-to-end --batch "${1:-256}" --steps 10 2>&1 | filter
timeout 400 python3 -m experiments.bench.inference --gpu --repeats 3 2>&1 | filter
# The loader alone on the host's cores: samples/s with 1..15 workers (the scaling the step needs).
timeout 300 python3 -m experiments.bench.pcplus_throughput --path device --workers 1 4 8 15 --n 2000 2>&1 | filter
