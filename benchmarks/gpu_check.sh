#!/usr/bin/env bash
# The GPU path in a few minutes, without Ray (a GPU machine with torch only is enough):
#   1. the fine-tune step, fp32 and bf16, and the GEMM peaks (bench_step.py);
#   2. packed against one-by-one training (bench_fused.py), where packs should pay most;
#   3. exactness of packed against single training on the device (pack_exactness.py).
#
# Run from the repository root:  bash benchmarks/gpu_check.sh            (CUDA)
#                                bash benchmarks/gpu_check.sh --device cpu   (the same checks on CPU,
#                                to know the script works; slower, so smaller settings)
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
if [[ "${1:-}" == "--device" && -n "${2:-}" ]]; then
  device=$2
elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--device cuda|cpu]" >&2
  exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

"$PYTHON" - "$device" <<'EOF'
import sys, torch
device = sys.argv[1]
print(f"torch {torch.__version__}; device {device}", end="")
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("\nerror: CUDA is not available to this torch (use --device cpu)")
    print(f": {torch.cuda.get_device_name(0)}, bf16 native: {torch.cuda.is_bf16_supported(including_emulation=False)}")
else:
    print()
EOF

if [[ "$device" == cpu ]]; then
  step_args=(--quick --channels 64); fused_args=(--quick --settings 64x16 --tasks 8); exact_args=(--tasks 4 --steps 5)
else
  step_args=(); fused_args=(--quick); exact_args=()
fi

echo; echo "== 1. step samples/s, fp32 and bf16 (benchmarks/bench_step.py) =="
"$PYTHON" benchmarks/bench_step.py --device "$device" "${step_args[@]}"
echo; echo "== 2. packed vs one by one (benchmarks/bench_fused.py) =="
"$PYTHON" benchmarks/bench_fused.py --device "$device" "${fused_args[@]}"
echo; echo "== 3. packed vs single training, max weight difference (benchmarks/pack_exactness.py) =="
"$PYTHON" benchmarks/pack_exactness.py --device "$device" "${exact_args[@]}"
