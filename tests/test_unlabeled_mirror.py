"""The preprocessed unlabelled folder mirrors imagesUnlabeled: removed, replaced and moved cases, resumed runs."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import types

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ccesemi.data.layout import (UnlabeledDataError, check_preprocessed_unlabeled, completed_cases,
                                        find_unlabeled_cases, plan_mirror, read_manifest, source_changed,
                                        source_record)
from tests.conftest import copy_dataset

FINGERPRINT_CHECK = dict(dataset_id_hint="Dataset777_Tiny", configuration="3d_cpu", plans_identifier="nnUNetPlans")


def _image(path, seed: int) -> None:
    """A small .nii.gz whose size depends only on its shape (gzip level 0), so a replacement can match it."""
    array = np.random.default_rng(seed).normal(size=(6, 8, 8)).astype(np.float32)
    plain = str(path)[:-3]
    sitk.WriteImage(sitk.GetImageFromArray(array), plain, False)
    with open(plain, "rb") as f:
        data = f.read()
    os.remove(plain)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, compresslevel=0, mtime=0))


def _replace_keeping_time(path, seed: int, same_size: bool = False) -> None:
    """What ``cp -p`` of another scan does: new content, old modification time (and, here, the same size)."""
    status = os.stat(path)
    if same_size:
        _image(path, seed)
        assert os.path.getsize(path) == status.st_size
    else:  # another valid scan on the same grid
        image = sitk.ReadImage(str(path))
        other = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) + np.float32(seed))
        other.CopyInformation(image)
        sitk.WriteImage(other, str(path), True)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


# ------------------------------------------------------------------ units: source records and the plan
def test_a_case_is_in_step_until_its_content_changes(tmp_path):
    path = tmp_path / "u_0000.nii.gz"
    _image(path, 0)
    record = source_record([str(path)])
    assert source_changed(record, [str(path)]) is None
    os.utime(path, ns=(1, 1))  # touched only: same content
    assert source_changed(record, [str(path)]) is None
    _replace_keeping_time(path, 1, same_size=True)
    assert "changed since it was preprocessed" in source_changed(record, [str(path)])
    assert "older version" in source_changed(None, [str(path)])
    other = tmp_path / "u_0001.nii.gz"
    _image(other, 0)
    assert "raw files are now" in source_changed(record, [str(other)])


def test_the_plan_names_removed_moved_changed_and_new_cases(tmp_path):
    files = {}
    for case in ("kept", "changed", "new"):
        files[case] = [str(tmp_path / f"{case}_0000.nii.gz")]
        _image(files[case][0], len(case))
    records = {case: source_record(files[case]) for case in ("kept", "changed")}
    records["gone"] = records["moved"] = records["kept"]
    _replace_keeping_time(tmp_path / "changed_0000.nii.gz", 99, same_size=True)
    plan = plan_mirror(files, {"kept", "changed", "gone", "moved"}, records, labeled_identifiers=["moved"])
    assert plan.remove == {"gone": "its raw files are gone from imagesUnlabeled",
                           "moved": "now a labelled case in imagesTr"}
    assert list(plan.redo) == ["changed"] and plan.new == ["new"] and not plan.in_step
    described = "\n".join(plan.describe())
    assert "2 preprocessed case(s) no longer in imagesUnlabeled" in described and "1 case(s) to redo: changed (" in described
    assert plan_mirror({"kept": files["kept"]}, {"kept"}, records).in_step


# ------------------------------------------------------------------ end to end on the planned tiny dataset
@pytest.fixture
def dataset(planned_dataset, tmp_path, monkeypatch):
    """A damageable copy of the planned dataset, the environment pointing at it (nnU-Net reads it lazily)."""
    copied = copy_dataset(planned_dataset, tmp_path / "copy")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, copied["env"][variable])
    copied["unlabeled"] = copied["preprocessed"] / "nnUNetPlans_3d_fullres_unlabeled"
    with open(copied["raw"] / "dataset.json") as f:
        copied["dataset_json"] = json.load(f)
    return copied


def _training_check(dataset) -> list[str]:
    """What the trainer runs before training: the preprocessed cases checked against the raw folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_ccesemi.data.layout import preprocessing_fingerprint

    plans = PlansManager(str(dataset["preprocessed"] / "nnUNetPlans.json"))
    fingerprint = preprocessing_fingerprint(plans.plans, plans.get_configuration("3d_cpu").configuration)
    labeled = list(get_filenames_of_train_images_and_targets(str(dataset["raw"]), dataset["dataset_json"]))
    raw_cases = find_unlabeled_cases(str(dataset["raw"]), dataset["dataset_json"], labeled)
    return check_preprocessed_unlabeled(str(dataset["unlabeled"]), fingerprint, **FINGERPRINT_CHECK,
                                        raw_cases=raw_cases, labeled_identifiers=labeled)


def _preprocess(dataset) -> dict[str, int]:
    from nnunet_ccesemi.data.preprocess import preprocess_unlabeled
    return preprocess_unlabeled("777", ["3d_cpu"], num_processes=1)


@pytest.mark.integration
def test_removed_replaced_and_moved_cases_are_caught_then_mirrored(dataset, capsys):
    raw, unlabeled = dataset["raw"], dataset["unlabeled"]
    assert _training_check(dataset) == ["unl000", "unl001", "unl002", "unl003"]
    redone_before = (unlabeled / "unl001.b2nd").read_bytes()

    os.remove(raw / "imagesUnlabeled" / "unl000_0000.nii.gz")
    _replace_keeping_time(raw / "imagesUnlabeled" / "unl001_0000.nii.gz", 11)
    shutil.move(raw / "imagesUnlabeled" / "unl002_0000.nii.gz", raw / "imagesTr" / "unl002_0000.nii.gz")
    shutil.copy(raw / "labelsTr" / "lab000.nii.gz", raw / "labelsTr" / "unl002.nii.gz")

    with pytest.raises(UnlabeledDataError) as refused:
        _training_check(dataset)
    message = str(refused.value)
    assert "out of step with imagesUnlabeled" in message
    assert "unl000 (its raw files are gone from imagesUnlabeled)" in message
    assert "unl002 (now a labelled case in imagesTr)" in message
    assert "unl001" in message and "changed since it was preprocessed" in message
    assert "nnUNetv2_ccesemi_preprocess_unlabeled -d Dataset777_Tiny -c 3d_cpu" in message

    assert _preprocess(dataset) == {"3d_cpu": 1}
    printed = capsys.readouterr().out
    assert "removed unl000" in printed and "removed unl002: now a labelled case" in printed
    assert _training_check(dataset) == ["unl001", "unl003"]
    assert completed_cases(str(unlabeled)) == {"unl001", "unl003"}
    assert not any(name.startswith(("unl000", "unl002")) for name in os.listdir(unlabeled))
    assert (unlabeled / "unl001.b2nd").read_bytes() != redone_before
    assert set(read_manifest(str(unlabeled))["sources"]) == {"unl001", "unl003"}
    assert _preprocess(dataset) == {"3d_cpu": 0}  # in step: nothing to do


@pytest.mark.integration
def test_an_interrupted_run_resumes_into_step(dataset, monkeypatch):
    from nnunet_ccesemi.data import preprocess

    raw_unlabeled = dataset["raw"] / "imagesUnlabeled"
    for index in (100, 101, 102):
        shutil.copy(raw_unlabeled / "unl003_0000.nii.gz", raw_unlabeled / f"unl{index}_0000.nii.gz")
    _replace_keeping_time(raw_unlabeled / "unl000_0000.nii.gz", 5)
    real_case, calls = preprocess.preprocess_case, []

    def killed_on_the_third_case(*job):
        calls.append(job[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C or a cluster's time limit in the middle of a run
        real_case(*job)

    monkeypatch.setattr(preprocess, "preprocess_case", killed_on_the_third_case)
    with pytest.raises(KeyboardInterrupt):
        _preprocess(dataset)
    with pytest.raises(UnlabeledDataError, match="out of step"):
        _training_check(dataset)

    monkeypatch.setattr(preprocess, "preprocess_case", real_case)
    assert _preprocess(dataset) == {"3d_cpu": 2}  # the two cases the kill left undone
    assert _training_check(dataset) == ["unl000", "unl001", "unl002", "unl003", "unl100", "unl101", "unl102"]


@pytest.mark.integration
def test_the_record_of_finished_cases_is_not_rewritten_after_every_case(dataset, monkeypatch):
    """Rewriting the whole manifest per case is quadratic on large cohorts; it is saved now and then and at the end."""
    from nnunet_ccesemi.data import preprocess

    raw_unlabeled = dataset["raw"] / "imagesUnlabeled"
    for index in range(100, 106):
        shutil.copy(raw_unlabeled / "unl003_0000.nii.gz", raw_unlabeled / f"unl{index}_0000.nii.gz")
    writes, real_write = [], preprocess._write_manifest
    monkeypatch.setattr(preprocess, "_write_manifest", lambda *args: (writes.append(1), real_write(*args)))
    assert _preprocess(dataset) == {"3d_cpu": 6}
    assert len(writes) == 2  # once before the cases (the plan's removals), once after
    assert set(read_manifest(str(dataset["unlabeled"]))["sources"]) >= {f"unl{i}" for i in range(100, 106)}
    assert _training_check(dataset)[-1] == "unl105"


@pytest.mark.integration
def test_a_truncated_unlabelled_image_stops_preprocessing_before_anything_changes(dataset):
    raw_unlabeled = dataset["raw"] / "imagesUnlabeled"
    os.remove(raw_unlabeled / "unl000_0000.nii.gz")  # would be removed from the preprocessed folder ...
    new = raw_unlabeled / "unl100_0000.nii.gz"
    shutil.copy(raw_unlabeled / "unl003_0000.nii.gz", new)
    new.write_bytes(new.read_bytes()[:300])
    before = sorted(os.listdir(dataset["unlabeled"]))
    with pytest.raises(UnlabeledDataError, match=r"unlabelled image of case 'unl100' .*unl100_0000\.nii\.gz is "
                                                 r"damaged: the gzip stream ends early.*Nothing was preprocessed"):
        _preprocess(dataset)
    assert sorted(os.listdir(dataset["unlabeled"])) == before  # ... but nothing was touched


@pytest.mark.integration
def test_preprocessing_without_its_inputs_names_what_is_missing(dataset):
    before = sorted(os.listdir(dataset["unlabeled"]))
    shutil.move(dataset["raw"] / "imagesTr", dataset["raw"] / "imagesTr.elsewhere")
    with pytest.raises(UnlabeledDataError, match=r"Dataset777_\w+/imagesTr not found: the unlabelled preprocessing "
                                                 r"needs the raw dataset"):
        _preprocess(dataset)
    shutil.move(dataset["raw"] / "imagesTr.elsewhere", dataset["raw"] / "imagesTr")
    os.remove(dataset["preprocessed"] / "dataset.json")
    with pytest.raises(UnlabeledDataError, match=r"Dataset777_\w+/dataset.json not found .* Run "
                                                 r"`nnUNetv2_plan_and_preprocess -d 777`"):
        _preprocess(dataset)
    assert sorted(os.listdir(dataset["unlabeled"])) == before


def test_training_without_the_raw_folder_says_which_check_it_skipped(tmp_path, monkeypatch):
    from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork

    logged = []
    trainer = types.SimpleNamespace(plans_manager=types.SimpleNamespace(dataset_name="Dataset777_Tiny"),
                                    dataset_json={}, unlabeled_folder=str(tmp_path / "pre"),
                                    print_to_log_file=lambda *args: logged.append(" ".join(map(str, args))))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert nnUNetTrainerDualNetwork._raw_unlabeled_cases(trainer) == (None, [])
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert nnUNetTrainerDualNetwork._raw_unlabeled_cases(trainer) == (None, [])
    assert "Skipped the check" in logged[0] and "nnUNet_raw is not set" in logged[0]
    assert "Dataset777_Tiny/imagesUnlabeled is absent" in logged[1]
