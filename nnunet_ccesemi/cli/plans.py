"""The plans and dataset.json that ``nnUNetv2_plan_and_preprocess`` wrote, for the commands that read them."""
from __future__ import annotations

import json
import os
from os.path import isfile, join


def load_plans(dataset: str, plans_identifier: str = "nnUNetPlans") -> tuple[dict, dict, str]:
    """``(plans, dataset_json, plans_file)`` of ``dataset`` (name or ID) in ``nnUNet_preprocessed``.

    Raises:
        FileNotFoundError: ``nnUNet_preprocessed`` unset, or no such plans file (the message says
            which command makes it).
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed:  # nnU-Net 2.8 gives a path object that is falsy when unset
        raise FileNotFoundError("nnUNet_preprocessed is not set: export it as for nnUNetv2_train")
    folder = join(os.fspath(nnUNet_preprocessed), maybe_convert_to_dataset_name(dataset))
    plans_file = join(folder, plans_identifier + ".json")
    if not isfile(plans_file):
        raise FileNotFoundError(f"no plans file {plans_file}: run nnUNetv2_plan_and_preprocess -d {dataset} (or "
                                f"nnUNetv2_plan_experiment) first, or pass the plans identifier with -p")
    with open(plans_file) as f:
        plans = json.load(f)
    with open(join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    return plans, dataset_json, plans_file
