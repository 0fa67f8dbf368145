"""Wall time of ``nnUNetv2_ccesemi_evaluate``'s evaluator against medpy on synthetic Left-Atrium-sized cases.

    python benchmarks/eval_speed.py [--cases 20] [--shape 88 112 112] [--spacing 1.25] [-np 1 2]

Writes ``--cases`` pairs of NIfTI files to a temporary folder: the reference is an ellipsoid with a
smoothly perturbed boundary, the prediction the same shape shifted by a few voxels, its boundary
perturbed again, and on some cases a small false-positive island. Then times, each from reading the
files to the mean values: the plugin's ``evaluate_folders`` (label 1, voxels) with each ``-np``, and
medpy (``dc``, ``jc``, ``hd95``, ``asd``, ``assd``, one process), and prints the largest difference
between the two sets of per-case values. Needs medpy for the comparison.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from os.path import join

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_ccesemi.evaluation.folders import evaluate_folders
from nnunet_ccesemi.evaluation.metrics import METRICS


def synthetic_pair(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) uint8 masks: a bumpy ellipsoid and a shifted, re-perturbed copy."""
    grid = np.indices(shape, dtype=np.float32)
    center = np.array(shape) / 2 + rng.uniform(-0.05, 0.05, 3) * np.array(shape)
    radii = np.array(shape) * rng.uniform(0.22, 0.32, 3)

    def bumpy_ellipsoid(shift):
        level = sum(((g - c - s) / r) ** 2 for g, c, s, r in zip(grid, center, shift, radii))
        # low-frequency noise on the implicit function bends the boundary by a few voxels
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 6)
        return level + noise / noise.std() * 0.08 <= 1.0

    reference = bumpy_ellipsoid(np.zeros(3))
    prediction = bumpy_ellipsoid(rng.uniform(-3, 3, 3))
    if rng.random() < 0.5:
        corner = [int(rng.integers(2, s // 6)) for s in shape]
        prediction[tuple(slice(c, c + 3) for c in corner)] = True
    return reference.astype(np.uint8), prediction.astype(np.uint8)


def write_cases(folder: str, n_cases: int, shape: tuple[int, ...], spacing: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    for kind in ("labels", "pred"):
        os.makedirs(join(folder, kind), exist_ok=True)
    for i in range(n_cases):
        for kind, array in zip(("labels", "pred"), synthetic_pair(shape, rng)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((spacing,) * 3)
            sitk.WriteImage(image, join(folder, kind, f"la_{i:03d}.nii.gz"))
    return join(folder, "labels"), join(folder, "pred")


def medpy_per_case(labels: str, predictions: str) -> list[dict]:
    from medpy.metric import binary

    rows = []
    for name in sorted(os.listdir(labels)):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(join(labels, name))) == 1
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(join(predictions, name))) == 1
        rows.append({"Dice": binary.dc(predicted, reference), "Jaccard": binary.jc(predicted, reference),
                     "HD95": binary.hd95(predicted, reference), "ASD": binary.asd(predicted, reference),
                     "ASSD": binary.assd(predicted, reference)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[88, 112, 112], help="array shape (z, y, x)")
    parser.add_argument("--spacing", type=float, default=1.25)
    parser.add_argument("-np", type=int, nargs="+", default=[1, 2], help="worker processes to time")
    parser.add_argument("--no-medpy", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        labels, predictions = write_cases(folder, args.cases, tuple(args.shape), args.spacing)
        print(f"{args.cases} cases of {'x'.join(map(str, args.shape))} voxels, label 1, units voxel")
        ours = None
        for processes in args.np:
            start = time.perf_counter()
            summary = evaluate_folders(labels, predictions, labels=[1], num_processes=processes)
            elapsed = time.perf_counter() - start
            ours = [case["metrics"]["1"] for case in summary["metric_per_case"]]
            mean = summary["mean"]["1"]
            print(f"nnunet_ccesemi evaluator -np {processes}: {elapsed:6.2f} s   "
                  f"({elapsed / args.cases * 1000:5.0f} ms/case)  Dice {100 * mean['Dice']:.2f}  "
                  f"HD95 {mean['HD95']:.2f}  ASD {mean['ASD']:.2f}  ASSD {mean['ASSD']:.2f}")
        if not args.no_medpy:
            start = time.perf_counter()
            reference = medpy_per_case(labels, predictions)
            elapsed = time.perf_counter() - start
            print(f"medpy (dc, jc, hd95, asd, assd):  {elapsed:6.2f} s   ({elapsed / args.cases * 1000:5.0f} ms/case)")
            difference = max(abs(a[m] - b[m]) for a, b in zip(ours, reference) for m in METRICS)
            print(f"largest per-case difference to medpy: {difference:.2e}")


if __name__ == "__main__":
    main()
