#!/usr/bin/env bash
# One GPU check of geomopt, in under 8 minutes on one GPU: the CUDA tests and the GPU speed benchmarks.
#
#   benchmarks/gpu_check.sh                # on a machine with a CUDA device
#   benchmarks/gpu_check.sh --cpu-dry-run  # without one: collects the CUDA tests, checks every command parses
#
# Parts (each timed, each under its own time limit; the first failure stops the script with its status):
#   1. pytest -m cuda           every optimizer, the engine with --device cuda, the CPU-only kernels' ATen
#                               fallbacks, measures and curvature operators, DDP on nccl (tests/cuda), each
#                               against the CPU;
#   2. bench_path_sgd.py        Path-SGD's step over SGD's on the GPU (MLP 784-4000-4000-10, CNN), short;
#   3. bench_rnn.py --bnlstm    BN-LSTM (fused ATen loop) against cuDNN's LSTM, hidden 100 / 1000, T 100 / 784;
#   4. geomopt train            one epoch of a 784-256-10 Path-SGD MLP on Fashion-MNIST (on digits if the
#                               package's folder is absent), --device cuda.
# Writes summary.txt (machine, per-part seconds and status) and one log per part to $OUT/gpu_check
# (else gpu_check_results/). Python: $PYTHON (default python3); run from anywhere.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
results="${OUT:+$OUT/gpu_check}"
results="${results:-$root/gpu_check_results}"
mkdir -p "$results"
summary="$results/summary.txt"

dry=0
case "${1:-}" in
  --cpu-dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac

# part NAME LIMIT_S COMMAND...: run it with a time limit, log to NAME.log, record seconds and status
part() {
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS status=0
  echo "== $name: $*" | tee -a "$summary"
  timeout "$limit" "$@" 2>&1 | tee "$results/$name.log" || status=$?
  echo "   $name: $((SECONDS - start)) s, exit $status" | tee -a "$summary"
  if [ "$status" -ne 0 ]; then
    echo "gpu_check: $name failed (exit $status$([ "$status" -eq 124 ] && echo ", over its ${limit} s limit")); log in $results/$name.log" >&2
    exit "$status"
  fi
}

{ date -u +"%Y-%m-%dT%H:%M:%SZ"; git rev-parse --short HEAD 2>/dev/null || true; } > "$summary"
"$python" - >> "$summary" <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices {torch.cuda.device_count()}: "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
EOF

if [ "$dry" -eq 1 ]; then
  bash -n "$0"
  part collect-cuda-tests 300 "$python" -m pytest -m cuda --collect-only -q -p no:cacheprovider
  part bench-path-sgd-parses 60 "$python" benchmarks/bench_path_sgd.py --help
  part bench-rnn-parses 60 "$python" benchmarks/bench_rnn.py --help
  part geomopt-train-parses 60 "$python" -m geomopt train --help
  echo "dry run done: nothing ran on a GPU; results in $results"
  exit 0
fi

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); use --cpu-dry-run to check the script" >&2
  exit 1
fi

total=$SECONDS
part pytest-cuda 300 "$python" -m pytest -m cuda -q -p no:cacheprovider -rs --durations=10
part bench-path-sgd 90 "$python" benchmarks/bench_path_sgd.py --device cuda --steps 5 --reps 3
part bench-bnlstm 90 "$python" benchmarks/bench_rnn.py --bnlstm --device cuda --no-urnn --steps 3 --long-steps 2 \
  --hidden 100,1000 --bn-lengths 100,784 --batches 16,64
data=digits
[ -d /usr/share/datasets/fashion-mnist ] && data=fashion-mnist
part train-"$data" 60 "$python" -m geomopt train --data "$data" --model mlp --widths 256 --optimizer path-sgd \
  --lr 0.05 --epochs 1 --device cuda --no-progress --overwrite --out "$results/train-$data"
echo "total: $((SECONDS - total)) s; results in $results" | tee -a "$summary"
