#!/usr/bin/env bash
# GPU readiness of monai_ext on one CUDA GPU. Never part of CI: .ci/run does not call it, and it stops at once
# without a GPU.
#
#   bash benchmarks/gpu_check.sh [STEP ...]     steps: amp_epoch torchrun memory benchmark (default: all four)
#
#   amp_epoch  one training epoch of bundles/medt_segmentation_3d with amp on (its default on CUDA), then evaluation
#   torchrun   the same epoch through torchrun with one process and the NCCL backend (multi_gpu_train.json)
#   memory     one bfloat16 training step of HybridAxialUNet, MedT and MONAI's UNet at 96^3 and 128^3 ROIs
#   benchmark  benchmarks/segmentation_3d.py at a 300 s budget (BUDGET=...) on the GPU; needs nilearn's data files
#              (pip install --no-deps nilearn==0.14.1); about 11 minutes for two models
#
# Needs monai_ext installed with its bundles extra and a CUDA build of torch. Logs and tables go to $OUT (the device
# tool's output folder) or ./gpu_check_out; the bundle runs on a copy in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(amp_epoch torchrun memory benchmark)
export PYTHONUNBUFFERED=1

python - <<'EOF' | tee "$out/gpu.txt"
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA GPU visible to torch; nothing to check")
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r bundles/medt_segmentation_3d "$work/seg"
configs="$work/seg/configs"

for step in "${steps[@]}"; do
    case "$step" in
    amp_epoch)
        # amp defaults to torch.cuda.is_available(); the log line proves it was on
        python -m monai.bundle run --config_file "$configs/train.json" --train#trainer#max_epochs 1 \
            --val_interval 1 --amp True 2>&1 | tee "$out/amp_epoch.log"
        python -c "import torch; s = torch.load('$work/seg/models/model.pt', weights_only=True); \
print('model.pt tensors:', len(s), 'all finite:', all(torch.isfinite(v).all().item() for v in s.values()))" \
            | tee -a "$out/amp_epoch.log"
        ;;
    torchrun)
        torchrun --nproc_per_node 1 -m monai.bundle run \
            --config_file "['$configs/train.json','$configs/multi_gpu_train.json']" \
            --train#trainer#max_epochs 1 --val_interval 1 2>&1 | tee "$out/torchrun.log"
        ;;
    memory)
        python benchmarks/memory_3d.py --device cuda --sizes 96 128 | tee "$out/memory.md"
        ;;
    benchmark)
        python benchmarks/segmentation_3d.py --device cuda --budgets "${BUDGET:-300}" | tee "$out/benchmark.md"
        ;;
    *)
        echo "gpu_check: unknown step '$step' (steps: amp_epoch torchrun memory benchmark)" >&2
        exit 2
        ;;
    esac
done
