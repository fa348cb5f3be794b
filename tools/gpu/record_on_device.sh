#!/usr/bin/env bash
# On the lent GPU machine, from the project root (the device tool runs it
# there with .whl carried): install the carried wheels, record the GPU
# traces and measure the recorder's overhead on the GPU. Results in $OUT.
#   usage: OUT=/some/dir tools/gpu/record_on_device.sh
set -uo pipefail
OUT=${OUT:?set OUT}
SITE=/tmp/sgl-replay-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$SITE:$(pwd)/tools/bench" PYTHONUNBUFFERED=1
# The device workarounds (README, "Recording on a GPU machine"): the wheel
# lacks the Rust radix tree core; sgl_kernel's compiled ops are built for
# torch 2.14.1 and cannot load on this machine's torch 2.11, and none is on
# this path.
export SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python SGL_KERNEL_ALLOW_MISSING_OPS=1
SGLR="python3 -m sgl_replay.cli"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, sglang; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'sglang', sglang.__version__)" | tee -a "$OUT/gpu.txt"
step() { echo "== $*" | tee -a "$OUT/log.txt"; "$@" 2>&1 | grep -v "^\[20" | tail -4 | tee -a "$OUT/log.txt"; }
# Triton compiles on first use: a throw-away run first
step $SGLR record concurrent_decode --device cuda -o /tmp/warm.sglt
step $SGLR record concurrent_decode --device cuda --engine-arg disable_overlap_schedule=true -o "$OUT/concurrent_decode_overlap_off.sglt"
step $SGLR record concurrent_decode --device cuda -o "$OUT/concurrent_decode_overlap_on.sglt"
step $SGLR record kv_pressure --device cuda --engine-arg max_total_tokens=1024 -o "$OUT/kv_pressure.sglt"
python3 tools/bench/recorder_overhead.py --device cuda --rounds 7 2>&1 | grep -v "^\[20" | tail -12 | tee "$OUT/overhead.txt"
ls -la "$OUT"
