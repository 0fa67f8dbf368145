"""Prediction time: the stock predictor on a dual-network checkpoint, and the two-network average.

Times nnU-Net's sliding window (``predict_logits_from_preprocessed_data``: Gaussian weighting,
mirroring unless ``--disable_tta``) on preprocessed cases of the dataset, file I/O excluded:

* stock ``nnUNetPredictor`` on a single-network model (e.g. ``nnUNetTrainer``) and on a dual-network
  model (network A): the same architecture, so the goal is a ratio of 1.00 (≤ 1.05);
* :class:`DualNetworkPredictor` with network A, network B and both (mean softmax): goal
  both ≤ 1.05 × (A + B).

    python benchmarks/predict_time.py -d 601 -c 3d_cpu --single nnUNetTrainerSupervised_10epochs \\
        --dual nnUNetTrainerCCE_10epochs -f all --cases 2 --device cpu
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from os.path import join

import torch


def preprocessed_cases(dataset: str, configuration: str, plans: str, count: int) -> list[torch.Tensor]:
    """The first ``count`` preprocessed labelled cases: what the predictor sees after preprocessing."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = join(os.fspath(nnUNet_preprocessed), maybe_convert_to_dataset_name(dataset))
    identifier = PlansManager(join(folder, plans + ".json")).get_configuration(configuration).data_identifier
    dataset_class = infer_dataset_class(join(folder, identifier))
    data = dataset_class(join(folder, identifier))
    return [torch.from_numpy(data.load_case(key)[0][:]).float() for key in sorted(data.identifiers)[:count]]


def time_predictor(predictor, cases: list[torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median over repeats of the total seconds for all cases."""
    totals = []
    for _ in range(repeats):
        started = time.perf_counter()
        for data in cases:
            predictor.predict_logits_from_preprocessed_data(data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        totals.append(time.perf_counter() - started)
    return statistics.median(totals)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-c", required=True)
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--single", required=True, help="a single-network trainer with a trained model")
    parser.add_argument("--dual", required=True, help="a dual-network trainer with a trained model")
    parser.add_argument("-f", nargs="+", default=["all"])
    parser.add_argument("-chk", default="checkpoint_final.pth")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor

    device = torch.device(args.device)
    folds = [f if f == "all" else int(f) for f in args.f]
    options = dict(tile_step_size=0.5, use_gaussian=True, use_mirroring=not args.disable_tta,
                   perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                   verbose_preprocessing=False, allow_tqdm=False)
    cases = preprocessed_cases(args.d, args.c, args.p, args.cases)
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, threads "
          f"{torch.get_num_threads()}, compile {os.environ.get('nnUNet_compile', 'off')}, mirroring "
          f"{not args.disable_tta}; dataset {args.d} {args.c}, {len(cases)} cases of shape "
          f"{[tuple(c.shape[1:]) for c in cases]}")

    predictors = {}
    stock_single = nnUNetPredictor(**options)
    stock_single.initialize_from_trained_model_folder(get_output_folder(args.d, args.single, args.p, args.c), folds,
                                                      args.chk)
    predictors[f"stock, {args.single}"] = stock_single
    stock_dual = nnUNetPredictor(**options)
    stock_dual.initialize_from_trained_model_folder(get_output_folder(args.d, args.dual, args.p, args.c), folds,
                                                    args.chk)
    predictors[f"stock, {args.dual} (A)"] = stock_dual
    for networks in ("a", "b", "both"):
        predictor = DualNetworkPredictor(networks=networks, **options)
        predictor.initialize_from_trained_model_folder(get_output_folder(args.d, args.dual, args.p, args.c), folds,
                                                       args.chk)
        predictors[f"dual-network predictor, {networks}"] = predictor

    for predictor in predictors.values():  # warm-up (allocations, compilation)
        predictor.predict_logits_from_preprocessed_data(cases[0])
    seconds = {name: time_predictor(p, cases, device, args.repeats) for name, p in predictors.items()}
    for name, value in seconds.items():
        print(f"{name:<60} {value:8.2f} s  ({value / len(cases):.2f} s per case)")
    names = list(seconds)
    print(f"stock predictor, dual-network checkpoint / single-network checkpoint: "
          f"{seconds[names[1]] / seconds[names[0]]:.3f} (goal <= 1.05)")
    both, a, b = (seconds[f"dual-network predictor, {n}"] for n in ("both", "a", "b"))
    print(f"two-network average / (A alone + B alone): {both / (a + b):.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
