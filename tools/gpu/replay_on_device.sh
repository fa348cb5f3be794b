#!/usr/bin/env bash
# On the lent GPU machine, from the project root (the device tool runs it
# there with .whl carried): replay the committed H200 captures on the GPU
# (`sgl-replay check --device cuda`), as they replay on CPU in CI.
#   usage: OUT=/some/dir tools/gpu/replay_on_device.sh
set -uo pipefail
OUT=${OUT:?set OUT}
SITE=/tmp/sgl-replay-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
# the device workarounds of record_on_device.sh
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python SGL_KERNEL_ALLOW_MISSING_OPS=1
for trace in traces/gpu/h200_capture_short.sglt traces/gpu/h200_capture_kv_retract.sglt; do
  name=$(basename "$trace" .sglt)
  start=$(date +%s)
  python3 -m sgl_replay.cli check "$trace" --device cuda --json -o "$OUT/$name.replay.sglt" > "$OUT/$name.check.json" 2> "$OUT/$name.check.err"
  echo "$name rc=$? wall=$(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
  tail -c 600 "$OUT/$name.check.json"; echo
done
