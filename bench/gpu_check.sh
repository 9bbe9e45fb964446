#!/usr/bin/env bash
# The built-in engine's GPU checks, prepared for one short device session (see the README's GPU
# section). The GPU image has PyTorch, pandas and pytest but not these small pure-Python wheels:
#   here, first:   bash bench/gpu_check.sh fetch      # into .whl/ (git-ignored)
#   on the GPU:    bash bench/gpu_check.sh run        # carry .whl; writes to $OUT (or ./gpu_results)
# `run` prints the GPU, runs the CUDA-vs-CPU test, then bench/engine_bench.py at issue 3's
# settings on 20,000 particles: the figures for the README's Performance table.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(mrcfile==1.5.4 torch-ctf==0.6.0 torch-fourier-shift==0.6.0 torch-fourier-rescale==0.6.0
        torch-transform-image==0.6.0 torch-grid-utils==0.6.0 torch-affine-utils==0.6.0
        torch-image-interpolation==0.6.0)

case "${1:-}" in
fetch)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
        "${WHEELS[@]}"
    ls .whl
    ;;
run)
    out=${OUT:-gpu_results}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/live2d-site .whl/*.whl
    export PYTHONPATH=/tmp/live2d-site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
        | tee -a "$out/gpu.txt"
    python3 -m pytest -q -p no:cacheprovider tests/test_builtin_engine.py -k cuda -rs 2>&1 \
        | tee "$out/tests.txt"
    python3 bench/engine_bench.py --device cuda --particles 20000 --classes 20 50 2>&1 \
        | tee "$out/bench.txt"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh fetch|run" >&2
    exit 2
    ;;
esac
