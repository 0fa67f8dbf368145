"""Region-based datasets and the 2d configuration, end to end through the stock nnU-Net CLI.

A miniature BraTS 2019 training folder (HGG/LGG/<ID>/<ID>_<modality>.nii.gz, nested tumours of
edema 2 ⊃ core (necrosis 1 + enhancing 4)) is converted with ``--task regions`` (nnU-Net's whole
tumour / tumour core / enhancing tumour regions), planned for 3d_fullres and 2d, its unlabelled
cases preprocessed for both, and then: CCE trains on the regions (3d_cpu, and 2d_cpu: nnU-Net's 2d
plans and data with a CPU-sized network), the stock
predictor and ``nnUNetv2_ccesemi_predict --uncertainty`` export label maps in the input's geometry
with values of ``regions_class_order``, and ``nnUNetv2_ccesemi_evaluate`` scores each region. The
2d configuration of a dataset of labels (the tiny synthetic one) trains and predicts too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ccesemi.data.synthetic import write_synthetic_brats_source
from tests.conftest import nnunet_env, run_cli

pytestmark = pytest.mark.integration

DATASET_ID = 778
DATASET = f"Dataset{DATASET_ID}_BraTS2019"
SHAPE_ZYX = (16, 32, 32)
CASES = [f"BraTS19_SYN_{i:03d}_1" for i in range(9)]
TRAIN, TEST = CASES[:7], CASES[7:]
NUM_LABELED = 3
# 5 epochs where the test checks what training learnt, 1 where it checks the 2D code paths end to end
FIVE_EPOCHS, ONE_EPOCH = "nnUNetTrainerCCE_5epochs", "nnUNetTrainerCCE_1epoch"
REGIONS = {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


@pytest.fixture(scope="module")
def region_dataset(tmp_path_factory):
    """The converted region dataset, planned (3d_fullres, 2d, 3d_cpu) with its unlabelled cases preprocessed."""
    root = tmp_path_factory.mktemp("regions")
    env = nnunet_env(root)
    write_synthetic_brats_source(str(root / "source"), CASES, SHAPE_ZYX)
    for name, ids in (("train", TRAIN), ("test", TEST)):
        (root / f"{name}.list").write_text("\n".join(ids) + "\n")
    run_cli(["nnUNetv2_ccesemi_convert_brats19", "-i", str(root / "source"), "-d", str(DATASET_ID), "--task",
             "regions", "--labeled", str(NUM_LABELED), "--train-list", str(root / "train.list"), "--test-list",
             str(root / "test.list"), "-np", "1"], env)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "2d", "-np", "1"], env)
    run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", str(DATASET_ID), "-c", "3d_fullres", "2d", "-np", "1"],
            env)
    run_cli(["nnUNetv2_ccesemi_add_cpu_config", "-d", str(DATASET_ID), "--patch", "16", "16", "16",
             "--base-features", "8", "--max-features", "32"], env)
    add_2d_cpu_config(DATASET_ID, env)
    raw = Path(env["nnUNet_raw"]) / DATASET
    return {"env": env, "raw": raw, "results": Path(env["nnUNet_results"]) / DATASET}


def add_2d_cpu_config(dataset_id: int, env: dict) -> None:
    """``2d_cpu``: nnU-Net's 2d plans and preprocessed data with a narrow network (8-32 features) that a
    CPU trains in seconds per epoch; the 2D code paths (4D tensors, nnU-Net's slice sampling, the 2D
    sliding window and export) are those of ``2d``."""
    run_cli(["nnUNetv2_ccesemi_add_cpu_config", "-d", str(dataset_id), "--source", "2d", "--name", "2d_cpu",
             "--patch", "32", "32", "--base-features", "8", "--max-features", "32"], env)


def train(dataset: dict, config: str, trainer: str, dataset_id: int = DATASET_ID) -> Path:
    run_cli(["nnUNetv2_train", str(dataset_id), config, "all", "-tr", trainer, "-device", "cpu"], dataset["env"])
    return dataset["results"] / f"{trainer}__nnUNetPlans__{config}" / "fold_all"


def predict(dataset: dict, config: str, trainer: str, output: Path, *extra: str, dataset_id: int = DATASET_ID,
            command: str = "nnUNetv2_predict") -> None:
    run_cli([command, "-i", str(dataset["raw"] / "imagesTs"), "-o", str(output), "-d", str(dataset_id), "-c", config,
             "-f", "all", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar",
             *extra], dataset["env"])


def assert_input_geometry(images: Path, predictions: Path, allowed_values: set[int]) -> None:
    for image_file in sorted(images.iterdir()):
        case = image_file.name.replace("_0000.nii.gz", ".nii.gz")
        source, predicted = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(predictions / case))
        assert predicted.GetSize() == source.GetSize(), case
        np.testing.assert_allclose(predicted.GetOrigin(), source.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(predicted.GetDirection(), source.GetDirection(), atol=1e-6)
        values = set(np.unique(sitk.GetArrayFromImage(predicted)).tolist())
        assert values <= allowed_values, f"{case}: {values}"


def test_dataset_json_defines_the_regions(region_dataset):
    meta = json.loads((region_dataset["raw"] / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, **REGIONS}
    assert meta["regions_class_order"] == [1, 2, 3]


def test_memory_estimate_builds_region_targets(region_dataset):
    """Region losses take one bool channel per region; an int16 label-map target made them fail."""
    result = run_cli(["nnUNetv2_ccesemi_estimate_memory", "-d", str(DATASET_ID), "-c", "3d_cpu", "-tr",
                      "nnUNetTrainer", "nnUNetTrainerCCE_5epochs"], region_dataset["env"])
    rows = [line for line in result.stdout.splitlines() if line.startswith("| nnUNetTrainer")]
    assert [row.split("|")[1].strip() for row in rows] == ["nnUNetTrainer", "nnUNetTrainerCCE_5epochs"]


def test_cce_on_regions_3d(region_dataset, tmp_path):
    folder = train(region_dataset, "3d_cpu", FIVE_EPOCHS)
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = checkpoint["logging"]
    # every term trained on the regions, with per-region statistics and prototypes for both sides
    for key in ("ccesemi_entropy_filter_a", "ccesemi_contrast_b", "ccesemi_cps_a", "ccesemi_cosine",
                "ccesemi_reliable_fraction_r2_in", "ccesemi_prototype_present_r0_in"):
        assert len(logging[key]) == 5 and np.all(np.isfinite(logging[key])), key
    assert logging["ccesemi_contrast_a"][-1] > 0 and logging["ccesemi_entropy_filter_a"][-1] > 0
    assert logging["ccesemi_prototype_present_r0_in"][-1] > 0.9
    objective_state = checkpoint["objective_state"]
    assert objective_state["prototype_banks.a.prototypes"].shape[0] == 6  # inside and outside of 3 regions
    assert "WARNING: the" not in next(folder.glob("training_log_*.txt")).read_text()  # no dead-term warning

    # both networks' mean sigmoid, with one entropy and one disagreement map per case (the stock
    # predictor's region export is the 2d test's: the same nnU-Net code, on a cheaper model)
    both = tmp_path / "both"
    predict(region_dataset, "3d_cpu", FIVE_EPOCHS, both, "--uncertainty", command="nnUNetv2_ccesemi_predict")
    maps = both / "uncertainty"
    assert_input_geometry(region_dataset["raw"] / "imagesTs", both, {0, 1, 2, 3})
    for case in TEST:
        for name in ("entropy", "disagreement"):
            volume = sitk.GetArrayFromImage(sitk.ReadImage(str(maps / f"{case}_{name}.nii.gz")))
            assert volume.shape == SHAPE_ZYX and np.all(np.isfinite(volume)) and volume.min() >= 0
        entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(maps / f"{case}_entropy.nii.gz")))
        assert entropy.max() <= 1.0 + 1e-6
    # the exported labels are those of regions_class_order, and the whole tumour is found
    result = run_cli(["nnUNetv2_ccesemi_evaluate", "-ref", str(region_dataset["raw"] / "labelsTs"), "-pred",
                      str(both), "--dataset-json", str(region_dataset["raw"] / "dataset.json")],
                     region_dataset["env"])
    summary = json.loads((both / "summary_ccesemi.json").read_text())
    assert "whole tumor" in result.stdout
    whole_tumour = next(v for k, v in summary["mean"].items() if k.replace(" ", "") == "(1,2,3)")
    assert whole_tumour["Dice"] > 0.5, summary["mean"]


def test_cce_on_regions_2d(region_dataset, tmp_path):
    folder = train(region_dataset, "2d_cpu", ONE_EPOCH)
    assert (folder / "checkpoint_final.pth").is_file()
    predict(region_dataset, "2d_cpu", ONE_EPOCH, tmp_path / "stock")
    assert_input_geometry(region_dataset["raw"] / "imagesTs", tmp_path / "stock", {0, 1, 2, 3})
    predict(region_dataset, "2d_cpu", ONE_EPOCH, tmp_path / "both", command="nnUNetv2_ccesemi_predict")
    assert_input_geometry(region_dataset["raw"] / "imagesTs", tmp_path / "both", {0, 1, 2, 3})


def test_cce_on_labels_2d(tmp_path):
    from nnunet_ccesemi.data.synthetic import SyntheticSpec, write_synthetic_dataset

    env = nnunet_env(tmp_path)
    raw = Path(write_synthetic_dataset(env["nnUNet_raw"], 779, "Tiny2d",
                                       SyntheticSpec(n_labeled=4, n_unlabeled=4, n_test=2, shape=(8, 32, 32), seed=3)))
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "779", "-c", "2d", "-np", "1"], env)
    run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", "779", "-c", "2d", "-np", "1"], env)
    add_2d_cpu_config(779, env)
    dataset = {"env": env, "raw": raw, "results": Path(env["nnUNet_results"]) / raw.name}
    folder = train(dataset, "2d_cpu", ONE_EPOCH, dataset_id=779)
    logging = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert np.all(np.isfinite(logging["ccesemi_reliable_fraction_c1"]))
    predict(dataset, "2d_cpu", ONE_EPOCH, tmp_path / "stock", dataset_id=779)
    assert_input_geometry(raw / "imagesTs", tmp_path / "stock", {0, 1})
    predict(dataset, "2d_cpu", ONE_EPOCH, tmp_path / "both", "--uncertainty", dataset_id=779,
            command="nnUNetv2_ccesemi_predict")
    assert_input_geometry(raw / "imagesTs", tmp_path / "both", {0, 1})
