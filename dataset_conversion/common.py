"""What the dataset converters share: split lists, the atomic output folder, checks, dataset.json.

A converter reads a split (case-ID lists shipped in ``splits/`` or given by the user), checks its
input before writing anything, converts the cases with :func:`nnunet_ccesemi.parallel.run_jobs`
(progress bar, optional worker processes) into the temporary folder that :func:`atomic_dataset_dir`
moves into place only when everything succeeded, and ends with :func:`write_dataset_json`, which
records the split, the source and the command line next to nnU-Net's own keys.

Every problem with the input or the output location is a :class:`ConversionError` whose message
names the file and what was expected; ``main`` functions print it and return 1.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import shlex
import sys
from decimal import ROUND_HALF_UP, Decimal
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ccesemi import image_files
from nnunet_ccesemi.atomic import atomic_folder, remove_stale_temporaries
from nnunet_ccesemi.parallel import WorkerDiedError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
"""The split lists shipped with the package (package data ``splits/*.list``)."""

NIFTI_ENDING = ".nii.gz"

_CASE_ID = re.compile(r"^[^\s/\\.][^\s/\\]*$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConversionError(Exception):
    """Bad input or output location; the message names the file and what was expected."""


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case's files, or None if it can."""
    if not _CASE_ID.match(case_id):
        return "not usable as a case ID (no spaces, path separators or leading dot)"
    if case_id.endswith("_seg"):
        # nnU-Net's preprocessed files <case>.b2nd + <case>_seg.b2nd: its dataset skips such names
        return "not usable as a case ID: nnU-Net reserves names ending in '_seg' for segmentations"
    return None


def subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder``, sorted, without hidden ones (``.ipynb_checkpoints``) and the
    ``__MACOSX`` folder macOS archives add: neither is a case, study or series."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


# --------------------------------------------------------------------------------------------
# Case lists and splits
# --------------------------------------------------------------------------------------------
def read_case_list(path: str | os.PathLike) -> list[str]:
    """Read a case-ID list: one ID a line, blank lines and ``#`` comments ignored.

    Raises:
        ConversionError: the file is missing or unreadable, a line is not a usable case ID (it
            becomes part of file names, so no whitespace or path separators), or an ID repeats.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"cannot read the case list {path}: {e}") from e
    ids: list[str] = []
    seen: set[str] = set()
    for line_number, line in enumerate(lines, start=1):
        case_id = line.strip()
        if not case_id or case_id.startswith("#"):
            continue
        problem = case_id_problem(case_id)
        if problem:
            raise ConversionError(f"{path}, line {line_number}: {case_id!r} is {problem} "
                                  f"(expected one case ID a line)")
        if case_id in seen:
            raise ConversionError(f"{path}, line {line_number}: case {case_id} is listed twice")
        seen.add(case_id)
        ids.append(case_id)
    if not ids:
        raise ConversionError(f"the case list {path} is empty (expected one case ID a line)")
    return ids


def shipped_list(file_name: str) -> Path:
    """Path of a split list shipped with the package, e.g. ``la_uamt_train.list``."""
    path = SPLITS_DIR / file_name
    if not path.is_file():
        raise ConversionError(f"the shipped split list {path} is missing: the package is "
                              f"incomplete (its package data splits/*.list was not installed)")
    return path


def describe_list(path: Path | None) -> dict | None:
    """Provenance of a list for dataset.json: where it came from and its content hash."""
    if path is None:
        return None
    path = Path(path)
    shipped = path.resolve().parent == SPLITS_DIR
    return {"file": f"nnunet_ccesemi/dataset_conversion/splits/{path.name}" if shipped
            else str(path.resolve()),
            "shipped": shipped,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@dataclasses.dataclass(frozen=True)
class Split:
    """Case IDs per role. Roles are disjoint; ``excluded`` cases are not converted at all."""

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    test: tuple[str, ...]
    excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        roles = {"labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test}
        names = list(roles)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                both = sorted(set(roles[first]) & set(roles[second]))
                if both:
                    raise ConversionError(f"cases in both the {first} and the {second} set: "
                                          f"{', '.join(both)}")

    def to_json(self) -> dict:
        """Lists of IDs per role, for dataset.json."""
        return {"labeled": list(self.labeled), "unlabeled": list(self.unlabeled),
                "test": list(self.test), "excluded": list(self.excluded)}


def resolve_num_labeled(num_train: int, labeled: int | None, labeled_fraction: float | None,
                        default: int) -> int:
    """Number of labelled cases from ``--labeled`` or ``--labeled-fraction`` (or the default).

    The fraction is of the train list (after exclusions), rounded half up: 0.05/0.1/0.2 of the
    80-case LA list give 4/8/16.
    """
    if labeled is not None and labeled_fraction is not None:
        raise ConversionError("give either --labeled or --labeled-fraction, not both")
    if labeled_fraction is not None:
        if not 0.0 < labeled_fraction <= 1.0:
            raise ConversionError(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}")
        # in decimal, as the user wrote the fraction: 0.15 * 70 is 10.4999... in binary floating point
        labeled = int((Decimal(str(labeled_fraction)) * num_train).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        if labeled < 1:
            raise ConversionError(f"--labeled-fraction {labeled_fraction} of {num_train} train "
                                  f"cases rounds to 0 labelled cases")
    elif labeled is None:
        labeled = default
    if not 1 <= labeled <= num_train:
        raise ConversionError(f"--labeled must be between 1 and the number of train cases "
                              f"({num_train}), got {labeled}")
    return labeled


def make_split(train_ids: Sequence[str], test_ids: Sequence[str], num_labeled: int,
               excluded: Iterable[str] = ()) -> Split:
    """Labelled = the first ``num_labeled`` train IDs, unlabelled = the rest, test as given.

    Excluded IDs are removed from both lists first (order preserved).

    Raises:
        ConversionError: a case is in both lists, or there are fewer train cases than
            ``num_labeled``.
    """
    excluded = tuple(dict.fromkeys(excluded))
    skip = set(excluded)
    train = [i for i in train_ids if i not in skip]
    test = [i for i in test_ids if i not in skip]
    both = sorted(set(train) & set(test))
    if both:
        raise ConversionError(f"cases in both the train list and the test list: {', '.join(both)}")
    if not 1 <= num_labeled <= len(train):
        raise ConversionError(f"cannot take {num_labeled} labelled cases from a train list of "
                              f"{len(train)} (after {len(skip)} exclusions)")
    return Split(labeled=tuple(train[:num_labeled]), unlabeled=tuple(train[num_labeled:]),
                 test=tuple(test), excluded=excluded)


# --------------------------------------------------------------------------------------------
# Command-line pieces shared by the converters
# --------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def add_output_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    """``-d``, ``--name``, ``-o``, ``--overwrite`` and ``-np``."""
    parser.add_argument("-d", "--dataset-id", type=int, required=True,
                        help="nnU-Net dataset ID (1-999): writes DatasetXXX_<name>")
    parser.add_argument("--name", default=default_name,
                        help=f"dataset name after the ID (default: {default_name})")
    parser.add_argument("-o", "--output-root", default=None,
                        help="folder to write DatasetXXX_<name> into (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DatasetXXX_<name> (only once the new one is "
                             "complete)")
    parser.add_argument("-np", "--num-processes", type=_positive_int,
                        default=max(1, min(2, os.cpu_count() or 1)),
                        help="worker processes (default: %(default)s)")


def add_split_arguments(parser: argparse.ArgumentParser, default_labeled: int) -> None:
    """The split options: how many labelled cases, and the train, test and exclude lists."""
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--labeled", type=int, default=None,
                        help=f"labelled cases: the first N of the train list "
                             f"(default: {default_labeled})")
    amount.add_argument("--labeled-fraction", type=float, default=None,
                        help="labelled cases as a fraction of the train list, rounded half up")
    parser.add_argument("--train-list", default=None,
                        help="case-ID list (one a line) replacing the shipped train list")
    parser.add_argument("--test-list", default=None,
                        help="case-ID list (one a line) replacing the shipped test list")
    parser.add_argument("--exclude-list", default=None,
                        help="case-ID list of cases to leave out entirely (not converted)")


def command_line(argv: Sequence[str] | None, prog: str) -> str:
    """The command as typed (``sys.argv``) or as called from Python (``prog`` + argv)."""
    words = list(sys.argv) if argv is None else [prog, *argv]
    return shlex.join(str(w) for w in words)


# --------------------------------------------------------------------------------------------
# Output location
# --------------------------------------------------------------------------------------------
def resolve_output_root(output_root: str | os.PathLike | None) -> Path:
    """``-o`` if given, else ``$nnUNet_raw``.

    ``nnunetv2.paths.nnUNet_raw`` is an ``_EnvPath`` in 2.8.1, read through ``os.fspath``.
    """
    if output_root is not None:
        root, given_as = Path(output_root), "-o/--output-root"
    else:
        from nnunetv2.paths import nnUNet_raw
        if not nnUNet_raw:
            raise ConversionError("no output folder: pass -o/--output-root or set nnUNet_raw")
        root, given_as = Path(os.fspath(nnUNet_raw)), "nnUNet_raw"
    if root.exists() and not root.is_dir():
        raise ConversionError(f"{root} ({given_as}) is a file; expected a folder to hold the dataset")
    return root


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name`` as nnU-Net expects it."""
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset ID must be between 1 and 999, got {dataset_id}")
    if not _DATASET_NAME.match(name):
        raise ConversionError(f"dataset name {name!r}: use letters, digits, '_', '-' and '.'")
    return f"Dataset{dataset_id:03d}_{name}"


def check_dataset_id_free(output_root: Path, folder_name: str) -> None:
    """Refuse a second dataset with the same ID under another name (nnU-Net could not choose),
    in the output root and in ``nnUNet_preprocessed``/``nnUNet_results``, where nnU-Net looks too."""
    prefix = folder_name.split("_", 1)[0] + "_"
    roots = [output_root] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results")
                             if os.environ.get(v)]
    for root in roots:
        if not root.is_dir():
            continue
        others = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and p.name.startswith(prefix) and p.name != folder_name)
        if others:
            raise ConversionError(f"{root} already holds {', '.join(others)} with the same "
                                  f"dataset ID; choose another -d or remove it")


# the converters' options that name a file to read (split lists, label and channel JSON)
_OPTION_FILES = ("train_list", "test_list", "exclude_list", "val_list", "labels_json", "channel_names_json")


def option_files(args: argparse.Namespace) -> list[str]:
    """The files the command line's list and JSON options name: inputs too, for
    :func:`atomic_dataset_dir`'s ``sources`` (a split list kept inside the dataset it converts into)."""
    return [path for name in _OPTION_FILES if (path := getattr(args, name, None))]


@contextlib.contextmanager
def atomic_dataset_dir(target_dir: str | os.PathLike, overwrite: bool = False,
                       sources: Sequence[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``target_dir`` only if the block succeeds.

    :func:`nnunet_ccesemi.atomic.atomic_folder`: the temporary folder ``tmp<pid>_DatasetXXX_Name`` is a
    sibling of the target (same file system, so the final move is a rename; nnU-Net's ``Dataset*``
    look-ups never see it). If the block raises (a bad file, Ctrl-C) it is removed and an existing
    dataset stays as it was; a hard kill (SIGKILL, power loss) can leave it behind, never a partial
    dataset under the real name, and the next conversion to the same name removes it (or puts back
    an old dataset the kill left set aside).

    ``sources`` are the input files and folders: one inside an existing target would be deleted
    with the dataset it is being converted into (``--images $nnUNet_raw/Dataset601_X/imagesTr``
    to add unlabelled cases to that dataset), so that is refused whatever ``overwrite`` says.

    Raises:
        ConversionError: the target exists and ``overwrite`` is false, is not a folder, or holds
            one of ``sources``.
    """
    target = Path(target_dir)
    remove_stale_temporaries(target.parent, target.name)
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ConversionError(f"{target} exists and is not a folder")
        resolved_target = target.resolve()
        inside = [str(source) for source in sources
                  if resolved_target in (resolved := Path(source).resolve(), *resolved.parents)]
        if inside:
            raise ConversionError(f"the input {name_files(inside)} lies inside {target}, which "
                                  f"the conversion would replace; copy the input elsewhere or "
                                  f"choose another -d/--name (nothing was changed)")
        if not overwrite:
            raise ConversionError(f"{target} already exists; pass --overwrite to replace it "
                                  f"(it was left untouched)")
    with atomic_folder(target) as temporary:
        yield Path(temporary)


# --------------------------------------------------------------------------------------------
# Images: reading, checking, writing
# --------------------------------------------------------------------------------------------
def read_image(path: Path, what: str) -> sitk.Image:
    """Read any file SimpleITK reads, refusing truncated files (:mod:`nnunet_ccesemi.image_files`);
    ``what`` names it in errors ("LGE-MRI image")."""
    if not path.is_file():
        raise ConversionError(f"missing {what}: expected the file {path}")
    try:
        return image_files.read_image(path, what)
    except image_files.ImageFileError as e:
        raise ConversionError(str(e)) from e


def check_scalar_volume(image: sitk.Image, path: Path) -> None:
    """A 3D image with one component per voxel and only finite values."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"{path}: expected a 3D single-channel volume, got "
                              f"{image.GetDimension()}D with "
                              f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    check_finite(sitk.GetArrayViewFromImage(image), path)


def check_finite(array: np.ndarray, path: Path) -> None:
    """No NaN or infinite voxel: nnU-Net's z-scoring would spread one over the whole case."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ConversionError(f"{path}: {bad} voxel(s) are NaN or infinite; expected finite "
                              f"intensities (fix or mask them in the source file)")


def check_same_grid(reference: sitk.Image, other: sitk.Image, reference_path: Path, other_path: Path, *,
                    reference_role: str = "the image", other_role: str = "the label",
                    spacing_rtol: float = 1e-4, origin_atol: float = 1e-3,
                    direction_atol: float = 1e-4) -> None:
    """``other`` lies on ``reference``'s voxel grid: same size, spacing, origin and direction.

    The roles name the two files in the message: ``the label`` against ``the image`` by default,
    ``the image`` against ``its first channel`` for a case's further channels.

    Raises:
        ConversionError: naming ``other``'s file, both values and ``reference``'s file.
    """
    checks = (
        ("shape (x, y, z)", reference.GetSize(), other.GetSize(),
         lambda a, b: tuple(a) == tuple(b)),
        ("spacing", reference.GetSpacing(), other.GetSpacing(),
         lambda a, b: np.allclose(a, b, rtol=spacing_rtol, atol=0)),
        ("origin", reference.GetOrigin(), other.GetOrigin(),
         lambda a, b: np.allclose(a, b, rtol=0, atol=origin_atol)),
        ("direction", reference.GetDirection(), other.GetDirection(),
         lambda a, b: np.allclose(a, b, rtol=0, atol=direction_atol)),
    )
    for what, reference_value, other_value, agree in checks:
        if not agree(reference_value, other_value):
            raise ConversionError(f"{what} mismatch: {other_role} {other_path} has "
                                  f"{_rounded(other_value)}, {reference_role} {reference_path} has "
                                  f"{_rounded(reference_value)}")


def check_channel_grid(first: sitk.Image, image: sitk.Image, first_path: Path, path: Path) -> None:
    """:func:`check_same_grid` of a further channel of a case against its first channel."""
    check_same_grid(first, image, first_path, path, reference_role="its first channel", other_role="the image")


def _rounded(values: Sequence[float]) -> tuple:
    return tuple(v if isinstance(v, int) else round(float(v), 6) for v in values)


def check_label_values(label_array: np.ndarray, allowed: Iterable[int], path: Path) -> None:
    """Every voxel value is one of ``allowed``; else name the file and the unexpected values."""
    allowed = sorted(set(allowed))
    unexpected = np.setdiff1d(np.unique(label_array), allowed)
    if unexpected.size:
        shown = ", ".join(str(v) for v in unexpected[:10].tolist())
        more = f" and {unexpected.size - 10} more" if unexpected.size > 10 else ""
        raise ConversionError(f"{path}: label values {shown}{more} found; expected only "
                              f"{', '.join(str(v) for v in allowed)}")


def name_files(paths: Sequence[object], limit: int = 10) -> str:
    """Up to ``limit`` paths, comma-separated, then how many more."""
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def write_image(image: sitk.Image, path: Path) -> None:
    """Write compressed (``.nii.gz``); ITK's many-line error (a full disk, a quota) becomes one sentence."""
    try:
        sitk.WriteImage(image, str(path), True)
    except RuntimeError as e:
        raise ConversionError(f"cannot write {path}: {image_files.short_itk_message(e)}") from e


# --------------------------------------------------------------------------------------------
# dataset.json
# --------------------------------------------------------------------------------------------
def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def write_dataset_json(output_dir: Path, *, channel_names: dict, labels: dict, split: Split,
                       split_info: dict, source: dict, converter: str, converter_version: str,
                       command: str, dataset_name: str, file_ending: str = NIFTI_ENDING,
                       reference: str | None = None, licence: str | None = None,
                       description: str | None = None, regions_class_order: Sequence[int] | None = None,
                       extra: dict | None = None) -> None:
    """nnU-Net's ``generate_dataset_json`` plus the semi-supervised record.

    ``labels`` may hold regions (tuples of values, nnU-Net's region format) with their
    ``regions_class_order``; ``extra`` adds keys of the converter's own.

    Adds ``numUnlabeled`` and ``numTest``, ``ssl_split`` (the IDs per role as written, plus
    ``split_info``: how the split was made, the lists used) and ``conversion`` (the source, the
    converter and its version, package versions and the command line). The split is stored
    under ``ssl_split``, not ``dataset``: nnU-Net reads a ``dataset`` key as its file list.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        os.fspath(output_dir),
        channel_names=dict(channel_names),
        labels={name: list(value) if isinstance(value, tuple) else value for name, value in labels.items()},
        num_training_cases=len(split.labeled),
        regions_class_order=tuple(regions_class_order) if regions_class_order is not None else None,
        file_ending=file_ending,
        dataset_name=dataset_name,
        reference=reference,
        description=description,
        license=licence or "see the source dataset's terms of use",
        converted_by=f"{converter} {converter_version}",
        numUnlabeled=len(split.unlabeled),
        numTest=len(split.test),
        ssl_split={**split.to_json(), **split_info},
        conversion={
            "converter": converter,
            "converter_version": converter_version,
            "nnunet_ccesemi_version": _version_of("nnunet_ccesemi"),
            "nnunetv2_version": _version_of("nnunetv2"),
            "command_line": command,
            "source": source,
        },
        **(extra or {}),
    )


def run_converter(prog: str, parser: argparse.ArgumentParser,
                  convert: Callable[[argparse.Namespace, str], dict], argv: Sequence[str] | None,
                  describe: Callable[[dict], str]) -> int:
    """The shared ``main`` of the converters: parse, convert, print a :class:`ConversionError` or an
    ``OSError`` as one line (exit status 1) or ``wrote <dataset> in <s> s: <describe(counts)>`` (exit status 0)."""
    import time

    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = convert(args, command_line(argv, prog))
    except (ConversionError, WorkerDiedError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an unwritable -o, -o naming a file, a full disk: str(e) names the path
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {counts['dataset']} in {time.perf_counter() - start:.1f} s: {describe(counts)}")
    return 0
