"""Dice / Jaccard / 95HD / ASD (voxels, medpy definitions, no post-processing) of a prediction folder.

    python benchmarks/la_eval.py LABELS_DIR PRED_DIR [--name ROW_NAME]

A stop-gap for the LA protocol runs until the plugin's own evaluator exists; needs medpy.
"""
import argparse
import os

import numpy as np
import SimpleITK as sitk
from medpy import metric


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("labels")
    parser.add_argument("predictions")
    parser.add_argument("--name", default="")
    args = parser.parse_args(argv)
    rows = []
    for name in sorted(os.listdir(args.labels)):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(args.labels, name))) == 1
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(args.predictions, name))) == 1
        if predicted.any() and reference.any():
            rows.append((metric.binary.dc(predicted, reference), metric.binary.jc(predicted, reference),
                         metric.binary.hd95(predicted, reference), metric.binary.asd(predicted, reference)))
        else:
            rows.append((0.0, 0.0, np.nan, np.nan))
    values = np.array(rows)
    mean = np.nanmean(values, axis=0)
    print(f"{args.name:<34} n={len(rows):2d}  Dice {100 * mean[0]:6.2f}  Jaccard {100 * mean[1]:6.2f}  "
          f"95HD {mean[2]:6.2f}  ASD {mean[3]:5.2f}  (per-case Dice min {100 * values[:, 0].min():.1f})")


if __name__ == "__main__":
    main()
