#!/usr/bin/env bash
# The CCE paper's Left Atrium protocol end to end: convert (UA-MT split, 8 labelled = 10 %), plan and
# preprocess, train on fold `all` (all labelled cases; no model selection: the last checkpoint), predict
# the 20 test cases (network A with the stock predictor and, for dual-network trainers, the mean
# softmax of both networks), evaluate in voxels without post-processing. One table row per prediction.
#   usage: benchmarks/paper_protocol.sh LA_ROOT DATASET_ID [TRAINER ...]
#     LA_ROOT: the Left Atrium 2018 data as distributed (challenge nrrd or UA-MT h5 layout)
#     TRAINER: default nnUNetTrainerSupervised (nnU-Net's nnUNetTrainer, seeded) and nnUNetTrainerCCE
#   env: DEVICE (default cuda), CONFIG (default 3d_fullres; 3d_cpu adds the CPU configuration first),
#        LABELED (default 8), SPACING (h5 files store none; the converter's default is 0.625 mm)
# Steps already done (converted dataset, plans, unlabelled cases, finished trainings, rows) are skipped and an
# interrupted training resumes from its latest checkpoint, so a rerun continues (FRESH=1 retrains).
# Needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results set.
set -euo pipefail
root=$1; dataset=$2; shift 2
trainers=("$@")
[ ${#trainers[@]} -gt 0 ] || trainers=(nnUNetTrainerSupervised nnUNetTrainerCCE)
config=${CONFIG:-3d_fullres}
here=$(cd "$(dirname "$0")" && pwd)
id=$(printf %03d "$dataset")

if ! ls -d "$nnUNet_raw"/Dataset${id}_* >/dev/null 2>&1; then
  nnUNetv2_ccesemi_convert_LA -i "$root" -d "$dataset" --labeled "${LABELED:-8}" ${SPACING:+--spacing $SPACING}
fi
name=$(basename "$(ls -d "$nnUNet_raw"/Dataset${id}_*)")
if [ ! -f "$nnUNet_preprocessed/$name/nnUNetPlans.json" ]; then
  nnUNetv2_plan_and_preprocess -d "$dataset" -c 3d_fullres --verify_dataset_integrity
fi
nnUNetv2_ccesemi_preprocess_unlabeled -d "$dataset" -c 3d_fullres
if [ "$config" = 3d_cpu ]; then
  nnUNetv2_ccesemi_add_cpu_config -d "$dataset" --overwrite
fi
DEVICE=${DEVICE:-cuda} "$here/la_protocol.sh" "$dataset" "$config" "${trainers[@]}"
echo "rows: $nnUNet_results/$name/protocol_results.txt (paper, CCE at 10 % on full-resolution LA: Dice 89.95)"
