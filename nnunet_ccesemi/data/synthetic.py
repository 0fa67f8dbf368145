"""A small synthetic 3D dataset in nnU-Net's raw layout, with unlabelled and test cases.

Each case is a noisy volume holding one ellipsoid "organ" of random size, position and orientation,
brighter than the background, under a smooth multiplicative bias field (as in MRI) and with a
per-case intensity offset. Anisotropic spacing (1 x 1 x 2, below nnU-Net's ratio of 3 for a separate
z axis, the same in every case, so nothing is resampled to another grid) and a non-trivial origin exercise
the geometry round trip. Used by the demo and the integration tests.

How much the cases vary is a :class:`Variation`, set separately for the labelled cases and for the
cohort (unlabelled and test cases): the demo labels a few homogeneous cases and leaves a cohort that
varies more (a stronger bias field, more noise, a wider range of sizes), as the scans a clinic labels
first tend to be the clean ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from os.path import join

import numpy as np


@dataclass(frozen=True)
class Variation:
    """The ranges a case is drawn from: organ radii (fraction of the half-width), organ contrast over the
    background, the bias field's strength (log-gain per unit distance) and the noise's standard deviation."""
    radius_range: tuple[float, float] = (0.25, 0.5)
    contrast_range: tuple[float, float] = (1.2, 1.2)
    bias_strength: float = 0.3
    noise_range: tuple[float, float] = (0.6, 0.6)


@dataclass(frozen=True)
class SyntheticSpec:
    n_labeled: int = 6
    n_unlabeled: int = 12
    n_test: int = 4
    shape: tuple[int, int, int] = (20, 40, 40)  # (z, y, x), numpy order
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)  # (x, y, z), SimpleITK order
    seed: int = 0
    labeled: Variation = Variation()
    cohort: Variation = Variation()  # unlabelled and test cases


def synthetic_case(rng: np.random.Generator, spec: SyntheticSpec,
                   variation: Variation = Variation()) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair in numpy (z, y, x) order."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in spec.shape], indexing="ij"), axis=-1)
    centre = rng.uniform(-0.35, 0.35, size=3)
    radii = rng.uniform(*variation.radius_range, size=3)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (grid - centre) @ rotation
    label = ((local / radii) ** 2).sum(-1) <= 1.0

    bias = np.exp(variation.bias_strength * (grid @ rng.normal(size=3)))  # smooth multiplicative field
    standard_noise = rng.normal(size=spec.shape)
    offset = rng.uniform(-0.5, 0.5)
    # drawn last and only from a real range, so that the default variation writes the same cases as
    # earlier versions did (tests and published demo figures depend on them)
    contrast, noise = (_draw(rng, variation.contrast_range), _draw(rng, variation.noise_range))
    image = (1.0 + contrast * label) * bias + noise * standard_noise + offset
    return image.astype(np.float32), label.astype(np.uint8)


def _draw(rng: np.random.Generator, value_range: tuple[float, float]) -> float:
    low, high = value_range
    return low if low == high else float(rng.uniform(low, high))


def write_synthetic_dataset(raw_root: str, dataset_id: int, name: str = "CCESemiDemo",
                            spec: SyntheticSpec = SyntheticSpec()) -> str:
    """Write ``DatasetXXX_name`` with imagesTr/labelsTr, imagesUnlabeled and imagesTs/labelsTs; returns its path."""
    import SimpleITK as sitk

    folder = join(os.fspath(raw_root), f"Dataset{dataset_id:03d}_{name}")
    subfolders = ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs")
    for sub in subfolders:
        os.makedirs(join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(spec.seed)

    def save(array: np.ndarray, path: str) -> None:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spec.spacing)
        image.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(image, path, useCompression=True)

    groups = (("imagesTr", "labelsTr", "lab", spec.n_labeled, spec.labeled),
              ("imagesUnlabeled", None, "unl", spec.n_unlabeled, spec.cohort),
              ("imagesTs", "labelsTs", "test", spec.n_test, spec.cohort))
    for image_folder, label_folder, prefix, count, variation in groups:
        for i in range(count):
            image, label = synthetic_case(rng, spec, variation)
            case = f"{prefix}{i:03d}"
            save(image, join(folder, image_folder, f"{case}_0000.nii.gz"))
            if label_folder is not None:
                save(label, join(folder, label_folder, f"{case}.nii.gz"))

    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "organ": 1},
        "numTraining": spec.n_labeled,
        "numUnlabeled": spec.n_unlabeled,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "Synthetic ellipsoids with noise and bias field (nnunet_ccesemi demo)",
    }
    with open(join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder


BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")


def synthetic_brats_case(rng: np.random.Generator, shape: tuple[int, int, int]
                         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(seg with BraTS 2019 values, {modality: int16 image}) in numpy (z, y, x) order: an edema (2)
    ellipsoid around a tumour core whose rim enhances (4) around necrosis (1), so that nnU-Net's BraTS
    regions nest: whole tumour ⊃ tumour core ⊃ enhancing tumour."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    centre, radii = rng.uniform(-0.25, 0.25, 3), rng.uniform(0.45, 0.6, 3)
    distance = np.sqrt((((grid - centre) / radii) ** 2).sum(-1))
    seg = np.zeros(shape, np.uint8)
    seg[distance <= 1.0] = 2
    seg[distance <= 0.65] = 4
    seg[distance <= 0.35] = 1
    brightness = np.zeros(5, np.float32)
    brightness[[2, 4, 1]] = (1.5, 3.0, 0.8)
    base = brightness[seg]
    modalities = {m: (100 * (base * (1 + 0.2 * i) + 0.3 * rng.normal(size=shape)) + 200).astype(np.int16)
                  for i, m in enumerate(BRATS_MODALITIES)}
    return seg, modalities


def write_synthetic_brats_source(root: str, case_ids: list[str], shape: tuple[int, int, int] = (16, 32, 32),
                                 seed: int = 7) -> None:
    """A BraTS 2019 training folder as distributed (``HGG|LGG/<ID>/<ID>_{t1,t1ce,t2,flair,seg}.nii.gz``,
    BraTS-like geometry) of synthetic cases, for ``nnUNetv2_ccesemi_convert_brats19``."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    for index, case_id in enumerate(case_ids):
        folder = join(os.fspath(root), "HGG" if index % 3 else "LGG", case_id)
        os.makedirs(folder)
        seg, modalities = synthetic_brats_case(rng, shape)
        for name, array in [*modalities.items(), ("seg", seg)]:
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 1.5))
            image.SetOrigin((-0.0, -239.0, 3.5))
            image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
            sitk.WriteImage(image, join(folder, f"{case_id}_{name}.nii.gz"))
