#!/usr/bin/env bash
# Here, on the CPU machine, from the project root: build the wheels that carry
# sglang 0.5.23 and sgl-replay onto the lent GPU machine (Python 3.12,
# torch 2.11, no network there). About 57 MB, in .whl/ (git-ignored through
# .git/info/exclude). A machine with network and torch 2.14.1 needs none of
# this: `pip install -e .` there (README, "Recording on a GPU machine").
#   usage: tools/gpu/prepare_wheels.sh [path/to/build-device-wheels.sh]
set -euo pipefail
BUILD=${1:-../shared/gpu/build-device-wheels.sh}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
DEST=$(pwd)/.whl PIP="$PY -m pip" bash "$BUILD"
# what sgl-replay needs beyond sglang's own wheels
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl msgpack==1.2.4 zstandard==0.25.0 click==8.4.0
rm -f .whl/sgl_replay-*.whl
$PY -m pip wheel -q --no-deps --no-build-isolation -w .whl .
du -sh .whl
