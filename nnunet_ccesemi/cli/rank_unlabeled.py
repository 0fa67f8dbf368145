"""``nnUNetv2_ccesemi_rank_unlabeled``: which unlabelled scans to annotate next, ranked by the two networks' disagreement.

Runs both networks of a dual-network model through nnU-Net's preprocessing and sliding window (as
``nnUNetv2_ccesemi_predict`` does, each case once), scores every case on the network grid
(:mod:`nnunet_ccesemi.inference.ranking`) and writes a CSV sorted most informative first.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shlex
import sys
import time
from os.path import join

from nnunet_ccesemi.cli.arguments import check_device, check_step_size, env_int
from nnunet_ccesemi.cli.plans import dataset_name, fold, trained_model_folder
from nnunet_ccesemi.inference.ranking import DEFAULT_SCORE, SCORES, network_grid_spacing, rank, score_case

COLUMNS = ("rank", "case", *SCORES, "foreground_voxels", "empty_foreground")


def build_parser() -> argparse.ArgumentParser:
    score_help = "; ".join(f"{name}: {score.definition}" for name, score in SCORES.items())
    parser = argparse.ArgumentParser(
        description="Rank unlabelled cases for annotation by how much the two networks of a dual-network model "
                    "(nnUNetTrainerCCE, nnUNetTrainerCPS, ...) disagree on them. Writes a CSV, most informative "
                    f"case first. Scores, on the network grid: {score_help}. Where neither network predicts "
                    "foreground, empty_foreground is 'yes' and the scores are 0 (disagreement, entropy, volume) "
                    "and 1 (soft_dice): the networks agree there is nothing.")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-tr", required=True, help="dual-network trainer class, e.g. nnUNetTrainerCCE")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", nargs="+", type=fold, default=[0, 1, 2, 3, 4],
                        help="folds to use, or 'all' (default 0 1 2 3 4)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default "
                                                                     "checkpoint_final.pth)")
    parser.add_argument("-i", default=None, help="images to rank, in nnU-Net's input layout (default: the "
                                                 "dataset's nnUNet_raw/DatasetXXX/imagesUnlabeled)")
    parser.add_argument("-o", default="ranking.csv", help="the CSV to write (default ./ranking.csv)")
    parser.add_argument("--score", choices=tuple(SCORES), default=DEFAULT_SCORE,
                        help=f"the score to sort by (default {DEFAULT_SCORE})")
    parser.add_argument("--save-maps", action="store_true",
                        help="also write each case's <case>_entropy and <case>_disagreement maps, in the image's "
                             "geometry, into a folder beside the CSV (<csv name>_maps/)")
    parser.add_argument("--top", type=int, default=10, help="rows of the ranking to print (default 10)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (default 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (8x faster in 3D)")
    # nnUNet_npp=0 (nnUNetv2_predict's sequential mode) means one process here: ranking has no such mode
    parser.add_argument("-npp", type=int, default=max(1, env_int("nnUNet_npp", 3)),
                        help="preprocessing processes (default $nnUNet_npp or 3)")
    parser.add_argument("-device", choices=("cuda", "cpu", "mps"), default="cuda", help="default cuda")
    return parser


def write_ranking(path: str, scores_by_case: dict[str, dict], order: list[str], header: list[str]) -> None:
    """The CSV (UTF-8): ``#`` comment lines, then one row per case in ``order``."""
    from nnunet_ccesemi.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        for line in header:
            f.write(f"# {line}\n")
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for position, case in enumerate(order, start=1):
            scores = scores_by_case[case]
            writer.writerow([position, case, *(f"{scores[name]:.6g}" for name in SCORES), scores["foreground_voxels"],
                             "yes" if scores["empty_foreground"] else "no"])


def print_top(scores_by_case: dict[str, dict], order: list[str], score: str, top: int) -> None:
    width = max(len("case"), *(len(case) for case in order[:top]))
    print(f"\n{'rank':>4}  {'case':<{width}}  " + "  ".join(f"{name:>12}" for name in SCORES))
    for position, case in enumerate(order[:top], start=1):
        print(f"{position:>4}  {case:<{width}}  " + "  ".join(f"{scores_by_case[case][name]:12.4g}" for name in SCORES))
    if len(order) > top:
        print(f"  ... {len(order) - top} more in the CSV")
    print(f"(sorted by {score}, most informative first)")


def check_arguments(args: argparse.Namespace) -> None:
    """What would otherwise fail after the model is loaded, or after hours of inference (the CSV's folder)."""
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    if args.npp < 1:
        raise ValueError(f"-npp must be at least 1, got {args.npp}")
    check_step_size(args.step_size)
    if os.path.isdir(args.o):
        raise ValueError(f"-o {args.o} is a folder; give the CSV file to write, e.g. {join(args.o, 'ranking.csv')}")
    folder = os.path.dirname(os.path.abspath(args.o))
    while not os.path.exists(folder):  # the folder is made later; its nearest existing parent must allow it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"-o {args.o}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"-o {args.o}: the folder {folder} is not writable")
    check_device(args.device)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as e:
        sys.exit(f"ERROR: {e}")

    import torch
    from nnunetv2.paths import nnUNet_raw
    from tqdm import tqdm

    from nnunet_ccesemi.data.layout import UnlabeledDataError, find_cases, raw_unlabeled_folder
    from nnunet_ccesemi.image_files import ImageFileError, check_image_file
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    from nnunet_ccesemi.training.checkpoint import CheckpointError

    try:
        model_folder = trained_model_folder(args.d, args.tr, args.p, args.c)
    except FileNotFoundError as e:
        sys.exit(f"ERROR: {e}")
    with open(join(model_folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    input_folder = args.i
    if input_folder is None:
        if not nnUNet_raw:
            sys.exit("ERROR: nnUNet_raw is not set, so imagesUnlabeled cannot be found; set it or pass -i FOLDER")
        input_folder = raw_unlabeled_folder(join(os.fspath(nnUNet_raw), dataset_name(args.d)))
    try:
        cases = find_cases(input_folder, dataset_json, "input")
        for files in cases.values():
            for path in files:
                check_image_file(path, "input image")
    except (UnlabeledDataError, ImageFileError) as e:
        sys.exit(f"ERROR: {str(e).rstrip('.')}. Nothing was written.")

    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    csv_path = os.path.abspath(args.o)
    maps_folder = os.path.splitext(csv_path)[0] + "_maps" if args.save_maps else None
    predictor = DualNetworkPredictor(
        networks="both", uncertainty_folder=maps_folder, tile_step_size=args.step_size, use_gaussian=True,
        use_mirroring=not args.disable_tta, perform_everything_on_device=args.device == "cuda",
        device=torch.device(args.device), verbose=False, allow_tqdm=False)
    folds = args.f
    try:
        predictor.initialize_from_trained_model_folder(model_folder, folds, args.chk)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"ERROR: {str(e).rstrip('.')}. Nothing was written.")
    os.makedirs(os.path.dirname(csv_path), exist_ok=True)

    case_ids = sorted(cases)
    plans = predictor.plans_manager
    scores_by_case: dict[str, dict] = {}
    started = time.perf_counter()
    progress = tqdm(total=len(case_ids), desc="Ranking cases", unit="case")
    for case, properties, probs_a, probs_b in predictor.probabilities_per_case(
            [cases[c] for c in case_ids], case_ids, min(args.npp, len(case_ids))):
        spacing = network_grid_spacing(properties, predictor.configuration_manager.spacing, plans.transpose_forward)
        scores_by_case[case] = score_case(probs_a, probs_b, float(torch.tensor(spacing).prod()),
                                          regions=predictor.label_manager.has_regions)
        if maps_folder is not None:
            predictor.write_uncertainty_maps(case, properties, probs_a, probs_b)
        progress.update()
        if len(scores_by_case) == 1 and len(case_ids) > 1:
            first = time.perf_counter() - started
            progress.write(f"The first case took {first:.0f} s; the {len(case_ids)} cases will take about "
                           f"{first * len(case_ids) / 60:.0f} min.")
    progress.close()

    order = rank(scores_by_case, args.score)
    checkpoints = [join(model_folder, f"fold_{fold}", args.chk) for fold in folds]
    header = [f"command: {shlex.join(['nnUNetv2_ccesemi_rank_unlabeled', *(argv if argv is not None else sys.argv[1:])])}",
              f"checkpoint: {', '.join(checkpoints)}",
              f"input: {input_folder} ({len(case_ids)} cases)",
              f"sorted by {args.score}, most informative first",
              *(f"{name}: {score.definition}" for name, score in SCORES.items()),
              "empty_foreground: 'yes' where neither network predicts foreground; disagreement, entropy and volume_ml "
              "are then 0 and soft_dice 1"]
    write_ranking(csv_path, scores_by_case, order, header)
    print_top(scores_by_case, order, args.score, args.top)
    print(f"Wrote {csv_path}" + (f" and the maps into {maps_folder}" if maps_folder else ""))


if __name__ == "__main__":
    main()
