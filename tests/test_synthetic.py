"""The synthetic datasets: a cohort drawn with more variation than the labelled cases."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from nnunet_ccesemi.cli.demo import demo_spec
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
