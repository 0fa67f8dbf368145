"""Does the annotation ranking find the cases the model gets wrong? Left Atrium development data.

    nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... .venv/bin/python benchmarks/la_ranking.py \
        -d 601 -c 3d_cpu -tr nnUNetTrainerCCE_20epochs --h5 ../shared/data/LA2018_h5_1.25mm -o benchmarks/results/la_ranking

Ranks the dataset's ``imagesUnlabeled`` exactly as ``nnUNetv2_ccesemi_rank_unlabeled`` does (the same
predictor pass and :func:`nnunet_ccesemi.inference.ranking.score_case`), and in the same pass turns
the mean of both networks' softmax into a segmentation with nnU-Net's own export step, so that its
true Dice can be measured against the label the h5 file carries (the ranking never reads it). Prints
and writes (``OUT.txt``, ``OUT.csv``, ``OUT.png``) the Spearman correlation between each score, signed
so that "more informative" is larger, and the true error 1 - Dice.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
from os.path import join
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def informativeness(scores: dict, name: str) -> float:
    from nnunet_ccesemi.inference.ranking import SCORES
    return scores[name] if SCORES[name].higher_is_more_informative else -scores[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-c", default="3d_cpu")
    parser.add_argument("-tr", required=True)
    parser.add_argument("-f", default="all")
    parser.add_argument("--h5", required=True, help="LA2018_h5_1.25mm (holds '2018LA_Seg_Training Set/<ID>/mri_norm2.h5')")
    parser.add_argument("--spacing", type=float, default=1.25)
    parser.add_argument("--tta", action="store_true", help="mirroring at test time (8x slower; default off)")
    parser.add_argument("-o", required=True, help="output prefix (OUT.txt, OUT.csv, OUT.png)")
    args = parser.parse_args()

    import SimpleITK as sitk
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from scipy.stats import spearmanr

    from nnunet_ccesemi.data.layout import find_cases, raw_unlabeled_folder
    from nnunet_ccesemi.dataset_conversion.convert_LA import read_h5_case
    from nnunet_ccesemi.evaluation.metrics import dice
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    from nnunet_ccesemi.inference.ranking import SCORES, network_grid_spacing, score_case

    torch.set_num_threads(os.cpu_count() or 1)
    model_folder = get_output_folder(args.d, args.tr, "nnUNetPlans", args.c)
    predictor = DualNetworkPredictor(networks="both", tile_step_size=0.5, use_gaussian=True,
                                     use_mirroring=args.tta, perform_everything_on_device=False,
                                     device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, [args.f], "checkpoint_final.pth")
    folder = raw_unlabeled_folder(join(os.fspath(nnUNet_raw), maybe_convert_to_dataset_name(args.d)))
    cases = find_cases(folder, predictor.dataset_json, "unlabelled")
    case_ids = sorted(cases)

    rows, started = [], time.perf_counter()
    for case, properties, probs_a, probs_b in predictor.probabilities_per_case([cases[c] for c in case_ids],
                                                                               case_ids, 2):
        spacing = network_grid_spacing(properties, predictor.configuration_manager.spacing,
                                       predictor.plans_manager.transpose_forward)
        scores = score_case(probs_a, probs_b, float(np.prod(spacing)))
        mean = (probs_a + probs_b) / 2
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            mean.clamp_min(torch.finfo(torch.float32).tiny).log(), predictor.plans_manager,
            predictor.configuration_manager, predictor.label_manager, properties)
        h5 = Path(args.h5) / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
        _, label = read_h5_case(h5, [args.spacing] * 3, with_label=True)
        reference = sitk.GetArrayFromImage(label)
        if reference.shape != segmentation.shape:
            raise SystemExit(f"{case}: label shape {reference.shape} != prediction shape {segmentation.shape}")
        rows.append({"case": case, "dice": dice(segmentation == 1, reference == 1), **scores})
        print(f"{len(rows):3d}/{len(case_ids)} {case}  Dice {rows[-1]['dice']:.4f}  "
              + "  ".join(f"{name} {scores[name]:.4g}" for name in SCORES), flush=True)

    errors = np.array([1 - row["dice"] for row in rows])
    lines = [f"# {shlex.join(sys.argv)}",
             f"# model {model_folder} (fold {args.f}, checkpoint_final.pth); {len(rows)} unlabelled cases of the "
             f"development protocol; mirroring {'on' if args.tta else 'off'}; {time.perf_counter() - started:.0f} s",
             f"# true error = 1 - Dice of the mean of both networks' softmax against the h5 label (never read by "
             f"the ranking); mean Dice {100 * np.mean([row['dice'] for row in rows]):.2f}, "
             f"min {100 * min(row['dice'] for row in rows):.2f}",
             "score          Spearman(informativeness, 1 - Dice)   p-value"]
    correlations = {}
    for name in SCORES:
        rho, p = spearmanr([informativeness(row, name) for row in rows], errors)
        correlations[name] = rho
        lines.append(f"{name:<14} {rho:+.3f}                                  {p:.2g}")
    best = max(correlations, key=lambda name: correlations[name])
    lines.append(f"best: {best} ({correlations[best]:+.3f})")
    print("\n".join(lines))
    Path(args.o).parent.mkdir(parents=True, exist_ok=True)
    Path(args.o + ".txt").write_text("\n".join(lines) + "\n")
    with open(args.o + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, correlations, args.o + ".png")


def plot(rows: list[dict], correlations: dict[str, float], path: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    names = list(correlations)
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    dices = [100 * row["dice"] for row in rows]
    for axis, name in zip(axes, names):
        axis.scatter([row[name] for row in rows], dices, s=14)
        axis.set_xlabel(name)
        axis.set_title(f"Spearman vs error {correlations[name]:+.2f}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("true Dice of the mean prediction (%)")
    figure.suptitle("LA development data, 60 unlabelled cases: ranking score against true Dice")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
