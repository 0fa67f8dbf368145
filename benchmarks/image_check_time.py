"""What the truncation check (nnunet_ccesemi.image_files.check_image_file) costs next to reading the file with ITK.

    .venv/bin/python benchmarks/image_check_time.py [FILE ...]

Without files it writes Left Atrium-sized volumes (smooth int16 MRI-like content) as .nii.gz, .nrrd
(gzip) and .mha (zlib) into a temporary folder: a whole 0.625 mm challenge scan (88x640x640), the
cropped 0.625 mm volume the semi-supervised papers use (88x142x190) and the 1.25 mm development data
(44x71x95). Prints per file: size, check time, SimpleITK read time, and
the check as a share of the read (median of 5 runs each).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnunet_ccesemi.image_files import check_image_file  # noqa: E402

SHAPES = {"LA scan 0.625 mm": (88, 640, 640), "LA crop 0.625 mm": (88, 142, 190), "LA crop 1.25 mm": (44, 71, 95)}
ENDINGS = (".nii.gz", ".nrrd", ".mha")


def mri_like(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=tuple(-(-s // 8) for s in shape))
    image = sitk.Expand(sitk.GetImageFromArray(coarse.astype(np.float32)), [8, 8, 8], sitk.sitkLinear)
    smooth = sitk.GetArrayFromImage(image)[:shape[0], :shape[1], :shape[2]]
    return (200 * smooth + 20 * rng.normal(size=shape) + 300).clip(0, 4000).astype(np.int16)


def median_seconds(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path: Path, label: str) -> None:
    check = median_seconds(lambda: check_image_file(path))
    read = median_seconds(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    print(f"{label:<34} {path.stat().st_size / 2**20:8.1f} MiB  check {1000 * check:7.1f} ms  "
          f"ITK read {1000 * read:7.1f} ms  check/read {check / read:5.2f}")


def main() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    print(f"{'file':<34} {'size':>12}  {'check':>13}  {'ITK read':>16}")
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            measure(Path(name), Path(name).name)
        return
    with tempfile.TemporaryDirectory() as folder:
        for description, shape in SHAPES.items():
            image = sitk.GetImageFromArray(mri_like(shape))
            for ending in ENDINGS:
                path = Path(folder) / f"volume{ending}"
                sitk.WriteImage(image, str(path), True)
                measure(path, f"{description} {'x'.join(map(str, shape))} {ending}")


if __name__ == "__main__":
    main()
