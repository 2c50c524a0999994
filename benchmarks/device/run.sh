#!/usr/bin/env bash
# The GPU suite in one command, unattended, under 8 minutes (docs/performance.md says how to run it on a
# lent machine and what it measures). From any directory:
#
#   bash benchmarks/device/run.sh                       # a CUDA GPU: JSON under $OUT (default runs/device)
#   bash benchmarks/device/run.sh --device cpu --smoke  # the tiny preset on a CPU, in seconds (tests the script)
#
# Arguments go to benchmarks/device/suite.py (--budget SECONDS, --steps, --batches, --no-compile).
# A machine without diffusers / webdataset gets them from wheels in .whl/ (pip download line in
# docs/performance.md), installed into a private folder without touching the machine's own packages.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/device}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import diffusers, webdataset" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "diffusers or webdataset is missing and .whl/ holds no wheels to install them from" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/synfer-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/synfer-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
fi
# The suite keeps to its own --budget (360 s by default); the timeout is a backstop.
timeout "${SUITE_TIMEOUT:-450}" "$PY" benchmarks/device/suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
