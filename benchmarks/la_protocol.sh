#!/usr/bin/env bash
# The development protocol of ../shared/data/README.md at CPU scale, one trainer after the other:
# train on fold `all` (8 labelled + 60 unlabelled), predict the 12 held-back cases with the stock
# predictor (network A, last checkpoint), evaluate in voxels without post-processing.
#   usage: benchmarks/la_protocol.sh DATASET_ID CONFIG TRAINER [TRAINER ...]
#   CONTINUE=1 resumes each training from its latest checkpoint (nnUNetv2_train --c).
# Needs nnUNet_raw/_preprocessed/_results set and the dataset converted, planned, the unlabelled
# cases preprocessed and the CPU configuration added (commands in benchmarks/README.md).
set -euo pipefail
dataset=$1; config=$2; shift 2
name=$(basename "$(ls -d "$nnUNet_raw"/Dataset$(printf %03d "$dataset")_*)")
here=$(cd "$(dirname "$0")" && pwd)
for trainer in "$@"; do
  start=$(date +%s)
  nnUNetv2_train "$dataset" "$config" all -tr "$trainer" -device cpu ${CONTINUE:+--c}
  trained=$(( $(date +%s) - start ))
  out="$nnUNet_results/$name/predictions_imagesTs/$trainer"
  nnUNetv2_predict -i "$nnUNet_raw/$name/imagesTs" -o "$out" -d "$dataset" -c "$config" -f all -tr "$trainer" \
    -device cpu -npp 1 -nps 1 --disable_progress_bar
  python "$here/la_eval.py" "$nnUNet_raw/$name/labelsTs" "$out" --name "$trainer (train ${trained}s)" \
    | tee -a "$nnUNet_results/$name/protocol_results.txt"
done
