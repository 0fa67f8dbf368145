#!/usr/bin/env bash
# The development protocol of ../shared/data/README.md at CPU scale, one trainer after the other:
# train on fold `all` (labelled + unlabelled cases), predict the held-back cases with the stock
# predictor (network A, last checkpoint) and, for dual-network trainers, also with the mean softmax of
# both networks (nnUNetv2_ccesemi_predict, the paper's inference); evaluate in voxels without
# post-processing (nnUNetv2_ccesemi_evaluate's definitions).
#   usage: benchmarks/la_protocol.sh DATASET_ID CONFIG TRAINER [TRAINER ...]
#   CONTINUE=1 resumes each training from its latest checkpoint (nnUNetv2_train --c);
#   DEVICE=cuda trains and predicts on the GPU (default cpu).
# Needs nnUNet_raw/_preprocessed/_results set and the dataset converted, planned, the unlabelled
# cases preprocessed (and, for 3d_cpu, the CPU configuration added): see benchmarks/README.md.
set -euo pipefail
dataset=$1; config=$2; shift 2
device=${DEVICE:-cpu}
name=$(basename "$(ls -d "$nnUNet_raw"/Dataset$(printf %03d "$dataset")_*)")
here=$(cd "$(dirname "$0")" && pwd)
results="$nnUNet_results/$name/protocol_results.txt"
for trainer in "$@"; do
  start=$(date +%s)
  nnUNetv2_train "$dataset" "$config" all -tr "$trainer" -device "$device" ${CONTINUE:+--c}
  trained=$(( $(date +%s) - start ))
  out="$nnUNet_results/$name/predictions_imagesTs/$trainer"
  common=(-i "$nnUNet_raw/$name/imagesTs" -d "$dataset" -c "$config" -f all -tr "$trainer" -device "$device"
          -npp 1 -nps 1 --disable_progress_bar)
  nnUNetv2_predict "${common[@]}" -o "$out"
  python "$here/la_eval.py" "$nnUNet_raw/$name/labelsTs" "$out" --name "$trainer A (train ${trained}s)" \
    | tee -a "$results"
  checkpoint="$nnUNet_results/$name/${trainer}__nnUNetPlans__$config/fold_all/checkpoint_final.pth"
  if python -c "import sys, torch; sys.exit('network_b_weights' not in torch.load(sys.argv[1], map_location='cpu', weights_only=False))" "$checkpoint"; then
    nnUNetv2_ccesemi_predict "${common[@]}" -o "$out.both" --uncertainty
    python "$here/la_eval.py" "$nnUNet_raw/$name/labelsTs" "$out.both" --name "$trainer A+B (train ${trained}s)" \
      | tee -a "$results"
  fi
done
