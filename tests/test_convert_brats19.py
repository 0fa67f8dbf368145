"""Tests of the BraTS 2019 converter.

A miniature BraTS 2019 training folder is written by the tests: ``HGG/<ID>/<ID>_<modality>.nii.gz``
and ``LGG/<ID>/...`` (one LGG case as uncompressed ``.nii``), with BraTS-like geometry (direction
diag(-1, -1, 1), non-zero origin), a distinct intensity per modality and segmentations holding
0, 1, 2 and 4. Volumes are 10 x 8 x 6 voxels.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ccesemi.dataset_conversion import common
from nnunet_ccesemi.dataset_conversion.common import read_case_list
from nnunet_ccesemi.dataset_conversion.convert_brats19 import build_parser, build_split, main
from tests.conftest import verify_in_process

SHAPE_ZYX = (6, 8, 10)
SPACING = (1.0, 1.1, 1.2)
ORIGIN = (-0.0, -239.0, 3.5)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
MODALITIES = ("t1", "t1ce", "t2", "flair")
CASES = {  # ID: grade
    "BraTS19_CBICA_AAA_1": "HGG", "BraTS19_CBICA_AAB_1": "HGG", "BraTS19_2013_0_1": "LGG",
    "BraTS19_TCIA01_101_1": "HGG", "BraTS19_TCIA01_102_1": "HGG", "BraTS19_2013_2_1": "HGG",
    "BraTS19_TMC_09043_1": "LGG", "BraTS19_TCIA09_141_1": "LGG",
}
TRAIN = ["BraTS19_CBICA_AAA_1", "BraTS19_CBICA_AAB_1", "BraTS19_2013_0_1", "BraTS19_TCIA01_101_1"]
VAL = ["BraTS19_TCIA01_102_1"]
TEST = ["BraTS19_2013_2_1", "BraTS19_TMC_09043_1"]
UNCOMPRESSED = "BraTS19_2013_0_1"


# --------------------------------------------------------------------------------------------
# Miniature inputs
# --------------------------------------------------------------------------------------------
def modality_array(case_index: int, modality: str) -> np.ndarray:
    """(z, y, x): 1000 x (modality number + 1) + 100 z + 10 y + x + case."""
    z, y, x = np.indices(SHAPE_ZYX)
    offset = 1000 * (MODALITIES.index(modality) + 1)
    return (offset + 100 * z + 10 * y + x + case_index).astype(np.int16)


def seg_array() -> np.ndarray:
    """BraTS labels: 2 edema around 1 necrosis and 4 enhancing."""
    z, y, x = np.indices(SHAPE_ZYX)
    seg = np.zeros(SHAPE_ZYX, np.uint8)
    seg[(z >= 1) & (z <= 4) & (y >= 2) & (x >= 3)] = 2
    seg[(z == 2) & (y >= 4) & (x >= 5)] = 1
    seg[(z == 3) & (y >= 4) & (x >= 6)] = 4
    return seg


def to_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def case_file(root: Path, case_id: str, what: str) -> Path:
    ending = ".nii" if case_id == UNCOMPRESSED else ".nii.gz"
    return root / CASES[case_id] / case_id / f"{case_id}_{what}{ending}"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats_src")
    for index, case_id in enumerate(CASES):
        case_file(root, case_id, "seg").parent.mkdir(parents=True)
        for modality in MODALITIES:
            sitk.WriteImage(to_image(modality_array(index, modality)),
                            str(case_file(root, case_id, modality)))
        sitk.WriteImage(to_image(seg_array()), str(case_file(root, case_id, "seg")))
    return root


@pytest.fixture
def copy(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "brats_copy"))


@pytest.fixture
def lists(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for role, ids in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        paths[role] = tmp_path / f"{role}.list"
        paths[role].write_text("\n".join(ids) + "\n")
    return paths


def convert(root: Path, out: Path, lists: dict[str, Path], *extra: str,
            with_val: bool = True) -> int:
    val = ["--val-list", str(lists["val"])] if with_val else []
    return main(["-i", str(root), "-o", str(out), "-d", "603", "--labeled", "2",
                 "--train-list", str(lists["train"]), "--test-list", str(lists["test"]),
                 *val, "-np", "1", *extra])


def dataset_dir(out: Path) -> Path:
    return out / "Dataset603_BraTS2019"


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def meta_of(out: Path) -> dict:
    return json.loads((dataset_dir(out) / "dataset.json").read_text())


def array_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --------------------------------------------------------------------------------------------
# Default: FLAIR, whole tumour, validation in imagesVal
# --------------------------------------------------------------------------------------------
def test_flair_whole_tumour_layout_and_dataset_json(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists) == 0
    dataset = dataset_dir(out)
    assert names(dataset) == {"imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs",
                              "imagesVal", "labelsVal", "dataset.json"}
    assert names(dataset / "imagesTr") == {f"{i}_0000.nii.gz" for i in TRAIN[:2]}
    assert names(dataset / "labelsTr") == {f"{i}.nii.gz" for i in TRAIN[:2]}
    assert names(dataset / "imagesUnlabeled") == {f"{i}_0000.nii.gz" for i in TRAIN[2:]}
    assert names(dataset / "imagesTs") == {f"{i}_0000.nii.gz" for i in TEST}
    assert names(dataset / "imagesVal") == {f"{i}_0000.nii.gz" for i in VAL}
    assert names(dataset / "labelsVal") == {f"{i}.nii.gz" for i in VAL}

    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "Flair"}
    assert meta["labels"] == {"background": 0, "whole tumor": 1}
    assert "regions_class_order" not in meta
    assert (meta["numTraining"], meta["numUnlabeled"], meta["numTest"],
            meta["numValidation"]) == (2, 2, 2, 1)
    split = meta["ssl_split"]
    assert split["labeled"] == TRAIN[:2] and split["unlabeled"] == TRAIN[2:]
    assert split["test"] == TEST and split["validation"] == VAL
    assert split["validation_handling"].startswith("separate: imagesVal/labelsVal")
    assert meta["conversion"]["source"]["grades"] == {"HGG": 5, "LGG": 2}
    assert meta["conversion"]["source"]["channels"] == ["flair"]


def test_flair_values_geometry_and_whole_tumour_label(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists) == 0
    dataset = dataset_dir(out)
    index = list(CASES).index(TRAIN[0])
    image_path = dataset / "imagesTr" / f"{TRAIN[0]}_0000.nii.gz"
    np.testing.assert_array_equal(array_of(image_path), modality_array(index, "flair"))
    for path in (image_path, dataset / "labelsTr" / f"{TRAIN[0]}.nii.gz",
                 dataset / "imagesVal" / f"{VAL[0]}_0000.nii.gz"):
        image = sitk.ReadImage(str(path))
        assert image.GetSpacing() == pytest.approx(SPACING)
        assert image.GetOrigin() == pytest.approx(ORIGIN)
        assert image.GetDirection() == pytest.approx(DIRECTION)
    np.testing.assert_array_equal(array_of(dataset / "labelsTr" / f"{TRAIN[0]}.nii.gz"),
                                  (seg_array() > 0).astype(np.uint8))
    # the LGG case stored as .nii
    np.testing.assert_array_equal(
        array_of(dataset / "imagesUnlabeled" / f"{UNCOMPRESSED}_0000.nii.gz"),
        modality_array(list(CASES).index(UNCOMPRESSED), "flair"))


# --------------------------------------------------------------------------------------------
# All channels, nnU-Net's BraTS regions
# --------------------------------------------------------------------------------------------
def test_all_channels_and_regions(source, lists, tmp_path, monkeypatch, capsys):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--channels", "all", "--task", "regions") == 0
    dataset = dataset_dir(out)
    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["label_values"]["edema"] == 1 and meta["label_values"]["enhancing tumor"] == 3
    index = list(CASES).index(TEST[0])
    for channel, modality in enumerate(MODALITIES):
        np.testing.assert_array_equal(
            array_of(dataset / "imagesTs" / f"{TEST[0]}_{channel:04d}.nii.gz"),
            modality_array(index, modality))
    assert len(names(dataset / "imagesUnlabeled")) == 4 * len(TRAIN[2:])
    label = array_of(dataset / "labelsTs" / f"{TEST[0]}.nii.gz")
    seg = seg_array()
    expected = np.select([seg == 2, seg == 1, seg == 4], [1, 2, 3], 0)
    np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label)) == {0, 1, 2, 3}

    verify_in_process(dataset, monkeypatch)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Validation cases and the split
# --------------------------------------------------------------------------------------------
def test_val_into_test(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--val", "test") == 0
    assert names(dataset_dir(out) / "imagesTs") == {f"{i}_0000.nii.gz" for i in TEST + VAL}
    assert not (dataset_dir(out) / "imagesVal").exists()
    meta = meta_of(out)
    assert meta["numTest"] == 3 and "numValidation" not in meta
    assert meta["ssl_split"]["validation"] == VAL


def test_val_skipped(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--val", "skip") == 0
    assert not (dataset_dir(out) / "imagesVal").exists()
    assert meta_of(out)["ssl_split"]["validation_handling"].startswith("skip")


def test_custom_lists_have_no_validation_unless_given(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists, with_val=False) == 0
    assert not (dataset_dir(out) / "imagesVal").exists()
    meta = meta_of(out)
    assert meta["ssl_split"]["validation"] == [] and meta["ssl_split"]["val_list"] is None


def test_validation_overlapping_train(source, lists, tmp_path, capsys):
    lists["val"].write_text(f"{TRAIN[1]}\n")
    assert convert(source, tmp_path / "raw", lists) == 1
    assert f"both the validation list and the train list: {TRAIN[1]}" in capsys.readouterr().err


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["-i", "unused", "-d", "1", *argv])


@pytest.mark.parametrize("argv, counts", [([], (25, 225, 60, 25)),
                                          (["--labeled-fraction", "0.2"], (50, 200, 60, 25)),
                                          (["--val", "test"], (25, 225, 85, 0)),
                                          (["--val", "skip"], (25, 225, 60, 0))])
def test_shipped_split_sizes(argv, counts):
    split, validation, info = build_split(_args(*argv))
    assert (len(split.labeled), len(split.unlabeled), len(split.test),
            len(validation)) == counts
    assert info["val_list"]["shipped"] is True and len(info["validation"]) == 25


def test_shipped_lists():
    train, val, test = (read_case_list(common.shipped_list(f"brats19_ssl4mis_{role}.list"))
                        for role in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (250, 25, 60)
    assert len(set(train) | set(val) | set(test)) == 335  # the BraTS 2019 training set
    assert all(i.startswith("BraTS19_") for i in train + val + test)
    assert common.shipped_list("brats19_ssl4mis_val.list").read_text().startswith(
        "# source: HiLab-git/SSL4MIS/data/BraTS2019/val.txt@")


# --------------------------------------------------------------------------------------------
# Errors name the file; failed runs leave an existing dataset alone
# --------------------------------------------------------------------------------------------
def _missing_modality(root: Path) -> tuple[Path, str]:
    path = case_file(root, TRAIN[3], "flair")  # an unlabelled case
    path.unlink()
    return path.with_suffix(""), "missing modality"


def _missing_seg(root: Path) -> tuple[Path, str]:
    path = case_file(root, TEST[1], "seg")
    path.unlink()
    return path.with_suffix(""), "missing modality or segmentation"


def _seg_value(root: Path) -> tuple[Path, str]:
    path = case_file(root, TRAIN[0], "seg")
    seg = seg_array()
    seg[0, 0, 0] = 3
    sitk.WriteImage(to_image(seg), str(path))
    return path, "label values 3 found; expected only 0, 1, 2, 4"


def _seg_shape(root: Path) -> tuple[Path, str]:
    path = case_file(root, VAL[0], "seg")
    sitk.WriteImage(to_image(seg_array()[:, :7]), str(path))
    return path, "shape (x, y, z) mismatch"


def _seg_spacing(root: Path) -> tuple[Path, str]:
    path = case_file(root, TRAIN[1], "seg")
    image = to_image(seg_array())
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))
    return path, "spacing mismatch"


def _unreadable_flair(root: Path) -> tuple[Path, str]:
    path = case_file(root, TRAIN[2], "flair")
    path.write_bytes(b"not a nifti file at all")
    return path, "cannot read the Flair image"


def _absent_case(root: Path) -> tuple[Path, str]:
    shutil.rmtree(case_file(root, TEST[0], "seg").parent)
    return Path(TEST[0]), "not in the HGG/LGG folders"


def _case_in_both_grades(root: Path) -> tuple[Path, str]:
    shutil.copytree(case_file(root, TRAIN[0], "seg").parent, root / "LGG" / TRAIN[0])
    return root / "LGG" / TRAIN[0], "is in both"


@pytest.mark.parametrize("break_input", [_missing_modality, _missing_seg, _seg_value, _seg_shape,
                                         _seg_spacing, _unreadable_flair, _absent_case,
                                         _case_in_both_grades])
def test_errors_name_the_file(copy, lists, tmp_path, capsys, break_input):
    path, message = break_input(copy)
    out = tmp_path / "raw"
    assert convert(copy, out, lists) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not out.exists() or list(out.iterdir()) == []


def cut_short(path: Path, keep: float = 0.5) -> Path:
    """Keep the first ``keep`` of the file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("case_id, what, keep, message", [
    (TRAIN[0], "flair", 0.5, "the Flair image {} is damaged: the gzip stream ends early"),
    (UNCOMPRESSED, "flair", 0.5, "the Flair image {} is damaged: the header promises 10x8x6"),
    (VAL[0], "seg", 0.8, "the segmentation {} is damaged: the gzip stream ends early"),
], ids=["flair-nii.gz", "flair-nii", "seg-nii.gz"])
def test_truncated_file_is_refused(copy, lists, tmp_path, capsys, case_id, what, keep, message):
    # keep 0.8 of a segmentation: its first half is mostly the compressed header
    path = cut_short(case_file(copy, case_id, what), keep)
    out = tmp_path / "raw"
    assert convert(copy, out, lists) == 1
    assert message.format(path) in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_channel_grid_mismatch_with_all_channels(copy, lists, tmp_path, capsys):
    path = case_file(copy, TRAIN[0], "t2")
    image = to_image(modality_array(0, "t2"))
    image.SetOrigin((5.0, 5.0, 5.0))
    sitk.WriteImage(image, str(path))
    assert convert(copy, tmp_path / "raw", lists, "--channels", "all") == 1
    err = capsys.readouterr().err
    assert f"origin mismatch: the image {path} has (5.0, 5.0, 5.0), its first channel " \
           f"{case_file(copy, TRAIN[0], 't1')} has" in err
    assert convert(copy, tmp_path / "raw", lists) == 0  # FLAIR only: t2 is not read


def test_only_the_converted_modalities_are_required(copy, lists, tmp_path, capsys):
    for case_id in CASES:
        case_file(copy, case_id, "t2").unlink()
    assert convert(copy, tmp_path / "flair", lists) == 0        # a FLAIR-only copy is enough
    assert convert(copy, tmp_path / "all", lists, "--channels", "all") == 1
    assert str(case_file(copy, TRAIN[0], "t2").with_suffix("")) in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The validation release (no seg) as extra unlabelled cases
# --------------------------------------------------------------------------------------------
EXTRA = ["BraTS19_CBICA_AAM_1", "BraTS19_TCIA10_195_1"]


def write_validation_release(folder: Path, ids: list[str] = EXTRA) -> Path:
    """``MICCAI_BraTS_2019_Data_Validation/<ID>/<ID>_<modality>.nii.gz`` without ``seg``."""
    release = folder / "MICCAI_BraTS_2019_Data_Validation"
    for index, case_id in enumerate(ids, start=50):
        (release / case_id).mkdir(parents=True)
        for modality in MODALITIES:
            sitk.WriteImage(to_image(modality_array(index, modality)),
                            str(release / case_id / f"{case_id}_{modality}.nii.gz"))
    (release / "name_mapping_validation_data.csv").write_text("BraTS_2019_subject_ID\n")
    return release


def test_validation_release_joins_the_unlabelled_cases(source, lists, tmp_path):
    write_validation_release(tmp_path / "val_release")
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--extra-unlabeled", str(tmp_path / "val_release")) == 0
    dataset = dataset_dir(out)
    assert names(dataset / "imagesUnlabeled") == {f"{i}_0000.nii.gz" for i in TRAIN[2:] + EXTRA}
    np.testing.assert_array_equal(
        array_of(dataset / "imagesUnlabeled" / f"{EXTRA[1]}_0000.nii.gz"),
        modality_array(51, "flair"))
    assert names(dataset / "imagesTr") == {f"{i}_0000.nii.gz" for i in TRAIN[:2]}
    meta = meta_of(out)
    assert meta["numUnlabeled"] == 4 and meta["numTraining"] == 2
    assert meta["ssl_split"]["unlabeled"] == TRAIN[2:] + EXTRA
    assert meta["ssl_split"]["extra_unlabeled"] == {
        "folders": [str(tmp_path / "val_release")], "cases": 2}
    assert meta["conversion"]["source"]["grades"] == {"HGG": 5, "LGG": 2}
    # the release folder itself works as well as its parent
    out = tmp_path / "raw2"
    release = tmp_path / "val_release" / "MICCAI_BraTS_2019_Data_Validation"
    assert convert(source, out, lists, "--extra-unlabeled", str(release)) == 0
    assert meta_of(out)["ssl_split"]["unlabeled"] == TRAIN[2:] + EXTRA


def test_extra_cases_honour_the_exclude_list_and_skip_hidden_folders(source, lists, tmp_path):
    """A broken validation case can be excluded; editors' and archivers' folders are not cases."""
    release = write_validation_release(tmp_path / "val_release")
    (release / ".ipynb_checkpoints").mkdir()
    (release / "__MACOSX" / EXTRA[0]).mkdir(parents=True)
    broken = release / EXTRA[0] / f"{EXTRA[0]}_flair.nii.gz"
    broken.write_bytes(b"not an image")
    exclude = tmp_path / "exclude.list"
    exclude.write_text(f"{EXTRA[0]}\n")
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--extra-unlabeled", str(tmp_path / "val_release"),
                   "--exclude-list", str(exclude)) == 0
    assert names(dataset_dir(out) / "imagesUnlabeled") == {f"{i}_0000.nii.gz" for i in TRAIN[2:] + EXTRA[1:]}
    assert meta_of(out)["ssl_split"]["unlabeled"] == TRAIN[2:] + EXTRA[1:]


def _extra_case_of_the_training_data(tmp_path: Path) -> tuple[Path, str]:
    release = write_validation_release(tmp_path / "val_release", [EXTRA[0], TRAIN[0]])
    return release / TRAIN[0], "is also a case of the training data"


def _extra_case_missing_flair(tmp_path: Path) -> tuple[Path, str]:
    release = write_validation_release(tmp_path / "val_release")
    path = release / EXTRA[1] / f"{EXTRA[1]}_flair.nii.gz"
    path.unlink()
    return path, "missing modality"


def _extra_folder_is_the_training_data(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "val_release" / "HGG" / "x").mkdir(parents=True)
    return tmp_path / "val_release", "holds HGG/LGG folders"


def _extra_folder_without_cases(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "val_release").mkdir()
    return tmp_path / "val_release", "no case folders in the --extra-unlabeled folder"


@pytest.mark.parametrize("break_extra", [_extra_case_of_the_training_data,
                                         _extra_case_missing_flair,
                                         _extra_folder_is_the_training_data,
                                         _extra_folder_without_cases])
def test_bad_extra_unlabeled_folder_is_refused(source, lists, tmp_path, capsys, break_extra):
    path, message = break_extra(tmp_path)
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--extra-unlabeled", str(tmp_path / "val_release")) == 1
    err = capsys.readouterr().err
    assert str(path).removesuffix(".gz") in err and message in err
    assert not out.exists() or list(out.iterdir()) == []


def test_no_brats_folders(tmp_path, lists, capsys):
    (tmp_path / "empty").mkdir()
    assert convert(tmp_path / "empty", tmp_path / "raw", lists) == 1
    assert "HGG/<ID>/" in capsys.readouterr().err


def test_failed_run_leaves_existing_dataset(copy, lists, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(copy, out, lists) == 0
    marker = dataset_dir(out) / "marker.txt"
    marker.write_text("old")
    capsys.readouterr()
    assert convert(copy, out, lists, "--task", "regions") == 1        # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    bad_seg, _ = _seg_value(copy)                                      # fails mid-run
    assert convert(copy, out, lists, "--task", "regions", "--overwrite") == 1
    assert str(bad_seg) in capsys.readouterr().err
    assert marker.read_text() == "old" and names(out) == {"Dataset603_BraTS2019"}
    assert meta_of(out)["labels"] == {"background": 0, "whole tumor": 1}


def test_console_script_is_installed():
    # the script pip wrote, not importlib.metadata: a stale *.egg-info in the working directory
    # would shadow the installed entry points
    script = Path(sys.executable).parent / "nnUNetv2_ccesemi_convert_brats19"
    assert script.is_file(), "run: pip install --no-deps --no-build-isolation -e ."
    assert ("from nnunet_ccesemi.dataset_conversion.convert_brats19 import main"
            in script.read_text())
