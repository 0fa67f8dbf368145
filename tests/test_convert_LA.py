"""Tests of the Left Atrium converter and the shared conversion helpers.

Miniature inputs in both real on-disk layouts are written by the tests: UA-MT h5 files (datasets
``image``/``label``, no attributes, inside ``2018LA_Seg_Training Set`` with its space) and
challenge nrrd files (0/255 labels, non-trivial spacing, origin and direction). Volumes are
8 x 6 x 4 voxels, so every conversion takes milliseconds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ccesemi.dataset_conversion import common
from nnunet_ccesemi.dataset_conversion.common import (ConversionError, atomic_dataset_dir,
                                                      make_split, read_case_list,
                                                      resolve_num_labeled)
from nnunet_ccesemi.dataset_conversion.convert_LA import SourceLayout, main, resolve_spacing

SHAPE_XYZ = (8, 6, 4)
TRAIN_IDS = [f"CASE{i:02d}" for i in range(9)]
TEST_IDS = ["TEST00", "TEST01"]
ABSENT_TEST_ID = "TEST99"
EXTRA_ID = "EXTRA0"  # present in the input, listed nowhere: must not be converted
NRRD_SPACING = (0.625, 0.7, 1.25)
NRRD_ORIGIN = (-10.5, 3.25, 7.0)
NRRD_DIRECTION = (0.0, 1.0, 0.0,
                  -1.0, 0.0, 0.0,
                  0.0, 0.0, 1.0)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --------------------------------------------------------------------------------------------
# Miniature inputs
# --------------------------------------------------------------------------------------------
def case_arrays(case_index: int) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric (x, y, z) image (value = 100 x + 10 y + z + case) and a 0/1 label."""
    x, y, z = np.indices(SHAPE_XYZ)
    image = (100 * x + 10 * y + z + case_index).astype(np.float32)
    label = ((x >= 2) & (y < 3) & (z != 1)).astype(np.uint8)
    return image, label


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5_file:
        h5_file.create_dataset("image", data=image, compression="gzip")
        h5_file.create_dataset("label", data=label, compression="gzip")


def xyz_to_image(array_xyz: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing(NRRD_SPACING)
    image.SetOrigin(NRRD_ORIGIN)
    image.SetDirection(NRRD_DIRECTION)
    return image


def write_nrrd_case(case_dir: Path, image: np.ndarray, label_01: np.ndarray) -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(xyz_to_image(image.astype(np.int16)), str(case_dir / "lgemri.nrrd"))
    sitk.WriteImage(xyz_to_image(label_01 * 255), str(case_dir / "laendo.nrrd"))


def all_ids() -> list[str]:
    return TRAIN_IDS + TEST_IDS + [EXTRA_ID]


@pytest.fixture
def lists(tmp_path: Path) -> dict[str, Path]:
    train, test = tmp_path / "train.list", tmp_path / "test.list"
    train.write_text("\n".join(TRAIN_IDS) + "\n")
    test.write_text("\n".join(TEST_IDS + [ABSENT_TEST_ID]) + "\n")
    return {"train": train, "test": test}


@pytest.fixture
def h5_root(tmp_path: Path) -> Path:
    root = tmp_path / "la_h5"
    for index, case_id in enumerate(all_ids()):
        write_h5(root / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5", *case_arrays(index))
    return root


@pytest.fixture
def nrrd_root(tmp_path: Path) -> Path:
    root = tmp_path / "la_nrrd"
    for index, case_id in enumerate(all_ids()):
        write_nrrd_case(root / "Training Set" / case_id, *case_arrays(index))
    return root


def convert(root: Path, out: Path, lists: dict[str, Path], *extra: str) -> int:
    return main(["-i", str(root), "-o", str(out), "-d", "601",
                 "--train-list", str(lists["train"]), "--test-list", str(lists["test"]),
                 "-np", "1", *extra])


def dataset_dir(out: Path) -> Path:
    return out / "Dataset601_LeftAtrium"


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def read_xyz(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


# --------------------------------------------------------------------------------------------
# Layout, file names, dataset.json
# --------------------------------------------------------------------------------------------
def test_h5_layout_files_split_and_dataset_json(h5_root, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--labeled", "3", "-np", "2") == 0

    dataset = dataset_dir(out)
    assert names(out) == {"Dataset601_LeftAtrium"}  # no temporary folder left
    assert names(dataset) == {"imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs",
                              "dataset.json"}
    labeled, unlabeled = TRAIN_IDS[:3], TRAIN_IDS[3:]
    assert names(dataset / "imagesTr") == {f"{i}_0000.nii.gz" for i in labeled}
    assert names(dataset / "labelsTr") == {f"{i}.nii.gz" for i in labeled}
    assert names(dataset / "imagesUnlabeled") == {f"{i}_0000.nii.gz" for i in unlabeled}
    assert names(dataset / "imagesTs") == {f"{i}_0000.nii.gz" for i in TEST_IDS}
    assert names(dataset / "labelsTs") == {f"{i}.nii.gz" for i in TEST_IDS}

    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "LGE-MRI"}
    assert meta["labels"] == {"background": 0, "left_atrium": 1}
    assert meta["file_ending"] == ".nii.gz"
    assert (meta["numTraining"], meta["numUnlabeled"], meta["numTest"]) == (3, 6, 2)
    split = meta["ssl_split"]
    assert split["labeled"] == labeled and split["unlabeled"] == unlabeled
    assert split["test"] == TEST_IDS and split["test_absent_from_input"] == [ABSENT_TEST_ID]
    assert split["train_list"]["file"] == str(lists["train"].resolve())
    assert "dataset" not in meta  # nnU-Net would read it as its file list
    conversion = meta["conversion"]
    assert conversion["source"]["layout"] == "h5"
    assert conversion["converter"] == "nnunet_ccesemi.dataset_conversion.convert_LA"
    assert "--labeled 3" in conversion["command_line"]


@pytest.mark.parametrize("split_args, num_labeled", [
    ([], 8),                              # default
    (["--labeled", "4"], 4),
    (["--labeled-fraction", "0.34"], 3),  # round(0.34 * 9) = 3
])
def test_split_size_options(h5_root, lists, tmp_path, split_args, num_labeled):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, *split_args) == 0
    meta = json.loads((dataset_dir(out) / "dataset.json").read_text())
    assert meta["ssl_split"]["labeled"] == TRAIN_IDS[:num_labeled]
    assert meta["numUnlabeled"] == len(TRAIN_IDS) - num_labeled


def test_exclude_list_leaves_cases_out(h5_root, lists, tmp_path):
    exclude = tmp_path / "exclude.list"
    exclude.write_text(f"# held back\n{TRAIN_IDS[0]}\n{TEST_IDS[1]}\n")
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--labeled", "2", "--exclude-list", str(exclude)) == 0
    split = json.loads((dataset_dir(out) / "dataset.json").read_text())["ssl_split"]
    assert split["labeled"] == TRAIN_IDS[1:3] and split["test"] == TEST_IDS[:1]
    assert split["excluded"] == [TRAIN_IDS[0], TEST_IDS[1]]
    written = {p.name.split("_")[0].split(".")[0] for p in dataset_dir(out).rglob("*.nii.gz")}
    assert TRAIN_IDS[0] not in written and TEST_IDS[1] not in written


def test_output_root_defaults_to_nnunet_raw(h5_root, lists, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    rc = main(["-i", str(h5_root), "-d", "601", "--train-list", str(lists["train"]),
               "--test-list", str(lists["test"]), "-np", "1"])
    assert rc == 0 and (tmp_path / "env_raw" / "Dataset601_LeftAtrium" / "dataset.json").is_file()


def test_no_output_root_is_an_error(h5_root, lists, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    rc = main(["-i", str(h5_root), "-d", "601", "--train-list", str(lists["train"]),
               "--test-list", str(lists["test"]), "-np", "1"])
    assert rc == 1 and "nnUNet_raw" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Geometry, axes and label values
# --------------------------------------------------------------------------------------------
def test_h5_axes_spacing_and_labels(h5_root, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--spacing", "1.25") == 0
    case_id = TRAIN_IDS[0]
    image = sitk.ReadImage(str(dataset_dir(out) / "imagesTr" / f"{case_id}_0000.nii.gz"))
    expected_image, expected_label = case_arrays(0)
    assert image.GetSize() == SHAPE_XYZ
    # the asymmetric value 100 x + 10 y + z lands at voxel index (x, y, z)
    assert image.GetPixel(7, 2, 3) == pytest.approx(723.0)
    assert image.GetPixel(1, 5, 0) == pytest.approx(150.0)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSpacing() == (1.25, 1.25, 1.25)
    assert image.GetOrigin() == (0.0, 0.0, 0.0)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    label_path = dataset_dir(out) / "labelsTr" / f"{case_id}.nii.gz"
    np.testing.assert_array_equal(read_xyz(label_path), expected_label)
    assert sitk.ReadImage(str(label_path)).GetPixelID() == sitk.sitkUInt8


def test_h5_anisotropic_spacing(h5_root, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--spacing", "0.5", "0.6", "2.0") == 0
    path = dataset_dir(out) / "imagesUnlabeled" / f"{TRAIN_IDS[-1]}_0000.nii.gz"
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == pytest.approx((0.5, 0.6, 2.0))


def test_h5_label_saved_as_bool_is_a_0_1_label(h5_root, lists, tmp_path):
    case_id = TRAIN_IDS[0]
    image, label = case_arrays(0)
    write_h5(h5_root / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5", image, label.astype(bool))
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--spacing", "1.25") == 0
    label_path = dataset_dir(out) / "labelsTr" / f"{case_id}.nii.gz"
    np.testing.assert_array_equal(read_xyz(label_path), label)
    assert sitk.ReadImage(str(label_path)).GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("spacing", [["nan"], ["1", "inf", "1"], ["0"], ["1", "-1", "1"]])
def test_h5_spacing_must_be_finite_and_positive(h5_root, lists, tmp_path, capsys, spacing):
    assert convert(h5_root, tmp_path / "raw", lists, "--spacing", *spacing) == 1
    assert "finite positive values" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_h5_without_spacing_warns_when_the_files_look_resampled(h5_root, lists, tmp_path, capsys):
    """The 1.25 mm copy converted without --spacing would be written at 0.625 mm: the slice count says so."""
    assert convert(h5_root, tmp_path / "raw", lists) == 0
    err = capsys.readouterr().err
    assert f"has {SHAPE_XYZ[2]} slices" in err and f"--spacing {0.625 * 88 / SHAPE_XYZ[2]:g}" in err
    assert "warning: 1 of 3 test cases of --test-list" in err and ABSENT_TEST_ID in err
    image = sitk.ReadImage(str(dataset_dir(tmp_path / "raw") / "imagesTr" / f"{TRAIN_IDS[0]}_0000.nii.gz"))
    assert image.GetSpacing() == (0.625, 0.625, 0.625)  # still the documented default


def test_h5_spacing_note_for_a_ua_mt_sized_file(tmp_path, capsys):
    path = tmp_path / "case" / "mri_norm2.h5"
    path.parent.mkdir()
    write_h5(path, np.zeros((2, 2, 88), np.float32), np.zeros((2, 2, 88), np.uint8))
    layout = SourceLayout(kind="h5", cases_dir=tmp_path)
    assert resolve_spacing(layout, None, path) == (0.625, 0.625, 0.625)
    err = capsys.readouterr().err
    assert err.startswith("note:") and "slices" not in err


def test_nrrd_geometry_preserved_and_labels_mapped(nrrd_root, lists, tmp_path):
    out = tmp_path / "raw"
    assert convert(nrrd_root, out, lists) == 0
    dataset = dataset_dir(out)
    assert json.loads((dataset / "dataset.json").read_text())["conversion"]["source"]["layout"] \
        == "nrrd"
    for folder, case_index, label_folder in [("imagesTr", 0, "labelsTr"),
                                             ("imagesTs", len(TRAIN_IDS), "labelsTs")]:
        case_id = all_ids()[case_index]
        expected_image, expected_label = case_arrays(case_index)
        for path in [dataset / folder / f"{case_id}_0000.nii.gz",
                     dataset / label_folder / f"{case_id}.nii.gz"]:
            written = sitk.ReadImage(str(path))
            assert written.GetSpacing() == pytest.approx(NRRD_SPACING)
            assert written.GetOrigin() == pytest.approx(NRRD_ORIGIN)
            assert written.GetDirection() == pytest.approx(NRRD_DIRECTION)
        np.testing.assert_array_equal(read_xyz(dataset / folder / f"{case_id}_0000.nii.gz"),
                                      expected_image)
        label = read_xyz(dataset / label_folder / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(label, expected_label)  # 255 -> 1
    unlabeled = dataset / "imagesUnlabeled" / f"{TRAIN_IDS[-1]}_0000.nii.gz"
    assert sitk.ReadImage(str(unlabeled)).GetOrigin() == pytest.approx(NRRD_ORIGIN)


def test_output_passes_nnunet_verify_dataset_integrity(nrrd_root, lists, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    out = tmp_path / "raw"
    assert convert(nrrd_root, out, lists, "--labeled", "2") == 0
    verify_dataset_integrity(os.fspath(dataset_dir(out)), num_processes=1)


# --------------------------------------------------------------------------------------------
# Overwrite and failed runs
# --------------------------------------------------------------------------------------------
def test_existing_dataset_needs_overwrite(h5_root, lists, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--labeled", "2") == 0
    marker = dataset_dir(out) / "marker.txt"
    marker.write_text("old")
    capsys.readouterr()

    assert convert(h5_root, out, lists, "--labeled", "3") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert marker.read_text() == "old"
    assert len(list((dataset_dir(out) / "imagesTr").iterdir())) == 2

    assert convert(h5_root, out, lists, "--labeled", "3", "--overwrite") == 0
    assert not marker.exists()
    assert len(list((dataset_dir(out) / "imagesTr").iterdir())) == 3
    assert names(out) == {"Dataset601_LeftAtrium"}


def test_a_split_list_kept_inside_the_dataset_is_not_deleted_by_overwrite(h5_root, lists, tmp_path, capsys):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--labeled", "2") == 0
    kept = dataset_dir(out) / "my_train.list"
    kept.write_bytes(lists["train"].read_bytes())
    capsys.readouterr()
    assert convert(h5_root, out, {**lists, "train": kept}, "--labeled", "3", "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"the input {kept} lies inside {dataset_dir(out)}" in err and "nothing was changed" in err
    assert kept.read_bytes() == lists["train"].read_bytes()
    assert len(list((dataset_dir(out) / "imagesTr").iterdir())) == 2


def test_an_image_itk_cannot_write_is_one_line_naming_the_file(h5_root, lists, tmp_path, capsys, monkeypatch):
    import SimpleITK

    def full_disk(image, path, *args):
        raise RuntimeError(f"Exception thrown in SimpleITK ImageFileWriter_Execute: /src/itkNiftiImageIO.cxx:2158:\n"
                           f"ITK ERROR: NiftiImageIO(0x55d): Could not write file: {path}")
    monkeypatch.setattr(SimpleITK, "WriteImage", full_disk)
    assert convert(h5_root, tmp_path / "raw", lists, "--labeled", "2") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception thrown" not in err
    assert "error: cannot write " in err.splitlines()[-1] and "_0000.nii.gz: ITK ERROR: NiftiImageIO" in err
    assert not (tmp_path / "raw" / "Dataset601_LeftAtrium").exists()


def test_failed_run_leaves_existing_dataset_and_no_temporary_folder(h5_root, lists, tmp_path,
                                                                     capsys):
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists, "--labeled", "2") == 0
    marker = dataset_dir(out) / "marker.txt"
    marker.write_text("old")
    corrupt = h5_root / "2018LA_Seg_Training Set" / TRAIN_IDS[5] / "mri_norm2.h5"
    corrupt.write_bytes(b"not an hdf5 file")  # a case in the middle of the run
    capsys.readouterr()

    # two workers: the error travels back from the worker process
    assert convert(h5_root, out, lists, "--labeled", "2", "--overwrite", "-np", "2") == 1
    assert str(corrupt) in capsys.readouterr().err
    assert marker.read_text() == "old"
    assert names(out) == {"Dataset601_LeftAtrium"}

    fresh = tmp_path / "fresh"
    assert convert(h5_root, fresh, lists, "--labeled", "2") == 1
    assert list(fresh.iterdir()) == []


def test_atomic_dataset_dir_on_interrupt(tmp_path):
    target = tmp_path / "Dataset001_X"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dataset_dir(target, overwrite=True) as temporary:
            (temporary / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert names(tmp_path) == {"Dataset001_X"} and names(target) == {"old.txt"}


def test_same_dataset_id_under_other_name_is_refused(h5_root, lists, tmp_path, capsys):
    out = tmp_path / "raw"
    (out / "Dataset601_Other").mkdir(parents=True)
    assert convert(h5_root, out, lists) == 1
    assert "Dataset601_Other" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Errors name the file
# --------------------------------------------------------------------------------------------
def _h5_path(root: Path, case_id: str) -> Path:
    return root / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5"


def _bad_label_value(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[1])
    image, label = case_arrays(1)
    label[0, 0, 0] = 2
    write_h5(path, image, label)
    return path, "label values 2"


def _shape_mismatch(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[0])
    image, label = case_arrays(0)
    write_h5(path, image, label[:, :, :3])
    return path, "shape mismatch"


def _missing_dataset(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[0])
    with h5py.File(path, "w") as h5_file:
        h5_file.create_dataset("img", data=case_arrays(0)[0])
    return path, "no dataset 'image'"


def _missing_file(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[4])  # an unlabelled case
    path.unlink()
    return path, "missing file"


def _unreadable_file(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TEST_IDS[0])
    path.write_bytes(b"\x00garbage")
    return path, "cannot read"


def _image_is_a_group(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[2])
    with h5py.File(path, "w") as h5_file:
        h5_file.create_group("image")
        h5_file.create_dataset("label", data=case_arrays(2)[1])
    return path, "'image' is a group"


def _text_label(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[0])
    with h5py.File(path, "w") as h5_file:
        h5_file.create_dataset("image", data=case_arrays(0)[0])
        h5_file.create_dataset("label", data=np.array([b"abc"]))
    return path, "'label' is a dataset of dtype |S3"


def _nan_intensity(root: Path) -> tuple[Path, str]:
    path = _h5_path(root, TRAIN_IDS[5])  # an unlabelled case
    image, label = case_arrays(5)
    image[1, 2, 3], image[0, 0, 0] = np.nan, np.inf
    write_h5(path, image, label)
    return path, "2 voxel(s) are NaN or infinite"


@pytest.mark.parametrize("break_input", [_bad_label_value, _shape_mismatch, _missing_dataset,
                                         _missing_file, _unreadable_file, _image_is_a_group,
                                         _text_label, _nan_intensity])
def test_h5_errors_name_the_file(h5_root, lists, tmp_path, capsys, break_input):
    path, message = break_input(h5_root)
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not out.exists() or list(out.iterdir()) == []


def _nrrd_path(root: Path, case_id: str, name: str) -> Path:
    return root / "Training Set" / case_id / name


def _nrrd_label_01(root: Path) -> tuple[Path, str]:
    path = _nrrd_path(root, TRAIN_IDS[0], "laendo.nrrd")
    sitk.WriteImage(xyz_to_image(case_arrays(0)[1]), str(path))
    return path, "label values 1 found; expected only 0, 255"


def _nrrd_label_spacing(root: Path) -> tuple[Path, str]:
    path = _nrrd_path(root, TEST_IDS[1], "laendo.nrrd")
    label = xyz_to_image(case_arrays(0)[1] * 255)
    label.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(label, str(path))
    return path, "spacing mismatch"


def _nrrd_label_shape(root: Path) -> tuple[Path, str]:
    path = _nrrd_path(root, TRAIN_IDS[2], "laendo.nrrd")
    sitk.WriteImage(xyz_to_image(case_arrays(0)[1][:5] * 255), str(path))
    return path, "shape (x, y, z) mismatch"


def _nrrd_missing_label(root: Path) -> tuple[Path, str]:
    path = _nrrd_path(root, TRAIN_IDS[0], "laendo.nrrd")
    path.unlink()
    return path, "missing file"


def _nrrd_unreadable_image(root: Path) -> tuple[Path, str]:
    path = _nrrd_path(root, TRAIN_IDS[3], "lgemri.nrrd")
    path.write_bytes(b"NRRD0004\nthis is not a header\n")
    return path, "cannot read"


@pytest.mark.parametrize("break_input", [_nrrd_label_01, _nrrd_label_spacing, _nrrd_label_shape,
                                         _nrrd_missing_label, _nrrd_unreadable_image])
def test_nrrd_errors_name_the_file(nrrd_root, lists, tmp_path, capsys, break_input):
    path, message = break_input(nrrd_root)
    assert convert(nrrd_root, tmp_path / "raw", lists) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def cut_short(path: Path, keep: float = 0.5) -> Path:
    """Keep the first ``keep`` of the file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("case_id, name, compress, keep, message", [
    (TRAIN_IDS[3], "lgemri.nrrd", False, 0.5,
     "the LGE-MRI image {} is damaged: the header promises 8x6x4 voxels of short"),
    (TRAIN_IDS[3], "lgemri.nrrd", True, 0.75,
     "the LGE-MRI image {} is damaged: the gzip stream ends early"),
    (TEST_IDS[0], "laendo.nrrd", False, 0.75,
     "the left-atrium label {} is damaged: the header promises 8x6x4 voxels of unsigned char"),
], ids=["image-raw", "image-gzip", "label-raw"])
def test_truncated_nrrd_is_refused(nrrd_root, lists, tmp_path, capsys, case_id, name, compress,
                                   keep, message):
    path = _nrrd_path(nrrd_root, case_id, name)
    if compress:  # NRRD encoding gzip
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path), True)
    cut_short(path, keep)  # past the text header of these tiny files
    out = tmp_path / "raw"
    assert convert(nrrd_root, out, lists) == 1
    assert message.format(path) in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_unlabelled_nrrd_case_needs_no_label(nrrd_root, lists, tmp_path):
    _nrrd_path(nrrd_root, TRAIN_IDS[-1], "laendo.nrrd").unlink()
    assert convert(nrrd_root, tmp_path / "raw", lists) == 0


def test_listed_ids_absent_from_input(h5_root, lists, tmp_path, capsys):
    lists["train"].write_text("\n".join(TRAIN_IDS + ["GONE01", "GONE02"]) + "\n")
    assert convert(h5_root, tmp_path / "raw", lists) == 1
    err = capsys.readouterr().err
    assert "GONE01, GONE02" in err and str(h5_root / "2018LA_Seg_Training Set") in err


def test_unknown_layout(tmp_path, lists, capsys):
    (tmp_path / "empty" / "Training Set" / "CASE00").mkdir(parents=True)
    assert convert(tmp_path / "empty", tmp_path / "raw", lists) == 1
    err = capsys.readouterr().err
    assert "lgemri.nrrd" in err and "mri_norm2.h5" in err


def test_both_layouts_need_a_choice(h5_root, lists, tmp_path, capsys):
    for index, case_id in enumerate(all_ids()):
        write_nrrd_case(h5_root / "Training Set" / case_id, *case_arrays(index))
    assert convert(h5_root, tmp_path / "raw", lists) == 1
    assert "--layout" in capsys.readouterr().err
    assert convert(h5_root, tmp_path / "raw", lists, "--layout", "nrrd") == 0


# --------------------------------------------------------------------------------------------
# Split helpers and the shipped lists
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labeled, fraction, expected", [
    (None, None, 8), (4, None, 4), (16, None, 16),
    (None, 0.05, 4), (None, 0.1, 8), (None, 0.2, 16), (None, 1.0, 80),
])
def test_resolve_num_labeled(labeled, fraction, expected):
    assert resolve_num_labeled(80, labeled, fraction, default=8) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_worker_count_must_be_positive(h5_root, lists, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(h5_root), "-o", str(tmp_path / "raw"), "-d", "601", "-np", value])
    assert exit_info.value.code == 2
    assert "-np/--num-processes" in capsys.readouterr().err and not (tmp_path / "raw").exists()


@pytest.mark.parametrize("num_train, fraction, expected", [(70, 0.15, 11), (10, 0.05, 1), (30, 0.35, 11)])
def test_labeled_fraction_rounds_half_up_as_written_in_decimal(num_train, fraction, expected):
    # 0.15 * 70 is 10.499999999999998 in binary floating point: half up of the written 10.5 is 11
    assert resolve_num_labeled(num_train, None, fraction, default=8) == expected


@pytest.mark.parametrize("labeled, fraction, message", [
    (0, None, r"--labeled must be between 1 and the number of train cases \(80\), got 0"),
    (81, None, r"between 1 and the number of train cases \(80\), got 81"),
    (None, 0.0, r"--labeled-fraction must be in \(0, 1\], got 0.0"),
    (None, 0.001, "--labeled-fraction 0.001 of 80 train cases rounds to 0 labelled cases"),
    (None, 1.5, r"--labeled-fraction must be in \(0, 1\], got 1.5"),
    (4, 0.1, "give either --labeled or --labeled-fraction, not both"),
])
def test_resolve_num_labeled_errors(labeled, fraction, message):
    with pytest.raises(ConversionError, match=message):
        resolve_num_labeled(80, labeled, fraction, default=8)


def test_make_split_rules():
    split = make_split(["a", "b", "c", "d"], ["t1", "t2"], 2, excluded=["a", "t2"])
    assert (split.labeled, split.unlabeled, split.test) == (("b", "c"), ("d",), ("t1",))
    with pytest.raises(ConversionError, match="both the train list and the test list: b"):
        make_split(["a", "b"], ["b"], 1)


@pytest.mark.parametrize("text, message", [
    ("A\nB\nA\n", "listed twice"),
    ("A\nB C\n", "not usable as a case ID"),
    ("A\nB_seg\n", "reserves names ending in '_seg'"),
    ("# only a comment\n\n", "is empty"),
])
def test_read_case_list_errors(tmp_path, text, message):
    path = tmp_path / "bad.list"
    path.write_text(text)
    with pytest.raises(ConversionError, match=message) as info:
        read_case_list(path)
    assert str(path) in str(info.value)


def test_read_case_list_ignores_a_byte_order_mark(tmp_path):
    path = tmp_path / "windows.list"
    path.write_bytes("A\r\nB\r\n".encode("utf-8-sig"))
    assert read_case_list(path) == ["A", "B"]


def test_same_dataset_id_in_nnunet_preprocessed_is_refused(h5_root, lists, tmp_path, capsys,
                                                          monkeypatch):
    preprocessed = tmp_path / "preprocessed"
    (preprocessed / "Dataset601_Other").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    out = tmp_path / "raw"
    assert convert(h5_root, out, lists) == 1
    err = capsys.readouterr().err
    assert str(preprocessed) in err and "Dataset601_Other" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_read_case_list_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="cannot read the case list"):
        read_case_list(tmp_path / "nope.list")


def test_shipped_uamt_lists():
    train = read_case_list(common.shipped_list("la_uamt_train.list"))
    test = read_case_list(common.shipped_list("la_uamt_test.list"))
    assert len(train) == 80 and len(test) == 20 and not set(train) & set(test)
    shared_train_list = SHARED_DATA / "LA2018_h5_1.25mm" / "train.list"
    if shared_train_list.is_file():
        assert common.shipped_list("la_uamt_train.list").read_bytes() \
            == shared_train_list.read_bytes()


# --------------------------------------------------------------------------------------------
# The real files as distributed
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "LA2018_h5_original_sample").is_dir(),
                    reason="needs ../shared/data/LA2018_h5_original_sample")
def test_real_original_sample(tmp_path):
    root = SHARED_DATA / "LA2018_h5_original_sample"
    case_ids = sorted(p.name for p in (root / "2018LA_Seg_Training Set").iterdir())
    train, test = tmp_path / "train.list", tmp_path / "test.list"
    train.write_text(case_ids[0] + "\n")
    test.write_text(case_ids[1] + "\n")
    out = tmp_path / "raw"
    assert main(["-i", str(root), "-o", str(out), "-d", "601", "--labeled", "1",
                 "--train-list", str(train), "--test-list", str(test), "-np", "1"]) == 0
    dataset = dataset_dir(out)
    for image_path, label_path, case_id in [
            (dataset / "imagesTr" / f"{case_ids[0]}_0000.nii.gz",
             dataset / "labelsTr" / f"{case_ids[0]}.nii.gz", case_ids[0]),
            (dataset / "imagesTs" / f"{case_ids[1]}_0000.nii.gz",
             dataset / "labelsTs" / f"{case_ids[1]}.nii.gz", case_ids[1])]:
        with h5py.File(root / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5", "r") as f:
            source_shape = f["image"].shape
        image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
        assert image.GetSize() == source_shape == label.GetSize()
        assert image.GetSpacing() == (0.625, 0.625, 0.625)
        assert set(np.unique(sitk.GetArrayViewFromImage(label))) == {0, 1}
