"""Preprocess unlabelled images with exactly the plans of the labelled ones.

nnU-Net's ``DefaultPreprocessor.run_case`` with no segmentation does the cropping, normalisation and
resampling; it returns the 0/-1 "segmentation" that marks the nonzero region, which the training
transforms need for masked normalisation. We store cases as nnU-Net does (``.b2nd`` + ``_seg.b2nd``
+ ``.pkl``) so its own dataset class and loader read them, with ``class_locations = {}`` because an
unlabelled case has no foreground to oversample.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from os.path import isdir, isfile, join

import numpy as np

from nnunet_ccesemi import image_files
from nnunet_ccesemi.atomic import atomic_path
from nnunet_ccesemi.data.layout import (UnlabeledDataError, case_stems, completed_cases, find_unlabeled_cases,
                                        manifest_path,
                                        plan_mirror, preprocessed_unlabeled_folder, preprocessing_fingerprint,
                                        read_manifest, source_record)
from nnunet_ccesemi.parallel import WorkerDiedError, run_jobs

CASE_FILE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")
MANIFEST_WRITE_INTERVAL_S = 10.0  # how often the record of finished cases is saved during a run


def _spatial_dimension(image_file: str) -> int | None:
    """Number of spatial axes of an image file as nnU-Net's ``SimpleITKIO`` reads it, or None when SimpleITK
    cannot tell: a 3D file of a single slice is read like a 2D image (both become (1, 1, y, x))."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(image_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() == 3 and reader.GetSize()[2] == 1:
        return 2
    return reader.GetDimension()


def check_dimensionality(unlabeled_cases: dict[str, list[str]], reference_image: str,
                         reader_class: type | None = None) -> None:
    """Raise when an unlabelled image has another number of spatial axes than a labelled image.

    The headers are read with SimpleITK, so the check only runs where the plans read images with it
    (``reader_class`` a ``SimpleITKIO``, or not given): a dataset planned with ``NibabelIO`` for files ITK
    refuses (sheared affines), or with the TIFF reader, is left to that reader, whose errors name the case.
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    if reader_class is not None and not issubclass(reader_class, SimpleITKIO):
        return
    expected = _spatial_dimension(reference_image)
    if expected is None:
        return
    for case, files in unlabeled_cases.items():
        for image_file in files:
            found = _spatial_dimension(image_file)
            if found is None:
                raise UnlabeledDataError(f"Cannot read the image header of {image_file} (unlabelled case {case!r}).")
            if found != expected:
                raise UnlabeledDataError(
                    f"{image_file} is {found}D but the labelled images are {expected}D (e.g. {reference_image}). "
                    f"Unlabelled images must have the dimensionality of imagesTr.")


def check_image_files(cases: dict[str, list[str]]) -> None:
    """Refuse truncated or unreadable raw files before anything is written."""
    for case, files in cases.items():
        for image_file in files:
            try:
                image_files.check_image_file(image_file, f"unlabelled image of case {case!r}")
            except image_files.ImageFileError as e:
                raise UnlabeledDataError(f"{e}. Nothing was preprocessed.") from e


def preprocess_case(output_folder: str, case: str, image_files: list[str], plans_manager, configuration_manager,
                    dataset_json: dict) -> None:
    """Preprocess one case into a staging folder, then move its files in (``.pkl`` last = complete)."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, seg, properties = preprocessor.run_case(image_files, None, plans_manager, configuration_manager,
                                                  dataset_json)
    if data.shape[0] != len(dataset_json["channel_names"]):
        raise UnlabeledDataError(
            f"unlabelled case {case!r} ({', '.join(image_files)}) holds {data.shape[0]} channel(s); dataset.json "
            f"channel_names expects {len(dataset_json['channel_names'])}")
    non_finite = int(data.size - np.count_nonzero(np.isfinite(data)))
    if non_finite:
        # nnU-Net checks imagesTr for NaN, not imagesUnlabeled; a NaN voxel makes the normalisation's mean NaN,
        # and the whole case would feed NaN to both networks
        raise UnlabeledDataError(
            f"unlabelled case {case!r} ({', '.join(image_files)}) holds NaN or infinite values: {non_finite} of "
            f"{data.size} voxels are not finite after preprocessing. Fix or remove the image.")
    properties["class_locations"] = {}
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    patch_size = tuple(configuration_manager.patch_size)
    blocks_data, chunks_data = comp_blosc2_params(data.shape, patch_size, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch_size, seg.itemsize)

    staging = join(output_folder + ".staging", case)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    nnUNetDatasetBlosc2.save_case(data, seg, properties, join(staging, case), chunks=chunks_data,
                                  blocks=blocks_data, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    for suffix in CASE_FILE_SUFFIXES:
        os.replace(join(staging, case + suffix), join(output_folder, case + suffix))
    shutil.rmtree(staging, ignore_errors=True)


def _preprocess_job(job: tuple) -> None:
    """:func:`preprocess_case` of one job tuple (looked up at call time, so a test can replace it); an error
    nnU-Net's reader or preprocessor raises comes back naming the case and its files."""
    try:
        preprocess_case(*job)
    except UnlabeledDataError:
        raise
    except Exception as e:
        case, files = job[1], job[2]
        raise UnlabeledDataError(f"preprocessing the unlabelled case {case!r} ({', '.join(files)}) failed: "
                                 f"{type(e).__name__}: {e}") from e


def preprocess_unlabeled(dataset_name_or_id: str | int, configurations: list[str],
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 4) -> dict[str, int]:
    """Preprocess ``imagesUnlabeled`` for each configuration; returns cases newly written per configuration.

    Configurations that share a ``data_identifier`` (e.g. ``3d_cpu`` inheriting from ``3d_fullres``)
    share one output folder, which ends up mirroring ``imagesUnlabeled``: cases already done with the
    same plans from the same raw files are skipped; cases made with other plans or from raw files that
    changed since are redone; cases whose raw files are gone (or moved to ``imagesTr``) are removed.
    Every file to preprocess is checked for truncation first, so a damaged file stops the run before
    anything is written or removed.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if not nnUNet_raw or not nnUNet_preprocessed:  # nnU-Net 2.8: path objects, falsy when unset
        raise UnlabeledDataError("Set the environment variables nnUNet_raw and nnUNet_preprocessed (see nnU-Net's "
                                 "documentation/setting_up_paths.md).")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:  # unknown ID or malformed name: nnU-Net explains which
        raise UnlabeledDataError(f"dataset {dataset_name_or_id!r}: {e}") from e
    raw_folder = join(os.fspath(nnUNet_raw), dataset_name)
    preprocessed_folder = join(os.fspath(nnUNet_preprocessed), dataset_name)
    plans_file = join(preprocessed_folder, plans_identifier + ".json")
    if not isfile(plans_file):
        raise UnlabeledDataError(f"Plans file {plans_file} not found. Run `nnUNetv2_plan_and_preprocess -d "
                                 f"{dataset_name_or_id}` (and -pl/-p for custom plans) first.")
    dataset_json_file = join(preprocessed_folder, "dataset.json")
    if not isfile(dataset_json_file):
        raise UnlabeledDataError(f"{dataset_json_file} not found (nnU-Net's preprocessing copies it there). Run "
                                 f"`nnUNetv2_plan_and_preprocess -d {dataset_name_or_id}` (or nnUNetv2_preprocess) "
                                 f"again.")
    with open(dataset_json_file) as f:
        dataset_json = json.load(f)

    plans_manager = PlansManager(plans_file)
    unknown = [c for c in configurations if c not in plans_manager.available_configurations]
    if unknown:  # all of them before any is preprocessed
        raise UnlabeledDataError(f"Configuration {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} "
                                 f"not in {plans_file}; available: {plans_manager.available_configurations}.")
    if "dataset" not in dataset_json and not isdir(join(raw_folder, "imagesTr")):
        raise UnlabeledDataError(f"{join(raw_folder, 'imagesTr')} not found: the unlabelled preprocessing needs the "
                                 f"raw dataset (its labelled cases, and imagesUnlabeled beside them) on this machine.")
    labeled = get_filenames_of_train_images_and_targets(raw_folder, dataset_json)
    if not labeled:
        raise UnlabeledDataError(f"No labelled cases in {join(raw_folder, 'imagesTr')}: the unlabelled images are "
                                 f"preprocessed with the plans of the labelled ones.")
    cases = find_unlabeled_cases(raw_folder, dataset_json, labeled_identifiers=list(labeled))
    check_dimensionality(cases, next(iter(labeled.values()))["images"][0], plans_manager.image_reader_writer_class)
    checked: set[str] = set()

    written = {}
    for configuration in configurations:
        configuration_manager = plans_manager.get_configuration(configuration)
        output_folder = preprocessed_unlabeled_folder(preprocessed_folder, configuration_manager.data_identifier)
        fingerprint = preprocessing_fingerprint(plans_manager.plans, configuration_manager.configuration)
        recorded = read_manifest(output_folder)
        if recorded is not None and recorded.get("fingerprint") == fingerprint:
            sources = recorded.get("sources", {})
            plan = plan_mirror(cases, completed_cases(output_folder), sources, list(labeled))
        else:  # made with other plans, or unknown plans: everything is redone
            sources = {}
            plan = plan_mirror(cases, set(), sources)
        todo = plan.new + list(plan.redo)
        check_image_files({case: cases[case] for case in todo if case not in checked})
        checked.update(todo)

        _start_or_reset(output_folder, recorded, fingerprint)
        for line in plan.describe():
            print(f"{configuration}: {line}")
        for case, reason in plan.remove.items():
            _remove_case(output_folder, case)
            print(f"  removed {case}: {reason}")
        for case in sorted(case_stems(output_folder) - set(cases)):
            _remove_case(output_folder, case)
            print(f"  removed the unfinished files of {case}: its raw files are gone from imagesUnlabeled")
        manifest = {"fingerprint": fingerprint, "plans_name": plans_manager.plans_name,
                    "configuration": configuration,
                    "sources": {case: record for case, record in sources.items()
                                if case in cases and case not in plan.redo}}
        _write_manifest(output_folder, manifest)
        print(f"{configuration}: {len(cases)} unlabelled cases, {len(cases) - len(todo)} in step, "
              f"{len(todo)} to do -> {output_folder}")

        last_write = time.monotonic()

        def record_source(job: tuple) -> None:
            nonlocal last_write
            case = job[1]
            manifest["sources"][case] = source_record(cases[case])
            # rewriting the whole manifest after every case costs O(cases^2) on large cohorts; a case
            # finished but not yet recorded when the process is killed is merely redone next time
            if time.monotonic() - last_write >= MANIFEST_WRITE_INTERVAL_S:
                _write_manifest(output_folder, manifest)
                last_write = time.monotonic()

        jobs = [(output_folder, case, cases[case], plans_manager, configuration_manager, dataset_json)
                for case in todo]
        try:
            run_jobs(_preprocess_job, jobs, num_processes=num_processes,
                     description=f"Preprocessing unlabelled cases ({configuration})", on_done=record_source)
        except WorkerDiedError as e:
            raise UnlabeledDataError(f"{e}; the cases finished so far are kept and skipped.") from e
        finally:  # also on Ctrl-C or an error: what finished is recorded
            _write_manifest(output_folder, manifest)
        shutil.rmtree(output_folder + ".staging", ignore_errors=True)
        written[configuration] = len(todo)
    return written


def _start_or_reset(output_folder: str, recorded: dict | None, fingerprint: str) -> None:
    """Create the output folder; empty it when it was made with other or unknown plans (derived data)."""
    if recorded is not None and recorded.get("fingerprint") != fingerprint:
        print(f"{output_folder} was made with other plans (fingerprint {recorded.get('fingerprint')}); "
              f"preprocessing it again.")
        shutil.rmtree(output_folder, ignore_errors=True)
    elif recorded is None and os.path.isdir(output_folder) and os.listdir(output_folder):
        # no manifest: plans and sources unknown, so the cases cannot be trusted (derived data only)
        print(f"{output_folder} has no record of the plans and raw files it was made from "
              f"({os.path.basename(manifest_path(output_folder))} is missing or unreadable); preprocessing it again.")
        shutil.rmtree(output_folder)
    os.makedirs(output_folder, exist_ok=True)


def _remove_case(output_folder: str, case: str) -> None:
    for suffix in CASE_FILE_SUFFIXES:
        path = join(output_folder, case + suffix)
        if os.path.exists(path):
            os.remove(path)


def _write_manifest(output_folder: str, manifest: dict) -> None:
    with atomic_path(manifest_path(output_folder)) as tmp, open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
