#!/usr/bin/env bash
# One-shot verification on a lent GPU (no network there): build, GPU tests, check, benchmarks.
# Results go to benchmarks/results/ (at most 8 flat files) and, when $OUT is set (the device
# tool sets it), are copied there too. Without a GPU it runs as a dry run: the same steps on the
# CPU, with the quick sweep.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# SpikingJelly 2.0 (the `spikingjelly` provider) is not on the GPU image. Fetch it and its one
# missing import-time dependency here, into the ignored folder .whl/, and carry that folder:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl spikingjelly==2.0.0 loguru
# (both are pure-Python wheels; the rest of what spikingjelly lists is on the image or unused by
# its neuron module).
set -uo pipefail
cd "$(dirname "$0")/.."
RES=benchmarks/results
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
: > "$LOG"
status=0
step() {  # step NAME COMMAND...: run, log, remember a failure, go on
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
}

if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  GPU=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$LOG"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} CLIF_KERNELS_BUILD_CUDA=1
  BENCH=(--time-budget "${BENCH_SECONDS:-240}")
else
  GPU=0
  echo "no GPU: dry run on the CPU" | tee -a "$LOG"
  BENCH=(--quick)
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$LOG"

step build python3 setup.py -q build_ext --inplace
# On a GPU: the CUDA and Triton backends against the reference (outputs, states, every gradient,
# opcheck, compile), plus the reference's own tests. The compile-only tests run in CI.
if [ "$GPU" = 1 ]; then
  step tests python3 -m pytest -q -x -p no:cacheprovider tests/test_fused.py tests/test_reference.py -k "cuda or triton or reference"
else
  step tests python3 -m pytest -q -x -p no:cacheprovider tests/test_fused.py -k "cpp and golden"
fi
step check python3 -m clif_kernels check
step bench python3 -m clif_kernels bench --out "$RES" "${BENCH[@]}"

if [ -n "${OUT:-}" ]; then
  cp "$RES"/gpu_check.log "$RES"/bench_*.csv "$RES"/summary_*.md "$OUT"/ 2>/dev/null
  cp "$RES"/bench_*.png "$OUT"/ 2>/dev/null
fi
echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo some steps FAILED)" | tee -a "$LOG"
exit $status
