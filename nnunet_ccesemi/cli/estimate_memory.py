"""``nnUNetv2_ccesemi_estimate_memory``: will a trainer fit my GPU? Asked of the plans, answered on the CPU.

    nnUNetv2_ccesemi_estimate_memory -d DATASET [-c 3d_fullres] [-p nnUNetPlans]
                                     [-tr nnUNetTrainer nnUNetTrainerCCE nnUNetTrainerCCE_lowMem] [--fp32]

For each trainer, builds it on the planned configuration and runs two training steps on fake tensors
(:mod:`nnunet_ccesemi.training.memory_estimate`): no GPU, no preprocessed data and no real allocation
are needed, and it takes seconds. Prints the estimated peak of ``torch.cuda.max_memory_allocated``
with AMP (the default of ``nnUNetv2_train`` on a GPU) and its ratio to the first trainer. Add about
0.5-1 GiB for cuDNN workspaces and the CUDA context; see ``benchmarks/memory_estimate.py`` for how the
estimate compares with measured peaks.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys

from nnunet_ccesemi.cli.plans import load_plans

DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerCCE", "nnUNetTrainerCCE_lowMem")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Estimate the peak GPU memory of training steps on nnU-Net's plans, on the CPU, in about a minute "
                    "(fake tensors: nothing is allocated). Needs the plans only, not the preprocessed data.")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", nargs="+", default=list(DEFAULT_TRAINERS),
                        help=f"trainers; ratios are to the first (default {' '.join(DEFAULT_TRAINERS)})")
    parser.add_argument("--batch-size", type=int, default=None, help="labelled batch size (default: the plans')")
    parser.add_argument("--fp32", action="store_true", help="no AMP (nnU-Net on the CPU, or a GPU without AMP)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")

    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ccesemi.training.memory_estimate import HostSynchronisationError, describe, estimate_step_memory

    try:
        plans, dataset_json, plans_file = load_plans(args.d, args.p)
    except FileNotFoundError as error:
        sys.exit(f"ERROR: {error}")
    available = list(plans.get("configurations", {}))
    if args.c not in available:
        sys.exit(f"ERROR: configuration {args.c!r} is not in {plans_file}; it has {', '.join(available)}")
    configuration = PlansManager(plans).get_configuration(args.c)
    estimates = []
    for name in args.tr:
        try:
            trainer_class = recursive_find_trainer_class_by_name(name)
        except RuntimeError as error:  # nnU-Net's own sentence: the trainer, and where it looked
            sys.exit(f"ERROR: {error}")
        log = io.StringIO()  # nnU-Net's banner and the trainers' set-up messages, once per trainer
        try:
            with contextlib.redirect_stdout(log):
                estimates.append(estimate_step_memory(trainer_class, plans, args.c, dataset_json,
                                                      autocast_dtype=None if args.fp32 else torch.bfloat16,
                                                      batch_size=args.batch_size))
        except HostSynchronisationError as error:
            sys.exit(f"ERROR: {error}")
        except Exception:
            sys.stdout.write(log.getvalue())
            raise
        print(f"{name}: {estimates[-1].peak_gib:.2f} GiB", flush=True)
    batch_size = args.batch_size or configuration.batch_size
    print(f"\n{plans_file}, configuration {args.c}: patch {'x'.join(map(str, configuration.patch_size))}, batch "
          f"{batch_size} (dual-network trainers: + {batch_size} unlabelled), "
          f"{'float32' if args.fp32 else 'AMP (16-bit activations)'}; estimated peak of "
          f"torch.cuda.max_memory_allocated per training step, without cuDNN workspaces:\n")
    print(describe(estimates, estimates[0]))


if __name__ == "__main__":
    main()
