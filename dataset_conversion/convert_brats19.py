"""BraTS 2019 (training set) to an nnU-Net raw dataset with the SSL4MIS semi-supervised split.

Source: the MICCAI BraTS 2019 training data as distributed,
``<root>/{HGG,LGG}/<ID>/<ID>_{t1,t1ce,t2,flair,seg}.nii[.gz]`` (``<root>`` is ``-i`` or
``-i/MICCAI_BraTS_2019_Data_Training``). The modalities that ``--channels`` converts must exist for
every converted case (a missing one is an error naming the file; the others are not read, so a
FLAIR-only copy converts with the default); ``seg`` is read for labelled, validation and test
cases, and its values must be 0, 1 (necrosis / non-enhancing core), 2 (edema) and 4 (enhancing).
Images are written as stored (same voxels, spacing, origin and direction).

Channels (``--channels``): ``flair`` (default; the SSL papers' setting, one channel ``Flair``) or
``all`` (four channels as in nnU-Net's own BraTS converters: 0 T1, 1 T1ce, 2 T2, 3 Flair).

Task (``--task``): ``wt`` (default; the SSL papers' whole tumour: seg > 0 -> 1) or ``regions``
(nnU-Net's BraTS setting, ``Dataset137_BraTS21``: labels 2 -> 1, 1 -> 2, 4 -> 3, and in
dataset.json the regions whole tumor (1, 2, 3), tumor core (2, 3) and enhancing tumor (3) with
``regions_class_order`` (1, 2, 3)). Predictions of the regions task map back to BraTS labels with
``nnunetv2.dataset_conversion.Dataset137_BraTS21.convert_labels_back_to_BraTS``.

Split: the SSL4MIS lists shipped in ``splits/`` (github.com/HiLab-git/SSL4MIS
``data/BraTS2019/{train,val,test}.txt``): 250 train / 25 validation / 60 test. Labelled = the
first N train cases (``--labeled``, default 25, i.e. 10 %; ``--labeled-fraction``), unlabelled =
the rest, test = the test list. Every listed case must be present in the input.

Validation cases (SSL4MIS selects its checkpoint on them; they are neither training nor test
data) go by ``--val``:

* ``separate`` (default): ``imagesVal/`` + ``labelsVal/`` (named like imagesTs/labelsTs). nnU-Net
  ignores these folders; they are there for model selection or extra evaluation.
* ``test``: added to the test set (imagesTs/labelsTs; 85 test cases).
* ``skip``: not converted.

Either way dataset.json lists them under ``ssl_split.validation``.

More unlabelled data (``--extra-unlabeled DIR``, repeatable): every case folder
``DIR/<ID>/<ID>_<modality>.nii[.gz]`` (or ``DIR/MICCAI_BraTS_2019_Data_Validation/<ID>/...``) joins
imagesUnlabeled. This is meant for the BraTS 2019 validation release (125 cases without ``seg``),
which semi-supervised training can use although it has no labels. Its IDs must not be cases of the
training data; they are listed in ``ssl_split.unlabeled`` after the train list's unlabelled cases
and counted in ``ssl_split.extra_unlabeled``. With ``--train-list`` or
``--test-list`` there is no validation set unless ``--val-list`` gives one (the shipped one
belongs to the shipped split).

Output ``<nnUNet_raw>/DatasetXXX_<name>/``: ``imagesTr`` + ``labelsTr`` (labelled),
``imagesUnlabeled`` (unlabelled), ``imagesTs`` + ``labelsTs`` (test), ``imagesVal`` +
``labelsVal`` (validation), ``dataset.json``; case IDs are the BraTS IDs
(``BraTS19_2013_0_1_0000.nii.gz``). Written to a temporary sibling folder and moved into place when
complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ccesemi.parallel import run_jobs

from .common import (NIFTI_ENDING, ConversionError, Split, add_output_arguments,
                     add_split_arguments, atomic_dataset_dir, check_channel_grid, check_dataset_id_free,
                     check_label_values, check_same_grid, check_scalar_volume,
                     dataset_folder_name, option_files, describe_list, make_split, name_files, read_case_list,
                     read_image, resolve_num_labeled, resolve_output_root,
                     shipped_list, subfolders, write_dataset_json, write_image, run_converter)

CONVERTER = "nnunet_ccesemi.dataset_conversion.convert_brats19"
CONVERTER_VERSION = "1.0"
PROG = "nnUNetv2_ccesemi_convert_brats19"
DEFAULT_LABELED = 25

TRAIN_LIST, VAL_LIST, TEST_LIST = ("brats19_ssl4mis_train.list", "brats19_ssl4mis_val.list",
                                   "brats19_ssl4mis_test.list")
ROOT_CANDIDATES = ("", "MICCAI_BraTS_2019_Data_Training")
EXTRA_ROOT_CANDIDATES = ("MICCAI_BraTS_2019_Data_Validation", "")  # the release's folder first
EXTRA_GRADE = "extra unlabelled"
GRADES = ("HGG", "LGG")
ENDINGS = (".nii.gz", ".nii")
MODALITIES = ("t1", "t1ce", "t2", "flair")
CHANNELS = {"all": ("t1", "t1ce", "t2", "flair"), "flair": ("flair",)}
CHANNEL_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "Flair"}
BRATS_VALUES = (0, 1, 2, 4)

# nnU-Net's conversion (Dataset137_BraTS21): 2 edema -> 1, 1 necrosis/non-enhancing -> 2,
# 4 enhancing -> 3, so that the regions nest: whole tumour (1, 2, 3) > core (2, 3) > enhancing (3)
REGION_VALUE_MAP = {0: 0, 2: 1, 1: 2, 4: 3}
REGION_LABELS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                 "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)
# what the values on disk mean in the regions task (dataset.json gets REGION_LABELS)
REGION_VALUE_NAMES = {"background": 0, "edema": 1, "non-enhancing tumor core and necrosis": 2,
                      "enhancing tumor": 3}
WT_LABELS = {"background": 0, "whole tumor": 1}
VAL_HANDLING = {"separate": "imagesVal/labelsVal (ignored by nnU-Net)",
                "test": "added to imagesTs/labelsTs", "skip": "not converted"}
REFERENCE = ("Menze et al., IEEE TMI 34(10), 2015; Bakas et al., Scientific Data 4, 2017; "
             "Bakas et al., arXiv:1811.02629")


@dataclasses.dataclass(frozen=True)
class CaseJob:
    """One case: (modality, file) per channel in output order; ``seg``/``label_out`` None if
    unlabelled."""

    case_id: str
    channel_files: tuple[tuple[str, Path], ...]
    seg: Path | None
    image_outs: tuple[Path, ...]
    label_out: Path | None
    task: str


# --------------------------------------------------------------------------------------------
# Input layout
# --------------------------------------------------------------------------------------------
def find_cases(root: Path) -> tuple[Path, dict[str, tuple[str, Path]]]:
    """The data root and every case folder by ID: ``{ID: (grade, folder)}``.

    Raises:
        ConversionError: no HGG/LGG folder, or an ID in both grades.
    """
    if not root.is_dir():
        raise ConversionError(f"the input folder {root} does not exist")
    for name in ROOT_CANDIDATES:
        data_root = root / name if name else root
        if any((data_root / grade).is_dir() for grade in GRADES):
            break
    else:
        raise ConversionError(f"no BraTS 2019 data in {root}: expected HGG/<ID>/ and LGG/<ID>/ "
                              f"folders in it or in {root / ROOT_CANDIDATES[1]}")
    cases: dict[str, tuple[str, Path]] = {}
    for grade in GRADES:
        if not (data_root / grade).is_dir():
            continue
        for folder in subfolders(data_root / grade):
            if folder.name in cases:
                raise ConversionError(f"case {folder.name} is in both {cases[folder.name][1]} "
                                      f"and {folder}")
            cases[folder.name] = (grade, folder)
    return data_root, cases


def find_extra_cases(roots: Sequence[Path], training_cases: dict[str, tuple[str, Path]]
                     ) -> dict[str, tuple[str, Path]]:
    """The case folders of ``--extra-unlabeled`` folders by ID: ``{ID: (EXTRA_GRADE, folder)}``.

    Raises:
        ConversionError: a folder that does not exist or holds no case folder, or an ID that is
            also a case of the training data or of another extra folder.
    """
    extra: dict[str, tuple[str, Path]] = {}
    for root in roots:
        if not root.is_dir():
            raise ConversionError(f"the --extra-unlabeled folder {root} does not exist")
        for name in EXTRA_ROOT_CANDIDATES:
            data_root = root / name if name else root
            folders = subfolders(data_root) if data_root.is_dir() else []
            if folders:
                break
        else:
            raise ConversionError(f"no case folders in the --extra-unlabeled folder {root}: expected "
                                  f"<ID>/<ID>_<modality>.nii.gz in it or in "
                                  f"{root / EXTRA_ROOT_CANDIDATES[0]}")
        if {f.name for f in folders} & set(GRADES):
            raise ConversionError(f"the --extra-unlabeled folder {data_root} holds HGG/LGG "
                                  f"folders: that is the training data (-i), not extra unlabelled "
                                  f"cases")
        for folder in folders:
            earlier = training_cases.get(folder.name) or extra.get(folder.name)
            if earlier is not None:
                raise ConversionError(f"the extra unlabelled case {folder} is also a case of the "
                                      f"training data or of another extra folder: {earlier[1]}")
            extra[folder.name] = (EXTRA_GRADE, folder)
    return extra


def modality_file(case_dir: Path, case_id: str, modality: str) -> Path | None:
    """``<ID>_<modality>.nii.gz`` or ``.nii``, whichever exists (None if neither)."""
    for ending in ENDINGS:
        path = case_dir / f"{case_id}_{modality}{ending}"
        if path.is_file():
            return path
    return None


def _expected(case_dir: Path, case_id: str, modality: str) -> str:
    return f"{case_dir / f'{case_id}_{modality}'}{ENDINGS[0]} (or {ENDINGS[1]})"


def check_case_files(cases: dict[str, tuple[str, Path]], with_seg: Sequence[str],
                     without_seg: Sequence[str], modalities: Sequence[str] = MODALITIES) -> None:
    """The converted ``modalities`` of every case, ``seg`` of the labelled, validation and test
    cases.

    Raises:
        ConversionError: listed cases absent from the input (all named) or missing files (the
            first ten named).
    """
    absent = [i for i in list(with_seg) + list(without_seg) if i not in cases]
    if absent:
        raise ConversionError(f"{len(absent)} case(s) of the split are not in the HGG/LGG "
                              f"folders of the input: {', '.join(absent)}")
    missing = []
    for case_id in list(with_seg) + list(without_seg):
        needed = tuple(modalities) + (("seg",) if case_id in with_seg else ())
        case_dir = cases[case_id][1]
        missing += [_expected(case_dir, case_id, m) for m in needed
                    if modality_file(case_dir, case_id, m) is None]
    if missing:
        raise ConversionError(f"missing modality or segmentation file(s): "
                              f"{name_files(missing)}")


# --------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------
def build_split(args: argparse.Namespace) -> tuple[Split, list[str], dict]:
    """The split, the cases for imagesVal (``--val separate``) and how both were made."""
    custom = bool(args.train_list or args.test_list)
    train_list = Path(args.train_list) if args.train_list else shipped_list(TRAIN_LIST)
    test_list = Path(args.test_list) if args.test_list else shipped_list(TEST_LIST)
    val_list = (Path(args.val_list) if args.val_list
                else None if custom else shipped_list(VAL_LIST))
    exclude_list = Path(args.exclude_list) if args.exclude_list else None
    train_ids, test_ids = read_case_list(train_list), read_case_list(test_list)
    val_ids = read_case_list(val_list) if val_list else []
    excluded = read_case_list(exclude_list) if exclude_list else []
    num_train = len(set(train_ids) - set(excluded))
    num_labeled = resolve_num_labeled(num_train, args.labeled, args.labeled_fraction,
                                      DEFAULT_LABELED)
    split = make_split(train_ids, test_ids, num_labeled, excluded)
    validation = [i for i in val_ids if i not in set(excluded)]
    for role, ids in (("train", split.labeled + split.unlabeled), ("test", split.test)):
        both = sorted(set(ids) & set(validation))
        if both:
            raise ConversionError(f"cases in both the validation list and the {role} list: "
                                  f"{', '.join(both)}")
    info = {"rule": f"labeled = the first {num_labeled} cases of the train list (after "
                    f"exclusions), unlabeled = the rest of it",
            "labeled_fraction": args.labeled_fraction,
            "validation": validation, "validation_handling": f"{args.val}: "
                                                              f"{VAL_HANDLING[args.val]}",
            "train_list": describe_list(train_list), "test_list": describe_list(test_list),
            "val_list": describe_list(val_list), "exclude_list": describe_list(exclude_list)}
    if args.val == "test":
        split = dataclasses.replace(split, test=split.test + tuple(validation))
    return split, (validation if args.val == "separate" else []), info


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------
def read_channels(files: Sequence[tuple[str, Path]]) -> list[sitk.Image]:
    """The channels, all on the grid of the first (made exact within tolerance)."""
    images = []
    for modality, path in files:
        image = read_image(path, f"{CHANNEL_NAMES[modality]} image")
        check_scalar_volume(image, path)
        if images:
            check_channel_grid(images[0], image, files[0][1], path)
            image.CopyInformation(images[0])
        images.append(image)
    return images


def convert_seg(seg_path: Path, reference: sitk.Image, reference_path: Path,
                task: str) -> sitk.Image:
    """The segmentation checked against the image grid and mapped for ``task``."""
    seg = read_image(seg_path, "segmentation")
    check_scalar_volume(seg, seg_path)
    check_same_grid(reference, seg, reference_path, seg_path)
    array = sitk.GetArrayViewFromImage(seg)
    check_label_values(array, BRATS_VALUES, seg_path)
    if task == "wt":
        converted = (array > 0).astype(np.uint8)
    else:
        converted = np.zeros(array.shape, np.uint8)
        for brats_value, nnunet_value in REGION_VALUE_MAP.items():
            converted[array == brats_value] = nnunet_value
    label = sitk.GetImageFromArray(converted)
    label.CopyInformation(reference)
    return label


def convert_case(job: CaseJob) -> tuple[str, tuple[int, ...]]:
    """Read, check and write one case; returns its ID and size (x, y, z). Runs in workers."""
    images = read_channels(job.channel_files)
    label = (convert_seg(job.seg, images[0], job.channel_files[0][1], job.task)
             if job.seg is not None else None)
    for image, path in zip(images, job.image_outs):
        write_image(image, path)
    if label is not None:
        write_image(label, job.label_out)
    return job.case_id, images[0].GetSize()


def make_jobs(split: Split, validation: Sequence[str], cases: dict[str, tuple[str, Path]],
              channels: Sequence[str], task: str, out_dir: Path) -> list[CaseJob]:
    """One job per case, into imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs, imagesVal."""
    def job(case_id: str, images: str, labels: str | None) -> CaseJob:
        case_dir = cases[case_id][1]
        return CaseJob(
            case_id=case_id,
            channel_files=tuple((m, modality_file(case_dir, case_id, m)) for m in channels),
            seg=modality_file(case_dir, case_id, "seg") if labels else None,
            image_outs=tuple(out_dir / images / f"{case_id}_{c:04d}{NIFTI_ENDING}"
                             for c in range(len(channels))),
            label_out=out_dir / labels / f"{case_id}{NIFTI_ENDING}" if labels else None,
            task=task)
    return ([job(i, "imagesTr", "labelsTr") for i in split.labeled]
            + [job(i, "imagesUnlabeled", None) for i in split.unlabeled]
            + [job(i, "imagesTs", "labelsTs") for i in split.test]
            + [job(i, "imagesVal", "labelsVal") for i in validation])


def extra_dataset_json(task: str, num_validation: int) -> dict:
    """What the values on disk mean in the regions task (``labels`` holds the regions) and
    ``numValidation`` when imagesVal/labelsVal are written."""
    extra: dict = {}
    if task == "regions":
        extra["label_values"] = REGION_VALUE_NAMES
    if num_validation:
        extra["numValidation"] = num_validation
    return extra


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True,
                        help="folder holding HGG/ and LGG/ (or MICCAI_BraTS_2019_Data_Training/)")
    parser.add_argument("--channels", choices=sorted(CHANNELS), default="flair",
                        help="flair (one channel, the SSL setting) or all (T1, T1ce, T2, Flair) "
                             "(default: flair)")
    parser.add_argument("--task", choices=("wt", "regions"), default="wt",
                        help="wt: whole tumour, seg > 0 (default); regions: nnU-Net's BraTS "
                             "regions")
    parser.add_argument("--val", choices=sorted(VAL_HANDLING), default="separate",
                        help="validation cases: separate (imagesVal/labelsVal, default), test "
                             "(added to imagesTs) or skip")
    parser.add_argument("--val-list", default=None,
                        help="case-ID list replacing the shipped validation list")
    parser.add_argument("--extra-unlabeled", action="append", default=[], metavar="DIR",
                        help="folder of <ID>/<ID>_<modality>.nii.gz case folders without labels "
                             "(e.g. MICCAI_BraTS_2019_Data_Validation) added to imagesUnlabeled; "
                             "repeatable")
    add_output_arguments(parser, default_name="BraTS2019")
    add_split_arguments(parser, default_labeled=DEFAULT_LABELED)
    return parser


def convert(args: argparse.Namespace, command: str) -> dict:
    """Check everything, convert into a temporary folder, move it into place; return counts."""
    root = Path(args.input).absolute()
    data_root, cases = find_cases(root)
    split, validation, split_info = build_split(args)
    extra_roots = [Path(p).absolute() for p in args.extra_unlabeled]
    extra = {case: found for case, found in find_extra_cases(extra_roots, cases).items()
             if case not in split.excluded}
    if extra:
        cases = {**cases, **extra}
        split = dataclasses.replace(split, unlabeled=split.unlabeled + tuple(extra))
        split_info["extra_unlabeled"] = {"folders": [str(p) for p in extra_roots],
                                         "cases": len(extra)}
    channels = CHANNELS[args.channels]
    check_case_files(cases, with_seg=split.labeled + split.test + tuple(validation),
                     without_seg=split.unlabeled, modalities=channels)
    output_root = resolve_output_root(args.output_root)
    folder_name = dataset_folder_name(args.dataset_id, args.name)
    check_dataset_id_free(output_root, folder_name)
    target = output_root / folder_name
    converted = split.labeled + split.unlabeled + split.test + tuple(validation)
    with atomic_dataset_dir(target, overwrite=args.overwrite,
                            sources=[root, *extra_roots, *option_files(args)]) as out_dir:
        folders = ["imagesTr", "labelsTr", "imagesUnlabeled"]
        folders += ["imagesTs", "labelsTs"] if split.test else []
        folders += ["imagesVal", "labelsVal"] if validation else []
        for folder in folders:
            (out_dir / folder).mkdir()
        jobs = make_jobs(split, validation, cases, channels, args.task, out_dir)
        run_jobs(convert_case, jobs, num_processes=args.num_processes, description=folder_name)
        write_dataset_json(
            out_dir, channel_names={str(c): CHANNEL_NAMES[m] for c, m in enumerate(channels)},
            labels=WT_LABELS if args.task == "wt" else REGION_LABELS, split=split,
            regions_class_order=REGIONS_CLASS_ORDER if args.task == "regions" else None,
            extra=extra_dataset_json(args.task, len(validation)),
            split_info=split_info,
            source={"dataset": "BraTS 2019 training set", "root": str(root),
                    "data_root": str(data_root), "channels": list(channels), "task": args.task,
                    "grades": {g: sum(cases[i][0] == g for i in converted) for g in GRADES},
                    "extra_unlabeled": len(extra)},
            converter=CONVERTER, converter_version=CONVERTER_VERSION, command=command,
            dataset_name=folder_name, reference=REFERENCE,
            licence="BraTS 2019: see the challenge's data use terms",
            description=("Brain tumour segmentation from MRI (BraTS 2019), "
                         + ("whole tumour" if args.task == "wt" else "BraTS regions")
                         + ", semi-supervised split (imagesUnlabeled holds the unlabelled "
                           "cases)"))
    return {"dataset": str(target), "labeled": len(split.labeled),
            "unlabeled": len(split.unlabeled), "test": len(split.test),
            "validation": len(validation)}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``nnUNetv2_ccesemi_convert_brats19``; returns the exit status."""
    return run_converter(PROG, build_parser(), convert, argv,
                         (lambda c: f"{c['labeled']} labelled (imagesTr/labelsTr), {c['unlabeled']} unlabelled "
                         f"(imagesUnlabeled), {c['test']} test (imagesTs/labelsTs), {c['validation']} "
                         f"validation (imagesVal/labelsVal)"))


if __name__ == "__main__":
    sys.exit(main())
