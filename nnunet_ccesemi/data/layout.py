"""Where unlabelled cases live, raw and preprocessed, and how their files are checked.

Raw: ``nnUNet_raw/DatasetXXX_Name/imagesUnlabeled/<case>_<XXXX><file_ending>``, with the channel
naming and file ending of ``imagesTr``. Preprocessed: ``nnUNet_preprocessed/DatasetXXX_Name/
<data_identifier>_unlabeled/`` beside nnU-Net's own ``<data_identifier>/`` (which
``nnUNetv2_preprocess`` deletes and rebuilds, and whose every case counts as labelled), plus a
manifest ``<data_identifier>_unlabeled.json`` recording the plans the cases were made with and, per
case, the raw files it was made from (a json file inside the folder would break nnU-Net's dataset-class
inference).

The preprocessed folder mirrors ``imagesUnlabeled``: a case is in step when its raw files have the
recorded names and contents. Contents are compared by SHA-256 each time, not by modification time:
a copy that keeps times (``cp -p``, ``rsync -a``, unpacking an archive) can replace a file without
changing its time or size, and hashing costs about 1 s per GB of raw files here (1.2 GB/s), little
next to starting a training.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from os.path import basename, isdir, isfile, join

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
UNLABELED_SUFFIX = "_unlabeled"
PREPROCESS_COMMAND = "nnUNetv2_ccesemi_preprocess_unlabeled"


_NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif")  # nnU-Net's NaturalImage2DIO.supported_file_endings
# nnU-Net's Tiff3DIO reads a case's spacing from <case>.json beside <case>_0000.tif
_SIDECAR_ENDINGS = (".tif", ".tiff")


class UnlabeledDataError(RuntimeError):
    """Unlabelled data that are missing, malformed or inconsistent with the labelled cases."""


def raw_unlabeled_folder(raw_dataset_folder: str) -> str:
    return join(os.fspath(raw_dataset_folder), UNLABELED_RAW_FOLDER)


def preprocessed_unlabeled_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    return join(os.fspath(preprocessed_dataset_folder), data_identifier + UNLABELED_SUFFIX)


def manifest_path(unlabeled_folder: str) -> str:
    return unlabeled_folder.rstrip(os.sep) + ".json"


def preprocessing_fingerprint(plans: dict, configuration: dict) -> str:
    """Hash of everything that shapes a preprocessed case: two folders with equal fingerprints hold
    data that one network can be trained on."""
    relevant = {
        "transpose_forward": plans.get("transpose_forward"),
        "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
        "image_reader_writer": plans.get("image_reader_writer"),
        **{key: configuration.get(key) for key in (
            "data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
            "resampling_fn_data", "resampling_fn_data_kwargs")},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict,
                         labeled_identifiers: list[str] | None = None) -> dict[str, list[str]]:
    """Map each unlabelled case ID to its channel files, in channel order.

    Raises:
        UnlabeledDataError: folder missing or empty; a file not named ``<case>_<XXXX><file_ending>``;
            a case whose channels differ from ``dataset.json``'s ``channel_names``; an ID that is also
            a labelled case, or one ending in ``_seg``.
    """
    folder = raw_unlabeled_folder(raw_dataset_folder)
    cases = find_cases(folder, dataset_json, "unlabelled")
    # case "x_seg" is preprocessed to x_seg.b2nd, which nnU-Net's layout reads as the segmentation of case
    # "x": the case would be lost, and the clean-up of cases without raw images would delete its data
    seg_named = sorted(case for case in cases if case.endswith("_seg"))
    if seg_named:
        raise UnlabeledDataError(
            f"Unlabelled case ID(s) {seg_named[:5]} in {folder} end in '_seg', which nnU-Net's preprocessed "
            f"layout reserves for segmentations (<case>_seg.b2nd). Rename them (e.g. {seg_named[0][:-4]}-seg).")
    if labeled_identifiers:
        collisions = sorted(set(cases) & set(labeled_identifiers))
        if collisions:
            raise UnlabeledDataError(
                f"Unlabelled case ID(s) {collisions[:5]} in {folder} are also labelled cases in imagesTr. "
                f"Rename them: a case is either labelled or unlabelled.")
    return cases


def find_cases(folder: str, dataset_json: dict, role: str, *, as_prediction_input: bool = False
               ) -> dict[str, list[str]]:
    """Map each case ID of an image folder in nnU-Net's input layout to its channel files, in channel order;
    ``role`` names the images in errors ("unlabelled", "input"). ``as_prediction_input``: the folder is
    read as ``nnUNetv2_predict`` reads it: files with other endings are passed over instead of refused,
    and hidden files with the dataset's ending (macOS ``._`` files), which it would take for cases, are
    refused instead of passed over.

    Raises:
        UnlabeledDataError: folder missing or empty (or holding folders instead of images); a file not
            named ``<case>_<XXXX><file_ending>``; a case whose channels differ from ``channel_names``.
    """
    file_ending = dataset_json["file_ending"]
    # nnU-Net still reads dataset.json files of its first versions, which name the channels "modality"
    channel_names = dataset_json.get("channel_names") or dataset_json["modality"]
    expected_channels = list(range(len(channel_names)))
    pattern_help = f"<case>_<XXXX>{file_ending} (e.g. case001_0000{file_ending})"
    if not isdir(folder):
        raise UnlabeledDataError(
            f"No {role} images: the folder {folder} does not exist. Put {role} images there, named "
            f"{pattern_help}, like imagesTr.")

    pattern = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending))
    channels_by_case: dict[str, dict[int, str]] = {}
    misnamed, subfolders, sidecars, hidden = [], [], [], []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            if as_prediction_input and name.endswith(file_ending) and not isdir(join(folder, name)):
                hidden.append(name)
            continue
        if isdir(join(folder, name)):
            subfolders.append(name)
            continue
        if as_prediction_input and not name.endswith(file_ending):
            continue
        match = pattern.fullmatch(name)
        if match is None:
            (sidecars if file_ending in _SIDECAR_ENDINGS and name.endswith(".json") else misnamed).append(name)
            continue
        channels_by_case.setdefault(match["case"], {})[int(match["channel"])] = join(folder, name)
    misnamed += [name for name in sidecars if name[:-len(".json")] not in channels_by_case]  # no images
    if hidden:
        shown = ", ".join(hidden[:5]) + (" ..." if len(hidden) > 5 else "")
        raise UnlabeledDataError(
            f"{len(hidden)} hidden file(s) in {folder} end in {file_ending}, and nnU-Net would read them as cases "
            f"(macOS ._ files?): {shown}. Remove them.")
    if not channels_by_case and subfolders:  # e.g. a dataset's root instead of its image folder
        raise UnlabeledDataError(
            f"No {role} images: {folder} holds folders ({', '.join(subfolders[:5])}) but no {pattern_help} "
            f"files. Pass the folder of the images themselves (e.g. {join(folder, subfolders[0])}).")
    if misnamed:
        shown = ", ".join(misnamed[:5]) + (" ..." if len(misnamed) > 5 else "")
        raise UnlabeledDataError(
            f"{len(misnamed)} file(s) in {folder} are not named {pattern_help} (dataset.json file_ending is "
            f"{file_ending!r}): {shown}")
    if not channels_by_case:
        raise UnlabeledDataError(f"No {role} images: {folder} holds no {pattern_help} files.")

    # nnU-Net's natural-image reader takes an RGB(A) file as all its channels: case_0000.png holds R, G, B
    all_in_one = file_ending in _NATURAL_IMAGE_ENDINGS and len(expected_channels) > 1
    for case, channels in channels_by_case.items():
        if all_in_one and sorted(channels) == [0]:
            continue
        if sorted(channels) != expected_channels:
            found = ", ".join(f"_{c:04d}" for c in sorted(channels))
            expected = ", ".join(f"_{c:04d} ({channel_names[str(c)]})" for c in expected_channels)
            raise UnlabeledDataError(
                f"{role.capitalize()} case {case!r} in {folder} has channel files {found}; dataset.json "
                f"channel_names expects exactly {expected}.")
    return {case: [channels[c] for c in sorted(channels)] for case, channels in channels_by_case.items()}


def case_stems(unlabeled_folder: str) -> set[str]:
    """Every case with at least one file in the folder, complete or not."""
    if not isdir(unlabeled_folder):
        return set()
    stems = set()
    for name in os.listdir(unlabeled_folder):
        for suffix in ("_seg.b2nd", ".b2nd", ".pkl"):
            if name.endswith(suffix):
                stems.add(name[:-len(suffix)])
                break
    return stems


def completed_cases(unlabeled_folder: str) -> set[str]:
    """Cases whose three files are all in place (the ``.pkl`` is moved in last)."""
    if not isdir(unlabeled_folder):
        return set()
    names = set(os.listdir(unlabeled_folder))
    return {name[:-4] for name in names if name.endswith(".pkl")
            and name[:-4] + ".b2nd" in names and name[:-4] + "_seg.b2nd" in names}


def read_manifest(unlabeled_folder: str) -> dict | None:
    """The manifest of a preprocessed unlabelled folder, or None when there is none or it cannot be read
    (edited by hand, or damaged): either way the folder's plans and sources are unknown."""
    path = manifest_path(unlabeled_folder)
    if not isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):  # ValueError: invalid JSON or UTF-8
        return None
    return manifest if isinstance(manifest, dict) else None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def raw_files(image_files: list[str]) -> list[str]:
    """A case's channel files and the spacing file nnU-Net's 3D TIFF reader takes from beside them."""
    first = image_files[0]
    ending = next((e for e in _SIDECAR_ENDINGS if first.endswith(e)), None)
    sidecar = first[:-len(ending) - len("_0000")] + ".json" if ending else None
    return image_files + [sidecar] if sidecar and isfile(sidecar) else image_files


def source_record(image_files: list[str]) -> list[dict]:
    """What a preprocessed case was made from: per raw file (:func:`raw_files`) its name, size and SHA-256."""
    return [{"file": basename(path), "size": os.path.getsize(path), "sha256": file_sha256(path)}
            for path in raw_files(image_files)]


def source_changed(record: list[dict] | None, image_files: list[str]) -> str | None:
    """Why the raw files no longer match ``record`` (a sentence), or None when they do."""
    if not record:
        return "no record of its raw files (made by an older version of the plugin)"
    image_files = raw_files(image_files)
    names = [basename(path) for path in image_files]
    if [entry["file"] for entry in record] != names:
        return f"its raw files are now {names}, it was made from {[entry['file'] for entry in record]}"
    for path, entry in zip(image_files, record):
        if os.path.getsize(path) != entry["size"] or file_sha256(path) != entry["sha256"]:
            return f"{path} changed since it was preprocessed"
    return None


@dataclass
class MirrorPlan:
    """How a preprocessed unlabelled folder differs from ``imagesUnlabeled``; each dict maps case -> reason."""
    remove: dict[str, str] = field(default_factory=dict)
    redo: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)

    @property
    def in_step(self) -> bool:
        return not (self.remove or self.redo or self.new)

    def describe(self, limit: int = 5) -> list[str]:
        """One line per kind of difference, naming up to ``limit`` cases with their reasons."""
        def listed(items: dict[str, str]) -> str:
            shown = "; ".join(f"{case} ({reason})" for case, reason in list(items.items())[:limit])
            return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")

        lines = []
        if self.remove:
            lines.append(f"{len(self.remove)} preprocessed case(s) no longer in imagesUnlabeled: {listed(self.remove)}")
        if self.redo:
            lines.append(f"{len(self.redo)} case(s) to redo: {listed(self.redo)}")
        if self.new:
            shown = ", ".join(self.new[:limit]) + (" ..." if len(self.new) > limit else "")
            lines.append(f"{len(self.new)} case(s) in imagesUnlabeled not preprocessed yet: {shown}")
        return lines


def plan_mirror(raw_cases: dict[str, list[str]], preprocessed: set[str], records: dict[str, list[dict]],
                labeled_identifiers: list[str] = ()) -> MirrorPlan:
    """Compare the preprocessed cases (and their source records) with the raw unlabelled cases."""
    plan = MirrorPlan()
    labeled = set(labeled_identifiers)
    for case in sorted(preprocessed - set(raw_cases)):
        plan.remove[case] = ("now a labelled case in imagesTr" if case in labeled
                             else "its raw files are gone from imagesUnlabeled")
    for case in sorted(preprocessed & set(raw_cases)):
        reason = source_changed(records.get(case), raw_cases[case])
        if reason:
            plan.redo[case] = reason
    plan.new = sorted(set(raw_cases) - preprocessed)
    return plan


def check_preprocessed_unlabeled(unlabeled_folder: str, fingerprint: str, dataset_id_hint: str,
                                 configuration: str, plans_identifier: str,
                                 raw_cases: dict[str, list[str]] | None = None,
                                 labeled_identifiers: list[str] = ()) -> list[str]:
    """The preprocessed unlabelled case IDs, after checking they exist, match the training plans and,
    when ``raw_cases`` (from :func:`find_unlabeled_cases`) is given, mirror the raw folder.

    Raises:
        UnlabeledDataError: naming the command to run when the folder is missing, empty,
            incomplete, made with other plans, or out of step with ``imagesUnlabeled``.
    """
    command = f"{PREPROCESS_COMMAND} -d {dataset_id_hint} -c {configuration} -p {plans_identifier}"
    if not isdir(unlabeled_folder) or not completed_cases(unlabeled_folder):
        raise UnlabeledDataError(
            f"No preprocessed unlabelled cases in {unlabeled_folder}. Run `{command}` first (it reads "
            f"imagesUnlabeled/ of the raw dataset).")
    manifest = read_manifest(unlabeled_folder)
    if manifest is None:
        raise UnlabeledDataError(f"{manifest_path(unlabeled_folder)} is missing or unreadable, so the plans of "
                                 f"{unlabeled_folder} are unknown. Run `{command}` again.")
    recorded = manifest.get("fingerprint")
    if recorded != fingerprint:
        raise UnlabeledDataError(
            f"The unlabelled cases in {unlabeled_folder} were preprocessed with other plans than this training "
            f"(fingerprint {recorded} != {fingerprint}). Run `{command}` to redo them.")
    names = set(os.listdir(unlabeled_folder))
    incomplete = sorted(n[:-5] for n in names if n.endswith(".b2nd") and not n.endswith("_seg.b2nd")
                        and n[:-5] + ".pkl" not in names)
    if incomplete:
        raise UnlabeledDataError(
            f"Unlabelled case(s) {incomplete[:5]} in {unlabeled_folder} are incomplete (interrupted "
            f"preprocessing?). Run `{command}` again: it finishes them.")
    done = completed_cases(unlabeled_folder)
    if raw_cases is not None:
        plan = plan_mirror(raw_cases, done, manifest.get("sources", {}), labeled_identifiers)
        if not plan.in_step:
            raise UnlabeledDataError(
                f"The preprocessed unlabelled cases in {unlabeled_folder} are out of step with imagesUnlabeled:\n  "
                + "\n  ".join(plan.describe()) + f"\nRun `{command}` to bring them in step.")
    return sorted(done)
