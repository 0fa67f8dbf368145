"""End to end with the stock nnU-Net CLI in subprocesses, in a clean environment (no nnUNet_extTrainer).

plan_and_preprocess -> preprocess_unlabeled -> add_cpu_config (session fixture) -> nnUNetv2_train of a
short dual-network variant -> nnUNetv2_predict with the stock predictor -> geometry check; an
interrupted run resumed with --c; clear errors when unlabelled data are missing or not preprocessed.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import BIN, CONFIG, DATASET_ID, copy_dataset, run_cli, trained_folder

pytestmark = pytest.mark.integration


def test_unlabeled_preprocessing_reuses_labelled_plans(planned_dataset):
    folder = planned_dataset["preprocessed"] / "nnUNetPlans_3d_fullres_unlabeled"
    cases = sorted(p.name for p in folder.iterdir())
    assert cases == sorted(f"unl{i:03d}{suffix}" for i in range(4) for suffix in (".b2nd", "_seg.b2nd", ".pkl"))
    assert (planned_dataset["preprocessed"] / "nnUNetPlans_3d_fullres_unlabeled.json").is_file()
    # the labelled folder holds the labelled cases only: unlabelled images do not change nnU-Net's data
    labelled = {p.name.split(".")[0] for p in (planned_dataset["preprocessed"] / "nnUNetPlans_3d_fullres").iterdir()}
    assert not any(name.startswith("unl") for name in labelled)
    # a second run skips everything
    out = run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", str(DATASET_ID)], planned_dataset["env"])
    assert "4 in step, 0 to do" in out.stdout


def test_train_discovered_and_checkpoint_holds_both_networks(trained_cce):
    planned, result = trained_cce
    assert "nnUNet_extTrainer" not in planned["env"]
    folder = trained_folder(planned, "nnUNetTrainerCCE_5epochs")
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerCCE_5epochs"
    assert {"network_weights", "network_b_weights", "optimizer_state", "method_config", "logging"} <= set(checkpoint)
    assert checkpoint["current_epoch"] == 5
    assert checkpoint["method_config"]["contrast_weight"] == 0.1
    logging = checkpoint["logging"]
    for key in ("ccesemi_cps_a", "ccesemi_reliable_fraction", "ccesemi_agreement", "ccesemi_supervised_b"):
        assert len(logging[key]) == 5 and all(np.isfinite(logging[key])), key
    assert (folder / "progress_ssl.png").is_file() and (folder / "progress.png").is_file()
    # nnU-Net's final validation ran on network A
    assert (folder / "validation" / "summary.json").is_file()


def test_stock_predictor_output_geometry(trained_cce, tmp_path):
    planned, _ = trained_cce
    images = planned["raw"] / "imagesTs"
    run_cli(["nnUNetv2_predict", "-i", str(images), "-o", str(tmp_path), "-d", str(DATASET_ID), "-c", CONFIG,
             "-f", "all", "-tr", "nnUNetTrainerCCE_5epochs", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar"], planned["env"])
    for image_file in sorted(images.iterdir()):
        case = image_file.name.replace("_0000.nii.gz", ".nii.gz")
        source, predicted = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(tmp_path / case))
        assert predicted.GetSize() == source.GetSize()
        np.testing.assert_allclose(predicted.GetSpacing(), source.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(predicted.GetOrigin(), source.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(predicted.GetDirection(), source.GetDirection(), atol=1e-6)
        labels = sitk.GetArrayFromImage(predicted)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(planned["raw"] / "labelsTs" / case)))
        assert set(np.unique(labels)) <= {0, 1}
        dice = 2 * ((labels == 1) & (reference == 1)).sum() / ((labels == 1).sum() + (reference == 1).sum())
        assert dice > 0.5, f"{case}: Dice {dice:.3f} after 250 iterations on an easy synthetic task"


def test_sigkill_then_resume_with_c(planned_dataset, tmp_path):
    """Kill nnUNetv2_train mid-run after a checkpoint was written; --c restores it exactly and finishes."""
    planned = copy_dataset(planned_dataset, tmp_path / "copy")
    trainer = "nnUNetTrainerCPS_5epochs"
    folder = trained_folder(planned, trainer)
    latest = folder / "checkpoint_latest.pth"
    args = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), CONFIG, "all", "-tr", trainer, "-device", "cpu"]
    process = subprocess.Popen(args, env=planned["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.time() + 600
        while not latest.is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.5)
        assert latest.is_file(), "no checkpoint_latest.pth was written"
        time.sleep(1.0)  # into the next epoch
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert saved["current_epoch"] < 5
    # the kill may land mid-write: then only the killed process's temporary file is left, never a torn real one
    left = [p.name for p in folder.glob("tmp*")]
    assert all(re.fullmatch(rf"tmp{process.pid}-[0-9a-f]{{8}}_(checkpoint_latest\.pth|progress_ssl\.png)", name)
               for name in left), left

    # the trainer restores exactly what was saved (both networks, optimiser, epoch)
    from nnunet_ccesemi.training.networks import unwrap
    from tests.test_trainer import build_trainer

    restored = build_trainer(trainer, planned)
    restored.load_checkpoint(str(latest))
    assert restored.current_epoch == saved["current_epoch"]
    for key, value in saved["network_b_weights"].items():
        assert torch.equal(unwrap(restored.network_b).state_dict()[key], value), key
    for key, value in saved["network_weights"].items():
        assert torch.equal(unwrap(restored.network).state_dict()[key], value), key
    momentum = restored.optimizer.state_dict()["state"]
    assert all(torch.equal(momentum[i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in saved["optimizer_state"]["state"].items())

    run_cli(["nnUNetv2_train", *args[1:], "--c"], planned["env"])
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 5
    assert len(final["logging"]["train_losses"]) == 5
    assert not list(folder.glob("tmp*")), "the resumed run clears the killed one's temporary files"


def test_train_without_preprocessed_unlabeled_names_the_command(planned_dataset, tmp_path):
    planned = copy_dataset(planned_dataset, tmp_path / "copy")
    shutil.rmtree(planned["preprocessed"] / "nnUNetPlans_3d_fullres_unlabeled")
    result = run_cli(["nnUNetv2_train", str(DATASET_ID), CONFIG, "all", "-tr", "nnUNetTrainerCPS_5epochs",
                      "-device", "cpu"], planned["env"], check=False)
    assert result.returncode != 0
    assert "nnUNetv2_ccesemi_preprocess_unlabeled -d Dataset777_Tiny -c 3d_cpu" in result.stderr


def test_preprocess_without_unlabeled_folder_is_a_clear_error(planned_dataset, tmp_path):
    planned = copy_dataset(planned_dataset, tmp_path / "copy")
    shutil.rmtree(planned["raw"] / "imagesUnlabeled")
    result = run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", str(DATASET_ID)], planned["env"], check=False)
    assert result.returncode != 0
    assert "imagesUnlabeled does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_preprocess_refuses_unlabelled_image_of_other_dimensionality(planned_dataset, tmp_path):
    planned = copy_dataset(planned_dataset, tmp_path / "copy")
    bad = planned["raw"] / "imagesUnlabeled" / "unl000_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.float32)), str(bad))
    result = run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", str(DATASET_ID)], planned["env"], check=False)
    assert result.returncode != 0
    assert "unl000_0000.nii.gz is 2D but the labelled images are 3D" in result.stderr
