#!/usr/bin/env bash
# The GPU pass, sized for a lent GPU machine: one command there runs at most 600 s, a session has
# about 15 minutes of device time in all (starting the machine takes 1-2 of them), and at most 8
# files come back from $OUT. So one call runs the steps it is given, in order, under one deadline
# (BUDGET_S seconds, default 570): every step's own time limit is cut to what is left of it, and a
# step with under 30 s left is skipped and listed in skipped.txt. At exit everything the call wrote
# under $OUT is packed into one file, $OUT/gpu-<steps>.tar.gz (PACK=0 leaves the files as they are);
# the tails of the logs are printed as it goes.
#
#   benchmarks/run_gpu.sh build-test bench-ibq     # a first call: build, CUDA tests, the IBQ sweep
#   BUDGET_S=... benchmarks/run_gpu.sh bench-rest train   # a second call with what is left
#
# BUDGET_S must end before the call's own limit (timeout_s, and the session's device time left:
# the device tool kills the command there, and a killed call packs nothing): 570 suits a 600 s
# call; for a later call take the device budget left (the tool's status) less about 45 s. A
# bench or train step on a machine without the CUDA build (a fresh one) builds first.
#
# Steps:
#   build       build for the visible GPU (ptxas.md: registers and spills per kernel), info.txt
#   test        the CUDA tests (tests.log); TEST_MARK (default cuda), TEST_PATHS (default tests)
#   build-test  build, then test
#   bench-ibq   the IBQ suite: fast, reference and SDPA, K = 2^14 .. 2^18 at N = 8192 and 2^20 at
#               N = 16384, bf16 and fp32 (bench.log, <device>.jsonl, plots)
#   bench-rest  linear attention, shortcuts, DC-AE end to end
#   bench-diffusers  diffusers' models, stock vs accelerate(): Sana 1600M at 1024 px and 4K (forward,
#               forward+backward), AutoencoderDC (Sana's f32c32) decode at 1024 and 2048 and tiled
#               4K, bf16 (<device>-diffusers.jsonl, its plot); then where the decode's time goes, stock
#               and accelerated (decode-profile.txt: PROFILE_RESOLUTION, default 1024, bf16); needs
#               diffusers (.whl/, see below)
#   bench-vq    vector-quantize-pytorch's training step, stock vs accelerated, and ops.vq_quantize,
#               K = 2^12 .. 2^18 x D = 8, 32, 256 at N = 16384, fp32 (<device>-vq.jsonl); needs
#               vector-quantize-pytorch and its dependencies in .whl/ (see below)
#   bench       bench-ibq, then bench-rest; BENCH_PLAN ("suite:dtypes:limit_s ...") replaces the plan of
#               any bench step, BENCH_FLAGS adds flags (e.g. --quick)
#   train       training-step images/s, fast ops vs reference mode (train.log, train.jsonl); TRAIN_PLAN
#   all         build-test bench train (more than one call holds)
# DEVICE=cpu rehearses the script on a machine without a GPU (tests/bench/test_run_gpu_script.py),
# with SKIP_BUILD=1 to use the build that is there. Wheels for test dependencies the GPU machine
# lacks (diffusers, lpips) are installed from .whl/ when that folder exists: make it with
# `pip download --no-deps -d .whl diffusers==0.42.1 lpips` (diffusers at the dev extra's pin) and name
# .whl in the call's carry; bench-vq also needs `vector-quantize-pytorch==1.34.1 einx loguru
# torch-einops-utils frozendict` there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} ))
PACK_MARGIN_S=15
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
elapsed() { echo "$1: $(( $(date +%s) - $2 )) s"; }

# The smaller of a step's own limit ($1 s) and what is left of this call before packing.
cut_limit() {
  local left=$(( DEADLINE - $(date +%s) - PACK_MARGIN_S ))
  if (( $1 < left )); then echo "$1"; else echo "$left"; fi
}

# `fits NAME LIMIT`: true when LIMIT is at least 30 s; else lists NAME in skipped.txt.
fits() {
  if (( $2 >= 30 )); then return 0; fi
  echo "skipped $1: ${2} s left of this call's BUDGET_S" | tee -a "$OUT/skipped.txt"
  return 1
}

build() {
  start=$(date +%s)
  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    limit=$(cut_limit 420)
    fits build "$limit" || return 1
    if ! DCAE_EXT_PTXAS_VERBOSE=1 timeout "$limit" $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
      grep -E "error|Error" "$OUT/build.log" | head -40
      tail -5 "$OUT/build.log"
      return 1
    fi
    elapsed build "$start"
    $PY benchmarks/ptxas_report.py "$OUT/build.log" --out "$OUT/ptxas.md"  # registers and spills per kernel
  fi
  $PY -m dcae_ext.cli info | tee "$OUT/info.txt"
  if [[ "$DEVICE" == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/info.txt" 2>&1
  fi
}

run_tests() {
  limit=$(cut_limit "${TEST_TIMEOUT:-300}")
  fits test "$limit" || return 0
  start=$(date +%s)
  # shellcheck disable=SC2086  # TEST_PATHS splits into paths on purpose
  timeout "$limit" $PY -m pytest -q --maxfail=30 -m "${TEST_MARK:-cuda}" -p no:cacheprovider -rfE \
    ${TEST_PATHS:-tests} > "$OUT/tests.log" 2>&1
  tail -45 "$OUT/tests.log"
  elapsed tests "$start"
}

# A machine given back and started again is bare: without this the bench and train steps of a
# call with no build step would find no CUDA kernels (and refuse to time the references).
ensure_build() {
  [[ "$DEVICE" == cuda ]] || return 0
  $PY -c 'from dcae_ext.ops import _library; raise SystemExit(0 if _library.WITH_CUDA else 1)' 2>/dev/null && return 0
  echo "no CUDA build of dcae_ext here (a fresh machine?): building first"
  SKIP_BUILD=0 build
}

# `bench_suites PLAN`: PLAN is "suite:dtypes:limit_s ..."; BENCH_FLAGS adds flags (e.g. --quick).
bench_suites() {
  ensure_build || return 0
  for spec in $1; do
    IFS=: read -r suite dtypes limit <<< "$spec"
    limit=$(cut_limit "$limit")
    fits "bench $suite" "$limit" || continue
    start=$(date +%s)
    # shellcheck disable=SC2086  # BENCH_FLAGS splits into flags on purpose
    timeout "$limit" $PY -m dcae_ext.cli bench --device "$DEVICE" --ops "$suite" --dtype "$dtypes" \
      --results-dir "$OUT" --plots-dir "$OUT" ${BENCH_FLAGS:-} > "$OUT/bench-current.log" 2>&1
    cat "$OUT/bench-current.log" >> "$OUT/bench.log"
    tail -25 "$OUT/bench-current.log"
    rm -f "$OUT/bench-current.log"
    elapsed "bench $suite" "$start"
  done
}

# The IBQ plan is estimated at 2-3 minutes on an H200 (not yet measured), most of it float32 at 2^20.
IBQ_PLAN="ibq:bf16,fp32:270"
# dcae: in-1.0 encode+decode and tiled decode, then 1.5 and Lite encode and decode apart at 512 and 1024
REST_PLAN="linear_attention:bf16,fp16,fp32:90 shortcuts:bf16,fp32:90 dcae:bf16:240"
# diffusers: building the 1600M transformer twice and the 4K cases dominate; estimated, not yet measured
DIFFUSERS_PLAN="diffusers:bf16:300"
# VQ: 21 shapes, two cases each; the stock module runs out of memory at the largest K (recorded as such)
VQ_PLAN="vq:fp32:240"

# Where diffusers' AutoencoderDC decode spends its time, stock and accelerated (the decode goal's profile).
profile_decode() {
  ensure_build || return 0
  local limit
  limit=$(cut_limit 90)
  fits "profile decode" "$limit" || return 0
  start=$(date +%s)
  timeout "$limit" $PY benchmarks/profile_diffusers_decode.py --device "$DEVICE" --dtype "${PROFILE_DTYPE:-bf16}" \
    --resolution "${PROFILE_RESOLUTION:-1024}" --out "$OUT/decode-profile.txt" > "$OUT/profile.log" 2>&1
  grep -E "decode median|convolutions" "$OUT/profile.log" || tail -5 "$OUT/profile.log"
  elapsed "profile decode" "$start"
}

train() {
  # One process per plan entry ("LIMIT_S FLAGS", ';'-separated), each under its own time limit (the
  # defaults add up to 560 s) and with --max-seconds at a third of it, so that slow steps end the
  # rounds early with a record instead of being cut off by the limit with none. Estimated, not yet
  # measured: f32c32 at batch 8 about a quarter of a second a step, the VQGAN-backbone IBQ presets at
  # batch 32 under a second (36 steps per preset); start-up and model construction about 20 s.
  # f32c32 runs twice: as `dcae-ext train` does (LPIPS on) and without LPIPS, the same cost on both
  # sides that dilutes the ratio of the autoencoder's own step.
  ensure_build || return 0
  IFS=';' read -ra plan <<< "${TRAIN_PLAN:-60 --preset dcae:tiny,ibq:tiny --batch-size 8;\
180 --preset ibq-f16-262144 --batch-size 32;\
100 --preset dc-ae-f32c32-in-1.0 --batch-size 8 --grad-checkpointing;\
90 --preset dc-ae-f32c32-in-1.0 --batch-size 8 --grad-checkpointing --lpips off;\
130 --preset ibq-f16-16384 --batch-size 32}"
  for entry in "${plan[@]}"; do
    read -r limit flags <<< "$entry"
    limit=$(cut_limit "$limit")
    fits "train $flags" "$limit" || continue
    start=$(date +%s)
    # shellcheck disable=SC2086  # the flags split into words on purpose
    timeout "$limit" $PY benchmarks/bench_train.py --max-seconds $((limit / 3)) --device "$DEVICE" \
      ${TRAIN_FLAGS:---resolution 256 --precision bf16 --steps 3 --warmup 2 --rounds 5} \
      $flags --results "$OUT/train.jsonl" > "$OUT/train-current.log" 2>&1
    cat "$OUT/train-current.log" >> "$OUT/train.log"
    tail -12 "$OUT/train-current.log"
    rm -f "$OUT/train-current.log"
    elapsed "train $flags" "$start"
  done
}

# Everything this call wrote under $OUT (earlier archives aside) into one archive.
pack() {
  [[ "${PACK:-1}" == 1 ]] || return 0
  local archive
  archive="gpu-$(IFS=_; echo "$*").tar.gz"
  mapfile -t written < <(cd "$OUT" && find . -maxdepth 1 -type f ! -name 'gpu-*.tar.gz' -printf '%P\n' | sort)
  if (( ${#written[@]} )); then
    tar -czf "$OUT/$archive" -C "$OUT" --remove-files "${written[@]}" && echo "packed ${#written[@]} files into $OUT/$archive"
  fi
}

if (( $# == 0 )); then set -- build-test; fi
for step in "$@"; do
  case "$step" in
    build|test|build-test|bench-ibq|bench-rest|bench-diffusers|bench-vq|bench|train|all) ;;
    *) echo "usage: $0 STEP... (build test build-test bench-ibq bench-rest bench-diffusers bench-vq bench train all);" \
            "got $step" >&2; exit 2 ;;
  esac
done
trap 'pack "$@"' EXIT
trap 'exit 143' TERM  # a kill from outside still packs (EXIT); SIGKILL cannot, so keep BUDGET_S inside it
status=0
for step in "$@"; do
  case "$step" in
    build) build || status=1 ;;
    test) run_tests ;;
    build-test) if build; then run_tests; else status=1; fi ;;
    bench-ibq) bench_suites "${BENCH_PLAN:-$IBQ_PLAN}" ;;
    bench-rest) bench_suites "${BENCH_PLAN:-$REST_PLAN}" ;;
    bench-diffusers) bench_suites "${BENCH_PLAN:-$DIFFUSERS_PLAN}"; profile_decode ;;
    bench-vq) bench_suites "${BENCH_PLAN:-$VQ_PLAN}" ;;
    bench) bench_suites "${BENCH_PLAN:-$IBQ_PLAN $REST_PLAN}" ;;
    train) train ;;
    all) if build; then run_tests; bench_suites "${BENCH_PLAN:-$IBQ_PLAN $REST_PLAN}"; train; else status=1; fi ;;
  esac
  (( status == 0 )) || break
done
exit "$status"
