#!/usr/bin/env bash
# Everything that needs a GPU, in one go: build the CUDA ops, check them against the reference
# path, then time ops and training. Logs and reports go to OUTDIR.
#
#   bash benchmarks/gpu_checks.sh OUTDIR [correctness|speed|all] [extra gpu_speed.py args...]
#
# OFFICIAL=/path/to/stylegan2-ada-pytorch adds the official train.py to the speed table.
set -u
out=${1:?usage: gpu_checks.sh OUTDIR [correctness|speed|all] [gpu_speed args]}
what=${2:-all}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if [[ $what == correctness || $what == all ]]; then
  nvidia-smi -L
  $python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
  nvcc --version | tail -1
  # Build once, with the compiler's output on failure.
  /usr/bin/time -f 'build: %e s' $python -c \
    'from stylegan2_fair.ops import cuda_build; print(cuda_build.get_plugin(required=True))' 2>&1 | tail -40
  timeout 300 $python -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider --maxfail=30 -rf \
    2>&1 | tee "$out/cuda_tests.log" | tail -40
fi

if [[ $what == speed || $what == all ]]; then
  $python benchmarks/gpu_speed.py --out="$out/gpu_speed.md" ${OFFICIAL:+--official="$OFFICIAL"} "$@" \
    2>&1 | tee "$out/gpu_speed.log" | grep -v '^\$ '
fi
