"""Your own images and labels to an nnU-Net raw dataset with a semi-supervised split.

Input folders (3D images in any format SimpleITK reads: ``.nii.gz``, ``.nii``, ``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``, ``.gipl``, ``.gipl.gz``):

* ``--images DIR --labels DIR``: the labelled cases. The labels name the cases:
  ``<labels>/<case><label-suffix>.<ext>`` (``--label-suffix``, default none, e.g. ``_seg``). With a
  label suffix both may be one folder (``case7.nii.gz`` beside ``case7_seg.nii.gz``); so may
  ``--test-images`` and ``--test-labels``.
* ``--unlabeled DIR`` (optional): unlabelled cases, written to ``imagesUnlabeled``.
* ``--test-images DIR`` (optional) and ``--test-labels DIR`` (optional): test cases, written to
  ``imagesTs`` (and ``labelsTs``).

Channels. With ``--channel-suffixes S1 S2 ...`` channel k of a case is ``<case><Sk>.<ext>``
(e.g. ``--channel-suffixes _t1 _t2`` for ``case7_t1.nrrd`` + ``case7_t2.nrrd``). Without it the
naming is detected from the labelled cases: nnU-Net's ``<case>_0000.<ext>``, ``<case>_0001.<ext>``
... if every label has a ``<case>_0000`` image, else one file ``<case>.<ext>`` per case. The
unlabelled and test folders must follow the same naming, and every case needs every channel.
Channel names (they choose nnU-Net's normalisation: ``CT`` gets CT normalisation, others
z-scoring): ``--channel-names CT`` (one per channel) or ``--channel-names-json FILE`` (a list, or
``{"0": "T1", "1": "T2"}``); default ``channel0``, ``channel1``...

Labels. Integer values, read from the data. Name them with ``--label-names background liver
tumour`` (value = position) or ``--labels-json FILE`` (``{"background": 0, "liver": 1}``); the
values must be 0, 1, ..., K (nnU-Net's rule) with ``background`` = 0, and a label file holding any
other value is an error naming the file. Without names, the values found in the training label files
must be 0, 1, ..., K (a gap is an error naming the values and the files that hold the values above it);
they are named ``background``, ``label1``, ``label2``..., and a test label holding a value no training
label holds is an error naming it (a class never trained on). ``--label-map 255=1`` rewrites values as
they are read (masks saved as 0/255; values not listed are kept), before any of these checks.

Every image and label is checked (3D, one value per voxel; all channels and the label on the first
channel's grid: size, spacing, origin, direction) and written as ``.nii.gz`` with its geometry.
Split: labelled = every case of ``--images``/``--labels``, unlabelled = ``--unlabeled``, test =
``--test-images``; a case ID in two of them is an error. Output
``<nnUNet_raw>/DatasetXXX_<name>/`` with ``imagesTr``, ``labelsTr``, ``imagesUnlabeled``,
``imagesTs`` (+ ``labelsTs``) and ``dataset.json``, written to a temporary sibling folder and moved
into place when complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ccesemi.parallel import run_jobs

from .common import (NIFTI_ENDING, ConversionError, Split, add_output_arguments, case_id_problem,
                     atomic_dataset_dir, check_channel_grid, check_dataset_id_free, check_label_values,
                     check_same_grid, check_scalar_volume, dataset_folder_name, option_files,
                     name_files, read_image, resolve_output_root, write_dataset_json,
                     write_image, run_converter)

CONVERTER = "nnunet_ccesemi.dataset_conversion.convert_folder"
CONVERTER_VERSION = "1.0"
PROG = "nnUNetv2_ccesemi_convert_folder"

# longest first, so that ".nii.gz" wins over ".gz"-less matches
IMAGE_ENDINGS = (".gipl.gz", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl")
COMPANION_ENDINGS = (".raw", ".zraw")  # data files of .mhd/.nhdr headers, not images themselves
_NNUNET_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclasses.dataclass(frozen=True)
class CaseJob:
    """One case: channel files in order, label (None if unlabelled), outputs, allowed values."""

    case_id: str
    channel_files: tuple[Path, ...]
    label: Path | None
    image_outs: tuple[Path, ...]
    label_out: Path | None
    allowed_values: tuple[int, ...] | None
    value_map: tuple[tuple[int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Role:
    """The cases of one role: ``{case: channel files}`` and ``{case: label}`` (may be empty)."""

    images: dict[str, tuple[Path, ...]]
    labels: dict[str, Path]


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------
def split_ending(name: str) -> tuple[str, str] | None:
    """``case.nii.gz`` -> (``case``, ``.nii.gz``); None for other files."""
    lowered = name.lower()
    for ending in IMAGE_ENDINGS:
        if lowered.endswith(ending) and len(name) > len(ending):
            return name[:-len(ending)], name[-len(ending):]
    return None


def index_folder(folder: Path, option: str) -> dict[str, Path]:
    """The image files of a folder by name without ending.

    Raises:
        ConversionError: the folder is missing or holds no image, or two files differ only in
            their ending (which one is meant?).
    """
    if not folder.is_dir():
        raise ConversionError(f"the folder {folder} ({option}) does not exist")
    index: dict[str, Path] = {}
    ignored = []
    broken = sorted(p for p in folder.iterdir() if p.is_symlink() and not p.exists() and not p.name.startswith("."))
    if broken:
        raise ConversionError(f"broken symbolic link(s) in {folder} ({option}): "
                              f"{name_files([f'{p} -> {p.readlink()}' for p in broken])}")
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        parts = split_ending(path.name)
        if parts is None:
            if not path.name.lower().endswith(COMPANION_ENDINGS):
                ignored.append(path.name)
            continue
        if parts[0] in index:
            raise ConversionError(f"two files for {parts[0]} in {folder}: {index[parts[0]].name} "
                                  f"and {path.name}")
        index[parts[0]] = path
    if ignored:
        print(f"note: ignored {len(ignored)} file(s) in {folder} with other endings: "
              f"{name_files(ignored, 5)}", file=sys.stderr)
    if not index:
        raise ConversionError(f"no images in {folder} ({option}); expected files ending in "
                              f"{', '.join(IMAGE_ENDINGS)}")
    return index


def check_case_id(case_id: str, path: Path) -> None:
    """Case IDs become file names: no whitespace or path separators, no leading dot, no ``_seg`` ending."""
    problem = case_id_problem(case_id)
    if problem:
        raise ConversionError(f"{path}: {case_id!r} is {problem}")


def detect_suffixes(image_index: dict[str, Path], label_cases: Sequence[str],
                    images_dir: Path) -> tuple[str, ...]:
    """The channel suffixes from the labelled cases: ``_0000``.. if every label has a
    ``<case>_0000`` image, ``("",)`` if every label has a ``<case>`` image."""
    without_0000 = [case for case in label_cases if f"{case}_0000" not in image_index]
    if not without_0000:
        cases = set(label_cases)
        channels = [int(m.group(2)) for m in map(_NNUNET_CHANNEL.match, image_index)
                    if m and m.group(1) in cases]
        return tuple(f"_{c:04d}" for c in range(max(channels) + 1))
    without_plain = [case for case in label_cases if case not in image_index]
    if not without_plain:
        return ("",)
    raise ConversionError(f"the images in {images_dir} follow neither channel naming: no "
                          f"<case>_0000.<ext> for {name_files(without_0000)}; no <case>.<ext> "
                          f"for {name_files(without_plain)} (other naming: --channel-suffixes)")


def group_channels(index: dict[str, Path], suffixes: Sequence[str],
                   folder: Path) -> dict[str, tuple[Path, ...]]:
    """``{case: (channel 0 file, channel 1 file, ...)}``.

    Raises:
        ConversionError: a file that fits none of the suffixes, or a case without a channel.
    """
    by_length = sorted(suffixes, key=len, reverse=True)  # "_t1ce" before "_t1"
    found: dict[str, dict[int, Path]] = {}
    for stem, path in index.items():
        suffix = next((s for s in by_length if stem.endswith(s) and len(stem) > len(s)), None)
        if suffix is None:
            raise ConversionError(f"{path} does not follow the channel naming "
                                  f"<case>{{{','.join(suffixes)}}}.<ext>")
        case = stem[:len(stem) - len(suffix)]
        check_case_id(case, path)
        found.setdefault(case, {})[suffixes.index(suffix)] = path
    missing = [f"{folder / (case + suffixes[c])}.<ext>" for case, channels in sorted(found.items())
               for c in range(len(suffixes)) if c not in channels]
    if missing:
        raise ConversionError(f"missing channel file(s): {name_files(missing)}")
    return {case: tuple(channels[c] for c in range(len(suffixes)))
            for case, channels in sorted(found.items())}


def check_same_naming(index: dict[str, Path], suffixes: Sequence[str], folder: Path,
                      images_dir: Path, labeled_cases: Sequence[str]) -> None:
    """Refuse nnU-Net channel names (``<case>_0000``) in an unlabelled or test folder when the
    labelled images have one file per case: they would silently become cases ``<case>_0000``.

    Case IDs that end in four digits themselves (``liver_0001``) are a naming scheme, not channel
    names: when the labelled IDs follow it, the other folders may too."""
    if tuple(suffixes) != ("",) or any(_NNUNET_CHANNEL.match(case) for case in labeled_cases):
        return
    channel_named = [path for stem, path in sorted(index.items()) if _NNUNET_CHANNEL.match(stem)]
    if channel_named:
        raise ConversionError(f"{name_files(channel_named)} in {folder} follow nnU-Net's channel "
                              f"naming <case>_0000.<ext>, but the labelled images in {images_dir} "
                              f"have one file <case>.<ext> per case; name both folders alike, or "
                              f"give --channel-suffixes (--channel-suffixes \"\" if these are case IDs "
                              f"that end in four digits)")


def _has_suffix(stem: str, suffix: str) -> bool:
    return stem.endswith(suffix) and len(stem) > len(suffix)


def _labels_by_case(index: dict[str, Path], label_suffix: str) -> dict[str, Path]:
    labels = {}
    for stem, path in index.items():
        case = stem[:len(stem) - len(label_suffix)] if label_suffix else stem
        check_case_id(case, path)
        labels[case] = path
    return labels


def index_labels(folder: Path, option: str, label_suffix: str) -> dict[str, Path]:
    """``{case: label file}``; every label file must end in ``label_suffix``."""
    index = index_folder(folder, option)
    for stem, path in index.items():
        if label_suffix and not _has_suffix(stem, label_suffix):
            raise ConversionError(f"{path} does not end in the label suffix {label_suffix!r}")
    return _labels_by_case(index, label_suffix)


def index_images_and_labels(images_dir: Path, labels_dir: Path, label_suffix: str, image_option: str,
                            label_option: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """The image files by name without ending, and ``{case: label file}``.

    The two folders may be one when ``label_suffix`` tells the labels apart (``case7.nii.gz`` beside
    ``case7_seg.nii.gz``): files ending in it are labels, the others images.

    Raises:
        ConversionError: one folder for both without a label suffix, or see ``index_folder``.
    """
    if images_dir.resolve() != labels_dir.resolve():  # a symlink or x/../ path may name the same folder
        return index_folder(images_dir, image_option), index_labels(labels_dir, label_option, label_suffix)
    if not label_suffix:
        raise ConversionError(f"{image_option} and {label_option} both name {images_dir}: give --label-suffix "
                              f"(e.g. _seg for case7_seg.nii.gz) so that labels can be told from images")
    index = index_folder(images_dir, image_option)
    images = {stem: path for stem, path in index.items() if not _has_suffix(stem, label_suffix)}
    labels = {stem: path for stem, path in index.items() if _has_suffix(stem, label_suffix)}
    if not images:
        raise ConversionError(f"every file in {images_dir} ({image_option}) ends in the label suffix "
                              f"{label_suffix!r}: no images")
    return images, _labels_by_case(labels, label_suffix)


def match_images_and_labels(images: dict[str, tuple[Path, ...]], labels: dict[str, Path],
                            images_dir: Path, labels_dir: Path) -> None:
    """Every image has a label and every label an image."""
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise ConversionError(f"image(s) in {images_dir} without a label in {labels_dir}: "
                              f"{name_files([images[c][0] for c in unlabelled])}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise ConversionError(f"label(s) in {labels_dir} without an image in {images_dir}: "
                              f"{name_files([labels[c] for c in orphans])}")


def collect_roles(args: argparse.Namespace) -> tuple[dict[str, Role], tuple[str, ...]]:
    """The labelled, unlabelled and test cases, and the channel suffixes."""
    images_dir, labels_dir = Path(args.images).absolute(), Path(args.labels).absolute()
    image_index, labels = index_images_and_labels(images_dir, labels_dir, args.label_suffix, "--images",
                                                  "--labels")
    if args.channel_suffixes:
        repeated = sorted({s for s in args.channel_suffixes if args.channel_suffixes.count(s) > 1})
        if repeated:
            raise ConversionError(f"--channel-suffixes repeats {', '.join(repeated)}: give each channel's "
                                  f"suffix once, in channel order")
    suffixes = (tuple(args.channel_suffixes) if args.channel_suffixes
                else detect_suffixes(image_index, sorted(labels), images_dir))
    images = group_channels(image_index, suffixes, images_dir)
    match_images_and_labels(images, labels, images_dir, labels_dir)
    roles = {"labeled": Role(images, labels), "unlabeled": Role({}, {}), "test": Role({}, {})}

    def other_images(option: str, folder: Path, index: dict[str, Path] | None = None
                     ) -> dict[str, tuple[Path, ...]]:
        index = index_folder(folder, option) if index is None else index
        if not args.channel_suffixes:
            check_same_naming(index, suffixes, folder, images_dir, sorted(images))
        return group_channels(index, suffixes, folder)

    if args.unlabeled:
        roles["unlabeled"] = Role(other_images("--unlabeled", Path(args.unlabeled).absolute()), {})
    if args.test_images:
        folder = Path(args.test_images).absolute()
        if args.test_labels:
            test_labels_dir = Path(args.test_labels).absolute()
            index, test_labels = index_images_and_labels(folder, test_labels_dir, args.label_suffix,
                                                         "--test-images", "--test-labels")
            test_images = other_images("--test-images", folder, index)
            match_images_and_labels(test_images, test_labels, folder, test_labels_dir)
        else:
            test_images, test_labels = other_images("--test-images", folder), {}
        roles["test"] = Role(test_images, test_labels)
    elif args.test_labels:
        raise ConversionError("--test-labels needs --test-images")
    return roles, suffixes


# --------------------------------------------------------------------------------------------
# Names of channels and labels
# --------------------------------------------------------------------------------------------
def _read_json(path: str, option: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path} ({option}): {e}") from e


def channel_names(args: argparse.Namespace, num_channels: int) -> dict[str, str]:
    """``{"0": name, ...}`` from the options (default ``channel0``...)."""
    if args.channel_names_json:
        loaded = _read_json(args.channel_names_json, "--channel-names-json")
        names = (loaded if isinstance(loaded, list)
                 else [loaded.get(str(c)) for c in range(num_channels)]
                 if isinstance(loaded, dict) and len(loaded) == num_channels else None)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConversionError(f"{args.channel_names_json}: expected a list of {num_channels} "
                                  f"channel names or {{\"0\": name, ...}} with keys 0 to "
                                  f"{num_channels - 1}")
    elif args.channel_names:
        names = list(args.channel_names)
    else:
        print("note: no --channel-names; channels named channel0, ... (nnU-Net z-scores them; "
              "name a CT channel 'CT')", file=sys.stderr)
        names = [f"channel{c}" for c in range(num_channels)]
    if len(names) != num_channels:
        raise ConversionError(f"{len(names)} channel name(s) given for {num_channels} "
                              f"channel(s)")
    return {str(c): name for c, name in enumerate(names)}


def label_mapping(args: argparse.Namespace) -> dict[str, int] | None:
    """``{name: value}`` from ``--label-names``/``--labels-json``, checked; None if neither."""
    if args.labels_json:
        where = args.labels_json
        mapping = _read_json(args.labels_json, "--labels-json")
        if not isinstance(mapping, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in mapping.values()):
            raise ConversionError(f"{where}: expected {{\"background\": 0, \"name\": 1, ...}} "
                                  f"with integer values (region labels are not supported)")
    elif args.label_names:
        where = "--label-names"
        if len(set(args.label_names)) != len(args.label_names):
            raise ConversionError(f"--label-names repeats a name: {' '.join(args.label_names)}")
        mapping = {name: value for value, name in enumerate(args.label_names)}
    else:
        return None
    values = sorted(mapping.values())
    if values != list(range(len(values))):
        raise ConversionError(f"{where}: label values {values} are not 0, 1, ..., "
                              f"{len(values) - 1} (nnU-Net needs consecutive values from 0)")
    if mapping.get("background") != 0:
        raise ConversionError(f"{where}: value 0 must be named 'background' (nnU-Net's rule)")
    return dict(sorted(mapping.items(), key=lambda item: item[1]))


def _ranges(values: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``: 254 missing values of a 0/255 mask in one short phrase."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_label_map(pairs: Sequence[str] | None) -> tuple[tuple[int, int], ...]:
    """``["255=1", "128=2"]`` -> ``((255, 1), (128, 2))``.

    Raises:
        ConversionError: a pair that is not ``OLD=NEW`` with integers >= 0, or an OLD given twice.
    """
    parsed: dict[int, int] = {}
    for pair in pairs or ():
        match = re.fullmatch(r"\s*(\d+)\s*=\s*(\d+)\s*", pair)
        if match is None:
            raise ConversionError(f"--label-map takes OLD=NEW pairs of integers >= 0 (e.g. 255=1), got '{pair}'")
        old, new = int(match[1]), int(match[2])
        if old in parsed:
            raise ConversionError(f"--label-map gives value {old} twice")
        parsed[old] = new
    return tuple(sorted(parsed.items()))


def remap_values(array: np.ndarray, value_map: Sequence[tuple[int, int]]) -> np.ndarray:
    """``array`` with each OLD value replaced by its NEW one, all at once (``1=2 2=1`` swaps)."""
    if not value_map:
        return array
    result = array.copy()
    for old, new in value_map:
        result[array == old] = new
    return result


def labels_from_values(found: dict[int, list[Path]]) -> dict[str, int]:
    """Default names for the values found; the values must be 0, 1, ..., K.

    Raises:
        ConversionError: a gap; names the values and the files holding the values above it.
    """
    values = sorted(found)
    if values == [0]:
        raise ConversionError(f"every label file holds only 0 (background), e.g. {name_files(found[0], 3)}: "
                              f"nnU-Net needs at least one foreground class")
    expected = list(range(values[-1] + 1)) if values else [0]
    missing = sorted(set(expected) - set(values))
    if missing:
        above = sorted({path for v in values if v > missing[0] for path in found[v]})
        hint = ""
        if len(values) == 2 and values[0] == 0:  # a binary mask saved as 0/N, most often 0/255
            hint = f"; for binary masks saved as 0/{values[1]} pass --label-map {values[1]}=1"
        raise ConversionError(f"label values {', '.join(map(str, values))} found; nnU-Net needs "
                              f"0, 1, ..., K without gaps (missing: {_ranges(missing)}); values above "
                              f"{missing[0]} are in {name_files(above)}{hint}")
    return {("background" if v == 0 else f"label{v}"): v for v in expected}


def check_test_values(found_in_test: dict[int, list[Path]], labels: dict[str, int]) -> None:
    """Test labels may only hold the classes the training labels define.

    Raises:
        ConversionError: a value no training label holds; names the values and the test files.
    """
    unknown = sorted(set(found_in_test) - set(labels.values()))
    if unknown:
        files = sorted({path for v in unknown for path in found_in_test[v]})
        raise ConversionError(f"test label value(s) {', '.join(map(str, unknown))} in {name_files(files)} are no "
                              f"class of the training labels (classes: "
                              f"{', '.join(map(str, sorted(labels.values())))})")


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------
def read_channels(files: Sequence[Path]) -> list[sitk.Image]:
    """The channels of a case, all on the first one's grid (made exact within tolerance)."""
    images = []
    for path in files:
        image = read_image(path, "image")
        check_scalar_volume(image, path)
        if images:
            check_channel_grid(images[0], image, files[0], path)
            image.CopyInformation(images[0])
        images.append(image)
    return images


def read_label(path: Path, reference: sitk.Image, reference_path: Path, allowed: Sequence[int] | None,
               value_map: Sequence[tuple[int, int]] = ()) -> tuple[sitk.Image, tuple[int, ...]]:
    """The label as uint8/uint16 on the reference grid (``value_map`` applied), and the values in it."""
    label = read_image(path, "label")
    check_scalar_volume(label, path)
    check_same_grid(reference, label, reference_path, path)
    array = sitk.GetArrayViewFromImage(label)
    values = np.unique(array)
    if not np.all(values == np.round(values)) or values.min() < 0:
        odd = [v for v in values.tolist() if v != round(v) or v < 0]
        raise ConversionError(f"{path}: label values must be integers >= 0, found "
                              f"{', '.join(str(v) for v in odd[:10])}")
    if value_map:
        array = remap_values(array.astype(np.int64), value_map)
        values = np.unique(array)
    if allowed is not None:
        check_label_values(array, allowed, path)
    if values.max() > np.iinfo(np.uint16).max:
        raise ConversionError(f"{path}: label value {values.max()} is too large (at most "
                              f"{np.iinfo(np.uint16).max})")
    dtype = np.uint8 if values.max() <= np.iinfo(np.uint8).max else np.uint16
    result = sitk.GetImageFromArray(array.astype(dtype))
    result.CopyInformation(reference)
    return result, tuple(int(v) for v in values)


def convert_case(job: CaseJob) -> tuple[str, tuple[int, ...] | None]:
    """Read, check and write one case; returns its ID and label values. Runs in workers."""
    images = read_channels(job.channel_files)
    label, values = (read_label(job.label, images[0], job.channel_files[0], job.allowed_values, job.value_map)
                     if job.label is not None else (None, None))
    for image, path in zip(images, job.image_outs):
        write_image(image, path)
    if label is not None:
        write_image(label, job.label_out)
    return job.case_id, values


def make_jobs(roles: dict[str, Role], out_dir: Path, allowed: tuple[int, ...] | None,
              value_map: tuple[tuple[int, int], ...] = ()) -> list[CaseJob]:
    """One job per case, into imagesTr/labelsTr, imagesUnlabeled or imagesTs(/labelsTs)."""
    folders = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": ("imagesUnlabeled", None),
               "test": ("imagesTs", "labelsTs")}
    jobs = []
    for role_name, role in roles.items():
        images_folder, labels_folder = folders[role_name]
        for case_id, files in role.images.items():
            label = role.labels.get(case_id)
            jobs.append(CaseJob(
                case_id=case_id, channel_files=files, label=label,
                image_outs=tuple(out_dir / images_folder / f"{case_id}_{c:04d}{NIFTI_ENDING}"
                                 for c in range(len(files))),
                label_out=out_dir / labels_folder / f"{case_id}{NIFTI_ENDING}" if label else None,
                allowed_values=allowed, value_map=value_map))
    return jobs


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, metavar="DIR", help="labelled cases' images")
    parser.add_argument("--labels", required=True, metavar="DIR", help="their labels")
    parser.add_argument("--unlabeled", metavar="DIR", help="unlabelled cases' images")
    parser.add_argument("--test-images", metavar="DIR", help="test cases' images")
    parser.add_argument("--test-labels", metavar="DIR", help="test cases' labels")
    parser.add_argument("--label-suffix", default="",
                        help="label files are <case><suffix>.<ext> (e.g. _seg; default none)")
    parser.add_argument("--channel-suffixes", nargs="+", metavar="SUFFIX",
                        help="channel k is <case><SUFFIX k>.<ext> (default: detect _0000.. or "
                             "one file per case)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--channel-names", nargs="+", metavar="NAME",
                       help="one name per channel, e.g. CT (default: channel0, ...)")
    names.add_argument("--channel-names-json", metavar="FILE",
                       help="channel names as a JSON list or {\"0\": name, ...}")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label-names", nargs="+", metavar="NAME",
                        help="label names by value, starting with background")
    labels.add_argument("--labels-json", metavar="FILE",
                        help="JSON {\"background\": 0, \"name\": 1, ...}")
    parser.add_argument("--label-map", nargs="+", metavar="OLD=NEW",
                        help="rewrite label values as they are read, e.g. 255=1 for 0/255 masks "
                             "(values not listed are kept)")
    add_output_arguments(parser, default_name="MyDataset")
    return parser


def convert(args: argparse.Namespace, command: str) -> dict:
    """Check everything, convert into a temporary folder, move it into place; return counts."""
    mapping = label_mapping(args)
    value_map = parse_label_map(args.label_map)
    roles, suffixes = collect_roles(args)
    channels = channel_names(args, len(suffixes))
    split = Split(labeled=tuple(roles["labeled"].images),
                  unlabeled=tuple(roles["unlabeled"].images), test=tuple(roles["test"].images))
    output_root = resolve_output_root(args.output_root)
    folder_name = dataset_folder_name(args.dataset_id, args.name)
    check_dataset_id_free(output_root, folder_name)
    target = output_root / folder_name
    allowed = tuple(sorted(mapping.values())) if mapping is not None else None
    with atomic_dataset_dir(target, overwrite=args.overwrite, sources=[
            path for path in (args.images, args.labels, args.unlabeled, args.test_images,
                              args.test_labels) if path] + option_files(args)) as out_dir:
        folders = ["imagesTr", "labelsTr", "imagesUnlabeled"]
        folders += ["imagesTs"] if split.test else []
        folders += ["labelsTs"] if roles["test"].labels else []
        for folder in folders:
            (out_dir / folder).mkdir()
        jobs = make_jobs(roles, out_dir, allowed, value_map)
        results = run_jobs(convert_case, jobs, num_processes=args.num_processes, description=folder_name)
        found: dict[int, list[Path]] = {}  # training labels: they define the classes
        found_in_test: dict[int, list[Path]] = {}
        for job, (_, values) in zip(jobs, results):
            in_test = job.label_out is not None and job.label_out.parent.name == "labelsTs"
            for value in values or ():
                (found_in_test if in_test else found).setdefault(value, []).append(job.label)
        labels = mapping if mapping is not None else labels_from_values(found)
        check_test_values(found_in_test, labels)
        layout = ("one file per case" if suffixes == ("",)
                  else f"channel suffixes {', '.join(suffixes)}")
        write_dataset_json(
            out_dir, channel_names=channels, labels=labels, split=split,
            split_info={"rule": "labeled = every case in --images/--labels, unlabeled = "
                                "--unlabeled, test = --test-images",
                        "test_labeled": bool(roles["test"].labels)},
            source={"images": str(Path(args.images).absolute()),
                    "labels": str(Path(args.labels).absolute()),
                    "unlabeled": str(Path(args.unlabeled).absolute()) if args.unlabeled else None,
                    "test_images": (str(Path(args.test_images).absolute())
                                    if args.test_images else None),
                    "test_labels": (str(Path(args.test_labels).absolute())
                                    if args.test_labels else None),
                    "channel_layout": layout, "label_values_found": sorted(found),
                    "label_names": "given" if mapping is not None else "from the data",
                    "label_map": {str(old): new for old, new in value_map}},
            converter=CONVERTER, converter_version=CONVERTER_VERSION, command=command,
            dataset_name=folder_name,
            description="Converted with nnUNetv2_ccesemi_convert_folder (imagesUnlabeled holds "
                        "the unlabelled cases)")
    return {"dataset": str(target), "labeled": len(split.labeled),
            "unlabeled": len(split.unlabeled), "test": len(split.test),
            "channels": len(suffixes), "labels": len(labels)}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``nnUNetv2_ccesemi_convert_folder``; returns the exit status."""
    return run_converter(PROG, build_parser(), convert, argv,
                         (lambda c: f"{c['labeled']} labelled (imagesTr/labelsTr), {c['unlabeled']} unlabelled "
                         f"(imagesUnlabeled), {c['test']} test (imagesTs); {c['channels']} channel(s), "
                         f"{c['labels']} label value(s)"))


if __name__ == "__main__":
    sys.exit(main())
