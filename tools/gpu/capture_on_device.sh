#!/usr/bin/env bash
# On the lent GPU machine, from the project root (the device tool runs it
# there with .whl carried: tools/gpu/prepare_wheels.sh builds it here):
# production-like plain servers recorded through SGLREPLAY_RECORD_DIR, driven
# by sglang's bench_serving; traces and figures in $OUT
# (tools/gpu/capture_on_device.py says what runs).
#   usage: OUT=/some/dir [SCRIPT=tools/gpu/profile_capture.py] tools/gpu/capture_on_device.sh
set -uo pipefail
OUT=${OUT:?set OUT}
SITE=/tmp/sgl-replay-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
# The device workarounds (README, "Recording on a GPU machine"): the wheel
# lacks the Rust radix tree core; sgl_kernel's compiled ops are built for
# torch 2.14.1 and cannot load on this machine's torch 2.11.
export PATH="$SITE/bin:$PATH" PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python SGL_KERNEL_ALLOW_MISSING_OPS=1
python3 -c "import torch, sglang; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'sglang', sglang.__version__)" | tee "$OUT/versions.txt"
# bench_serving imports `datasets` (MMMU) and PIL (image datasets) at start-up;
# that machine has neither and the generated-shared-prefix dataset uses
# neither: empty stand-ins, only for modules that are missing there.
SHIMS=/tmp/sgl-replay-shims
for module in datasets PIL; do
  python3 -c "import $module" 2>/dev/null && continue
  mkdir -p "$SHIMS/$module"
  echo "def load_dataset(*args, **kwargs): raise ImportError('$module is not installed on this machine')" > "$SHIMS/$module/__init__.py"
  echo "class Image: pass" > "$SHIMS/$module/Image.py"
  echo "shim: $module" | tee -a "$OUT/versions.txt"
done
export PYTHONPATH="$PYTHONPATH:$SHIMS"
# SCRIPT=tools/gpu/profile_capture.py runs the profile instead (py-spy's wheel in .whl);
# SCRIPT=tools/bench/timed_prediction.py SCRIPT_ARGS=capture the timed replay's recordings
timeout -s INT 540 python3 "${SCRIPT:-tools/gpu/capture_on_device.py}" ${SCRIPT_ARGS:-} --out "$OUT" "$@"
ls -la "$OUT"
