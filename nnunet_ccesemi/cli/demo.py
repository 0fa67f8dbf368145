"""``nnUNetv2_ccesemi_demo``: the whole semi-supervised workflow on a small synthetic dataset, on a CPU.

Runs the stock nnU-Net commands and the plugin's own, exactly as a user would: write the dataset
(labelled, unlabelled and test cases), ``nnUNetv2_plan_and_preprocess``, preprocess the unlabelled
cases, add the CPU configuration, train nnU-Net's supervised trainer and the dual-network trainer on
the same labelled cases with the same budget, predict the test cases with the stock predictor, and
print a Dice table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from os.path import join

import numpy as np

DEFAULT_TRAINERS = ("nnUNetTrainerSupervised_5epochs", "nnUNetTrainerCPS_5epochs")


def command_path(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    local = join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else (shutil.which(name) or name)


def run(args: list[str], env: dict) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run([command_path(args[0]), *args[1:]], env=env, check=True)


def dice_per_case(prediction_folder: str, label_folder: str, label: int = 1) -> dict[str, float]:
    import SimpleITK as sitk

    scores = {}
    for name in sorted(os.listdir(label_folder)):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(join(label_folder, name))) == label
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(join(prediction_folder, name))) == label
        denominator = reference.sum() + predicted.sum()
        scores[name] = float(2 * (reference & predicted).sum() / denominator) if denominator else 1.0
    return scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].strip("`: "))
    parser.add_argument("--workdir", default="ccesemi_demo",
                        help="folder for nnUNet_raw/_preprocessed/_results of the demo (default ./ccesemi_demo)")
    parser.add_argument("--dataset-id", type=int, default=990)
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                        help=f"trainers to compare (default {' '.join(DEFAULT_TRAINERS)})")
    parser.add_argument("--configuration", default="3d_cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing --workdir first")
    args = parser.parse_args(argv)

    from nnunet_ccesemi.data.synthetic import write_synthetic_dataset

    workdir = os.path.abspath(args.workdir)
    if os.path.exists(workdir):
        if not args.overwrite:
            parser.error(f"{workdir} exists; pass --overwrite to start again or choose another --workdir")
        shutil.rmtree(workdir)
    env = dict(os.environ)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[variable] = join(workdir, variable)
        os.makedirs(env[variable])
    env.setdefault("nnUNet_compile", "f")
    dataset = str(args.dataset_id)
    started = time.time()

    raw_folder = write_synthetic_dataset(env["nnUNet_raw"], args.dataset_id)
    print(f"Wrote a synthetic dataset to {raw_folder}")
    run(["nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], env)
    run(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", dataset, "-c", "3d_fullres", "-np", "2"], env)
    # a CPU-sized network for a few-minute demo: 8-64 features, 16x32x32 patches
    run(["nnUNetv2_ccesemi_add_cpu_config", "-d", dataset, "--patch", "16", "32", "32", "--base-features", "8",
         "--max-features", "64"], env)

    results = {}
    for trainer in args.trainers:
        run(["nnUNetv2_train", dataset, args.configuration, "all", "-tr", trainer, "-device", args.device], env)
        prediction_folder = join(workdir, "predictions", trainer)
        run(["nnUNetv2_predict", "-i", join(raw_folder, "imagesTs"), "-o", prediction_folder, "-d", dataset,
             "-c", args.configuration, "-f", "all", "-tr", trainer, "-device", args.device, "-npp", "1", "-nps", "1"],
            env)
        results[trainer] = dice_per_case(prediction_folder, join(raw_folder, "labelsTs"))

    print(f"\nTest-set Dice (label 'organ'), {len(next(iter(results.values())))} synthetic cases, "
          f"configuration {args.configuration}, fold all, last checkpoint:")
    width = max(len(t) for t in results)
    for trainer, scores in results.items():
        values = np.array(list(scores.values()))
        print(f"  {trainer:<{width}}  mean {values.mean():.4f}  (min {values.min():.4f}, max {values.max():.4f})")
    print(f"Demo finished in {(time.time() - started) / 60:.1f} min; everything is under {workdir}")


if __name__ == "__main__":
    main()
