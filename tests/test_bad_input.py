"""Bad input the converters and CLI tests do not already cover: each a sentence naming the file or field.

The README's troubleshooting table lists every class of bad input and where it is tested.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_ccesemi.data.layout import UnlabeledDataError, check_preprocessed_unlabeled, manifest_path
from nnunet_ccesemi.data.preprocess import check_dimensionality
from nnunet_ccesemi.training.seeding import seed_from_environment, stream_seed, worker_seeds
from tests.conftest import CONFIG, DATASET_ID, run_cli

COMMAND = "nnUNetv2_ccesemi_preprocess_unlabeled -d Dataset777_Tiny -c 3d_cpu -p nnUNetPlans"


def _preprocessed_folder(tmp_path, cases=("u1",), fingerprint="abc", pkl=True):
    folder = tmp_path / "nnUNetPlans_3d_fullres_unlabeled"
    folder.mkdir()
    for case in cases:
        for suffix in (".b2nd", "_seg.b2nd") + ((".pkl",) if pkl else ()):
            (folder / f"{case}{suffix}").write_bytes(b"")
    if fingerprint is not None:
        with open(manifest_path(str(folder)), "w") as f:
            json.dump({"fingerprint": fingerprint}, f)
    return str(folder)


def _check(folder, fingerprint="abc"):
    return check_preprocessed_unlabeled(folder, fingerprint, "Dataset777_Tiny", "3d_cpu", "nnUNetPlans")


def test_preprocessed_unlabelled_folder_is_checked_before_training(tmp_path):
    assert _check(_preprocessed_folder(tmp_path)) == ["u1"]


def test_missing_preprocessed_unlabelled_cases_name_the_command(tmp_path):
    with pytest.raises(UnlabeledDataError, match=f"No preprocessed unlabelled cases .* Run `{COMMAND}` first"):
        _check(str(tmp_path / "absent"))


def test_unlabelled_cases_made_with_other_plans_are_refused(tmp_path):
    with pytest.raises(UnlabeledDataError, match=f"other plans than this training .* Run `{COMMAND}`"):
        _check(_preprocessed_folder(tmp_path), fingerprint="other")


def test_unlabelled_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(UnlabeledDataError, match="is missing or unreadable, so the plans of .* are unknown"):
        _check(_preprocessed_folder(tmp_path, fingerprint=None))


@pytest.mark.parametrize("content", [b'{"fingerprint": "abc", "sources": {', b"[1, 2]", b"\xff\xfe not UTF-8"])
def test_unlabelled_folder_with_an_unreadable_manifest_is_refused(tmp_path, content):
    from nnunet_ccesemi.data.layout import manifest_path
    folder = _preprocessed_folder(tmp_path)
    Path(manifest_path(folder)).write_bytes(content)
    with pytest.raises(UnlabeledDataError, match="is missing or unreadable, so the plans of .* are unknown"):
        _check(folder)


def test_interrupted_unlabelled_preprocessing_is_named(tmp_path):
    folder = _preprocessed_folder(tmp_path, cases=("u1",))
    for suffix in (".b2nd", "_seg.b2nd"):  # u2 lacks its .pkl: the preprocessing was interrupted
        (tmp_path / "nnUNetPlans_3d_fullres_unlabeled" / f"u2{suffix}").write_bytes(b"")
    with pytest.raises(UnlabeledDataError, match=r"\['u2'\] .* are incomplete"):
        _check(folder)


def test_corrupt_unlabelled_image_is_named(tmp_path):
    reference = tmp_path / "lab_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(reference))
    corrupt = tmp_path / "unl_0000.nii.gz"
    corrupt.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(UnlabeledDataError, match="Cannot read the image header of .*unl_0000.nii.gz"):
        check_dimensionality({"unl": [str(corrupt)]}, str(reference), SimpleITKIO)
    # plans that read with nibabel (NIfTI files ITK refuses, e.g. sheared affines): nnU-Net's reader decides
    check_dimensionality({"unl": [str(corrupt)]}, str(reference), NibabelIO)


def test_unlabelled_case_with_nan_is_refused_before_anything_is_written(tmp_path):
    """nnU-Net checks imagesTr for NaN, not imagesUnlabeled; a NaN voxel turns the z-scored case into NaN."""
    import types

    from nnunet_ccesemi.data.preprocess import preprocess_case

    class PreprocessorOfAScanWithNaN:
        def __init__(self, verbose=False):
            pass

        def run_case(self, *args):
            data = np.full((1, 4, 5, 6), np.nan, np.float32)  # what z-scoring makes of one NaN voxel
            return data, np.zeros((1, 4, 5, 6), np.int8), {}

    configuration = types.SimpleNamespace(preprocessor_class=PreprocessorOfAScanWithNaN, patch_size=(4, 4, 4))
    out = tmp_path / "nnUNetPlans_3d_fullres_unlabeled"
    out.mkdir()
    with pytest.raises(UnlabeledDataError, match=r"unlabelled case 'u7' \(.*u7_0000.nrrd\) holds NaN or infinite "
                                                 r"values: 120 of 120 voxels"):
        preprocess_case(str(out), "u7", [str(tmp_path / "u7_0000.nrrd")], None, configuration,
                        {"channel_names": {"0": "CT"}})
    assert list(out.iterdir()) == []


def test_a_single_slice_3d_file_counts_as_2d_as_nnunet_reads_it(tmp_path):
    """SimpleITKIO reads a 32x32 image and a 1-slice 32x32x1 volume alike; a 3D volume stays refused."""
    two_d, one_slice, volume = tmp_path / "lab_0000.nii.gz", tmp_path / "u1_0000.nii.gz", tmp_path / "u2_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.float32)), str(two_d))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 32, 32), np.float32)), str(one_slice))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 32, 32), np.float32)), str(volume))
    check_dimensionality({"u1": [str(one_slice)]}, str(two_d), SimpleITKIO)
    check_dimensionality({"lab": [str(two_d)]}, str(one_slice), SimpleITKIO)
    with pytest.raises(UnlabeledDataError, match=r"u2_0000.nii.gz is 3D but the labelled images are 2D"):
        check_dimensionality({"u2": [str(volume)]}, str(two_d), SimpleITKIO)


def test_seed_variable_must_be_an_integer(monkeypatch):
    monkeypatch.setenv("nnUNet_ccesemi_seed", "twelve")
    with pytest.raises(ValueError, match="nnUNet_ccesemi_seed must be an integer, got 'twelve'"):
        seed_from_environment()
    monkeypatch.setenv("nnUNet_ccesemi_seed", "12")
    assert seed_from_environment() == 12


def test_resumed_runs_and_ranks_get_their_own_streams():
    assert stream_seed(12, 0, 0) == 12 and stream_seed(12, 1, 0) == 13  # a fresh run as before
    seeds = {stream_seed(12, rank, epoch) for rank in range(8) for epoch in range(1000)}
    assert len(seeds) == 8000  # no resumed epoch or rank replays another's stream


def test_augmentation_workers_get_their_own_seeds():
    seeds = worker_seeds(12, 1, 4)
    assert seeds == worker_seeds(12, 1, 4)  # repeatable from the run's seed
    assert len(set(seeds + worker_seeds(12, 0, 4) + worker_seeds(13, 1, 4))) == 12
    assert all(0 <= seed < 2 ** 32 for seed in seeds)  # NumPy's seed range
    assert worker_seeds(12, 1, 0) == []
    assert len(set(worker_seeds(-12, 1, 2) + worker_seeds(12, 1, 2))) == 4  # a negative nnUNet_ccesemi_seed works


@pytest.mark.integration
# batchgenerators' _finish stops the workers while its results thread may still be unpickling a batch they
# shared by file descriptor; that thread's error is its teardown race, not this test's concern
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_unlabelled_augmentation_workers_do_not_repeat_each_others_draws(planned_dataset):
    """batchgenerators' unseeded workers all keep the torch generator they were forked with, so each
    repeats the others' torch-driven augmentation decisions; the trainer seeds the unlabelled ones."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_ccesemi.data.layout import preprocessed_unlabeled_folder
    from nnunet_ccesemi.data.stream import make_unlabeled_stream

    folder = preprocessed_unlabeled_folder(planned_dataset["preprocessed"], "nnUNetPlans_3d_fullres")
    dataset = infer_dataset_class(folder)(folder)
    labels = LabelManager({"background": 0, "sphere": 1}, regions_class_order=None)

    def torch_driven(image, segmentation):  # stands in for a batchgeneratorsv2 transform's torch.rand(1)
        drawn = torch.zeros_like(image)
        drawn.view(-1)[:2] = torch.tensor([float(os.getpid()), float(torch.rand(1))])  # which worker, what it drew
        return {"image": drawn, "segmentation": segmentation}

    def first_draw_of_each_worker(seeds):
        torch.manual_seed(0)
        stream = make_unlabeled_stream(dataset, 1, (16, 16, 16), (16, 16, 16), labels, torch_driven,
                                       num_processes=2, pin_memory=False, seeds=seeds)
        first = {}
        try:
            for _ in range(200):  # one worker may fill the queue before the other starts
                worker, draw = next(stream)["data"].view(-1)[:2].tolist()
                first.setdefault(worker, draw)
                if len(first) == 2:
                    return sorted(first.values())
        finally:
            stream._finish()
        raise AssertionError("only one augmentation worker delivered batches")

    unseeded = first_draw_of_each_worker(None)
    assert unseeded[0] == unseeded[1]  # both workers drew the same number
    seeded = first_draw_of_each_worker(worker_seeds(12, 1, 2))
    assert seeded[0] != seeded[1]


def test_preprocess_unlabelled_names_an_unknown_dataset(tmp_path, monkeypatch):
    from nnunet_ccesemi.cli.preprocess_unlabeled import main

    for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    with pytest.raises(SystemExit, match="^ERROR: dataset '998': Could not find a dataset with the ID 998"):
        main(["-d", "998"])


@pytest.mark.integration
def test_preprocess_unlabelled_for_a_configuration_not_in_the_plans(planned_dataset):
    result = run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", str(DATASET_ID), "-c", "3d_cpu", "3d_lowres"],
                     planned_dataset["env"], check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Configuration '3d_lowres' is not in" in result.stderr and "3d_cpu" in result.stderr
    assert "3d_cpu:" not in result.stdout  # refused before the valid configuration was looked at


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    ([CONFIG, "all", "-tr", "nnUNetTrainerCCEE"], "Could not find requested nnunet trainer nnUNetTrainerCCEE"),
    (["3d_lowres", "all", "-tr", "nnUNetTrainerCCE_5epochs"], "3d_lowres"),
])
def test_train_typos_reach_the_user(planned_dataset, args, message):
    result = run_cli(["nnUNetv2_train", str(DATASET_ID), *args, "-device", "cpu"], planned_dataset["env"], check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


@pytest.mark.integration
def test_unlabelled_stream_of_a_dataset_with_an_ignore_label(planned_dataset):
    """nnU-Net's loader looks for annotated voxels when a dataset has an ignore label; unlabelled
    cases have none (no class locations), so their crops must stay uniformly random."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_ccesemi.data.layout import preprocessed_unlabeled_folder
    from nnunet_ccesemi.data.stream import make_unlabeled_stream

    folder = preprocessed_unlabeled_folder(planned_dataset["preprocessed"], "nnUNetPlans_3d_fullres")
    dataset = infer_dataset_class(folder)(folder)
    labels = LabelManager({"background": 0, "sphere": 1, "ignore": 2}, regions_class_order=None)
    assert labels.has_ignore_label
    stream = make_unlabeled_stream(dataset, 2, (16, 16, 16), (16, 16, 16), labels, transforms=None,
                                   num_processes=0, pin_memory=False)
    batch = next(stream)
    assert batch["data"].shape[0] == 2 and batch["data"].shape[2:] == (16, 16, 16)
