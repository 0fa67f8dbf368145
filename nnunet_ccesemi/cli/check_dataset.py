"""``nnUNetv2_ccesemi_check_dataset``: find truncated image files in a raw dataset before nnU-Net reads them as zeros.

nnU-Net's own reading (``nnUNetv2_plan_and_preprocess``, even with ``--verify_dataset_integrity``)
accepts a truncated ``.nii.gz`` in ``imagesTr``/``labelsTr``: the missing part of the volume becomes
zeros, so a black image or an empty label is trained on. This command checks every file of the raw
dataset (``imagesTr``, ``labelsTr``, ``imagesUnlabeled``, ``imagesVal``, ``labelsVal``, ``imagesTs`` and
``labelsTs`` where present) with :func:`nnunet_ccesemi.image_files.check_image_file`, lists every
damaged file and exits 1 if there is one. It reads but never writes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from os.path import isdir, isfile, join

from tqdm import tqdm

from nnunet_ccesemi.cli.plans import dataset_name
from nnunet_ccesemi.image_files import ImageFileError, check_image_file, checked_endings, has_check

FOLDERS = ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesVal", "labelsVal", "imagesTs", "labelsTs")


def damaged_files(raw_dataset_folder: str, file_ending: str, progress: bool = False) -> tuple[int, list[str]]:
    """The number of files found and one sentence per damaged (or unreadable) file."""
    files = [join(raw_dataset_folder, folder, name) for folder in FOLDERS if isdir(join(raw_dataset_folder, folder))
             for name in sorted(os.listdir(join(raw_dataset_folder, folder))) if name.endswith(file_ending)]
    problems = []
    for path in tqdm(files, desc="Checking image files", disable=not progress):
        what = "label" if os.path.basename(os.path.dirname(path)).startswith("labels") else "image"
        try:
            check_image_file(path, what)
        except ImageFileError as e:
            problems.append(str(e))
        except OSError as e:  # one unreadable file must not end the scan of the others
            problems.append(f"the {what} {path} cannot be read: {type(e).__name__}: {e.strerror or e}")
    return len(files), problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].replace("``", ""))
    parser.add_argument("-d", required=True, help="dataset name or ID (in nnUNet_raw)")
    args = parser.parse_args(argv)

    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw:
        sys.exit("ERROR: set the environment variable nnUNet_raw (see nnU-Net's documentation/setting_up_paths.md)")
    try:
        name = dataset_name(args.d)
    except FileNotFoundError as e:
        sys.exit(f"ERROR: {e}")
    folder = join(os.fspath(nnUNet_raw), name)
    if not isfile(join(folder, "dataset.json")):
        sys.exit(f"ERROR: {join(folder, 'dataset.json')} not found: is {folder} a raw nnU-Net dataset?")
    try:
        with open(join(folder, "dataset.json"), encoding="utf-8") as f:
            file_ending = json.load(f)["file_ending"]
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or no file_ending in it
        sys.exit(f"ERROR: {join(folder, 'dataset.json')} is not a dataset.json with a \"file_ending\" "
                 f"(e.g. \".nii.gz\"): {type(e).__name__}: {e}")
    checked, problems = damaged_files(folder, file_ending, progress=True)
    if not checked:
        sys.exit(f"ERROR: no {file_ending} files in {', '.join(FOLDERS)} of {folder}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(f"ERROR: {len(problems)} of {checked} files in {folder} are damaged or unreadable (listed above); "
                 f"nothing was changed. Make an unreadable one readable (permissions); copy a damaged one again "
                 f"from its source, then rerun nnUNetv2_plan_and_preprocess for "
                 f"imagesTr/labelsTr and nnUNetv2_ccesemi_preprocess_unlabeled for imagesUnlabeled.")
    if not has_check(file_ending):
        print(f"{checked} {file_ending} files found in {folder}, but their format has no completeness check here "
              f"(checked: {', '.join(checked_endings())}); nnU-Net's own reading reports what it "
              f"cannot read.")
        return
    print(f"All {checked} {file_ending} files in {folder} are complete.")


if __name__ == "__main__":
    main()
