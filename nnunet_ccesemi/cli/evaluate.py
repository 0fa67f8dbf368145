"""``nnUNetv2_ccesemi_evaluate``: Dice, Jaccard, 95HD, ASD and ASSD of a prediction folder, as the papers report them.

    nnUNetv2_ccesemi_evaluate -ref LABELS_DIR -pred PRED_DIR [-l 1 2 "(1, 2, 3)" 2,3 "whole tumor" ...]
                              [--dataset-json dataset.json] [--units voxel|mm] [--lcc]
                              [--empty-convention nan|zero] [-o summary.json]

The definitions are medpy's (:mod:`nnunet_ccesemi.evaluation.metrics`); the folder evaluation is
:mod:`nnunet_ccesemi.evaluation.folders`. Cases are matched by file name (``--file-ending``, default
``.nii.gz``); every reference needs a prediction. Default units are voxels, as in the
UA-MT/DTC/MC-Net/BCP/CCE tables; ``--units mm`` uses the reference's spacing. ``--lcc`` keeps the
largest connected component of each predicted label first (DTC, SS-Net and BCP do; UA-MT, MC-Net and
CCE do not). The summary JSON records the units, the post-processing, the empty-mask convention and
the command line next to per-case and mean values; undefined values (NaN) are written as ``null``.

``-l`` takes labels, nnU-Net regions (tuples of labels: ``"(1, 2, 3)"``, ``"(2,3)"`` or ``1,2,3``;
scored on the voxels whose label is in the tuple, keyed ``"(1, 2, 3)"`` as nnU-Net's own summary) and
names of a dataset.json's ``labels`` (``"whole tumor"``, with ``--dataset-json``). With ``--dataset-json``
and no ``-l``, the dataset's foreground regions (region datasets) or foreground labels are scored, as
nnU-Net's evaluator does; without either, every foreground value found in the references.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from os.path import abspath, dirname, isdir, join

from nnunet_ccesemi.evaluation.folders import UNITS, EvaluationError, evaluate_folders, format_table, write_summary
from nnunet_ccesemi.evaluation.metrics import EMPTY_CONVENTIONS
from nnunet_ccesemi.parallel import WorkerDiedError

DEFAULT_OUTPUT_NAME = "summary_ccesemi.json"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Dice, Jaccard, 95 % Hausdorff distance, average surface distance (directed, ASD) and "
                    "average symmetric surface distance (ASSD) per case and label, medpy's definitions, as the "
                    "semi-supervised segmentation papers report them.")
    parser.add_argument("-ref", required=True, help="folder of reference segmentations")
    parser.add_argument("-pred", required=True, help="folder of predicted segmentations (same file names)")
    parser.add_argument("-l", nargs="+", default=None, metavar="LABEL_OR_REGION",
                        help="labels (2), nnU-Net regions as tuples of labels (\"(1, 2, 3)\", \"(2,3)\" or 1,2,3: "
                             "the voxels whose label is in the tuple) or names of --dataset-json's labels "
                             "('whole tumor'), mixed freely (default: the dataset.json's foreground regions or "
                             "labels; without --dataset-json every foreground value found in the references)")
    parser.add_argument("--dataset-json", "-djfile", dest="dataset_json", default=None, metavar="FILE",
                        help="nnU-Net dataset.json whose labels (names, regions, regions_class_order) -l may name "
                             "and which gives the default labels or regions")
    parser.add_argument("--units", choices=UNITS, default="voxel",
                        help="distances in voxels (default, as the papers) or in mm (reference spacing)")
    parser.add_argument("--lcc", action="store_true",
                        help="keep only the largest connected component of each predicted label (of a region: "
                             "of its mask) before scoring (DTC, SS-Net, BCP do; UA-MT, MC-Net, CCE do not)")
    parser.add_argument("--empty-convention", choices=EMPTY_CONVENTIONS, default="nan",
                        help="distances when the prediction or reference is empty: nan (default; excluded from "
                             "the means and counted) or zero (the papers' scripts)")
    parser.add_argument("--file-ending", default=None,
                        help="file ending of the cases (default: --dataset-json's file_ending, else .nii.gz)")
    missing = parser.add_mutually_exclusive_group()
    missing.add_argument("--missing-as-empty", action="store_true",
                         help="score a reference without prediction as an empty prediction instead of failing")
    missing.add_argument("--chill", action="store_true",
                         help="score only the references that have a prediction (nnUNetv2_evaluate_folder's "
                              "--chill: one fold's validation folder against all of labelsTr); the others "
                              "are listed in the summary")
    parser.add_argument("-o", default=None,
                        help=f"summary JSON to write (default PRED/{DEFAULT_OUTPUT_NAME})")
    parser.add_argument("-np", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)

    command = shlex.join([os.path.basename(sys.argv[0]) if argv is None else "nnUNetv2_ccesemi_evaluate",
                          *(sys.argv[1:] if argv is None else argv)])
    output = args.o or join(args.pred, DEFAULT_OUTPUT_NAME)
    if args.o is not None and (isdir(args.o) or not isdir(dirname(abspath(args.o)))
                               or not args.o.lower().endswith(".json")):
        # refuse before the scoring, which can take minutes (and never write JSON over a segmentation)
        sys.exit(f"ERROR: -o {args.o} must be a .json file in an existing folder"
                 + (" (it is a folder)" if isdir(args.o) else ""))
    if args.np < 1:
        sys.exit(f"ERROR: -np must be at least 1, got {args.np}")
    try:
        summary = evaluate_folders(args.ref, args.pred, labels=args.l, dataset_json=args.dataset_json,
                                   units=args.units, lcc=args.lcc,
                                   empty_convention=args.empty_convention, file_ending=args.file_ending,
                                   missing_as_empty=args.missing_as_empty, only_predicted=args.chill,
                                   num_processes=args.np, command=command)
    except (EvaluationError, WorkerDiedError) as e:
        sys.exit(f"ERROR: {e}")
    write_summary(summary, output)
    print(format_table(summary))
    print(f"summary written to {output}")


if __name__ == "__main__":
    main()
