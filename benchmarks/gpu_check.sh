#!/usr/bin/env bash
# The GPU check of docs/performance.md ("On a GPU"): one run that fits 10 minutes on one H100 or
# H200, from the repository root:
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Stages, most important first, each under its own time limit and all within GPU_CHECK_BUDGET
# seconds (default 540): the environment; the streaming sampler at the Wan-1.3B shape
# (configs/wan_1p3b.py:sampler, cuDNN against dense attention); the cuDNN tests (against the
# dense reference); the training masks' attention at Wan's frames, cuDNN against dense; the
# other attention and routing tests on the GPU; the routed sampler (rf_routed,sampler); the same
# attention benchmark for blocked; the attention benchmark at the CPU targets' shapes. A stage
# that fails or runs out of time does not stop the next; STAGES="sampler tests_cudnn" runs only
# those.
# OUT_DIR gets one log, a summary and the benchmarks' JSON (seven files).
#
# Python packages the GPU image lacks (grain, ml_collections, tensorboardX and their needs)
# come from wheels in .whl/ when it exists (docs/performance.md, "On a GPU", says how to fetch
# them). VARIANT_EXTRA=,tiny FRAME_SHAPE=8,8,4 runs the same stages at the tiny shape (a dry
# run of this script on a CPU, where the cuDNN and --shape=wan stages fail by design).
set -u
OUT_DIR=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/log.txt
SUMMARY=$OUT_DIR/summary.txt
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-540}
VARIANT_EXTRA=${VARIANT_EXTRA:-}
FRAME_SHAPE=${FRAME_SHAPE:-60,104,16}
ALL_STAGES="environment sampler tests_cudnn attention_wan_cudnn tests_attention routed_sampler attention_wan_blocked attention"
STAGES=${STAGES:-$ALL_STAGES}
for name in $STAGES; do
  [[ " $ALL_STAGES " == *" $name "* ]] || { echo "STAGES: unknown stage $name; stages: $ALL_STAGES"; exit 2; }
done
export PYTHONUNBUFFERED=1
: >"$SUMMARY"

left() { echo $((BUDGET - ($(date +%s) - START))); }

# stage NAME MAX_SECONDS COMMAND...: runs COMMAND for at most MAX_SECONDS (less if the budget
# has less left), appending its output to the log.
stage() {
  local name=$1 max=$2 limit began rc
  shift 2
  [[ " $STAGES " == *" $name "* ]] || return 0
  limit=$(left)
  ((limit > max)) && limit=$max
  if ((limit < 20)); then
    echo "[$name] skipped: $(left) s of the budget left" | tee -a "$SUMMARY"
    return
  fi
  echo "=== $name (at most $limit s): $*" | tee -a "$LOG"
  began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "[$name] exit $rc after $(($(date +%s) - began)) s" | tee -a "$SUMMARY" "$LOG"
}

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site
fi

stage environment 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; python3 -c "import jax, flax, jaxlib; print(\"jax\", jax.__version__, \"flax\", flax.__version__, jax.devices())"'

stage sampler 240 python3 benchmarks/sampler.py \
  --config="configs/wan_1p3b.py:sampler$VARIANT_EXTRA" --frame_shape="$FRAME_SHAPE" \
  --impls=cudnn,dense --chunks=10 --video_frames_per_frame=4 --json="$OUT_DIR/sampler_wan.json"

# Serial, without preallocation: each test compiles its own small programs. The Pallas tests
# are the TPU kernel's, which has no GPU target.
TESTS=(python3 -m pytest -v --tb=short -p no:cacheprovider -o addopts="" -m "not slow"
       tests/test_attention_impls.py)
XLA_PYTHON_CLIENT_PREALLOCATE=false stage tests_cudnn 100 "${TESTS[@]}" -k "cudnn or fused"

stage attention_wan_cudnn 60 python3 benchmarks/attention.py --shape=wan --impl=cudnn \
  --json="$OUT_DIR/attention_wan_cudnn.json"

# Four pytest workers share the GPU (each compiles its own programs), where pytest-xdist is
# installed.
PARALLEL=()
python3 -c "import xdist" 2>/dev/null && PARALLEL=(-n 4)
XLA_PYTHON_CLIENT_PREALLOCATE=false stage tests_attention 120 "${TESTS[@]}" "${PARALLEL[@]}" \
  tests/test_routing.py -k "not pallas and not cudnn and not fused"

stage routed_sampler 150 python3 benchmarks/sampler.py \
  --config="configs/wan_1p3b.py:rf_routed,sampler$VARIANT_EXTRA" --frame_shape="$FRAME_SHAPE" \
  --chunks=8 --video_frames_per_frame=4 --json="$OUT_DIR/sampler_wan_routed.json"

stage attention_wan_blocked 60 python3 benchmarks/attention.py --shape=wan --impl=blocked \
  --json="$OUT_DIR/attention_wan_blocked.json"

stage attention 60 python3 benchmarks/attention.py --impl=blocked \
  --json="$OUT_DIR/attention_gpu.json"

echo "--- summary ($(($(date +%s) - START)) s)"
cat "$SUMMARY"
grep -h -A4 "^Streaming sampler\|^impl " "$LOG" | head -40
