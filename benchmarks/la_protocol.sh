#!/usr/bin/env bash
# The development protocol of ../shared/data/README.md at CPU scale, one trainer after the other:
# train on fold `all` (labelled + unlabelled cases), predict the held-back cases with the stock
# predictor (network A, last checkpoint) and, for dual-network trainers, also with the mean softmax of
# both networks (nnUNetv2_ccesemi_predict, the paper's inference); evaluate in voxels without
# post-processing (nnUNetv2_ccesemi_evaluate's definitions).
#   usage: benchmarks/la_protocol.sh DATASET_ID CONFIG TRAINER [TRAINER ...]
#   DEVICE=cuda trains and predicts on the GPU (default cpu).
# A rerun continues where the last one stopped: a trainer with checkpoint_final.pth is not trained
# again (only its missing predictions are made), one with checkpoint_latest.pth resumes from it
# (nnUNetv2_train --c), and a row already in protocol_results.txt is not appended twice.
# FRESH=1 trains every trainer from scratch instead (nnU-Net then overwrites its checkpoints).
# Needs nnUNet_raw/_preprocessed/_results set and the dataset converted, planned, the unlabelled
# cases preprocessed (and, for 3d_cpu, the CPU configuration added): see benchmarks/README.md.
set -euo pipefail
dataset=$1; config=$2; shift 2
device=${DEVICE:-cpu}
name=$(basename "$(ls -d "$nnUNet_raw"/Dataset$(printf %03d "$dataset")_*)")
here=$(cd "$(dirname "$0")" && pwd)
results="$nnUNet_results/$name/protocol_results.txt"

# Evaluate PRED_DIR and append its row, unless a row of that name is already there.
add_row() {  # ROW_NAME PRED_DIR
  if [ -z "${FRESH:-}" ] && [ -f "$results" ] && grep -q -- "^$1 (" "$results"; then
    echo "protocol_results.txt already has a row '$1': not appended again"
  else
    python "$here/la_eval.py" "$nnUNet_raw/$name/labelsTs" "$2" --name "$1 ($trained)" | tee -a "$results"
  fi
}

for trainer in "$@"; do
  fold="$nnUNet_results/$name/${trainer}__nnUNetPlans__$config/fold_all"
  resume=() keep=()
  if [ -z "${FRESH:-}" ] && [ -f "$fold/checkpoint_final.pth" ]; then
    trained="trained before"
    keep=(--continue_prediction)  # the model is the one the existing predictions came from
  else
    if [ -z "${FRESH:-}" ] && [ -f "$fold/checkpoint_latest.pth" ]; then resume=(--c); fi
    start=$(date +%s)
    nnUNetv2_train "$dataset" "$config" all -tr "$trainer" -device "$device" "${resume[@]}"
    trained="train $(( $(date +%s) - start ))s${resume:+ resumed part}"
  fi
  out="$nnUNet_results/$name/predictions_imagesTs/$trainer"
  common=(-i "$nnUNet_raw/$name/imagesTs" -d "$dataset" -c "$config" -f all -tr "$trainer" -device "$device"
          -npp 1 -nps 1 --disable_progress_bar "${keep[@]}")
  nnUNetv2_predict "${common[@]}" -o "$out"
  add_row "$trainer A" "$out"
  if python -c "import sys, torch; sys.exit('network_b_weights' not in torch.load(sys.argv[1], map_location='cpu', weights_only=False))" "$fold/checkpoint_final.pth"; then
    nnUNetv2_ccesemi_predict "${common[@]}" -o "$out.both" --uncertainty
    add_row "$trainer A+B" "$out.both"
  fi
done
