"""The plans and dataset.json that ``nnUNetv2_plan_and_preprocess`` wrote, for the commands that read them."""
from __future__ import annotations

import argparse
import json
import os
from os.path import isfile, join


def dataset_name(dataset: str) -> str:
    """nnU-Net's ``DatasetXXX_Name`` for a name or ID.

    Raises:
        FileNotFoundError: no such dataset (or two with that ID), with nnU-Net's explanation.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise FileNotFoundError(f"dataset {dataset!r}: {e}") from e


def fold(value: str) -> int | str:
    """The argparse type of ``-f``: ``all`` or a fold number."""
    if value == "all":
        return value
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 'all' or a fold number (0, 1, ...), got {value!r}")
    return number


def trained_model_folder(dataset: str, trainer: str, plans_identifier: str, configuration: str) -> str:
    """``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``, which must exist.

    Raises:
        FileNotFoundError: unknown dataset, ``nnUNet_results`` unset, or no trained model there (the
            message names the folder).
    """
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        folder = get_output_folder(dataset_name(dataset), trainer, plans_identifier, configuration)
    except RuntimeError as e:  # nnUNet_results unset
        raise FileNotFoundError(str(e)) from e
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no trained model at {folder} (check -d, -tr, -p and -c, and nnUNet_results)")
    if not isfile(join(folder, "dataset.json")):
        raise FileNotFoundError(f"{folder} has no dataset.json: nnUNetv2_train writes one at the start of training; "
                                f"is this a model folder?")
    return folder


def load_plans(dataset: str, plans_identifier: str = "nnUNetPlans") -> tuple[dict, dict, str]:
    """``(plans, dataset_json, plans_file)`` of ``dataset`` (name or ID) in ``nnUNet_preprocessed``.

    Raises:
        FileNotFoundError: ``nnUNet_preprocessed`` unset, an unknown dataset, or no such plans
            file (the message says which command makes it).
    """
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed:  # nnU-Net 2.8 gives a path object that is falsy when unset
        raise FileNotFoundError("nnUNet_preprocessed is not set: export it as for nnUNetv2_train")
    folder = join(os.fspath(nnUNet_preprocessed), dataset_name(dataset))
    plans_file = join(folder, plans_identifier + ".json")
    if not isfile(plans_file):
        raise FileNotFoundError(f"no plans file {plans_file}: run nnUNetv2_plan_and_preprocess -d {dataset} (or "
                                f"nnUNetv2_plan_experiment) first, or pass the plans identifier with -p")
    with open(plans_file) as f:
        plans = json.load(f)
    if not isfile(join(folder, "dataset.json")):
        raise FileNotFoundError(f"{folder} has no dataset.json: rerun nnUNetv2_plan_and_preprocess -d {dataset}")
    with open(join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    return plans, dataset_json, plans_file
