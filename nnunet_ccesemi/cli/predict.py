"""``nnUNetv2_ccesemi_predict``: predict with both networks of a dual-network trainer (the paper's way).

The flags are nnUNetv2_predict's (same defaults), plus ``--networks`` and ``--uncertainty``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys

import torch

from nnunet_ccesemi.cli.plans import fold, trained_model_folder
from nnunet_ccesemi.image_files import ImageFileError, check_image_file
from nnunet_ccesemi.inference.predictor import NETWORK_CHOICES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="nnU-Net prediction (sliding window, Gaussian weighting, mirroring, resampling, export) with "
                    "the mean softmax of networks A and B of a dual-network trainer (nnUNetTrainerCCE, "
                    "nnUNetTrainerCPS, ...), optionally with per-case uncertainty maps. nnUNetv2_predict with the "
                    "same arguments uses network A alone.")
    parser.add_argument("-i", required=True, help="input folder (nnU-Net channel naming, e.g. case_0000.nii.gz)")
    parser.add_argument("-o", required=True, help="output folder for the segmentations (created if needed)")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainerCCE", help="trainer class (default nnUNetTrainerCCE)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", nargs="+", type=fold, default=[0, 1, 2, 3, 4],
                        help="folds to use, or 'all' (default 0 1 2 3 4)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default "
                                                                     "checkpoint_final.pth)")
    parser.add_argument("--networks", choices=NETWORK_CHOICES, default="both",
                        help="'both': mean softmax of A and B (default, the paper's inference; the mean sigmoid "
                             "for a region dataset); 'a' or 'b': one")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write <case>_entropy (normalised entropy of the prediction) and, with both "
                             "networks, <case>_disagreement (symmetric KL between A and B) into OUTPUT/uncertainty; "
                             "for regions the mean binary entropy over the regions and the Bernoulli KL summed "
                             "over them")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (default 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (faster)")
    parser.add_argument("--save_probabilities", action="store_true", help="also export the (mean) probabilities")
    parser.add_argument("--continue_prediction", action="store_true", help="skip cases already predicted")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing processes (default 3)")
    parser.add_argument("-nps", type=int, default=3, help="export processes (default 3)")
    parser.add_argument("-device", choices=("cuda", "cpu", "mps"), default="cuda", help="default cuda")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    return parser


def check_input_files(input_folder: str, model_folder: str) -> None:
    """Refuse a truncated input image before any prediction is written (ITK would read it as zeros)."""
    with open(os.path.join(model_folder, "dataset.json")) as f:
        file_ending = json.load(f)["file_ending"]
    if not os.path.isdir(input_folder):
        raise ImageFileError(f"the input folder {input_folder} does not exist")
    for name in sorted(os.listdir(input_folder)):
        if name.endswith(file_ending):
            check_image_file(os.path.join(input_folder, name), "input image")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    from nnunet_ccesemi.training.checkpoint import CheckpointError

    try:
        model_folder = trained_model_folder(args.d, args.tr, args.p, args.c)
    except FileNotFoundError as e:
        sys.exit(f"ERROR: {e}")
    try:
        check_input_files(args.i, model_folder)
    except ImageFileError as e:
        sys.exit(f"ERROR: {e}. Nothing was predicted.")
    folds = args.f
    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif args.device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    os.makedirs(args.o, exist_ok=True)

    predictor = DualNetworkPredictor(
        networks=args.networks,
        uncertainty_folder=os.path.join(args.o, "uncertainty") if args.uncertainty else None,
        tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
        perform_everything_on_device=args.device == "cuda", device=torch.device(args.device),
        verbose=args.verbose, allow_tqdm=not args.disable_progress_bar)
    try:
        predictor.initialize_from_trained_model_folder(model_folder, folds, args.chk)
    except (CheckpointError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")
    predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                 overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                 num_processes_segmentation_export=args.nps)


if __name__ == "__main__":
    main()
