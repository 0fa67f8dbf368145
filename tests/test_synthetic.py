"""The synthetic datasets: a cohort drawn with more variation than the labelled cases."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ccesemi.cli import demo as demo_module
from nnunet_ccesemi.cli.demo import WORKDIR_MARKER, demo_spec, prepare_workdir
from nnunet_ccesemi.cli.demo import main as demo_main
from nnunet_ccesemi.data.synthetic import SyntheticSpec, Variation, synthetic_case, write_synthetic_dataset


def test_variation_changes_what_it_names_only():
    spec = SyntheticSpec(shape=(8, 16, 16))
    clean, label_clean = synthetic_case(np.random.default_rng(3), spec, Variation(noise_range=(0.5, 0.5)))
    noisy, label_noisy = synthetic_case(np.random.default_rng(3), spec, Variation(noise_range=(1.0, 1.0)))
    np.testing.assert_array_equal(label_clean, label_noisy)  # same organ, same field: only the noise differs
    assert abs(float((noisy - clean).std()) - 0.5) < 0.05


def test_demo_cohort_varies_more_than_its_labelled_cases(tmp_path):
    spec = demo_spec()
    assert spec.cohort.noise_range[1] > spec.labeled.noise_range[1]
    assert spec.cohort.bias_strength > spec.labeled.bias_strength
    folder = write_synthetic_dataset(str(tmp_path), 991, spec=spec)
    meta = json.loads((tmp_path / "Dataset991_CCESemiDemo" / "dataset.json").read_text())
    assert (meta["numTraining"], meta["numUnlabeled"]) == (spec.n_labeled, spec.n_unlabeled)

    def radius_spread(subfolder: str) -> float:
        volumes = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).sum()
                   for p in sorted((tmp_path / folder / subfolder).glob("*.nii.gz"))]
        return float(np.ptp(volumes))

    assert radius_spread("labelsTs") > radius_spread("labelsTr")  # organ sizes range wider in the cohort


def test_demo_overwrite_deletes_only_a_folder_the_demo_made(tmp_path):
    users_folder = tmp_path / "my_scans"
    users_folder.mkdir()
    (users_folder / "case_0000.nii.gz").write_bytes(b"precious")
    with pytest.raises(ValueError, match="refuses to delete .*my_scans"):
        prepare_workdir(str(users_folder), overwrite=True)
    assert (users_folder / "case_0000.nii.gz").read_bytes() == b"precious"
    with pytest.raises(ValueError, match="pass --overwrite"):
        prepare_workdir(str(users_folder), overwrite=False)

    workdir = tmp_path / "demo"
    prepare_workdir(str(workdir), overwrite=False)
    (workdir / "nnUNet_results").mkdir()
    (workdir / "anything the demo wrote").write_text("x")
    prepare_workdir(str(workdir), overwrite=True)  # marked: deleted and made again
    assert sorted(p.name for p in workdir.iterdir()) == [WORKDIR_MARKER]

    nnunet_data = tmp_path / "nnunet"  # a user's nnU-Net folder has the demo's layout, but no marker
    (nnunet_data / "nnUNet_raw" / "Dataset001_Mine").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a folder the demo made"):
        prepare_workdir(str(nnunet_data), overwrite=True)
    assert (nnunet_data / "nnUNet_raw" / "Dataset001_Mine").is_dir()


def test_demo_refuses_a_bad_dataset_id_and_names_a_failed_step(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        demo_main(["--workdir", str(tmp_path / "demo"), "--dataset-id", "1000"])
    assert "--dataset-id must be between 1 and 999" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # only 3d_fullres is preprocessed: a 2d run would fail in nnUNetv2_train
        demo_main(["--workdir", str(tmp_path / "demo"), "--configuration", "2d"])
    assert "invalid choice: '2d'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
    monkeypatch.setattr(demo_module, "command_path", lambda name: "false")
    with pytest.raises(demo_module.DemoStepFailed, match="nnUNetv2_plan_and_preprocess exited with status 1"):
        demo_module.run(["nnUNetv2_plan_and_preprocess", "-d", "990"], env=dict(os.environ))
