"""Tests of the NIH Pancreas-CT converter.

A miniature TCIA download is written by the tests: ``PANCREAS_NNNN/<study>/<series>/1-NNN.dcm``
(one DICOM file per slice with position, orientation, InstanceNumber and rescale tags, so
SimpleITK's series reader stacks them; InstanceNumber 1 is the top slice, as in many CT series, so
it runs against the sorted positions) and ``TCIA_pancreas_labels-02-05-2017/labelNNNN.nii.gz`` in
the TCIA convention: the label array in InstanceNumber order, header origin 0. Volumes are
10 x 8 x 6 voxels (x, y, z).
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
from nnunet_ccesemi.dataset_conversion.common import ConversionError, read_case_list
from nnunet_ccesemi.dataset_conversion.convert_pancreas import (build_parser, build_split,
                                                                case_number, main)
from tests.conftest import verify_in_process

SHAPE_ZYX = (6, 8, 10)
SPACING = (0.7, 0.8, 2.5)          # x, y, z (mm)
CORNER_XY = (-50.0, -60.0)          # ImagePositionPatient x, y
TOP_Z = 100.0                       # z of InstanceNumber 1
NUMBERS = ["0001", "0002", "0003", "0004", "0005", "0006", "0025"]
LABELS_DIR = "TCIA_pancreas_labels-02-05-2017"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.1.1"


# --------------------------------------------------------------------------------------------
# Miniature inputs
# --------------------------------------------------------------------------------------------
def ct_by_instance(case_index: int) -> np.ndarray:
    """HU (z, y, x) with z in InstanceNumber order: 100 k + 10 row + column - 1000 + case."""
    k, row, column = np.indices(SHAPE_ZYX)
    return (100 * k + 10 * row + column - 1000 + case_index).astype(np.int16)


def label_by_instance() -> np.ndarray:
    """A 0/1 mask (z, y, x) in InstanceNumber order, asymmetric along every axis."""
    k, row, column = np.indices(SHAPE_ZYX)
    return ((k >= 1) & (k <= 2) & (row < 3) & (column >= 6)).astype(np.uint8)


def write_dicom_series(series_dir: Path, hu: np.ndarray, series_uid: str,
                       orientation: str = "1\\0\\0\\0\\1\\0") -> None:
    """One CT slice per file; values written as HU with intercept -1024 (stored as HU + 1024)."""
    series_dir.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        slice_image = sitk.GetImageFromArray(hu[k])
        slice_image.SetSpacing(SPACING[:2])
        z = TOP_Z - k * SPACING[2]
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"{series_uid}.{k + 1}", "0010|0020": series_dir.parts[-3],
                "0020|000d": STUDY_UID, "0020|000e": series_uid, "0020|0013": str(k + 1),
                "0020|0032": f"{CORNER_XY[0]}\\{CORNER_XY[1]}\\{z}",
                "0020|0037": orientation, "0018|0050": str(SPACING[2]),
                "0028|1052": "-1024", "0028|1053": "1"}
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(series_dir / f"1-{k + 1:03d}.dcm"))
        writer.Execute(slice_image)


def write_tcia_label(path: Path, label_zyx: np.ndarray) -> None:
    """The label array as stored by TCIA: DICOM grid, InstanceNumber order, header origin 0."""
    image = sitk.GetImageFromArray(label_zyx)
    image.SetSpacing(SPACING)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def series_dir_of(root: Path, number: str) -> Path:
    return (root / f"PANCREAS_{number}" / f"11-24-2015-PANCREAS{number}-Pancreas-1"
            / f"Pancreas-{number}")


def label_path_of(root: Path, number: str) -> Path:
    return root / LABELS_DIR / f"label{number}.nii.gz"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The miniature download, written once; tests that damage it work on a copy."""
    root = tmp_path_factory.mktemp("pancreas_src")
    for index, number in enumerate(NUMBERS):
        write_dicom_series(series_dir_of(root, number), ct_by_instance(index),
                           f"{STUDY_UID}.{index + 2}")
        write_tcia_label(label_path_of(root, number), label_by_instance())
    return root


@pytest.fixture
def copy(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "pancreas_copy"))


@pytest.fixture
def lists(tmp_path: Path) -> dict[str, Path]:
    """Custom lists in mixed spellings; 0025 (a duplicate) is in the train list."""
    train, test = tmp_path / "train.list", tmp_path / "test.list"
    train.write_text("# custom\nimage0001\nPANCREAS_0002\n0025\n0003.h5\n4\n")
    test.write_text("0005\nlabel0006\n")
    return {"train": train, "test": test}


def convert(root: Path, out: Path, lists: dict[str, Path], *extra: str) -> int:
    return main(["-i", str(root), "-o", str(out), "-d", "602", "--train-list",
                 str(lists["train"]), "--test-list", str(lists["test"]), "-np", "1", *extra])


def dataset_dir(out: Path) -> Path:
    return out / "Dataset602_PancreasCT"


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def meta_of(out: Path) -> dict:
    return json.loads((dataset_dir(out) / "dataset.json").read_text())


# --------------------------------------------------------------------------------------------
# Layout, split, dataset.json
# --------------------------------------------------------------------------------------------
def test_layout_split_and_dataset_json(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--labeled", "2") == 0
    dataset = dataset_dir(out)
    assert names(out) == {"Dataset602_PancreasCT"}
    assert names(dataset) == {"imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs",
                              "dataset.json"}
    assert names(dataset / "imagesTr") == {"pancreas_0001_0000.nii.gz",
                                           "pancreas_0002_0000.nii.gz"}
    assert names(dataset / "labelsTr") == {"pancreas_0001.nii.gz", "pancreas_0002.nii.gz"}
    # 0025 is a duplicate: left out by default
    assert names(dataset / "imagesUnlabeled") == {"pancreas_0003_0000.nii.gz",
                                                  "pancreas_0004_0000.nii.gz"}
    assert names(dataset / "imagesTs") == {"pancreas_0005_0000.nii.gz",
                                           "pancreas_0006_0000.nii.gz"}
    assert names(dataset / "labelsTs") == {"pancreas_0005.nii.gz", "pancreas_0006.nii.gz"}

    meta = meta_of(out)
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "pancreas": 1}
    assert (meta["numTraining"], meta["numUnlabeled"], meta["numTest"]) == (2, 2, 2)
    split = meta["ssl_split"]
    assert split["labeled"] == ["pancreas_0001", "pancreas_0002"]
    assert split["unlabeled"] == ["pancreas_0003", "pancreas_0004"]
    assert split["test"] == ["pancreas_0005", "pancreas_0006"]
    assert split["excluded"] == ["pancreas_0025", "pancreas_0070"]
    assert split["duplicates_excluded"] == ["pancreas_0025", "pancreas_0070"]
    assert split["train_list"]["file"] == str(lists["train"].resolve())
    source_info = meta["conversion"]["source"]
    assert source_info["labels_dir"] == str(source / LABELS_DIR)
    alignment = source_info["label_alignment"]
    assert alignment["policy"] == "auto"
    assert set(alignment["cases"]) == {"pancreas_0001", "pancreas_0002", "pancreas_0005",
                                       "pancreas_0006"}
    assert all("InstanceNumber order (slice axis reversed)" in note
               for note in alignment["cases"].values())


def test_keep_duplicates(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--labeled", "2", "--keep-duplicates") == 0
    meta = meta_of(out)
    assert meta["ssl_split"]["unlabeled"] == ["pancreas_0025", "pancreas_0003", "pancreas_0004"]
    assert meta["ssl_split"]["excluded"] == []


def test_exclude_list_and_labeled_fraction(source, lists, tmp_path):
    exclude = tmp_path / "exclude.list"
    exclude.write_text("PANCREAS_0001\n")
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--labeled-fraction", "0.5", "--exclude-list",
                   str(exclude)) == 0
    split = meta_of(out)["ssl_split"]
    assert split["labeled"] == ["pancreas_0002", "pancreas_0003"]  # round(0.5 * 3) = 2
    assert split["excluded"] == ["pancreas_0025", "pancreas_0070", "pancreas_0001"]


def _split_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["-i", "unused", "-d", "1", *argv])


@pytest.mark.parametrize("argv, counts", [
    ([], (6, 55, 19)),                                          # mcnet without 0025 and 0070
    (["--keep-duplicates"], (6, 56, 20)),
    (["--labeled-fraction", "0.2"], (12, 49, 19)),
    (["--split", "coranet"], (6, 56, 18)),
    (["--split", "coranet", "--labeled-fraction", "0.2"], (12, 50, 18)),
])
def test_shipped_split_sizes(argv, counts):
    split, info = build_split(_split_args(*argv))
    assert (len(split.labeled), len(split.unlabeled), len(split.test)) == counts
    assert info["train_list"]["shipped"] is True


def test_coranet_labelled_cases_are_its_train_lab_list():
    split, _ = build_split(_split_args("--split", "coranet", "--labeled", "12"))
    assert split.labeled == tuple(f"pancreas_{i:04d}" for i in range(1, 13))


def test_mcnet_labelled_cases_follow_its_list():
    split, _ = build_split(_split_args())
    assert split.labeled == ("pancreas_0057", "pancreas_0018", "pancreas_0062", "pancreas_0031",
                             "pancreas_0020", "pancreas_0017")


def test_shipped_lists():
    def read(name: str) -> list[str]:
        return read_case_list(common.shipped_list(name))
    mc_train, mc_test = read("pancreas_mcnet_train.list"), read("pancreas_mcnet_test.list")
    cn_train, cn_test = read("pancreas_coranet_train.list"), read("pancreas_coranet_test.list")
    assert (len(mc_train), len(mc_test), len(cn_train), len(cn_test)) == (62, 20, 62, 18)
    assert not set(mc_train) & set(mc_test) and not set(cn_train) & set(cn_test)
    all_cases = {f"{i:04d}" for i in range(1, 83)}
    assert set(mc_train) | set(mc_test) == all_cases               # MC-Net: all 82 originals
    assert set(cn_train) | set(cn_test) == all_cases - {"0025", "0070"}
    for name in ("pancreas_mcnet_train.list", "pancreas_coranet_test.list"):
        assert common.shipped_list(name).read_text().startswith("# source: ")


@pytest.mark.parametrize("text, number", [("1", "0001"), ("0001", "0001"),
                                          ("PANCREAS_0012", "0012"), ("pancreas_0012", "0012"),
                                          ("image0057", "0057"), ("label0057", "0057"),
                                          ("0064.h5", "0064"), ("image0064_norm.h5", "0064")])
def test_case_number_spellings(text, number):
    assert case_number(text, Path("x.list")) == number


@pytest.mark.parametrize("text", ["case1", "0000", "12345", "PANCREAS-0001"])
def test_case_number_rejects(text):
    with pytest.raises(ConversionError, match="not a Pancreas-CT case"):
        case_number(text, Path("x.list"))


def test_same_case_in_two_spellings(source, lists, tmp_path, capsys):
    lists["train"].write_text("0001\nimage0001\n0002\n")
    assert convert(source, tmp_path / "raw", lists, "--labeled", "1") == 1
    assert "0001 listed twice" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Geometry, intensities, label alignment
# --------------------------------------------------------------------------------------------
def test_ct_geometry_hu_and_flipped_label(source, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--labeled", "2") == 0
    dataset = dataset_dir(out)
    image = sitk.ReadImage(str(dataset / "imagesTr" / "pancreas_0001_0000.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetSize() == SHAPE_ZYX[::-1]
    assert image.GetSpacing() == pytest.approx(SPACING)
    bottom_z = TOP_Z - (SHAPE_ZYX[0] - 1) * SPACING[2]
    assert image.GetOrigin() == pytest.approx((*CORNER_XY, bottom_z))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    # slices sorted by position: the last InstanceNumber comes first
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct_by_instance(0)[::-1])
    label = sitk.ReadImage(str(dataset / "labelsTr" / "pancreas_0001.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert label.GetOrigin() == pytest.approx(image.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), label_by_instance()[::-1])
    test_image = sitk.ReadImage(str(dataset / "imagesTs" / "pancreas_0005_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(test_image), ct_by_instance(4)[::-1])


def _physical_label(copy: Path, number: str, flip_z: bool) -> np.ndarray:
    """Rewrite a label with a header that places it exactly on the DICOM grid."""
    image_like = sitk.GetImageFromArray(label_by_instance()[::-1].copy())  # position order
    image_like.SetSpacing(SPACING)
    image_like.SetOrigin((*CORNER_XY, TOP_Z - (SHAPE_ZYX[0] - 1) * SPACING[2]))
    if flip_z:  # the same voxels stored top slice first, header saying so
        image_like = sitk.Flip(image_like, [False, False, True])
        assert image_like.GetDirection()[8] == pytest.approx(-1.0)
    sitk.WriteImage(image_like, str(label_path_of(copy, number)), True)
    return label_by_instance()[::-1]


@pytest.mark.parametrize("flip_z, note", [(False, "as stored"),
                                          (True, "reoriented by its header")])
def test_label_with_a_consistent_header(copy, lists, tmp_path, flip_z, note):
    expected = _physical_label(copy, "0001", flip_z)
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 0
    label = sitk.ReadImage(str(dataset_dir(out) / "labelsTr" / "pancreas_0001.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
    assert meta_of(out)["conversion"]["source"]["label_alignment"]["cases"][
        "pancreas_0001"].startswith(note)


@pytest.mark.parametrize("offset_mm, note", [(0.01, "as stored; its origin 0.01 mm from the image's"),
                                              (5.0, "header geometry ignored")])
def test_label_header_a_fraction_of_a_voxel_off_is_used_as_stored(copy, lists, tmp_path, offset_mm, note):
    """A label from another pipeline: position order, header on the CT's grid but for a tiny origin shift.
    Read by the TCIA InstanceNumber rule it would come out reversed along z."""
    expected = label_by_instance()[::-1]
    label = sitk.GetImageFromArray(expected.copy())
    label.SetSpacing(SPACING)
    label.SetOrigin((CORNER_XY[0] + offset_mm, CORNER_XY[1], TOP_Z - (SHAPE_ZYX[0] - 1) * SPACING[2]))
    sitk.WriteImage(label, str(label_path_of(copy, "0001")), True)
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset_dir(out) / "labelsTr" / "pancreas_0001.nii.gz")))
    assert meta_of(out)["conversion"]["source"]["label_alignment"]["cases"]["pancreas_0001"].startswith(note)
    if offset_mm < 1:
        np.testing.assert_array_equal(written, expected)


def test_label_stored_as_yxz_with_header_saying_so(copy, lists, tmp_path):
    image_like = sitk.GetImageFromArray(label_by_instance()[::-1].copy())
    image_like.SetSpacing(SPACING)
    image_like.SetOrigin((*CORNER_XY, TOP_Z - (SHAPE_ZYX[0] - 1) * SPACING[2]))
    swapped = sitk.PermuteAxes(image_like, [1, 0, 2])  # (y, x, z), direction columns swapped
    assert swapped.GetSize() == (8, 10, 6)
    sitk.WriteImage(swapped, str(label_path_of(copy, "0002")), True)
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 0
    label = sitk.ReadImage(str(dataset_dir(out) / "labelsTr" / "pancreas_0002.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), label_by_instance()[::-1])
    note = meta_of(out)["conversion"]["source"]["label_alignment"]["cases"]["pancreas_0002"]
    assert note.startswith("reoriented by its header (label axes yxz")


@pytest.mark.parametrize("policy", ["strict", "header"])
def test_tcia_header_rejected_without_auto(source, lists, tmp_path, capsys, policy):
    assert convert(source, tmp_path / "raw", lists, "--labeled", "2", "--label-alignment",
                   policy) == 1
    err = capsys.readouterr().err
    assert str(label_path_of(source, "0001")) in err and str(series_dir_of(source, "0001")) in err
    assert "mismatch in origin" in err and "size (10, 8, 6), spacing (0.7, 0.8, 2.5)" in err


def test_output_passes_nnunet_verify_dataset_integrity(source, lists, tmp_path, monkeypatch,
                                                       capsys):
    out = tmp_path / "raw"
    assert convert(source, out, lists, "--labeled", "2") == 0
    verify_in_process(dataset_dir(out), monkeypatch)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Errors name the file; failed runs leave an existing dataset alone
# --------------------------------------------------------------------------------------------
def _label_spacing(root: Path) -> tuple[Path, str]:
    path = label_path_of(root, "0002")
    image = sitk.GetImageFromArray(label_by_instance())
    image.SetSpacing((0.7, 0.8, 1.0))
    sitk.WriteImage(image, str(path), True)
    return path, "spacings differ"


def _label_size(root: Path) -> tuple[Path, str]:
    path = label_path_of(root, "0005")
    write_tcia_label(path, label_by_instance()[:5])
    return path, "sizes differ"


def _label_value(root: Path) -> tuple[Path, str]:
    path = label_path_of(root, "0001")
    label = label_by_instance()
    label[0, 0, 0] = 2
    write_tcia_label(path, label)
    return path, "label values 2 found; expected only 0, 1"


def _missing_label(root: Path) -> tuple[Path, str]:
    path = label_path_of(root, "0006")
    path.unlink()
    return path, "missing pancreas label"


def _unreadable_label(root: Path) -> tuple[Path, str]:
    path = label_path_of(root, "0002")
    path.write_bytes(b"\x1f\x8bnot gzip")
    return path, "is damaged: the gzip stream is corrupt"


def _absent_case(root: Path) -> tuple[Path, str]:
    shutil.rmtree(root / "PANCREAS_0004")
    return root, "not in"


def _no_series(root: Path) -> tuple[Path, str]:
    series = series_dir_of(root, "0003")
    for f in series.iterdir():
        f.unlink()
    return root / "PANCREAS_0003", "no DICOM series"


def _unreadable_series(root: Path) -> tuple[Path, str]:
    series = series_dir_of(root, "0003")
    for f in series.iterdir():
        f.write_bytes(b"not a dicom file")
    return series, "no readable DICOM series"


def _corrupt_slice(root: Path) -> tuple[Path, str]:
    series = series_dir_of(root, "0002")
    (series / "1-003.dcm").write_bytes(b"not a dicom file")
    return series, "1-003.dcm not readable as slices of its DICOM series"


def _missing_slice(root: Path) -> tuple[Path, str]:
    series = series_dir_of(root, "0004")  # unlabelled: no label size to catch it
    (series / "1-003.dcm").unlink()
    return series, "slice positions are not evenly spaced (steps 2.5 to 5 mm)"


def _two_series(root: Path) -> tuple[Path, str]:
    series = series_dir_of(root, "0001")
    shutil.copytree(series, series.parent / "Pancreas-second")
    return root / "PANCREAS_0001", "several series folders"


def _gantry_tilt(root: Path) -> tuple[Path, str]:
    """A tilted acquisition: rows tilted 20 degrees, slice positions stepping along z only."""
    series = series_dir_of(root, "0004")
    shutil.rmtree(series)
    tilt = np.deg2rad(20)
    write_dicom_series(series, ct_by_instance(3), f"{STUDY_UID}.99",
                       orientation=f"1\\0\\0\\0\\{np.cos(tilt):.6f}\\{-np.sin(tilt):.6f}")
    return series, "across the slice normal (a gantry tilt"


@pytest.mark.parametrize("break_input", [_label_spacing, _label_size, _label_value,
                                         _missing_label, _unreadable_label, _absent_case,
                                         _no_series, _unreadable_series, _corrupt_slice,
                                         _missing_slice, _two_series, _gantry_tilt])
def test_errors_name_the_file(copy, lists, tmp_path, capsys, break_input):
    path, message = break_input(copy)
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not out.exists() or list(out.iterdir()) == []


def test_non_dicom_files_beside_the_slices_are_skipped(copy, lists, tmp_path):
    # newer NBIA Data Retriever downloads put a LICENSE file into every series folder
    for number in NUMBERS:
        (series_dir_of(copy, number) / "LICENSE").write_text("Creative Commons ...\n")
    (series_dir_of(copy, "0002") / "md5sums.txt").write_text("0123 1-001.dcm\n")
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 0
    assert len(list((dataset_dir(out) / "imagesTr").iterdir())) == 2


def test_dicom_file_left_out_of_the_series_is_refused_whatever_its_name(copy, lists, tmp_path,
                                                                       capsys):
    series = series_dir_of(copy, "0002")
    data = bytearray((series / "1-003.dcm").read_bytes())
    data[140:160] = b"\xff" * 20  # the preamble stays, the first element is garbage
    (series / "1-003.dcm").unlink()
    (series / "slice3").write_bytes(bytes(data))
    assert convert(copy, tmp_path / "raw", lists, "--labeled", "2") == 1
    err = capsys.readouterr().err
    assert str(series) in err and "slice3 not readable as slices of its DICOM series" in err


def cut_short(path: Path, keep: float = 0.5) -> Path:
    """Keep the first ``keep`` of the file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("number", ["0002", "0006"], ids=["train-label", "test-label"])
def test_truncated_label_is_refused(copy, lists, tmp_path, capsys, number):
    path = cut_short(label_path_of(copy, number), keep=0.9)  # the mask compresses to its header
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 1
    assert f"the pancreas label {path} is damaged: the gzip stream ends early" \
        in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_grid_mismatch_names_both_files_and_values(copy, lists, tmp_path, capsys):
    label_path, _ = _label_spacing(copy)
    assert convert(copy, tmp_path / "raw", lists, "--labeled", "2") == 1
    err = capsys.readouterr().err
    assert f"the label {label_path} (size (10, 8, 6), spacing (0.7, 0.8, 1.0), " \
           f"origin (0.0, 0.0, 0.0))" in err
    assert f"the image {series_dir_of(copy, '0002')} (size (10, 8, 6), spacing " \
           f"(0.7, 0.8, 2.5), origin (-50.0, -60.0, 87.5))" in err


def test_kept_duplicates_absent_from_input(copy, lists, tmp_path, capsys):
    shutil.rmtree(copy / "PANCREAS_0025")
    assert convert(copy, tmp_path / "raw", lists, "--keep-duplicates", "--labeled", "2") == 1
    err = capsys.readouterr().err
    assert "PANCREAS_0025" in err and "drop --keep-duplicates" in err


def test_failed_run_leaves_existing_dataset(copy, lists, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 0
    marker = dataset_dir(out) / "marker.txt"
    marker.write_text("old")
    capsys.readouterr()

    assert convert(copy, out, lists, "--labeled", "3") == 1          # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    bad_label, _ = _label_value(copy)                                # fails mid-run
    assert convert(copy, out, lists, "--labeled", "3", "--overwrite") == 1
    assert str(bad_label) in capsys.readouterr().err
    assert marker.read_text() == "old" and names(out) == {"Dataset602_PancreasCT"}
    assert len(list((dataset_dir(out) / "imagesTr").iterdir())) == 2


def test_labels_option_and_missing_label_folder(copy, lists, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    shutil.move(str(copy / LABELS_DIR), moved)
    assert convert(copy, tmp_path / "raw", lists, "--labeled", "2") == 1
    assert "--labels" in capsys.readouterr().err
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2", "--labels", str(moved)) == 0
    assert meta_of(out)["conversion"]["source"]["labels_dir"] == str(moved)


@pytest.mark.parametrize("download", ["manifest-1599750808610", "Pancreas-CT-20200910"])
def test_nbia_data_retriever_destination(copy, lists, tmp_path, capsys, download):
    """The retriever writes <destination>/manifest-<timestamp>/Pancreas-CT/PANCREAS_NNNN/... (its command-line
    version 4: <destination>/<manifest file name>/Pancreas-CT/...); -i <destination>."""
    manifest = copy / download / "Pancreas-CT"
    manifest.mkdir(parents=True)
    for case in copy.glob("PANCREAS_*"):
        shutil.move(str(case), manifest)
    out = tmp_path / "raw"
    assert convert(copy, out, lists, "--labeled", "2") == 0
    assert meta_of(out)["conversion"]["source"]["cases_dir"] == str(manifest)
    shutil.copytree(manifest, copy / "manifest-1600000000000" / "Pancreas-CT")  # two downloads: which one?
    assert convert(copy, tmp_path / "raw2", lists, "--labeled", "2") == 1
    assert "several places" in capsys.readouterr().err


def test_no_cases_in_input(tmp_path, lists, capsys):
    (tmp_path / "empty").mkdir()
    assert convert(tmp_path / "empty", tmp_path / "raw", lists) == 1
    err = capsys.readouterr().err
    assert "PANCREAS_NNNN/<study>/<series>/*.dcm" in err and "manifest-* or Pancreas-CT-<date>" in err


def test_console_script_is_installed():
    # the script pip wrote, not importlib.metadata: a stale *.egg-info in the working directory
    # would shadow the installed entry points
    script = Path(sys.executable).parent / "nnUNetv2_ccesemi_convert_pancreas"
    assert script.is_file(), "run: pip install --no-deps --no-build-isolation -e ."
    assert ("from nnunet_ccesemi.dataset_conversion.convert_pancreas import main"
            in script.read_text())


def test_int16_conversion_rounds_a_float_series_and_refuses_what_does_not_fit(tmp_path):
    from nnunet_ccesemi.dataset_conversion.convert_pancreas import to_int16_hu

    image = sitk.GetImageFromArray(np.array([[[-1024.4, 0.5, 40.6]]], np.float32))
    image.SetSpacing((0.7, 0.7, 1.5))
    converted = to_int16_hu(image, tmp_path)
    assert converted.GetPixelID() == sitk.sitkInt16 and converted.GetSpacing() == image.GetSpacing()
    assert sitk.GetArrayFromImage(converted).tolist() == [[[-1024, 0, 41]]]  # np.rint: half to even
    too_bright = sitk.GetImageFromArray(np.array([[[0.0, 40000.0]]], np.float32))
    with pytest.raises(ConversionError, match=r"values 0.0..40000.0 do not fit int16 HU"):
        to_int16_hu(too_bright, tmp_path)


def test_dataset_folder_name_and_scalar_volume_rules(tmp_path):
    assert common.dataset_folder_name(1, "LA") == "Dataset001_LA"
    for dataset_id in (0, 1000):
        with pytest.raises(ConversionError, match=f"between 1 and 999, got {dataset_id}"):
            common.dataset_folder_name(dataset_id, "LA")
    for name in ("../x", "", "_LA", "Left Atrium"):
        with pytest.raises(ConversionError, match="use letters, digits"):
            common.dataset_folder_name(1, name)
    with pytest.raises(ConversionError, match=r"expected a 3D single-channel volume, got 2D with 1 components"):
        common.check_scalar_volume(sitk.Image(4, 5, sitk.sitkFloat32), tmp_path / "x.nii.gz")
    with pytest.raises(ConversionError, match=r"got 3D with 3 components per voxel"):
        common.check_scalar_volume(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), tmp_path / "x.nii.gz")
    common.check_scalar_volume(sitk.Image(4, 5, 6, sitk.sitkInt16), tmp_path / "x.nii.gz")
