#!/usr/bin/env bash
# The GPU checks of decomp in one command (about 5-8 minutes on one GPU), for a machine with CUDA:
#   scripts/gpu_check.sh [OUT]       (OUT: where figures go, default gpu_check/)
# 1. the latency table profiled on cuda, predicted vs measured, on a model the table was not filled from;
# 2. a 2-part resnet50 export run on the GPU through the runtime, by each transport one GPU allows (the object
#    store; NCCL needs a GPU per part, so it runs only with 2 or more);
# 3. the GPU-gated tests (NCCL outputs equal the in-process runner's).
# Each step writes JSON under OUT; BENCHMARKS.md takes the figures. Run in the project's venv (README).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
GPUS=$(python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.cuda.device_count())")
python -c "import torch; print('GPUs:', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"

# 1. profile two models into the cuda table; the second one's prediction uses ops the first filled in too
decomp profile torchvision:resnet18 --device cuda --table "$OUT/cuda.table.json" --json "$OUT/profile_resnet18.json"
decomp profile torchvision:mobilenet_v3_large --device cuda --table "$OUT/cuda.table.json" \
    --json "$OUT/profile_mobilenet_v3_large.json"

# 2. a 2-stage split export run on the GPU(s); micro-batches of 8 images
decomp split torchvision:resnet50 --parts 2 --input-shape 8,3,224,224 --out "$OUT/r50x2" --overwrite
decomp run "$OUT/r50x2" --batch-size 64 --micro-batches 8 --batches 10 --transport object-store \
    --json "$OUT/run_object_store.json"
if [ "$GPUS" -ge 2 ]; then
    decomp run "$OUT/r50x2" --batch-size 64 --micro-batches 8 --batches 10 --transport nccl --json "$OUT/run_nccl.json"
fi

# 3. the GPU-gated tests
pytest -q -m ray tests/integration/test_runtime_gpu.py
echo "figures in $OUT/"
