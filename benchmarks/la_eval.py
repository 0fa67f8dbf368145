"""Dice / Jaccard / 95HD / ASD (label 1, voxels, medpy definitions, no post-processing) of a prediction folder.

    python benchmarks/la_eval.py LABELS_DIR PRED_DIR [--name ROW_NAME]

One line for ``la_protocol.sh``'s results file; the numbers come from the plugin's evaluator
(``nnUNetv2_ccesemi_evaluate -l 1``, :mod:`nnunet_ccesemi.evaluation.folders`), which needs no medpy.
ASD is the directed prediction->reference distance. A case with an empty prediction scores Dice 0 and is left
out of the 95HD and ASD means (a warning on stderr says how many); ``nnUNetv2_ccesemi_evaluate`` gives
the full per-case table and JSON.
"""
import argparse
import sys

from nnunet_ccesemi.evaluation.folders import evaluate_folders


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("labels")
    parser.add_argument("predictions")
    parser.add_argument("--name", default="")
    args = parser.parse_args(argv)
    summary = evaluate_folders(args.labels, args.predictions, labels=[1], units="voxel", lcc=False,
                               empty_convention="nan")
    mean = summary["mean"]["1"]
    dice_min = min(case["metrics"]["1"]["Dice"] for case in summary["metric_per_case"])
    if mean["n_excluded_empty"]:
        print(f"WARNING: {mean['n_excluded_empty']} cases with an empty mask left out of 95HD/ASD", file=sys.stderr)
    print(f"{args.name:<34} n={summary['n_cases']:2d}  Dice {100 * mean['Dice']:6.2f}  "
          f"Jaccard {100 * mean['Jaccard']:6.2f}  95HD {mean['HD95']:6.2f}  ASD {mean['ASD']:5.2f}  "
          f"(per-case Dice min {100 * dice_min:.1f})")


if __name__ == "__main__":
    main()
