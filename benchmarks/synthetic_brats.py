"""A synthetic BraTS 2019 dataset converted with ``--task regions``, for the region row of step_time.py.

    python benchmarks/synthetic_brats.py -d 778 [--cases 12] [--labeled 4] [--shape 64 96 96]

Writes the BraTS training layout of synthetic nested tumours (``nnunet_ccesemi.data.synthetic``) into
a temporary folder and converts it into ``$nnUNet_raw/Dataset778_BraTS2019`` (FLAIR, nnU-Net's regions).
Then plan and preprocess as for any dataset:

    nnUNetv2_plan_and_preprocess -d 778 -c 3d_fullres -np 2
    nnUNetv2_ccesemi_preprocess_unlabeled -d 778 -np 2
    nnUNetv2_ccesemi_add_cpu_config -d 778
    python benchmarks/step_time.py -d 778 -c 3d_cpu --trainers nnUNetTrainerCCE@labels nnUNetTrainerCCE --no-floor
"""
from __future__ import annotations

import argparse
import os
import tempfile

from nnunet_ccesemi.data.synthetic import write_synthetic_brats_source
from nnunet_ccesemi.dataset_conversion.convert_brats19 import main as convert


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", type=int, required=True, help="dataset ID to write")
    parser.add_argument("--cases", type=int, default=12, help="training cases (labelled + unlabelled)")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 96, 96], help="(z, y, x) voxels")
    args = parser.parse_args(argv)
    cases = [f"BraTS19_SYN_{i:03d}_1" for i in range(args.cases + 2)]
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_brats_source(os.path.join(folder, "source"), cases, tuple(args.shape))
        for name, ids in (("train", cases[:args.cases]), ("test", cases[args.cases:])):
            with open(os.path.join(folder, f"{name}.list"), "w") as f:
                f.write("\n".join(ids) + "\n")
        status = convert(["-i", os.path.join(folder, "source"), "-d", str(args.d), "--task", "regions",
                          "--labeled", str(args.labeled), "--train-list", os.path.join(folder, "train.list"),
                          "--test-list", os.path.join(folder, "test.list"), "-np", "1"])
    raise SystemExit(status)


if __name__ == "__main__":
    main()
