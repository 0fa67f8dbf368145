"""``nnUNetv2_ccesemi_preprocess_unlabeled``: preprocess ``imagesUnlabeled`` with the dataset's plans."""
from __future__ import annotations

import argparse
import sys

from nnunet_ccesemi.data.layout import UnlabeledDataError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Preprocess the unlabelled images (nnUNet_raw/DatasetXXX/imagesUnlabeled) with exactly the "
                    "plans, preprocessor and normalisation of the labelled cases. Run after "
                    "nnUNetv2_plan_and_preprocess. Cases already done are skipped, cases whose raw files changed "
                    "are redone, and cases gone from imagesUnlabeled are removed.")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"],
                        help="configurations (default 3d_fullres; 3d_cpu shares 3d_fullres' data)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-np", type=int, default=4, help="worker processes (default 4)")
    args = parser.parse_args(argv)

    from nnunet_ccesemi.data.preprocess import preprocess_unlabeled

    try:
        preprocess_unlabeled(args.d, args.c, args.p, args.np)
    except UnlabeledDataError as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
