"""NIH Pancreas-CT (TCIA) to an nnU-Net raw dataset with the MC-Net or the CoraNet/BCP split.

Source: the Pancreas-CT collection of The Cancer Imaging Archive (Roth et al. 2016), as downloaded:

* CT: one DICOM series per case, three levels deep:
  ``<cases>/PANCREAS_0001/<study>/<series>/*.dcm``, where ``<cases>`` is ``-i`` itself,
  ``-i/Pancreas-CT``, ``-i/Pancreas-CT/Pancreas-CT`` or the NBIA Data Retriever's
  ``-i/manifest-<timestamp>/Pancreas-CT``. The series is read with SimpleITK's
  ``ImageSeriesReader`` (slices sorted by position, rescale slope/intercept applied; every file of
  the series folder must be a slice of it and the slices evenly spaced) and written as int16
  Hounsfield units with the series' geometry.
* labels: ``label0001.nii.gz`` (0 background, 1 pancreas) in ``--labels DIR`` (default: the first
  of ``-i/TCIA_pancreas_labels-02-05-2017``, the same folder nested twice as the zip unpacks, and
  ``-i`` itself that holds ``label*.nii.gz`` files).

Case IDs. The shipped lists hold the four-digit TCIA case number, ``0001``; it names the folder
``PANCREAS_0001``, the label ``label0001.nii.gz``, MC-Net's ``image0001`` and CoraNet's
``0001.h5``. Lists given with ``--train-list``/``--test-list``/``--exclude-list`` may use any of
these spellings (``1``, ``0001``, ``PANCREAS_0001``, ``pancreas_0001``, ``image0001``,
``label0001``, ``0001.h5``). The nnU-Net case ID is ``pancreas_0001``
(``imagesTr/pancreas_0001_0000.nii.gz``).

Splits (``--split``; shipped in ``splits/``, sources in their header lines):

* ``mcnet`` (default; MC-Net and the methods compared with it): 62 train / 20 test from
  github.com/ycwu1997/MC-Net ``data/Pancreas/{train,test}.list``. These lists cover all 82
  original cases, including the duplicates 0070 (train) and 0025 (test).
* ``coranet`` (CoraNet, BCP): 62 train (``train_lab.txt``, 12 cases, then ``train_unlab.txt``,
  50) / 18 test from github.com/koncle/CoraNet ``data_lists/pancreas/``; no duplicates.

Labelled = the first N train cases (``--labeled``, default 6, about 10 %; ``--labeled-fraction 0.2``
gives 12, CoraNet's labelled set), unlabelled = the rest, test = the test list. Cases 0025 and 0070
duplicate other cases of the original 82-case release (TCIA's current release of 80 leaves them
out) and are excluded from every role unless ``--keep-duplicates`` is given; with ``mcnet`` that
leaves 61 train / 19 test cases (and ``--labeled 12`` then takes image0048 in place of image0070).
Every listed case must be present in the input; a missing one is an error.

Label alignment (``--label-alignment``). The label NIfTI files are stored on the DICOM voxel grid,
but their header geometry (origin, direction) need not agree with the DICOM's, and their slice
axis follows the DICOM InstanceNumber order, which may run against the slice positions the series
reader sorts by. Policy:

* ``strict``: the label's size, spacing, origin and direction must equal the image's (within
  tolerance); otherwise an error names both files with their sizes, spacings and origins.
* ``header``: as ``strict``, but a label whose header describes the same grid with its axes
  permuted or reversed (stored with flipped z, or as (y, x, z)) is reoriented onto the image grid.
* ``auto`` (default): as ``header``, and a header on the image's grid but for an origin less than half
  a voxel off is used as stored (a label from another pipeline); otherwise the label is read by
  the convention the TCIA files follow (and MC-Net's, CoraNet's and OrganSegRSTN's
  preprocessing rely on): voxel (i, j, k) = column i, row j of the k-th DICOM slice in
  InstanceNumber order. This needs the label's size and spacing to equal the image's, and the
  InstanceNumbers to run with or against the slice positions (then the label's slice axis is
  reversed); the label gets the image's geometry.

What happened to each case is recorded in ``dataset.json`` under
``conversion.source.label_alignment``. Size or spacing mismatches are always errors.

Output ``<nnUNet_raw>/DatasetXXX_<name>/``: ``imagesTr`` + ``labelsTr`` (labelled),
``imagesUnlabeled`` (unlabelled), ``imagesTs`` + ``labelsTs`` (test), ``dataset.json`` (split
under ``ssl_split``). Written to a temporary sibling folder and moved into place when complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ccesemi.parallel import run_jobs

from .common import (NIFTI_ENDING, ConversionError, Split, add_output_arguments,
                     add_split_arguments, atomic_dataset_dir, check_dataset_id_free,
                     check_label_values, check_scalar_volume,
                     dataset_folder_name, option_files, describe_list, make_split, name_files, read_case_list,
                     read_image, resolve_num_labeled, resolve_output_root,
                     shipped_list, subfolders, write_dataset_json, write_image, run_converter)

CONVERTER = "nnunet_ccesemi.dataset_conversion.convert_pancreas"
CONVERTER_VERSION = "1.0"
PROG = "nnUNetv2_ccesemi_convert_pancreas"
DEFAULT_LABELED = 6

SPLIT_LISTS = {"mcnet": ("pancreas_mcnet_train.list", "pancreas_mcnet_test.list"),
               "coranet": ("pancreas_coranet_train.list", "pancreas_coranet_test.list")}
DUPLICATES = ("0025", "0070")
CASES_DIR_CANDIDATES = ("", "Pancreas-CT", "Pancreas-CT/Pancreas-CT")
LABELS_DIR_CANDIDATES = ("TCIA_pancreas_labels-02-05-2017",
                         "TCIA_pancreas_labels-02-05-2017/TCIA_pancreas_labels-02-05-2017", "")
ALIGNMENT_POLICIES = ("auto", "header", "strict")

# accepted spellings of a case in a list: 1, 0001, PANCREAS_0001, image0001, label0001, 0001.h5
_LIST_ID = re.compile(r"^(?:pancreas_|image|label)?(\d{1,4})(?:_norm)?(?:\.h5)?$", re.IGNORECASE)
_CASE_FOLDER = re.compile(r"^PANCREAS_\d{4}$")
_INT16 = np.iinfo(np.int16)

CHANNEL_NAMES = {"0": "CT"}
LABELS = {"background": 0, "pancreas": 1}
REFERENCE = ("Roth et al., Data from Pancreas-CT, The Cancer Imaging Archive, 2016, "
             "doi:10.7937/K9/TCIA.2016.tNB1kqBU")


@dataclasses.dataclass(frozen=True)
class CaseJob:
    """One case to convert; ``label_path``/``label_out`` are None for an unlabelled case."""

    case_id: str
    series_dir: Path
    label_path: Path | None
    image_out: Path
    label_out: Path | None
    alignment: str


# --------------------------------------------------------------------------------------------
# Case IDs and the split
# --------------------------------------------------------------------------------------------
def case_number(text: str, source: Path) -> str:
    """The four-digit case number of a list entry (``image0001``, ``0001.h5``... -> ``0001``)."""
    match = _LIST_ID.match(text)
    if not match or int(match.group(1)) == 0:
        raise ConversionError(f"{source}: {text!r} is not a Pancreas-CT case (expected e.g. 0001, "
                              f"PANCREAS_0001, image0001 or 0001.h5)")
    return f"{int(match.group(1)):04d}"


def read_case_numbers(path: Path) -> list[str]:
    """A case list as four-digit numbers; two spellings of one case are an error."""
    numbers = [case_number(entry, path) for entry in read_case_list(path)]
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        raise ConversionError(f"{path}: case(s) {', '.join(repeated)} listed twice (in different "
                              f"spellings)")
    return numbers


def nnunet_case_id(number: str) -> str:
    """``0001`` -> ``pancreas_0001``."""
    return f"pancreas_{number}"


def build_split(args: argparse.Namespace) -> tuple[Split, dict]:
    """The split (in nnU-Net case IDs) from the shipped or given lists, and how it was made."""
    train_name, test_name = SPLIT_LISTS[args.split]
    train_list = Path(args.train_list) if args.train_list else shipped_list(train_name)
    test_list = Path(args.test_list) if args.test_list else shipped_list(test_name)
    exclude_list = Path(args.exclude_list) if args.exclude_list else None
    train, test = read_case_numbers(train_list), read_case_numbers(test_list)
    duplicates = [] if args.keep_duplicates else list(DUPLICATES)
    excluded = list(dict.fromkeys(duplicates + (read_case_numbers(exclude_list)
                                                if exclude_list else [])))
    num_train = len(set(train) - set(excluded))
    num_labeled = resolve_num_labeled(num_train, args.labeled, args.labeled_fraction,
                                      DEFAULT_LABELED)
    split = make_split([nnunet_case_id(n) for n in train], [nnunet_case_id(n) for n in test],
                       num_labeled, [nnunet_case_id(n) for n in excluded])
    info = {"split": args.split,
            "rule": f"labeled = the first {num_labeled} cases of the train list (after "
                    f"exclusions), unlabeled = the rest of it",
            "labeled_fraction": args.labeled_fraction,
            "duplicates_excluded": [nnunet_case_id(n) for n in duplicates],
            "case_ids": "pancreas_NNNN = folder PANCREAS_NNNN = labelNNNN.nii.gz = MC-Net's "
                        "imageNNNN = CoraNet's NNNN.h5",
            "train_list": describe_list(train_list), "test_list": describe_list(test_list),
            "exclude_list": describe_list(exclude_list)}
    return split, info


# --------------------------------------------------------------------------------------------
# Input layout
# --------------------------------------------------------------------------------------------
def find_cases_dir(root: Path) -> Path:
    """The folder holding the ``PANCREAS_NNNN`` case folders."""
    if not root.is_dir():
        raise ConversionError(f"the input folder {root} does not exist")
    # the NBIA Data Retriever writes <destination>/manifest-<timestamp>/Pancreas-CT/PANCREAS_NNNN/... and its
    # command-line version 4 <destination>/<manifest file name>/Pancreas-CT/... (Pancreas-CT-20200910)
    candidates = [root / name if name else root for name in CASES_DIR_CANDIDATES]
    candidates += sorted(folder for folder in root.glob("*/Pancreas-CT") if folder not in candidates)
    found = [folder for folder in candidates
             if folder.is_dir() and any(p.is_dir() and _CASE_FOLDER.match(p.name) for p in folder.iterdir())]
    if not found:
        raise ConversionError(f"no Pancreas-CT cases found in {root}: expected case folders "
                              f"PANCREAS_NNNN/<study>/<series>/*.dcm in it, in {root / 'Pancreas-CT'} "
                              f"or in {root / '*' / 'Pancreas-CT'} (the NBIA Data Retriever's manifest-* "
                              f"or Pancreas-CT-<date> folder)")
    if len(found) > 1:
        raise ConversionError(f"case folders PANCREAS_NNNN in several places "
                              f"({', '.join(map(str, found))}); pass the one to use as -i")
    return found[0]


def find_labels_dir(root: Path, labels: str | None) -> Path:
    """``--labels`` if given, else the first default folder that holds ``label*.nii.gz``."""
    if labels is not None:
        folder = Path(labels).absolute()
        if not folder.is_dir():
            raise ConversionError(f"the label folder {folder} (--labels) does not exist")
        return folder
    candidates = [root / name if name else root for name in LABELS_DIR_CANDIDATES]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob(f"label*{NIFTI_ENDING}")):
            return folder
    raise ConversionError(f"no label files label*{NIFTI_ENDING} found in "
                          f"{', '.join(map(str, candidates))}; pass their folder with --labels")


def case_folder(cases_dir: Path, case_id: str) -> Path:
    """``pancreas_0001`` -> ``<cases>/PANCREAS_0001``."""
    return cases_dir / f"PANCREAS_{case_id.rsplit('_', 1)[1]}"


def label_file(labels_dir: Path, case_id: str) -> Path:
    """``pancreas_0001`` -> ``<labels>/label0001.nii.gz``."""
    return labels_dir / f"label{case_id.rsplit('_', 1)[1]}{NIFTI_ENDING}"


def find_series_dir(case_dir: Path) -> Path:
    """The one series folder of a case: ``PANCREAS_NNNN/<study>/<series>/``.

    Raises:
        ConversionError: no series folder with files, or several (the converter cannot choose).
    """
    series_dirs = [series for study in subfolders(case_dir) for series in subfolders(study)
                   if any(f.is_file() for f in series.iterdir())]
    if not series_dirs:
        raise ConversionError(f"no DICOM series in {case_dir}: expected "
                              f"{case_dir.name}/<study>/<series>/*.dcm")
    if len(series_dirs) > 1:
        raise ConversionError(f"several series folders in {case_dir}: "
                              f"{name_files(series_dirs)}; expected one")
    return series_dirs[0]


def check_cases_present(split: Split, cases_dir: Path, labels_dir: Path) -> dict[str, Path]:
    """The series folder of every case; absent cases and missing labels are errors.

    Raises:
        ConversionError: case folders absent (all named), a label missing (the first ten
            named), or a case folder that is not one DICOM series three levels deep.
    """
    all_ids = split.labeled + split.unlabeled + split.test
    absent = [i for i in all_ids if not case_folder(cases_dir, i).is_dir()]
    if absent:
        hint = ""
        if {nnunet_case_id(n) for n in DUPLICATES} & set(absent):
            hint = (" (TCIA's current release leaves out the duplicates 0025 and 0070: drop "
                    "--keep-duplicates or add them to --exclude-list)")
        raise ConversionError(f"{len(absent)} case(s) of the split are not in {cases_dir}: "
                              f"{', '.join(case_folder(cases_dir, i).name for i in absent)}{hint}")
    missing = [str(label_file(labels_dir, i)) for i in split.labeled + split.test
               if not label_file(labels_dir, i).is_file()]
    if missing:
        raise ConversionError(f"missing pancreas label file(s): {name_files(missing)}")
    return {i: find_series_dir(case_folder(cases_dir, i)) for i in all_ids}


# --------------------------------------------------------------------------------------------
# Reading one case
# --------------------------------------------------------------------------------------------
def read_dicom_series(series_dir: Path) -> tuple[sitk.Image, str]:
    """The CT in int16 HU and how InstanceNumber runs along the sorted slices.

    The order is ``"ascending"`` or ``"descending"`` (InstanceNumber against slice position),
    ``"unordered"`` or ``"missing"``.
    """
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(series_dir))
    if not series_ids:
        raise ConversionError(f"no readable DICOM series in {series_dir}")
    if len(series_ids) > 1:
        raise ConversionError(f"{series_dir} holds {len(series_ids)} DICOM series "
                              f"({', '.join(series_ids)}); expected one")
    files = reader.GetGDCMSeriesFileNames(str(series_dir), series_ids[0])
    check_all_files_read(series_dir, files)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice tags, for InstanceNumber
    try:
        image = reader.Execute()
    except RuntimeError as e:
        message = [line for line in str(e).splitlines() if line.strip()]
        raise ConversionError(f"cannot read the DICOM series {series_dir}: "
                              f"{message[-1].strip() if message else e}") from e
    check_scalar_volume(image, series_dir)
    check_uniform_slices(reader, image, series_dir)
    return to_int16_hu(image, series_dir), instance_order(reader, len(files))


def looks_like_dicom(path: Path) -> bool:
    """A ``.dcm`` name or the DICOM preamble's ``DICM`` at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def check_all_files_read(series_dir: Path, files: Sequence[str]) -> None:
    """GDCM leaves out files it cannot read; a left-out slice would go unnoticed otherwise.

    Files that are neither named nor built as DICOM (the ``LICENSE`` that newer NBIA Data
    Retriever downloads put beside the slices, notes, checksums) are not slices and are skipped."""
    in_series = {Path(f).name for f in files}
    others = sorted(p.name for p in series_dir.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.name not in in_series
                    and looks_like_dicom(p))
    if others:
        raise ConversionError(f"{series_dir}: {name_files(others)} not readable as slices of "
                              f"its DICOM series ({len(in_series)} other files are)")


def check_uniform_slices(reader: sitk.ImageSeriesReader, image: sitk.Image,
                         series_dir: Path) -> None:
    """Equal steps between slice positions (0020|0032) along the slice normal and none across it: a gap
    means a missing slice, an offset across a sheared (gantry-tilted) grid."""
    key = "0020|0032"
    num_slices = image.GetSize()[2]
    if num_slices < 3 or not all(reader.HasMetaDataKey(i, key) for i in range(num_slices)):
        return
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, key).split("\\")]
                              for i in range(num_slices)])
    except ValueError:
        return  # unparsable positions: the reader's own spacing stands
    if positions.shape != (num_slices, 3):
        return
    offsets = np.diff(positions, axis=0)
    steps = offsets @ normal
    across = np.linalg.norm(offsets - np.outer(steps, normal), axis=1)
    if across.max() > 0.01 * abs(np.median(steps)):
        # a gantry-tilted acquisition: the slices are sheared, which one direction matrix cannot say
        raise ConversionError(f"{series_dir}: each slice is offset up to {across.max():.3g} mm across the "
                              f"slice normal (a gantry tilt, tag 0018|1120?): the series is not on a "
                              f"rectilinear grid; resample it to one (e.g. with dcm2niix) first")
    if np.ptp(steps) > 0.01 * abs(np.median(steps)):
        raise ConversionError(f"{series_dir}: slice positions are not evenly spaced (steps "
                              f"{steps.min():.4g} to {steps.max():.4g} mm): a slice is missing "
                              f"or the folder mixes series")


def instance_order(reader: sitk.ImageSeriesReader, num_slices: int) -> str:
    """Whether InstanceNumber (0020|0013) rises or falls along the position-sorted slices."""
    key = "0020|0013"
    if num_slices < 2 or not all(reader.HasMetaDataKey(i, key) for i in range(num_slices)):
        return "missing"
    try:
        numbers = [int(reader.GetMetaData(i, key).strip()) for i in range(num_slices)]
    except ValueError:
        return "missing"
    steps = np.diff(numbers)
    if np.all(steps > 0):
        return "ascending"
    if np.all(steps < 0):
        return "descending"
    return "unordered"


def to_int16_hu(image: sitk.Image, series_dir: Path) -> sitk.Image:
    """int16, rounding a float series; values outside int16 are an error, not clipped."""
    array = sitk.GetArrayViewFromImage(image)
    if array.size and (array.min() < _INT16.min or array.max() > _INT16.max):
        raise ConversionError(f"{series_dir}: values {array.min()}..{array.max()} do not fit "
                              f"int16 HU")
    if image.GetPixelID() == sitk.sitkInt16:
        return image
    converted = sitk.GetImageFromArray(np.rint(array).astype(np.int16))
    converted.CopyInformation(image)
    return converted


def grid_mismatches(image: sitk.Image, label: sitk.Image) -> list[str]:
    """What differs between the two grids (tolerances as in ``check_same_grid``)."""
    checks = (("size", label.GetSize() == image.GetSize()),
              ("spacing", np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-4, atol=0)),
              ("origin", np.allclose(label.GetOrigin(), image.GetOrigin(), rtol=0, atol=1e-3)),
              ("direction", np.allclose(label.GetDirection(), image.GetDirection(), rtol=0,
                                        atol=1e-4)))
    return [what for what, agree in checks if not agree]


def origin_offset_within_half_voxel(image: sitk.Image, label: sitk.Image) -> float | None:
    """The distance (mm) between the origins when the grids agree but for an origin less than half the
    smallest voxel spacing off; None otherwise."""
    if grid_mismatches(image, label) != ["origin"]:
        return None
    offset = float(np.linalg.norm(np.subtract(label.GetOrigin(), image.GetOrigin())))
    return offset if offset < 0.5 * min(image.GetSpacing()) else None


def _describe(image: sitk.Image) -> str:
    def rounded(values):
        return tuple(round(float(v), 4) for v in values)
    return (f"size {image.GetSize()}, spacing {rounded(image.GetSpacing())}, "
            f"origin {rounded(image.GetOrigin())}")


def grid_error(image: sitk.Image, label: sitk.Image, series_dir: Path, label_path: Path,
               reason: str) -> ConversionError:
    """A mismatch error naming both files with their sizes, spacings and origins."""
    return ConversionError(f"the label {label_path} ({_describe(label)}) does not fit the image "
                           f"{series_dir} ({_describe(image)}): {reason}")


def header_axis_mapping(image: sitk.Image,
                        label: sitk.Image) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """For each image axis, the label axis along the same direction and whether it is reversed.

    None if the label's axes are not those of the image, up to order and sign.
    """
    image_axes = np.array(image.GetDirection()).reshape(3, 3)  # column a = direction of axis a
    label_axes = np.array(label.GetDirection()).reshape(3, 3)
    dots = image_axes.T @ label_axes                            # [image axis, label axis]
    permutation, flips = [], []
    for a in range(3):
        b = int(np.argmax(np.abs(dots[a])))
        if abs(abs(dots[a, b]) - 1.0) > 1e-4:
            return None
        permutation.append(b)
        flips.append(bool(dots[a, b] < 0))
    if sorted(permutation) != [0, 1, 2]:
        return None
    return tuple(permutation), tuple(flips)


def reorient_label(label: sitk.Image, permutation: Sequence[int],
                   flips: Sequence[bool]) -> sitk.Image:
    """The label with its axes reordered and reversed, every voxel kept at its physical place."""
    array_xyz = sitk.GetArrayFromImage(label).transpose(2, 1, 0).transpose(permutation)
    for axis, flip in enumerate(flips):
        if flip:
            array_xyz = np.flip(array_xyz, axis)
    result = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    size = label.GetSize()
    spacing = label.GetSpacing()
    label_axes = np.array(label.GetDirection()).reshape(3, 3)
    corner = [0, 0, 0]  # the label index that becomes index (0, 0, 0)
    for source, flip in zip(permutation, flips):
        corner[source] = size[source] - 1 if flip else 0
    result.SetSpacing([spacing[source] for source in permutation])
    result.SetOrigin(label.TransformIndexToPhysicalPoint(corner))
    directions = np.stack([label_axes[:, source] * (-1.0 if flip else 1.0)
                           for source, flip in zip(permutation, flips)], axis=1)
    result.SetDirection(directions.flatten().tolist())
    return result


def _axes_note(permutation: Sequence[int], flips: Sequence[bool]) -> str:
    names = "xyz"
    order = "".join(names[p] for p in permutation)
    flipped = "".join(names[a] for a, f in enumerate(flips) if f) or "none"
    return f"reoriented by its header (label axes {order} -> image xyz, reversed: {flipped})"


def align_by_index_convention(image: sitk.Image, label: sitk.Image, order: str, series_dir: Path,
                              label_path: Path) -> tuple[sitk.Image, str]:
    """The TCIA convention: label voxel (i, j, k) = column i, row j of the k-th slice by
    InstanceNumber."""
    if label.GetSize() != image.GetSize():
        raise grid_error(image, label, series_dir, label_path, "the sizes differ")
    if not np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-4, atol=0):
        raise grid_error(image, label, series_dir, label_path, "the spacings differ")
    if order not in ("ascending", "descending"):
        raise grid_error(image, label, series_dir, label_path,
                         f"the label header does not describe the image grid and the "
                         f"InstanceNumbers are {order}, so the slice order is unknown")
    array = sitk.GetArrayFromImage(label)  # (z, y, x)
    if order == "descending":
        array = array[::-1]
    aligned = sitk.GetImageFromArray(np.ascontiguousarray(array))
    aligned.CopyInformation(image)
    how = "slice axis reversed" if order == "descending" else "slice axis kept"
    return aligned, (f"header geometry ignored; label on the DICOM grid in InstanceNumber order "
                     f"({how})")


def align_label(image: sitk.Image, label: sitk.Image, order: str, policy: str, series_dir: Path,
                label_path: Path) -> tuple[sitk.Image, str]:
    """The label on the image's grid by ``policy``, and a note of what was done."""
    mismatches = grid_mismatches(image, label)
    if not mismatches:
        return label, "as stored"
    candidates = [(label, "as stored")]
    mapping = header_axis_mapping(image, label) if policy != "strict" else None
    if mapping is not None and mapping != ((0, 1, 2), (False, False, False)):
        reoriented = reorient_label(label, *mapping)
        if not grid_mismatches(image, reoriented):
            return reoriented, _axes_note(*mapping)
        candidates.append((reoriented, _axes_note(*mapping)))
    if policy == "auto":
        # a header that places the label on the image's grid but for an origin a fraction of a voxel
        # off is the image's frame (a label from another pipeline), not TCIA's origin-0 convention
        for candidate, how in candidates:
            offset = origin_offset_within_half_voxel(image, candidate)
            if offset is not None:
                return candidate, f"{how}; its origin {offset:.3g} mm from the image's (under half a voxel)"
        return align_by_index_convention(image, label, order, series_dir, label_path)
    raise grid_error(image, label, series_dir, label_path,
                     f"mismatch in {', '.join(mismatches)} (--label-alignment {policy})")


def read_label(label_path: Path) -> sitk.Image:
    """The label as uint8 0/1."""
    label = read_image(label_path, "pancreas label")
    check_scalar_volume(label, label_path)
    array = sitk.GetArrayViewFromImage(label)
    check_label_values(array, (0, 1), label_path)
    binary = sitk.GetImageFromArray(array.astype(np.uint8))
    binary.CopyInformation(label)
    return binary


def convert_case(job: CaseJob) -> tuple[str, tuple[int, ...], str | None]:
    """Read, check and write one case; returns its ID, size (x, y, z) and alignment note."""
    image, order = read_dicom_series(job.series_dir)
    note = None
    if job.label_path is not None:
        label = read_label(job.label_path)
        label, note = align_label(image, label, order, job.alignment, job.series_dir,
                                  job.label_path)
        label.CopyInformation(image)  # within tolerance of the label's own; make it exact
    write_image(image, job.image_out)
    if job.label_out is not None:
        write_image(label, job.label_out)
    return job.case_id, image.GetSize(), note


def make_jobs(split: Split, series_dirs: dict[str, Path], labels_dir: Path, out_dir: Path,
              alignment: str) -> list[CaseJob]:
    """One job per case, into imagesTr/labelsTr, imagesUnlabeled or imagesTs/labelsTs."""
    def job(case_id: str, images: str, labels: str | None) -> CaseJob:
        return CaseJob(case_id=case_id, series_dir=series_dirs[case_id],
                       label_path=label_file(labels_dir, case_id) if labels else None,
                       image_out=out_dir / images / f"{case_id}_0000{NIFTI_ENDING}",
                       label_out=out_dir / labels / f"{case_id}{NIFTI_ENDING}" if labels else None,
                       alignment=alignment)
    return ([job(i, "imagesTr", "labelsTr") for i in split.labeled]
            + [job(i, "imagesUnlabeled", None) for i in split.unlabeled]
            + [job(i, "imagesTs", "labelsTs") for i in split.test])


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True,
                        help="folder holding the PANCREAS_NNNN case folders (or Pancreas-CT/)")
    parser.add_argument("--labels", default=None, metavar="DIR",
                        help="folder holding labelNNNN.nii.gz (default: "
                             "<input>/TCIA_pancreas_labels-02-05-2017 or <input>)")
    parser.add_argument("--split", choices=sorted(SPLIT_LISTS), default="mcnet",
                        help="shipped split: mcnet (62/20) or coranet (62/18) (default: mcnet)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="convert the duplicate cases 0025 and 0070 (left out by default)")
    parser.add_argument("--label-alignment", choices=ALIGNMENT_POLICIES, default="auto",
                        help="how a label whose header differs from the DICOM grid is placed "
                             "(default: auto; see above)")
    add_output_arguments(parser, default_name="PancreasCT")
    add_split_arguments(parser, default_labeled=DEFAULT_LABELED)
    return parser


def convert(args: argparse.Namespace, command: str) -> dict:
    """Check everything, convert into a temporary folder, move it into place; return counts."""
    root = Path(args.input).absolute()
    cases_dir = find_cases_dir(root)
    labels_dir = find_labels_dir(root, args.labels)
    split, split_info = build_split(args)
    series_dirs = check_cases_present(split, cases_dir, labels_dir)
    output_root = resolve_output_root(args.output_root)
    folder_name = dataset_folder_name(args.dataset_id, args.name)
    check_dataset_id_free(output_root, folder_name)
    target = output_root / folder_name
    with atomic_dataset_dir(target, overwrite=args.overwrite,
                            sources=[root, labels_dir, *option_files(args)]) as out_dir:
        for folder in ["imagesTr", "labelsTr", "imagesUnlabeled"] + (
                ["imagesTs", "labelsTs"] if split.test else []):
            (out_dir / folder).mkdir()
        jobs = make_jobs(split, series_dirs, labels_dir, out_dir, args.label_alignment)
        results = run_jobs(convert_case, jobs, num_processes=args.num_processes, description=folder_name)
        alignment = {case_id: note for case_id, _, note in results if note is not None}
        write_dataset_json(
            out_dir, channel_names=CHANNEL_NAMES, labels=LABELS, split=split,
            split_info=split_info,
            source={"dataset": "NIH Pancreas-CT (TCIA)", "root": str(root),
                    "cases_dir": str(cases_dir), "labels_dir": str(labels_dir),
                    "image": "DICOM series read with SimpleITK ImageSeriesReader (sorted by "
                             "slice position), int16 HU, the series' geometry",
                    "label_alignment": {"policy": args.label_alignment, "cases": alignment}},
            converter=CONVERTER, converter_version=CONVERTER_VERSION, command=command,
            dataset_name=folder_name, reference=REFERENCE,
            licence="TCIA Pancreas-CT: CC BY 3.0, see its terms of use",
            description="Pancreas segmentation from contrast-enhanced CT, semi-supervised split "
                        "(imagesUnlabeled holds the unlabelled cases)")
    reoriented = sum(note != "as stored" for note in alignment.values())
    return {"dataset": str(target), "labeled": len(split.labeled),
            "unlabeled": len(split.unlabeled), "test": len(split.test),
            "excluded": len(split.excluded), "reoriented": reoriented}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``nnUNetv2_ccesemi_convert_pancreas``; returns the exit status."""
    return run_converter(PROG, build_parser(), convert, argv,
                         (lambda c: f"{c['labeled']} labelled (imagesTr/labelsTr), {c['unlabeled']} unlabelled "
                         f"(imagesUnlabeled), {c['test']} test (imagesTs/labelsTs), {c['excluded']} excluded; "
                         f"{c['reoriented']} label(s) not used as stored (see dataset.json "
                         f"conversion.source.label_alignment)"))


if __name__ == "__main__":
    sys.exit(main())
