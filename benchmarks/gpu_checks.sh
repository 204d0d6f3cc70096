#!/usr/bin/env bash
# Everything that needs a GPU: build the CUDA ops, check them against the reference path, then
# time ops and training. Logs and reports go to OUTDIR; datasets and runs to WORKDIR (default /tmp/gpu-work).
#
#   bash benchmarks/gpu_checks.sh OUTDIR STEP... [-- extra gpu_speed.py args]
#
# Steps, in the order given (each fits a 10-minute slot on one H100):
#   correctness  build, then tests/test_cuda_ops.py, test_grid_sample.py and the GPU training test (~1 min)
#   ops          op timings, reference vs CUDA (~1 min)
#   methods      training sec/kimg and peak memory: plain (reference and CUDA ops) and every method (~6 min)
#   official     our train.py against the official one, same command line (~8 min for 8 kimg each);
#                needs OFFICIAL=/path/to/stylegan2-ada-pytorch
#   rebalance    latent-search throughput, batched vs one candidate per call, paper256-sized G (~1.5 min)
#   colour       collapse_probe.py at 50% green: does a GPU-sized tiny G hold two colour modes at all?
#                (on the CPU sizes it collapses to one colour within 6 kimg, see results/dia.md) (~4 min)
#   dia          dia_colored_digits.py at GPU scale: 10k images (100 greens), 16x16, clip floor 0.1 (runs E-F), DIA_KIMG (default 120)
#                kimg per model (not yet timed on a GPU: size it to the slot with DIA_KIMG)
#   imle         imle_stacked_digits.py coverage + minority parts at 16x16, IMLE_KIMG (default 30) kimg per run
#   matching     imle_matching_scale.py: IMLE's re-match at N = 30k, m = 300k (search, paper256 G renders at 256 and 64) (~2 min)
#
# A failed step does not stop the others (each slot is precious); the failures are listed at the end
# and the exit status is 1 if there were any.
set -uo pipefail  # pipefail: `cmd | tee | tail` fails when cmd does, not only when tail does
out=${1:?usage: gpu_checks.sh OUTDIR STEP... [-- gpu_speed args]}
shift
steps=()
while [[ $# -gt 0 && $1 != -- ]]; do steps+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the '--'
known_steps=" correctness ops methods official rebalance colour dia imle matching "
for step in "${steps[@]}"; do  # before any step runs: a typo must not cost the slot's later steps
  if [[ $known_steps != *" $step "* ]]; then
    echo "unknown step '$step'; the steps are:$known_steps" >&2; exit 2
  fi
done
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
work=${WORKDIR:-/tmp/gpu-work}
cd "$(dirname "$0")/.."

failed=()
# Usage: `command || fail WHAT $?` records the failure of the current step and goes on.
fail() { failed+=("$step: $1 (exit $2)"); echo "FAILED: $step: $1 (exit $2)" >&2; }

for step in "${steps[@]}"; do
  case $step in
    correctness)
      nvidia-smi -L || fail 'nvidia-smi -L' $?
      $python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))' \
        || fail 'torch and GPU info' $?
      nvcc --version | tail -1 || fail 'nvcc --version' $?
      # Build once, with the compiler's output on failure.
      /usr/bin/time -f 'build: %e s' $python -c \
        'from stylegan2_fair.ops import cuda_build; print(cuda_build.get_plugin(required=True))' 2>&1 | tail -40 \
        || fail 'CUDA kernel build' $?
      timeout 300 $python -m pytest -q -p no:cacheprovider --maxfail=30 -rf tests/test_cuda_ops.py \
        tests/test_grid_sample.py tests/test_training.py::test_augmented_reals_reach_r1_on_every_device \
        2>&1 | tee "$out/cuda_tests.log" | tail -40 || fail "GPU tests (see $out/cuda_tests.log)" $? ;;
    ops)
      $python benchmarks/gpu_speed.py --skip-training --out="$out/gpu_ops.md" "$@" 2>&1 | tee "$out/gpu_ops.log" \
        || fail 'gpu_speed.py ops' $? ;;
    methods)
      # `|| true`: grep exits 1 when it prints nothing, which is no failure of the run.
      $python benchmarks/gpu_speed.py --skip-ops --workdir="$work" --out="$out/gpu_methods.md" "$@" \
        2>&1 | tee "$out/gpu_methods.log" | { grep -v '^\$ ' || true; } || fail 'gpu_speed.py methods' $? ;;
    official)
      $python benchmarks/gpu_speed.py --skip-ops --skip-methods --official="${OFFICIAL:?set OFFICIAL}" \
        --cli-kimg=8 --workdir="$work" --out="$out/gpu_official.md" "$@" 2>&1 | tee "$out/gpu_official.log" \
        | { grep -v '^\$ ' || true; } || fail 'gpu_speed.py official' $?
      cp "$work"/cli-*.log "$out"/ 2>/dev/null ;;
    rebalance)
      $python benchmarks/rebalance_throughput.py --device=cuda --out="$out/rebalance_throughput.md" \
        2>&1 | tee "$out/rebalance_throughput.log" | tail -12 || fail 'rebalance_throughput.py' $? ;;
    colour)
      for size in "16 128" "32 256"; do
        read -r res channels <<< "$size"  # not `set --`: "$@" holds the gpu_speed args
        $python benchmarks/collapse_probe.py --device=cuda --threads=8 --workdir="$work/colour-$res" \
          --majority=0.5 --resolution="$res" --channels="$channels" --batch=32 --kimg=20 \
          2>&1 | tee "$out/colour-$res.log" | tail -12 || fail "collapse_probe.py at $res" $?
      done ;;
    dia)
      $python benchmarks/dia_colored_digits.py --device=cuda --threads=8 --workdir="$work/dia" \
        --num-images=10000 --resolution=16 --channels=128 --batch=32 --kimg="${DIA_KIMG:-120}" --dia-k=1 --dia-clip-min=0.1 \
        2>&1 | tee "$out/dia.log" | tail -20 || fail 'dia_colored_digits.py' $?
      cp "$work/dia/results.json" "$out/dia_results.json" 2>/dev/null ;;
    imle)
      $python benchmarks/imle_stacked_digits.py --device=cuda --threads=8 --workdir="$work/imle" \
        --out="$out/imle.md" --parts=coverage,minority --resolution=16 --kimg="${IMLE_KIMG:-30}" \
        --lpips-backbone=random 2>&1 | tee "$out/imle.log" | tail -20 || fail 'imle_stacked_digits.py' $? ;;
    matching)
      : > "$out/imle_matching.log"
      for res in 256 64; do  # not piped as a whole: `fail` inside a pipeline would run in a subshell
        $python benchmarks/imle_matching_scale.py --device=cuda --resolution=$res 2>&1 \
          | tee -a "$out/imle_matching.log" || fail "imle_matching_scale.py at $res" $?
      done ;;
  esac
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "${#failed[@]} failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all steps passed: ${steps[*]}"
