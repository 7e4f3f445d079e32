#!/usr/bin/env bash
# The checks that need a GPU, in one run (under 8 minutes on one GPU): the CUDA tests (composition
# and checkout, the batched re-solve, statistics, editing, a device map over GPU, CPU and disk), then
# the GPU variants of the checkout and edit benchmarks. Every table goes to one file:
#
#     bash benchmarks/gpu_check.sh [OUT]        # OUT defaults to gpu_check.txt
#
# Without CUDA it says so and exits 0 (the test suite runs it that way).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.txt}"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device; nothing to check" | tee "$out"
    exit 0
fi

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
    echo "## CUDA tests"
    python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tail -n 15
    echo "## checkout on the GPU (benchmarks/checkout.py --parts compose store --device cuda --repeat 3)"
    timeout 240 python benchmarks/checkout.py --parts compose store --device cuda --repeat 3 --compose-repeat 1
    echo "## edits on the GPU (benchmarks/methods.py --parts single batch --methods rome memit alphaedit)"
    timeout 180 python benchmarks/methods.py --arch gpt2 --parts single batch --methods rome memit alphaedit \
        --single 50 --batch 200 --device cuda
} 2>&1 | tee "$out"
