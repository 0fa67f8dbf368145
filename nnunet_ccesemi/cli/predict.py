"""``nnUNetv2_ccesemi_predict``: predict with both networks of a dual-network trainer (the paper's way).

The flags are nnUNetv2_predict's, with the same defaults but ``-tr`` (``nnUNetTrainerCCE``), plus ``--networks``
and ``--uncertainty``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys

import torch

from nnunet_ccesemi.cli.arguments import check_device, check_step_size, env_int
from nnunet_ccesemi.cli.plans import fold, trained_model_folder
from nnunet_ccesemi.data.layout import UnlabeledDataError, find_cases
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
    parser.add_argument("-npp", type=int, default=env_int("nnUNet_npp", 3),
                        help="preprocessing processes (default $nnUNet_npp or 3; -npp 0 -nps 0: no worker processes)")
    parser.add_argument("-nps", type=int, default=env_int("nnUNet_nps", 3),
                        help="export processes (default $nnUNet_nps or 3)")
    parser.add_argument("-num_parts", type=int, default=1,
                        help="split the cases into this many parts, for as many parallel calls (default 1)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this call predicts, 0 to num_parts - 1")
    parser.add_argument("-prev_stage_predictions", default=None,
                        help="cascades are not supported by the dual-network trainers; refused")
    parser.add_argument("-device", choices=("cuda", "cpu", "mps"), default="cuda", help="default cuda")
    parser.add_argument("--not_on_device", action="store_true",
                        help="keep the sliding window's result in CPU memory (for very large images on a GPU)")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """The combinations nnUNetv2_predict would reject, or that we cannot honour, with the reason."""
    if args.prev_stage_predictions is not None:
        raise ValueError("-prev_stage_predictions: cascades are not supported by the dual-network trainers")
    if args.num_parts < 1:
        raise ValueError(f"-num_parts must be at least 1, got {args.num_parts}")
    if not 0 <= args.part_id < args.num_parts:
        raise ValueError(f"-part_id must be between 0 and -num_parts - 1 = {args.num_parts - 1}, got "
                         f"{args.part_id}")
    if args.npp < 0 or args.nps < 0 or (args.npp == 0) != (args.nps == 0):
        raise ValueError(f"-npp and -nps are both at least 1, or both 0 (no worker processes); got -npp "
                         f"{args.npp} -nps {args.nps}")
    if args.npp == 0 and args.uncertainty:
        raise ValueError("--uncertainty needs nnU-Net's worker path: use -npp and -nps of at least 1")
    check_step_size(args.step_size)


def check_input_files(input_folder: str, model_folder: str) -> None:
    """Refuse what nnU-Net would stumble over after predictions were written: no images in the model's
    naming, a file with the model's ending that is not ``<case>_XXXX`` (nnU-Net would take it for a case
    with an empty ID), a case without all the model's channels, a truncated image (ITK would read it as
    zeros). Files with other endings are passed over, as by nnUNetv2_predict."""
    with open(os.path.join(model_folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    try:
        cases = find_cases(input_folder, dataset_json, "input", as_prediction_input=True)
    except UnlabeledDataError as error:
        raise ImageFileError(str(error).rstrip(".")) from None
    for files in cases.values():
        for path in files:
            check_image_file(path, "input image")


def check_output_folder(input_folder: str, output_folder: str) -> None:
    """-o must be a folder (or not exist yet) other than -i: predictions written among the input images
    would be read as cases by the next run."""
    if os.path.exists(output_folder) and not os.path.isdir(output_folder):
        raise ValueError(f"-o {output_folder} exists and is not a folder")
    if os.path.isdir(output_folder) and os.path.isdir(input_folder) and os.path.samefile(output_folder, input_folder):
        raise ValueError(f"-o {output_folder} is the input folder -i: the segmentations would land among the "
                         f"images (and be read as cases next time); choose another output folder")


def sequential_inputs(input_folder: str, file_ending: str, num_parts: int, part_id: int) -> str | list[list[str]]:
    """What ``predict_from_files_sequential`` predicts: the folder, or this part's cases. nnU-Net's
    sequential mode has no parts (every parallel call would predict, and write, every case); the
    cases are split as its worker path splits them."""
    if num_parts == 1:
        return input_folder
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    return create_lists_from_splitted_dataset_folder(input_folder, file_ending)[part_id::num_parts]


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        check_output_folder(args.i, args.o)
        check_device(args.device)
    except ValueError as e:
        sys.exit(f"ERROR: {e}")
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
        perform_everything_on_device=args.device == "cuda" and not args.not_on_device,
        device=torch.device(args.device),
        verbose=args.verbose, verbose_preprocessing=args.verbose, allow_tqdm=not args.disable_progress_bar)
    try:
        predictor.initialize_from_trained_model_folder(model_folder, folds, args.chk)
    except (CheckpointError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")
    if args.npp == 0:  # nnUNetv2_predict's sequential mode
        predictor.predict_from_files_sequential(
            sequential_inputs(args.i, predictor.dataset_json["file_ending"], args.num_parts, args.part_id),
            args.o, save_probabilities=args.save_probabilities, overwrite=not args.continue_prediction)
        return
    predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                 overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                 num_processes_segmentation_export=args.nps, num_parts=args.num_parts,
                                 part_id=args.part_id)


if __name__ == "__main__":
    main()
