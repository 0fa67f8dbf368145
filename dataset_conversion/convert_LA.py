"""Left Atrium 2018 (LGE-MRI) to an nnU-Net raw dataset with the UA-MT semi-supervised split.

Source: the 2018 Atrial Segmentation Challenge training set (Xiong et al., Medical Image Analysis
2021), in either of the two layouts it circulates in (detected; ``--layout`` forces one):

* challenge: ``<root>/Training Set/<ID>/lgemri.nrrd`` + ``laendo.nrrd`` (labels 0/255 mapped to
  0/1; spacing, origin and direction are taken from the files, 0.625 mm);
* UA-MT h5: ``<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` with datasets ``image``
  (float32, z-scored, cropped) and ``label`` (uint8, 0/1), array axes (x, y, z). The files store
  no geometry: spacing from ``--spacing`` (default 0.625 mm), origin 0, identity direction.

(The case folder may also be ``<root>/2018LA_Seg_Training Set`` for nrrd files, or ``<root>``
itself.)

Split (UA-MT, followed by SASSNet, DTC, MC-Net, SS-Net, BCP): the shipped lists
``splits/la_uamt_train.list`` (80 cases) and ``splits/la_uamt_test.list`` (20 cases) from
github.com/yulequan/UA-MT ``data/``. Labelled = the first N train cases (``--labeled``, default 8;
or ``--labeled-fraction`` 0.05 / 0.1 / 0.2 for 4 / 8 / 16), unlabelled = the other train cases,
test = the test cases present in the input (absent ones are skipped with a notice; absent
labelled or unlabelled cases are an error).

Output ``<nnUNet_raw>/DatasetXXX_<name>/``: ``imagesTr/<ID>_0000.nii.gz`` + ``labelsTr/<ID>.nii.gz``
(labelled), ``imagesUnlabeled/<ID>_0000.nii.gz`` (unlabelled), ``imagesTs`` + ``labelsTs``
(test, when any is present), ``dataset.json`` with ``numUnlabeled`` and the split under
``ssl_split``. Written to a temporary sibling folder and moved into place when complete.

Development protocol (held-back test cases that no training run reads, not even unlabelled)::

    head -n 68 train.list > dev_train.list   # 8 labelled + 60 unlabelled
    tail -n 12 train.list > dev_test.list    # held-back test set -> imagesTs/labelsTs
    nnUNetv2_ccesemi_convert_LA -i LA2018_h5_1.25mm -d 601 --name LA125dev --spacing 1.25 \\
        --labeled 8 --train-list dev_train.list --test-list dev_test.list

To leave cases out altogether (not converted, recorded as ``excluded``), use ``--exclude-list``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import SimpleITK as sitk

from nnunet_ccesemi.parallel import run_jobs

from .common import (NIFTI_ENDING, ConversionError, Split, add_output_arguments,
                     add_split_arguments, atomic_dataset_dir, check_dataset_id_free,
                     check_finite, check_label_values, check_same_grid, check_scalar_volume,
                     dataset_folder_name, option_files, describe_list, make_split, name_files, read_case_list,
                     read_image,
                     resolve_num_labeled, resolve_output_root, shipped_list,
                     subfolders, write_dataset_json, write_image, run_converter)

CONVERTER = "nnunet_ccesemi.dataset_conversion.convert_LA"
CONVERTER_VERSION = "1.0"
PROG = "nnUNetv2_ccesemi_convert_LA"
DEFAULT_LABELED = 8
DEFAULT_H5_SPACING = 0.625
UA_MT_SLICES = 88  # z extent of every UA-MT mri_norm2.h5 (the challenge scans' 88 slices, never cropped)

H5_FILE = "mri_norm2.h5"
NRRD_IMAGE = "lgemri.nrrd"
NRRD_LABEL = "laendo.nrrd"
CASE_FOLDER_NAMES = ("Training Set", "2018LA_Seg_Training Set", "")  # "" = the root itself
MARKER_FILES = {"nrrd": NRRD_IMAGE, "h5": H5_FILE}

CHANNEL_NAMES = {"0": "LGE-MRI"}
LABELS = {"background": 0, "left_atrium": 1}
REFERENCE = ("Xiong et al., A global benchmark of algorithms for segmenting the left atrium from "
             "late gadolinium-enhanced cardiac MRI, Medical Image Analysis 67, 2021")


@dataclasses.dataclass(frozen=True)
class SourceLayout:
    """Where the cases are and how they are stored (``kind`` is ``"h5"`` or ``"nrrd"``)."""

    kind: str
    cases_dir: Path


@dataclasses.dataclass(frozen=True)
class CaseJob:
    """One case to convert; ``label_out`` is None for an unlabelled case (label not read)."""

    case_id: str
    kind: str
    case_dir: Path
    image_out: Path
    label_out: Path | None
    spacing: tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Input layout
# --------------------------------------------------------------------------------------------
def _kinds_in(cases_dir: Path) -> set[str]:
    """Layouts with at least one case folder holding their marker file."""
    case_dirs = subfolders(cases_dir)
    return {kind for kind, marker in MARKER_FILES.items()
            if any((case_dir / marker).is_file() for case_dir in case_dirs)}


def detect_layout(root: Path, forced_kind: str | None = None) -> SourceLayout:
    """Find the case folder and whether it holds h5 or nrrd files.

    Raises:
        ConversionError: no layout found, or several (then ``--layout`` must choose).
    """
    if not root.is_dir():
        raise ConversionError(f"the input folder {root} does not exist")
    found = []
    for folder_name in CASE_FOLDER_NAMES:
        cases_dir = root / folder_name if folder_name else root
        if cases_dir.is_dir():
            found += [SourceLayout(kind, cases_dir) for kind in sorted(_kinds_in(cases_dir))]
    if forced_kind is not None:
        found = [layout for layout in found if layout.kind == forced_kind]
    if not found:
        wanted = {"nrrd": f"'Training Set/<ID>/{NRRD_IMAGE}' (challenge layout)",
                  "h5": f"'2018LA_Seg_Training Set/<ID>/{H5_FILE}' (UA-MT h5 layout)"}
        expected = " or ".join(v for k, v in wanted.items() if forced_kind in (None, k))
        raise ConversionError(f"no Left Atrium cases found in {root}: expected {expected} "
                              f"under it")
    if len(found) > 1:
        options = "; ".join(f"{layout.kind} in {layout.cases_dir}" for layout in found)
        raise ConversionError(f"several Left Atrium layouts found in {root} ({options}); "
                              f"choose one with --layout h5|nrrd (and -i)")
    return found[0]


def required_files(kind: str, case_dir: Path, with_label: bool) -> list[Path]:
    """The source files a case needs."""
    if kind == "h5":
        return [case_dir / H5_FILE]
    return [case_dir / NRRD_IMAGE] + ([case_dir / NRRD_LABEL] if with_label else [])


# --------------------------------------------------------------------------------------------
# Reading one case
# --------------------------------------------------------------------------------------------
def _h5_array(h5_file: h5py.File, key: str, path: Path) -> np.ndarray:
    if key not in h5_file:
        found = ", ".join(h5_file.keys()) or "none"
        raise ConversionError(f"{path} has no dataset '{key}' (found: {found}); expected "
                              f"datasets 'image' and 'label'")
    entry = h5_file[key]
    if not isinstance(entry, h5py.Dataset) or not (np.issubdtype(entry.dtype, np.number)
                                                   or entry.dtype == np.bool_):
        raise ConversionError(f"{path}: '{key}' is {_describe_h5_entry(entry)}; expected a numeric "
                              f"3D (x, y, z) dataset")
    array = entry[()]
    if array.ndim != 3:
        raise ConversionError(f"{path}: dataset '{key}' has shape {array.shape}; expected a 3D "
                              f"(x, y, z) array")
    if array.dtype == np.bool_:  # a mask saved as bool is a 0/1 label
        return array.astype(np.uint8)
    check_finite(array, path)
    return array


def _h5_depth(path: Path) -> int | None:
    """The slice count (z) of ``path``'s image, or None where it cannot be read (the conversion says why)."""
    try:
        with h5py.File(path, "r") as h5_file:
            entry = h5_file.get("image")
            return int(entry.shape[2]) if isinstance(entry, h5py.Dataset) and entry.ndim == 3 else None
    except OSError:
        return None


def _describe_h5_entry(entry: object) -> str:
    if isinstance(entry, h5py.Dataset):
        return f"a dataset of dtype {entry.dtype}"
    return "a group" if isinstance(entry, h5py.Group) else f"a {type(entry).__name__}"


def _xyz_array_to_image(array_xyz: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """An (x, y, z) array as an image: SimpleITK's arrays are (z, y, x), hence the transpose."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    return image  # origin 0 and identity direction: SimpleITK's defaults


def read_h5_case(path: Path, spacing: Sequence[float],
                 with_label: bool) -> tuple[sitk.Image, sitk.Image | None]:
    """Image (float32) and label (uint8 0/1, or None) of a UA-MT ``mri_norm2.h5``."""
    if not path.is_file():
        raise ConversionError(f"missing LGE-MRI image: expected the file {path}")
    try:
        with h5py.File(path, "r") as h5_file:
            image = _h5_array(h5_file, "image", path)
            label = _h5_array(h5_file, "label", path) if with_label else None
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e}") from e
    if label is None:
        return _xyz_array_to_image(image.astype(np.float32, copy=False), spacing), None
    if label.shape != image.shape:
        raise ConversionError(f"shape mismatch in {path}: 'label' has shape {label.shape}, "
                              f"'image' has shape {image.shape}")
    check_label_values(label, (0, 1), path)
    return (_xyz_array_to_image(image.astype(np.float32, copy=False), spacing),
            _xyz_array_to_image(label.astype(np.uint8), spacing))


def read_nrrd_case(case_dir: Path, with_label: bool) -> tuple[sitk.Image, sitk.Image | None]:
    """Image as stored and label mapped 255 -> 1 on the image's grid (or None)."""
    image_path, label_path = case_dir / NRRD_IMAGE, case_dir / NRRD_LABEL
    image = read_image(image_path, "LGE-MRI image")
    check_scalar_volume(image, image_path)
    if not with_label:
        return image, None
    label = read_image(label_path, "left-atrium label")
    check_scalar_volume(label, label_path)
    check_same_grid(image, label, image_path, label_path)
    label_array = sitk.GetArrayViewFromImage(label)
    check_label_values(label_array, (0, 255), label_path)
    binary = sitk.GetImageFromArray((label_array == 255).astype(np.uint8))
    binary.CopyInformation(image)  # within tolerance of the label's own; make it exact
    return image, binary


def convert_case(job: CaseJob) -> tuple[str, tuple[int, ...]]:
    """Read, check and write one case; returns its ID and size (x, y, z). Runs in workers."""
    with_label = job.label_out is not None
    if job.kind == "h5":
        image, label = read_h5_case(job.case_dir / H5_FILE, job.spacing, with_label)
    else:
        image, label = read_nrrd_case(job.case_dir, with_label)
    write_image(image, job.image_out)
    if label is not None:
        write_image(label, job.label_out)
    return job.case_id, image.GetSize()


# --------------------------------------------------------------------------------------------
# Split and jobs
# --------------------------------------------------------------------------------------------
def build_split(args: argparse.Namespace) -> tuple[Split, dict]:
    """The split from the (shipped or given) lists, and how it was made for dataset.json."""
    train_list = Path(args.train_list) if args.train_list else shipped_list("la_uamt_train.list")
    test_list = Path(args.test_list) if args.test_list else shipped_list("la_uamt_test.list")
    exclude_list = Path(args.exclude_list) if args.exclude_list else None
    train_ids, test_ids = read_case_list(train_list), read_case_list(test_list)
    excluded = read_case_list(exclude_list) if exclude_list else []
    num_train = len(set(train_ids) - set(excluded))
    num_labeled = resolve_num_labeled(num_train, args.labeled, args.labeled_fraction,
                                      DEFAULT_LABELED)
    split = make_split(train_ids, test_ids, num_labeled, excluded)
    info = {"rule": f"labeled = the first {num_labeled} cases of the train list "
                    f"(after exclusions), unlabeled = the rest of it",
            "labeled_fraction": args.labeled_fraction,
            "train_list": describe_list(train_list), "test_list": describe_list(test_list),
            "exclude_list": describe_list(exclude_list)}
    return split, info


def check_cases_present(split: Split, layout: SourceLayout) -> tuple[Split, list[str]]:
    """Drop test cases absent from the input; any other absence or missing file is an error.

    Returns the split with only the present test cases, and the absent test IDs.

    Raises:
        ConversionError: labelled/unlabelled IDs without a case folder (all named), or a case
            folder without a file it needs (the first ten named).
    """
    absent = [i for i in split.labeled + split.unlabeled if not (layout.cases_dir / i).is_dir()]
    if absent:
        raise ConversionError(f"{len(absent)} labelled/unlabelled case(s) of the split are not "
                              f"in {layout.cases_dir}: {', '.join(absent)}")
    test_present = tuple(i for i in split.test if (layout.cases_dir / i).is_dir())
    test_absent = [i for i in split.test if i not in test_present]
    roles = ([(i, True) for i in split.labeled] + [(i, False) for i in split.unlabeled]
             + [(i, True) for i in test_present])
    missing = [str(path) for case_id, with_label in roles
               for path in required_files(layout.kind, layout.cases_dir / case_id, with_label)
               if not path.is_file()]
    if missing:
        raise ConversionError(f"missing file(s) ({layout.kind} layout): {name_files(missing)}")
    return dataclasses.replace(split, test=test_present), test_absent


def make_jobs(split: Split, layout: SourceLayout, out_dir: Path,
              spacing: tuple[float, float, float]) -> list[CaseJob]:
    """One job per case, into imagesTr/labelsTr, imagesUnlabeled or imagesTs/labelsTs."""
    def job(case_id: str, images: str, labels: str | None) -> CaseJob:
        return CaseJob(case_id=case_id, kind=layout.kind, case_dir=layout.cases_dir / case_id,
                       image_out=out_dir / images / f"{case_id}_0000{NIFTI_ENDING}",
                       label_out=out_dir / labels / f"{case_id}{NIFTI_ENDING}" if labels else None,
                       spacing=spacing)
    return ([job(i, "imagesTr", "labelsTr") for i in split.labeled]
            + [job(i, "imagesUnlabeled", None) for i in split.unlabeled]
            + [job(i, "imagesTs", "labelsTs") for i in split.test])


def resolve_spacing(layout: SourceLayout, spacing: list[float] | None,
                    first_h5: Path | None = None) -> tuple[float, ...]:
    """(x, y, z) spacing for h5 input; nrrd files carry their own (``--spacing`` is ignored).

    Without ``--spacing`` the UA-MT grid is assumed; ``first_h5``'s slice count tells whether the files
    look resampled (every UA-MT case has 88 slices: its preprocessing never crops z).
    """
    if layout.kind == "nrrd":
        if spacing is not None:
            print("note: --spacing is ignored for nrrd input; the files' own geometry is kept",
                  file=sys.stderr)
        return ()
    if spacing is None:
        depth = _h5_depth(first_h5) if first_h5 is not None else None
        if depth is not None and depth != UA_MT_SLICES:
            print(f"warning: h5 files carry no spacing and --spacing was not given; assuming "
                  f"{DEFAULT_H5_SPACING} mm isotropic (the UA-MT files' grid), but {first_h5} has {depth} "
                  f"slices where every UA-MT case has {UA_MT_SLICES}: if these files were resampled, pass "
                  f"their spacing (--spacing {DEFAULT_H5_SPACING * UA_MT_SLICES / depth:g} if from full "
                  f"scans)", file=sys.stderr)
        else:
            print(f"note: h5 files carry no spacing and --spacing was not given; assuming "
                  f"{DEFAULT_H5_SPACING} mm isotropic (the UA-MT files' grid)", file=sys.stderr)
    values = [DEFAULT_H5_SPACING] if spacing is None else spacing
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConversionError(f"--spacing takes one or three finite positive values (mm), got {spacing}")
    return tuple(float(v) for v in values)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True,
                        help="folder holding 'Training Set' (nrrd) or '2018LA_Seg_Training Set' "
                             "(h5)")
    parser.add_argument("--layout", choices=("auto", "h5", "nrrd"), default="auto",
                        help="input layout (default: detect)")
    parser.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                        help=f"voxel spacing of h5 input, one value or x y z "
                             f"(default: {DEFAULT_H5_SPACING}; the 1.25 mm copy needs 1.25)")
    add_output_arguments(parser, default_name="LeftAtrium")
    add_split_arguments(parser, default_labeled=DEFAULT_LABELED)
    return parser


def convert(args: argparse.Namespace, command: str) -> dict:
    """Check everything, convert into a temporary folder, move it into place; return counts."""
    root = Path(args.input).absolute()
    layout = detect_layout(root, None if args.layout == "auto" else args.layout)
    split, split_info = build_split(args)
    split, test_absent = check_cases_present(split, layout)
    if test_absent:
        # skipped, not refused: a partial copy (the 1.25 mm one) lacks the shipped test cases; the IDs go
        # into dataset.json's ssl_split.test_absent_from_input
        source = f"--test-list {args.test_list}" if args.test_list else "the shipped test list"
        print(f"{'warning' if args.test_list else 'note'}: {len(test_absent)} of "
              f"{len(test_absent) + len(split.test)} test cases of {source} are not in {layout.cases_dir} and "
              f"were skipped: {', '.join(test_absent[:10])}{' ...' if len(test_absent) > 10 else ''}",
              file=sys.stderr)
    first_case = (split.labeled + split.unlabeled)[0]
    spacing = resolve_spacing(layout, args.spacing, layout.cases_dir / first_case / H5_FILE)
    output_root = resolve_output_root(args.output_root)
    folder_name = dataset_folder_name(args.dataset_id, args.name)
    check_dataset_id_free(output_root, folder_name)
    target = output_root / folder_name
    with atomic_dataset_dir(target, overwrite=args.overwrite, sources=[root, *option_files(args)]) as out_dir:
        folders = ["imagesTr", "labelsTr", "imagesUnlabeled"]
        folders += ["imagesTs", "labelsTs"] if split.test else []
        for folder in folders:
            (out_dir / folder).mkdir()
        jobs = make_jobs(split, layout, out_dir, spacing)
        run_jobs(convert_case, jobs, num_processes=args.num_processes, description=folder_name)
        write_dataset_json(
            out_dir, channel_names=CHANNEL_NAMES, labels=LABELS, split=split,
            split_info={**split_info, "test_absent_from_input": test_absent},
            source={"dataset": "Left Atrium 2018 (LGE-MRI)", "root": str(root),
                    "layout": layout.kind, "cases_dir": str(layout.cases_dir),
                    "spacing_mm": list(spacing) if spacing else "from the nrrd files"},
            converter=CONVERTER, converter_version=CONVERTER_VERSION, command=command,
            dataset_name=folder_name, reference=REFERENCE,
            licence="2018 Atrial Segmentation Challenge data: research use, see its terms",
            description="Left atrium segmentation from LGE-MRI, semi-supervised split "
                        "(imagesUnlabeled holds the unlabelled cases)")
    return {"dataset": str(target), "layout": layout.kind, "labeled": len(split.labeled),
            "unlabeled": len(split.unlabeled), "test": len(split.test),
            "test_absent": len(test_absent)}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``nnUNetv2_ccesemi_convert_LA``; returns the exit status."""
    return run_converter(PROG, build_parser(), convert, argv,
                         (lambda c: f"{c['labeled']} labelled (imagesTr/labelsTr), {c['unlabeled']} unlabelled "
                         f"(imagesUnlabeled), {c['test']} test (imagesTs/labelsTs), {c['test_absent']} listed "
                         f"test cases absent from the input ({c['layout']} input)"))


if __name__ == "__main__":
    sys.exit(main())
