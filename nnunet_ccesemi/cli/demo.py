"""``nnUNetv2_ccesemi_demo``: the whole semi-supervised workflow on a small synthetic dataset, on a CPU.

Runs the stock nnU-Net commands and the plugin's own, exactly as a user would: write the dataset
(a few clean labelled cases; unlabelled and test cases from a cohort that varies more, see
:func:`demo_spec`), ``nnUNetv2_plan_and_preprocess``, preprocess the unlabelled
cases, add the CPU configuration, train nnU-Net's supervised trainer and the dual-network trainer on
the same labelled cases with the same budget, predict the test cases with the stock predictor (and,
for the dual-network trainer, with both networks and uncertainty maps), and print the papers' metrics.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from os.path import join

DEFAULT_TRAINERS = ("nnUNetTrainerSupervised_5epochs", "nnUNetTrainerCCE_5epochs")
# Written into every --workdir the demo creates: --overwrite deletes only a folder that holds it, never a
# folder of the user's that happens to be named as the workdir (a user's own nnU-Net data folder has the
# same nnUNet_raw/_preprocessed/_results layout as the demo's).
WORKDIR_MARKER = ".ccesemi_demo"


def demo_spec():
    """A few clean labelled cases and a cohort (unlabelled and test cases) that varies more: a stronger
    bias field, more noise and a wider range of sizes, as the first scans a clinic labels tend to be the
    clean ones. What the labelled cases do not show, only the unlabelled ones can teach."""
    from nnunet_ccesemi.data.synthetic import SyntheticSpec, Variation

    return SyntheticSpec(
        n_labeled=4, n_unlabeled=16, n_test=6,
        labeled=Variation(radius_range=(0.3, 0.4), contrast_range=(1.2, 1.2), bias_strength=0.1,
                          noise_range=(0.5, 0.5)),
        cohort=Variation(radius_range=(0.25, 0.45), contrast_range=(1.2, 1.2), bias_strength=0.25,
                         noise_range=(0.5, 0.8)))


def prepare_workdir(workdir: str, overwrite: bool) -> None:
    """Creates ``workdir`` (marked as the demo's); with ``overwrite`` first deletes an earlier demo's.

    Raises:
        ValueError: ``workdir`` exists and ``overwrite`` is off, or it is not a folder the demo made.
    """
    if os.path.lexists(workdir):
        if not overwrite:
            raise ValueError(f"{workdir} exists; pass --overwrite to start again or choose another --workdir")
        made_by_the_demo = (os.path.isdir(workdir) and not os.path.islink(workdir)
                            and os.path.isfile(join(workdir, WORKDIR_MARKER)))
        if not made_by_the_demo:
            raise ValueError(
                f"--overwrite refuses to delete {workdir}: it is not a folder the demo made (no {WORKDIR_MARKER} "
                f"file in it); choose another --workdir, or delete it yourself if it is an old demo's")
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    with open(join(workdir, WORKDIR_MARKER), "w") as marker:
        marker.write("made by nnUNetv2_ccesemi_demo; --overwrite may delete this folder\n")


def command_path(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    local = join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else (shutil.which(name) or name)


class DemoStepFailed(RuntimeError):
    """A command of the demo exited with an error (its own output says why)."""


def run(args: list[str], env: dict) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    completed = subprocess.run([command_path(args[0]), *args[1:]], env=env)
    if completed.returncode != 0:
        raise DemoStepFailed(f"{args[0]} exited with status {completed.returncode} (its output is above): "
                             f"{' '.join(args)}")


def holds_network_b(model_folder: str) -> bool:
    import torch

    from nnunet_ccesemi.training.checkpoint import PEER_WEIGHTS_KEY

    checkpoint = torch.load(join(model_folder, "fold_all", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    return PEER_WEIGHTS_KEY in checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].replace("``", ""))
    parser.add_argument("--workdir", default="ccesemi_demo",
                        help="folder for nnUNet_raw/_preprocessed/_results of the demo (default ./ccesemi_demo)")
    parser.add_argument("--dataset-id", type=int, default=990, help="nnU-Net dataset ID, 1-999 (default 990)")
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                        help=f"trainers to compare (default {' '.join(DEFAULT_TRAINERS)})")
    # the demo preprocesses 3d_fullres (which 3d_cpu inherits) and nothing else
    parser.add_argument("--configuration", default="3d_cpu", choices=("3d_cpu", "3d_fullres"),
                        help="3d_cpu (default: 8-64 features, 16x32x32 patches, minutes on a CPU) or 3d_fullres")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing --workdir of an earlier demo first (never another folder)")
    args = parser.parse_args(argv)
    if not 1 <= args.dataset_id <= 999:
        parser.error(f"--dataset-id must be between 1 and 999 (nnU-Net's DatasetXXX), got {args.dataset_id}")

    workdir = os.path.abspath(args.workdir)
    try:
        prepare_workdir(workdir, args.overwrite)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    try:
        run_demo(args, workdir)
    except DemoStepFailed as error:
        sys.exit(f"ERROR: the demo stopped: {error}")


def run_demo(args: argparse.Namespace, workdir: str) -> None:
    from nnunet_ccesemi.data.synthetic import write_synthetic_dataset

    env = dict(os.environ)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[variable] = join(workdir, variable)
        os.makedirs(env[variable])
    env.setdefault("nnUNet_compile", "f")
    # nnU-Net's final validation and its scoring spawn 8 workers by default, each importing torch: on a
    # small machine that costs more than the demo's training epochs
    env.setdefault("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 1)))
    dataset = str(args.dataset_id)
    started = time.time()

    raw_folder = write_synthetic_dataset(env["nnUNet_raw"], args.dataset_id, spec=demo_spec())
    print(f"Wrote a synthetic dataset to {raw_folder}")
    run(["nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], env)
    run(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", dataset, "-c", "3d_fullres", "-np", "2"], env)
    # a CPU-sized network for a few-minute demo: 8-64 features, 16x32x32 patches
    run(["nnUNetv2_ccesemi_add_cpu_config", "-d", dataset, "--patch", "16", "32", "32", "--base-features", "8",
         "--max-features", "64"], env)

    from nnunet_ccesemi.evaluation.folders import evaluate_folders

    predictions = {}
    common = ["-i", join(raw_folder, "imagesTs"), "-d", dataset, "-c", args.configuration, "-f", "all",
              "-device", args.device, "-npp", "1", "-nps", "1"]
    for trainer in args.trainers:
        run(["nnUNetv2_train", dataset, args.configuration, "all", "-tr", trainer, "-device", args.device], env)
        folder = join(workdir, "predictions", trainer)
        run(["nnUNetv2_predict", *common, "-tr", trainer, "-o", folder], env)
        predictions[f"{trainer}, stock predictor"] = folder
        model = join(env["nnUNet_results"], os.path.basename(raw_folder),
                     f"{trainer}__nnUNetPlans__{args.configuration}")
        if holds_network_b(model):
            run(["nnUNetv2_ccesemi_predict", *common, "-tr", trainer, "-o", folder + "_both", "--uncertainty"], env)
            predictions[f"{trainer}, mean of both networks"] = folder + "_both"

    labels = join(raw_folder, "labelsTs")
    print(f"\nTest set: {len(os.listdir(labels))} synthetic cases of the varied cohort (the unlabelled cases come "
          f"from it, the {demo_spec().n_labeled} labelled ones are cleaner), label 'organ', configuration "
          f"{args.configuration}, fold all, last checkpoint; distances in voxels. Each run draws a fresh seed "
          f"(set nnUNet_ccesemi_seed to repeat it): figures differ between runs.")
    width = max(len(name) for name in predictions)
    for name, folder in predictions.items():
        mean = evaluate_folders(labels, folder, labels=[1])["mean"]["1"]
        print(f"  {name:<{width}}  Dice {mean['Dice']:.4f}  95HD {mean['HD95']:6.2f}  ASD {mean['ASD']:5.2f}")
    uncertainty = [folder for folder in predictions.values() if folder.endswith("_both")]
    if uncertainty:
        print(f"Uncertainty maps (entropy, disagreement of the two networks): {join(uncertainty[0], 'uncertainty')}")
    print(f"Demo finished in {(time.time() - started) / 60:.1f} min; everything is under {workdir}")


if __name__ == "__main__":
    main()
