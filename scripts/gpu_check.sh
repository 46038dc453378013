#!/usr/bin/env bash
# The GPU check in one short run, for a machine lent for minutes (each step time-limited, at most 560 s in all,
# so the run fits one 10-minute command; a step cut short keeps what it logged): the generated
# kernels on CUDA against the float64 reference (forward and backward, an odd length, GQA), then the
# benchmarks' quick rows, each step's log and every result file under OUT.
#
#   bash scripts/gpu_check.sh [OUT]        # OUT: default benchmarks/results
#
# Runs from the checkout (PYTHONPATH), so nothing is installed. Needs torch with CUDA and triton; sympy and
# lark must be importable, or given as wheels in .wheels/ (`pip download sympy lark -d .wheels` beforehand,
# for a machine that reaches no package index). Exits 2 without a GPU, 1 if a check fails.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # a GPU run, never the interpreter

if ! python -c "import sympy, lark" 2>/dev/null && [[ -d .wheels ]]; then
  python -m pip install -q --no-index --find-links .wheels sympy lark
fi
python - <<'EOF' | tee "$out/gpu-check-env.txt" || exit 2
import sys

import torch
import triton

if not torch.cuda.is_available():
    print("gpu_check: no CUDA GPU (torch.cuda.is_available() is False)")
    sys.exit(2)
print(f"gpu: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
      f"python {sys.version.split()[0]}")
EOF

failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local status=${PIPESTATUS[0]}
  if [[ $status -ne 0 ]]; then
    echo "gpu_check: $name failed (status $status)"
    failed=1
  fi
}

# Correctness on the GPU: bf16, 8 query heads over 2 kv heads, lengths that are not tile multiples.
check() { python -m attnc check "$@" --dtype bfloat16 --heads 8 --kv-heads 2 --head-dim 128 --backward; }
step check-causal 40 check causal --seq 1000
step check-window 40 check "sliding_window(256)" --seq 1000
step check-softcap 40 check "causal, softcap(30)" --seq 1000
step check-alibi 40 check "causal, alibi(8)" --seq 1000
step check-natten 40 check "natten((32, 32), 7)" --seq 1024

# Speed, each against FlexAttention and SDPA measured in the same run (S = 4096, D = 128).
step bench-fwd 130 python benchmarks/bench_attention.py --quick --head-dim 128 --out "$out"
step bench-fwd-bwd 150 python benchmarks/bench_attention.py --quick --head-dim 128 --pass fwd+bwd --out "$out"
step bench-decode 80 python benchmarks/bench_decode.py --quick --out "$out/$(date +%F)-decode.json"
exit $failed
