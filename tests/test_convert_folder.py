"""Tests of the converter for a user's own folders.

Miniature inputs written by the tests: single-channel cases in mixed formats (``.nrrd``, ``.mha``,
``.nii.gz``, ``.nii``, ``.mhd`` + ``.raw``), multi-channel cases named the nnU-Net way
(``<case>_0000``) or by suffix (``<case>_t1``), labels with values 0, 1, 2 and a rotated,
anisotropic geometry. Volumes are 10 x 8 x 6 voxels.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ccesemi.dataset_conversion.convert_folder import main, split_ending
from tests.conftest import verify_in_process

SHAPE_ZYX = (6, 8, 10)
SPACING = (0.8, 0.9, 3.0)
ORIGIN = (1.0, -2.0, 30.5)
DIRECTION = (0.0, 1.0, 0.0,
             1.0, 0.0, 0.0,
             0.0, 0.0, -1.0)
SINGLE = {"liver_01": ".nrrd", "liver_02": ".mha", "liver_03": ".nii.gz"}
UNLABELED = {"liver_04": ".mhd", "liver_05": ".nii"}
TEST = {"liver_06": ".nii.gz"}


# --------------------------------------------------------------------------------------------
# Miniature inputs
# --------------------------------------------------------------------------------------------
def image_array(case_index: int, channel: int = 0) -> np.ndarray:
    z, y, x = np.indices(SHAPE_ZYX)
    return (1000 * channel + 100 * z + 10 * y + x - 500 + case_index).astype(np.int16)


def label_array() -> np.ndarray:
    z, y, x = np.indices(SHAPE_ZYX)
    label = np.zeros(SHAPE_ZYX, np.uint8)
    label[(z >= 1) & (y >= 2) & (x >= 3)] = 1
    label[(z == 3) & (y >= 5) & (x >= 7)] = 2
    return label


def write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def single(tmp_path: Path) -> dict[str, Path]:
    """Single-channel cases in mixed formats: labelled, unlabelled and test."""
    root = tmp_path / "single"
    for index, (case, ending) in enumerate({**SINGLE, **UNLABELED, **TEST}.items()):
        folder = "images" if case in SINGLE else "unlabeled" if case in UNLABELED else "test"
        write(image_array(index), root / folder / f"{case}{ending}")
        if case not in UNLABELED:
            write(label_array(), root / f"{folder.replace('images', '')}labels"
                  / f"{case}.nii.gz")
    (root / "images" / "README.txt").write_text("not an image")
    return {"images": root / "images", "labels": root / "labels",
            "unlabeled": root / "unlabeled", "test_images": root / "test",
            "test_labels": root / "testlabels"}


@pytest.fixture
def multi(tmp_path: Path) -> dict[str, Path]:
    """Two-channel cases named the nnU-Net way, plus one unlabelled."""
    root = tmp_path / "multi"
    for index, case in enumerate(["c1", "c2", "c3"]):
        folder = "unlabeled" if case == "c3" else "images"
        for channel in range(2):
            write(image_array(index, channel), root / folder / f"{case}_{channel:04d}.nii.gz")
        if folder == "images":
            write(label_array(), root / "labels" / f"{case}.nii.gz")
    return {"images": root / "images", "labels": root / "labels",
            "unlabeled": root / "unlabeled"}


def args_for(paths: dict[str, Path]) -> list[str]:
    options = {"images": "--images", "labels": "--labels", "unlabeled": "--unlabeled",
               "test_images": "--test-images", "test_labels": "--test-labels"}
    return [word for key, path in paths.items() for word in (options[key], str(path))]


def convert(paths: dict[str, Path], out: Path, *extra: str) -> int:
    return main([*args_for(paths), "-o", str(out), "-d", "604", "-np", "1", *extra])


def dataset_dir(out: Path) -> Path:
    return out / "Dataset604_MyDataset"


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def meta_of(out: Path) -> dict:
    return json.loads((dataset_dir(out) / "dataset.json").read_text())


# --------------------------------------------------------------------------------------------
# Layouts, names, geometry
# --------------------------------------------------------------------------------------------
def test_single_channel_mixed_formats(single, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(single, out, "--channel-names", "CT") == 0
    assert "ignored 1 file(s)" in capsys.readouterr().err  # README.txt
    dataset = dataset_dir(out)
    assert names(dataset) == {"imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs",
                              "dataset.json"}
    assert names(dataset / "imagesTr") == {f"{c}_0000.nii.gz" for c in SINGLE}
    assert names(dataset / "labelsTr") == {f"{c}.nii.gz" for c in SINGLE}
    assert names(dataset / "imagesUnlabeled") == {f"{c}_0000.nii.gz" for c in UNLABELED}
    assert names(dataset / "imagesTs") == {"liver_06_0000.nii.gz"}
    assert names(dataset / "labelsTs") == {"liver_06.nii.gz"}
    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "label1": 1, "label2": 2}  # from the data
    assert (meta["numTraining"], meta["numUnlabeled"], meta["numTest"]) == (3, 2, 1)
    assert meta["ssl_split"]["unlabeled"] == list(UNLABELED)
    assert meta["conversion"]["source"]["channel_layout"] == "one file per case"
    assert meta["conversion"]["source"]["label_values_found"] == [0, 1, 2]

    for index, case in enumerate(list(SINGLE) + list(UNLABELED)):
        folder = "imagesTr" if case in SINGLE else "imagesUnlabeled"
        image = sitk.ReadImage(str(dataset / folder / f"{case}_0000.nii.gz"))
        assert image.GetPixelID() == sitk.sitkInt16
        assert image.GetSpacing() == pytest.approx(SPACING)
        assert image.GetOrigin() == pytest.approx(ORIGIN)
        assert image.GetDirection() == pytest.approx(DIRECTION)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), image_array(index))
    label = sitk.ReadImage(str(dataset / "labelsTr" / "liver_02.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert label.GetDirection() == pytest.approx(DIRECTION)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), label_array())


def test_nnunet_channel_naming_detected_and_verified(multi, tmp_path, monkeypatch, capsys):
    out = tmp_path / "raw"
    assert convert(multi, out, "--channel-names", "T1", "T2", "--label-names", "background",
                   "organ", "tumour") == 0
    dataset = dataset_dir(out)
    assert names(dataset / "imagesTr") == {f"{c}_{k:04d}.nii.gz" for c in ("c1", "c2")
                                           for k in range(2)}
    assert names(dataset / "imagesUnlabeled") == {"c3_0000.nii.gz", "c3_0001.nii.gz"}
    assert not (dataset / "imagesTs").exists()
    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, "organ": 1, "tumour": 2}
    assert meta["conversion"]["source"]["channel_layout"] == "channel suffixes _0000, _0001"
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "c2_0001.nii.gz"))),
        image_array(1, 1))
    verify_in_process(dataset, monkeypatch)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out


def test_channel_suffixes_label_suffix_and_json_names(tmp_path):
    root = tmp_path / "suffix"
    for index, case in enumerate(["p1", "p2"]):
        for channel, suffix in enumerate(["_t1", "_t1ce"]):
            write(image_array(index, channel), root / "images" / f"{case}{suffix}.nrrd")
        write(label_array(), root / "labels" / f"{case}_seg.nii.gz")
    (tmp_path / "channels.json").write_text(json.dumps({"0": "T1", "1": "T1ce"}))
    (tmp_path / "labels.json").write_text(json.dumps({"tumour": 2, "background": 0, "edema": 1}))
    out = tmp_path / "raw"
    assert main(["--images", str(root / "images"), "--labels", str(root / "labels"),
                 "--channel-suffixes", "_t1", "_t1ce", "--label-suffix", "_seg",
                 "--channel-names-json", str(tmp_path / "channels.json"),
                 "--labels-json", str(tmp_path / "labels.json"),
                 "-o", str(out), "-d", "604", "-np", "1"]) == 0
    dataset = dataset_dir(out)
    assert names(dataset / "imagesTr") == {"p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0000.nii.gz",
                                           "p2_0001.nii.gz"}
    assert names(dataset / "labelsTr") == {"p1.nii.gz", "p2.nii.gz"}
    np.testing.assert_array_equal(  # _t1ce is channel 1, not a _t1 file of case "p1_t1ce"...
        sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "p2_0001.nii.gz"))),
        image_array(1, 1))
    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce"}
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2}


def test_test_images_without_labels(single, tmp_path):
    del single["test_labels"]
    out = tmp_path / "raw"
    assert convert(single, out) == 0
    assert names(dataset_dir(out) / "imagesTs") == {"liver_06_0000.nii.gz"}
    assert not (dataset_dir(out) / "labelsTs").exists()
    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "channel0"}
    assert meta["ssl_split"]["test_labeled"] is False


@pytest.mark.parametrize("name, expected", [("a.nii.gz", ("a", ".nii.gz")),
                                            ("a.NII", ("a", ".NII")),
                                            ("a_0000.gipl.gz", ("a_0000", ".gipl.gz")),
                                            ("a.raw", None), (".nii.gz", None)])
def test_split_ending(name, expected):
    assert split_ending(name) == expected


# --------------------------------------------------------------------------------------------
# Errors name the file; failed runs leave an existing dataset alone
# --------------------------------------------------------------------------------------------
def _gap_in_values(paths):
    path = paths["labels"] / "liver_02.nii.gz"
    skipping_2 = np.where(label_array() == 2, 3, label_array()).astype(np.uint8)
    for label_path in [*paths["labels"].iterdir(), *paths["test_labels"].iterdir()]:
        write(skipping_2, label_path)  # every file: 0, 1, 3
    return path, "label values 0, 1, 3 found; nnU-Net needs 0, 1, ..., K without gaps " \
                 "(missing: 2); values above 2 are in"


def _value_outside_names(paths):
    path = paths["labels"] / "liver_03.nii.gz"
    label = label_array()
    label[0, 0, 0] = 5
    write(label, path)
    return path, "label values 5 found; expected only 0, 1, 2"


def _non_integer_label(paths):
    path = paths["test_labels"] / "liver_06.nii.gz"
    write(label_array().astype(np.float32) * 0.5, path)
    return path, "label values must be integers >= 0, found 0.5"


def _label_shape(paths):
    path = paths["labels"] / "liver_01.nii.gz"
    write(label_array()[:4], path)
    return path, "shape (x, y, z) mismatch"


def _label_spacing(paths):
    path = paths["labels"] / "liver_02.nii.gz"
    image = sitk.GetImageFromArray(label_array())
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return path, "spacing mismatch"


def _image_without_label(paths):
    path = write(image_array(9), paths["images"] / "liver_09.nii.gz")
    return path, "without a label"


def _label_without_image(paths):
    path = write(label_array(), paths["test_labels"] / "liver_07.nii.gz")
    return path, "without an image"


def _unreadable_image(paths):
    path = paths["unlabeled"] / "liver_05.nii"
    path.write_bytes(b"garbage that is not nifti")
    return path, "cannot read the image"


def _same_case_twice(paths):
    write(image_array(0), paths["unlabeled"] / "liver_01.nii.gz")
    return Path("liver_01"), "both the labeled and the unlabeled set"


def _two_files_one_case(paths):
    path = write(image_array(0), paths["images"] / "liver_01.nii.gz")
    return path.parent, "two files for liver_01"


def _space_in_case_id(paths):
    write(image_array(0), paths["unlabeled"] / "liver 08.nii.gz")
    return paths["unlabeled"] / "liver 08.nii.gz", "not usable as a case ID"


def _channel_naming_in_unlabeled(paths):
    path = write(image_array(0), paths["unlabeled"] / "liver_08_0000.nii.gz")
    return path, "follow nnU-Net's channel naming"


def _nan_in_float_image(paths):
    array = image_array(3).astype(np.float32)
    array[0, 1, 2] = np.nan
    (paths["test_images"] / "liver_06.nii.gz").unlink()
    path = write(array, paths["test_images"] / "liver_06.mha")  # NIfTI I/O would zero the NaN
    return path, "1 voxel(s) are NaN or infinite"


def _test_label_with_unknown_class(paths):
    path = paths["test_labels"] / "liver_06.nii.gz"
    label = label_array()
    label[0, 0, 0] = 3  # the training labels hold 0, 1, 2 only
    write(label, path)
    return path, "test label value(s) 3 in"


def _seg_ending_case_id(paths):
    path = write(image_array(0), paths["unlabeled"] / "liver_08_seg.nii.gz")
    return path, "reserves names ending in '_seg'"


def _broken_symlink(paths):
    path = paths["unlabeled"] / "liver_08.nii.gz"
    path.symlink_to(paths["unlabeled"].parent / "unmounted" / "liver_08.nii.gz")
    return path, "broken symbolic link"


@pytest.mark.parametrize("break_input", [_gap_in_values, _value_outside_names, _non_integer_label,
                                         _label_shape, _label_spacing, _image_without_label,
                                         _label_without_image, _unreadable_image,
                                         _same_case_twice, _two_files_one_case,
                                         _space_in_case_id, _channel_naming_in_unlabeled,
                                         _nan_in_float_image, _test_label_with_unknown_class,
                                         _seg_ending_case_id, _broken_symlink])
def test_errors_name_the_file(single, tmp_path, capsys, break_input):
    path, message = break_input(single)
    names_args = (["--label-names", "background", "a", "b"]
                  if break_input is _value_outside_names else [])
    out = tmp_path / "raw"
    assert convert(single, out, *names_args) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not out.exists() or list(out.iterdir()) == []


def cut_short(path: Path, keep: float = 0.5) -> Path:
    """Keep the first ``keep`` of the file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("folder, name, compress, what, reason", [
    ("images", "liver_03.nii.gz", False, "image", "the gzip stream ends early"),
    ("images", "liver_01.nrrd", False, "image", "the header promises 10x8x6 voxels of short"),
    ("images", "liver_01.nrrd", True, "image", "the gzip stream ends early"),
    ("images", "liver_02.mha", False, "image", "the header promises 10x8x6 voxels of MET_SHORT"),
    ("images", "liver_02.mha", True, "image", "the zlib stream ends early"),
    ("unlabeled", "liver_05.nii", False, "image", "the header promises 10x8x6 voxels of NIfTI"),
    ("test_labels", "liver_06.nii.gz", False, "label", "the gzip stream ends early"),
], ids=["nii.gz", "nrrd", "nrrd-gzip", "mha", "mha-zlib", "nii", "label-nii.gz"])
def test_truncated_file_is_refused(single, tmp_path, capsys, folder, name, compress, what,
                                   reason):
    path = single[folder] / name
    if compress:  # NRRD encoding gzip, MetaImage CompressedData = True
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path), True)
    cut_short(path, keep=0.8 if what == "label" else 0.5)  # half a label is mostly its header
    out = tmp_path / "raw"
    assert convert(single, out) == 1
    err = capsys.readouterr().err
    assert f"the {what} {path} is damaged: {reason}" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_truncated_mhd_data_file_is_refused(single, tmp_path, capsys):
    header = single["unlabeled"] / "liver_04.mhd"
    cut_short(single["unlabeled"] / "liver_04.raw")
    out = tmp_path / "raw"
    assert convert(single, out) == 1
    err = capsys.readouterr().err
    assert (f"the image {header} is damaged: its data file {single['unlabeled'] / 'liver_04.raw'} is cut short: "
            f"the header promises 10x8x6 voxels of MET_SHORT") in err
    assert not out.exists() or list(out.iterdir()) == []


def _missing_channel(paths):
    path = paths["images"] / "c2_0001.nii.gz"
    path.unlink()
    return paths["images"] / "c2_0001.<ext>", "missing channel file"


def _channel_grid(paths):
    path = paths["unlabeled"] / "c3_0001.nii.gz"
    image = sitk.GetImageFromArray(image_array(0))
    image.SetSpacing(SPACING)
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return path, f"origin mismatch: the image {path} has (0.0, 0.0, 0.0), its first channel"


def _no_channel_zero(paths):
    (paths["images"] / "c1_0000.nii.gz").unlink()
    (paths["images"] / "c1_0001.nii.gz").rename(paths["images"] / "c1.nii.gz")
    return Path("c1"), "follow neither channel naming: no <case>_0000.<ext> for c1; no " \
                       "<case>.<ext> for c2"


@pytest.mark.parametrize("break_input", [_missing_channel, _channel_grid, _no_channel_zero])
def test_multi_channel_errors(multi, tmp_path, capsys, break_input):
    path, message = break_input(multi)
    assert convert(multi, tmp_path / "raw") == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err


@pytest.mark.parametrize("extra, message", [
    (["--label-names", "bg", "liver"], "value 0 must be named 'background'"),
    (["--label-names", "background", "a", "a"], "repeats a name"),
    (["--channel-names", "CT", "PET"], "2 channel name(s) given for 1 channel(s)"),
])
def test_name_option_errors(single, tmp_path, capsys, extra, message):
    assert convert(single, tmp_path / "raw", *extra) == 1
    assert message in capsys.readouterr().err


def test_labels_json_with_gap(single, tmp_path, capsys):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"background": 0, "liver": 2}))
    assert convert(single, tmp_path / "raw", "--labels-json", str(path)) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "label values [0, 2] are not 0, 1" in err


def test_images_and_labels_in_one_folder(single, tmp_path, capsys):
    """case.nrrd beside case_seg.nii.gz, for the labelled and the test cases alike."""
    for images, labels in (("images", "labels"), ("test_images", "test_labels")):
        for label in list(single[labels].iterdir()):
            label.rename(single[images] / label.name.replace(".nii.gz", "_seg.nii.gz"))
        single[labels] = single[images]
    out = tmp_path / "raw"
    assert convert(single, out, "--label-suffix", "_seg") == 0
    dataset = dataset_dir(out)
    assert names(dataset / "imagesTr") == {f"{case}_0000.nii.gz" for case in SINGLE}
    assert names(dataset / "labelsTr") == {f"{case}.nii.gz" for case in SINGLE}
    assert names(dataset / "labelsTs") == {f"{case}.nii.gz" for case in TEST}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "liver_02.nii.gz")))
    np.testing.assert_array_equal(label, label_array())
    capsys.readouterr()
    assert convert(single, tmp_path / "raw2") == 1  # no suffix: labels cannot be told from images
    assert "--label-suffix" in capsys.readouterr().err


def test_images_and_labels_one_folder_through_a_symlink_needs_a_suffix(single, tmp_path, capsys):
    link = tmp_path / "labels_link"
    link.symlink_to(single["images"], target_is_directory=True)
    assert convert({**single, "labels": link}, tmp_path / "raw") == 1
    assert "--label-suffix" in capsys.readouterr().err


def test_repeated_channel_suffix_is_named(multi, tmp_path, capsys):
    assert convert(multi, tmp_path / "raw", "--channel-suffixes", "_0000", "_0000") == 1
    assert "--channel-suffixes repeats _0000" in capsys.readouterr().err


def test_labels_without_any_foreground_are_refused(single, tmp_path, capsys):
    for label_path in [*single["labels"].iterdir(), *single["test_labels"].iterdir()]:
        write(np.zeros(SHAPE_ZYX, np.uint8), label_path)
    assert convert(single, tmp_path / "raw") == 1
    assert "only 0 (background)" in capsys.readouterr().err
    assert not (tmp_path / "raw" / "Dataset604_MyDataset").exists()


def test_binary_masks_saved_as_0_255(single, tmp_path, capsys):
    """The commonest mask export: the error is one readable line with the fix, and --label-map applies it."""
    for label_path in [*single["labels"].iterdir(), *single["test_labels"].iterdir()]:
        write(np.where(label_array() > 0, 255, 0).astype(np.uint8), label_path)
    out = tmp_path / "raw"
    assert convert(single, out) == 1
    err = capsys.readouterr().err
    assert "(missing: 1-254)" in err and "--label-map 255=1" in err and len(err) < 1000
    assert convert(single, out, "--label-map", "255=1") == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset_dir(out) / "labelsTr" / "liver_01.nii.gz")))
    np.testing.assert_array_equal(label, (label_array() > 0).astype(np.uint8))
    meta = meta_of(out)
    assert meta["labels"] == {"background": 0, "label1": 1}
    assert meta["conversion"]["source"]["label_map"] == {"255": 1}


def test_label_map_swaps_values_at_once_and_rejects_bad_pairs(single, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(single, out, "--label-map", "1=2", "2=1") == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset_dir(out) / "labelsTr" / "liver_01.nii.gz")))
    np.testing.assert_array_equal(label, np.choose(label_array(), [0, 2, 1]))
    for bad, message in ((["255:1"], "OLD=NEW"), (["x=1"], "OLD=NEW"), (["3=1", "3=2"], "value 3 twice")):
        assert convert(single, tmp_path / "bad", "--label-map", *bad) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_failed_run_leaves_existing_dataset(single, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(single, out) == 0
    marker = dataset_dir(out) / "marker.txt"
    marker.write_text("old")
    capsys.readouterr()
    assert convert(single, out) == 1                               # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    bad, _ = _gap_in_values(single)                                 # fails after all cases ran
    assert convert(single, out, "--overwrite") == 1
    assert str(bad) in capsys.readouterr().err
    assert marker.read_text() == "old" and names(out) == {"Dataset604_MyDataset"}
    # named values 0..3: files holding only 0, 1 and 3 are fine
    assert convert(single, out, "--overwrite", "--label-names", "background", "a", "b",
                   "c") == 0
    assert not marker.exists() and meta_of(out)["labels"]["c"] == 3


def test_case_ids_ending_in_four_digits_in_every_folder(tmp_path):
    # liver_0001 is a case ID, not channel 1 of case "liver": the labelled IDs say so
    root = tmp_path / "digits"
    for index, case in enumerate(["liver_0001", "liver_0002", "liver_0050"]):
        folder = "unlabeled" if case == "liver_0050" else "images"
        write(image_array(index), root / folder / f"{case}.nii.gz")
        if folder == "images":
            write(label_array(), root / "labels" / f"{case}.nii.gz")
    paths = {"images": root / "images", "labels": root / "labels", "unlabeled": root / "unlabeled"}
    out = tmp_path / "raw"
    assert convert(paths, out) == 0
    assert names(dataset_dir(out) / "imagesTr") == {"liver_0001_0000.nii.gz",
                                                     "liver_0002_0000.nii.gz"}
    assert names(dataset_dir(out) / "imagesUnlabeled") == {"liver_0050_0000.nii.gz"}


def test_unlabelled_ids_ending_in_four_digits_pass_with_the_empty_suffix_the_refusal_names(single, tmp_path,
                                                                                           capsys):
    write(image_array(0), single["unlabeled"] / "scan_2019.nii.gz")
    out = tmp_path / "raw"
    assert convert(single, out) == 1
    assert 'give --channel-suffixes (--channel-suffixes "" if these are case IDs' in capsys.readouterr().err
    assert convert(single, out, "--channel-suffixes", "") == 0
    assert "scan_2019_0000.nii.gz" in names(dataset_dir(out) / "imagesUnlabeled")


def test_input_inside_the_dataset_it_would_replace_is_refused(single, tmp_path, capsys):
    # reconverting a dataset from its own folders (new label names, say): --overwrite would
    # delete the input along with the old dataset
    out = tmp_path / "raw"
    assert convert(single, out) == 0
    dataset = dataset_dir(out)
    before = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    capsys.readouterr()
    from_itself = {"images": dataset / "imagesTr", "labels": dataset / "labelsTr",
                   "unlabeled": dataset / "imagesUnlabeled"}
    assert convert(from_itself, out, "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"lies inside {dataset}, which the conversion would replace" in err
    assert str(dataset / "imagesTr") in err
    assert {p.relative_to(dataset): p.read_bytes()
            for p in dataset.rglob("*") if p.is_file()} == before


def test_output_root_that_is_a_file_is_one_line_error(single, tmp_path, capsys):
    not_a_folder = tmp_path / "raw"
    not_a_folder.write_text("a file, not a folder")
    assert convert(single, not_a_folder) == 1
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line == (f"nnUNetv2_ccesemi_convert_folder: error: {not_a_folder} "
                         f"(-o/--output-root) is a file; expected a folder to hold the dataset")
    assert not_a_folder.read_text() == "a file, not a folder"


def test_unwritable_output_root_is_one_line_error(single, tmp_path, capsys, monkeypatch):
    out = tmp_path / "raw"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(out / "tmp1_Dataset604_MyDataset"))
    monkeypatch.setattr("nnunet_ccesemi.atomic.os.mkdir", refuse)
    assert convert(single, out) == 1
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith("nnUNetv2_ccesemi_convert_folder: error: [Errno 13] Permission "
                                "denied") and str(out) in last_line


def test_console_script_is_installed():
    # the script pip wrote, not importlib.metadata: a stale *.egg-info in the working directory
    # would shadow the installed entry points
    script = Path(sys.executable).parent / "nnUNetv2_ccesemi_convert_folder"
    assert script.is_file(), "run: pip install --no-deps --no-build-isolation -e ."
    assert "from nnunet_ccesemi.dataset_conversion.convert_folder import main" in script.read_text()
