#!/usr/bin/env bash
# One-shot verification on a GPU host (no network there): build, the A/B of the current and the
# previous GPU kernels (with ncu's stall reasons where ncu works), GPU tests, compute-sanitizer,
# the headline benchmark, the spiking ResNet-18 training benchmark, kernel-level timings, check,
# torch.compile of the ResNet, then a wider sweep with what time is left.
# Results go to benchmarks/results/ and, when $OUT is set (the device tool sets it), are copied
# there after every step (the log, six result files, and gpu_results.tar with every GPU result
# file), so a run cut short still returns what it did.
# Without a GPU it runs as a dry run: the same kind of steps on the CPU, with the quick sweeps.
#
#   bash benchmarks/gpu_check.sh                      # from the repository root
#   GPU_CHECK_SECONDS=500 bash benchmarks/gpu_check.sh  # whole-run deadline (default 540 s)
#
# Expected on an H200 (earlier runs: build 51 s, tests 56, bench 50, tune 35, check 46): about
# 8 minutes with the model benchmark (up to 240 s, most of it the largest-batch searches) and
# its torch.compile step (whatever is left, at most 150 s); the deadline keeps the whole run
# under 10 minutes.
#
# SpikingJelly 2.0 (the `spikingjelly` provider and the equivalence tests) is not on the GPU
# image. Fetch it and its one missing import-time dependency here, into the ignored folder .whl/,
# and carry that folder:
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
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))
status=0

publish() {
  [ -n "${OUT:-}" ] || return 0
  cp "$LOG" "$RES"/summary_ab_gpu.md "$RES"/ab_gpu.csv "$RES"/bench_gpu.csv \
    "$RES"/summary_gpu.md "$RES"/bench_model_gpu.csv "$RES"/summary_model_gpu.md "$OUT"/ \
    2>/dev/null
  (cd "$RES" && tar cf "$OUT"/gpu_results.tar gpu_check.log ./*gpu*.csv ./*gpu*.md ./*gpu*.png \
    ./*gpu*.txt 2>/dev/null)
  return 0
}

step() {  # step NAME MAX_SECONDS COMMAND...: run under min(MAX, time to the deadline), log, go on
  local name=$1 max=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  local limit=$((left < max ? left : max))
  if [ "$limit" -lt 15 ]; then
    echo "== $name: NOT RUN, the run's deadline is reached" | tee -a "$LOG"
    status=1
    return
  fi
  echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')" \
    | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
  publish
}

if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1

if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  GPU=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee -a "$LOG"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} CLIF_KERNELS_BUILD_CUDA=1
else
  GPU=0
  echo "no GPU: dry run on the CPU" | tee -a "$LOG"
fi
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$LOG"
# Test workers: several processes share the GPU (each Triton variant compiles once per process,
# so the Triton tests are bound by compile time, not by the GPU).
PAR=()
if python3 -c "import xdist" 2>/dev/null; then
  PAR=(-n "$([ "$GPU" = 1 ] && echo 12 || echo 2)")
  export TORCHINDUCTOR_COMPILE_THREADS=2
fi
TIMEOUT=()
python3 -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout 150)

step build 240 python3 setup.py -q build_ext --inplace
if [ "$GPU" = 1 ]; then
  # First, the kernels' A/B: the current kernels against the previous ones in one process
  # (benchmarks/ab_gpu.py: kernels alone and through autograd, T = 8 and 32, N = 2^16..2^25,
  # shares of the run's copy bandwidth, accuracy against float64, the variant to keep).
  step ab 200 python3 benchmarks/ab_gpu.py --out "$RES" --time-budget 170
  # Why each backward stalls, both variants (ncu is not on every GPU host; the step says so).
  if command -v ncu > /dev/null; then
    step ncu 80 ncu --section WarpStateStats --section MemoryWorkloadAnalysis \
      -k "regex:bwd|clif_kernel" --launch-count 16 --log-file "$RES/ncu_ab_gpu.txt" \
      python3 benchmarks/ab_gpu.py --ncu-target
  else
    echo "== ncu: not found on this host" | tee -a "$LOG"
  fi
  # The CUDA and Triton backends against the float64 reference (outputs, final states, every
  # gradient, golden cases, opcheck, inductor compile), the modules on the GPU (compile, bf16 and
  # fp16 autocast) and the input checks. The CPU-only tests and compile-only tests run in CI
  # (inductor's CPU compile of the block alone took 73 s here).
  # tests/test_bench_model.py: the ResNet with the cuda and triton neurons computes the reference
  # model's loss and gradients on the GPU (its CPU cases run in CI).
  # tests/test_graphs.py: CUDA graph capture and torch.compile(mode="reduce-overhead") of a
  # conv-BN-CLIFNode model replay eager; tests/test_fold.py, test_spike_bits.py: BatchNorm
  # folded into the neuron and spikes saved as bits, on the GPU.
  step tests 240 python3 -m pytest -q -p no:cacheprovider "${PAR[@]}" "${TIMEOUT[@]}" \
    --durations=10 -rfEs tests/test_fused.py tests/test_modules.py tests/test_inputs.py \
    tests/test_adversarial.py tests/test_kernel_variants.py tests/test_bench_model.py \
    tests/test_graphs.py tests/test_fold.py tests/test_spike_bits.py \
    -k "not cpp and not cpu and not (test_bench_model and compile)"
  # Eager calls against CUDA graph replay (CLIFNode forward + backward, T=8, N=2^16 and 2^20).
  step graphs 60 python3 benchmarks/cuda_graphs.py --out "$RES"
  # Out-of-bounds and misaligned accesses of the CUDA kernels on awkward widths (not every GPU
  # host has compute-sanitizer: the step says so and goes on).
  if command -v compute-sanitizer > /dev/null; then
    step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q \
      -p no:cacheprovider tests/test_fused.py tests/test_kernel_variants.py \
      -k "cuda and (awkward_widths or empty or strided or previous)"
  else
    echo "== memcheck: compute-sanitizer not found on this host" | tee -a "$LOG"
  fi
  # The headline case: T=8, N=2^23 (the ResNet shape [8, 64, 128, 32, 32]), every provider,
  # after the host cost per call on tiny inputs against torch.sigmoid (host_gpu.csv).
  step bench 180 python3 -m clif_kernels bench --out "$RES" --sweep 8:8388608
  # The spiking ResNet-18's training step, every provider but torch.compile (its own step
  # below), T=8 first: time, peak memory, neuron share, largest batch in 40 GiB.
  step model 240 python3 -m clif_kernels bench-model --out "$RES" --time-budget 170 \
    --providers cuda,cuda+fold+bits,cuda+fold,cuda+bits,triton,spikingjelly,spikingjelly+memopt,naive,lif,reference
  step tune 90 python3 benchmarks/tune_gpu.py --out "$RES"
  step check 90 python3 -m clif_kernels check
  # torch.compile of the whole ResNet with the loop neuron, T=8, added to the model's CSV; the
  # bfloat16 case (a second compile) starts only if float32 took under a minute.
  step model_compiled 150 python3 -m clif_kernels bench-model --out "$RES" --append \
    --providers compiled --T 8 --time-budget 60
  # The rest of the sweep, fused backends and the naive loop only, with the time that is left.
  left=$((DEADLINE - SECONDS - 30))
  step sweep 300 python3 -m clif_kernels bench --out "$RES" --tag gpu_sweep \
    --providers naive,triton,cuda --time-budget "$((left > 20 ? left : 20))" \
    --sweep 8:65536,8:262144,8:1048576,8:4194304,8:33554432,4:1048576,16:1048576,32:1048576,128:1048576,1024:65536
else
  step tests 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_fused.py -k "cpp and golden"
  step check 120 python3 -m clif_kernels check
  step bench 300 python3 -m clif_kernels bench --out "$RES" --quick
  step model 240 python3 -m clif_kernels bench-model --quick --out "$RES" \
    --tag model_dryrun
fi
# The plots, drawn from the CSVs by the clone's plotting script where matplotlib is installed.
if python3 -c "import matplotlib" 2>/dev/null; then
  for f in "$RES"/bench_*.csv; do python3 benchmarks/plot.py "$f" || true; done
fi

publish
echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo some steps FAILED)" | tee -a "$LOG"
exit $status
