#!/usr/bin/env bash
# One pass on a GPU machine: build the extension for its GPU, run the CUDA tests, run the GPU
# benchmarks. Results go to $OUT (default gpu_out/): build.log, info.txt, tests.log, <device>.jsonl.
# Optional wheels for missing test dependencies (diffusers, lpips) are taken from .whl/ when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
start=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  grep -E "error|Error" "$OUT/build.log" | head -40
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
$PY -m dcae_ext.cli info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$OUT/info.txt" 2>&1
start=$(date +%s)
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -m "${TEST_MARK:-cuda}" -p no:cacheprovider -rfE tests 2>&1 \
  | tee "$OUT/tests.log" | tail -40
echo "tests: $(( $(date +%s) - start )) s"
start=$(date +%s)
timeout "${BENCH_TIMEOUT:-240}" $PY -m dcae_ext.cli bench --device cuda --ops "${BENCH_OPS:-all}" \
  --dtype "${BENCH_DTYPES:-bf16,fp32}" ${BENCH_FLAGS:-} --results-dir "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -60
echo "bench: $(( $(date +%s) - start )) s"
