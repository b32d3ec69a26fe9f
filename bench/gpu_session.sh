#!/usr/bin/env bash
# Issue 8's device checks in one call, for a session lent an H100 (about 9 minutes at most):
# the GPU tests, then the benchmarks, each step cut off at what is left of a 540 s budget, the
# important ones first. Run from the repository root with the device image's python3 (torch,
# CuPy, pytest and pytest-timeout are there; nothing is installed):
#
#     device run, timeout_s 600:  STREAMEDIT_COMMIT=<git rev-parse HEAD here> bash bench/gpu_session.sh
#
# (the tree travels without .git, so the JSONs take the commit from STREAMEDIT_COMMIT; commit
# or stash local changes first, so that it names what ran).
# Writes bench/results/$PREFIX-*.json (commit them with the device in the message) and copies
# them with the log to $OUT, the folder the device tool brings back (at most 8 files).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
PREFIX=${PREFIX:-h100}
BUDGET_S=${BUDGET_S:-540}
DEST=${OUT:-bench/results}
mkdir -p bench/results "$DEST"
deadline=$((SECONDS + BUDGET_S))

step() {  # step LIMIT_S CMD...: run CMD for at most LIMIT_S seconds or what is left of the budget
    local limit=$1; shift
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 20 ]; then echo "== skipped (budget spent): $*"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $(date -u +%T) [${limit}s] $*"
    local t0=$SECONDS
    timeout "$limit" "$@"
    echo "== rc $? after $((SECONDS - t0)) s"
}

bench() { step "$1" "$PY" -m streamedit_core bench "${@:2}"; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import sys, torch, cupy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__)"
    echo "commit ${STREAMEDIT_COMMIT:-unknown}"
    # 1. correctness: the kernel against the reference, no host sync, CUDA graphs, compile; and
    #    the other GPU tests (DiT without host sync on every backend, STLE in bf16, text on CUDA)
    step 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_dsa_kernel.py tests/test_bench.py \
        tests/test_dit.py tests/test_stle.py tests/test_text.py
    # 2. attention at the 2b shapes: dense SDPA vs compiled flex_attention vs ours
    bench 120 attention --name "$PREFIX-attention-2b"
    # ... and the kernel's other tiling for blocks of 128: two CTAs of 64 query rows per block
    STREAMEDIT_DSA_ROWS=64 bench 60 attention --flex off --name "$PREFIX-attention-2b-rows64"
    # 3. the 2b stream at 512 x 512, 6 steps, DSA through the kernel
    bench 100 stream --backend dsa --name "$PREFIX-stream-2b-dsa"
    bench 60 stream --backend dsa --frames 100 --breakdown --name "$PREFIX-stream-2b-dsa-breakdown"
    bench 150 stream --backend dsa --cuda-graphs --name "$PREFIX-stream-2b-dsa-graphs"
    bench 60 stream --backend dense --name "$PREFIX-stream-2b-dense"
    # 4. a live session glass to glass (issue 48): the 2b preset at 512 x 512 in the live server, the
    #    page in headless Chromium; needs aiortc, playwright and chromium on the device image
    if "$PY" -c "import aiortc, playwright" 2>/dev/null && command -v chromium >/dev/null; then
        bench 150 live --preset 2b --text random --sizes 512 --steps 6,2 --seconds 20 --device cuda \
            --name "$PREFIX-live-2b"
    else
        echo "== skipped: bench live needs aiortc, playwright (pip) and chromium (apt) on the device image"
    fi
} 2>&1 | tee "$DEST/gpu_session.log"

if [ "$DEST" != bench/results ]; then
    cp bench/results/"$PREFIX"-*.json "$DEST"/ 2>/dev/null
fi
ls -l "$DEST"
