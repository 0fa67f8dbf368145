"""Estimated peak GPU memory of the training steps, and of the bare two-network floors, on any CPU.

    nnUNet_preprocessed=benchmarks/plans python benchmarks/memory_estimate.py -d 602 -c 3d_fullres [--measure-cuda]

Rows: ``nnUNetTrainer``; the bare floors (forward+backward of networks A and B with nnU-Net's
Dice+CE only, on the concatenated labelled+unlabelled batch: joint, and sequential = B forward
without grad, then A forward+backward, then B forward+backward, the two steps of the speed issue's
table); then the dual-network trainers' real ``train_step``. Everything runs on fake tensors with
AMP modelled by CPU bfloat16 autocast (:mod:`nnunet_ccesemi.training.memory_estimate`), so the
full-resolution Left Atrium plans take about a minute for all rows. Prints the torch version, the
plans, the patch and a Markdown table with ratios to ``nnUNetTrainer``. ``--measure-cuda`` (on a GPU)
also runs every row for real, with the trainers' own AMP, and adds the measured peak of
``torch.cuda.max_memory_allocated`` beside the estimate. ``benchmarks/plans/Dataset602_LA0625`` holds
nnU-Net 2.8.1's plans for Left Atrium at 0.625 mm (patch 96x128x192, batch 2).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform

import torch

TRAINERS = ("nnUNetTrainerCPS", "nnUNetTrainerCCE", "nnUNetTrainerCPS_lowMem", "nnUNetTrainerCCE_lowMem")


def _concatenated(trainer, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor] | torch.Tensor, int]:
    """The labelled and unlabelled data as one batch, and the targets, on the trainer's device (the batch
    is made on the CPU, as nnU-Net's loaders yield it; the trainers' own train_step moves it)."""
    # the unlabelled half from the trainer's unlabelled loader, as its own train_step takes it
    unlabeled = next(trainer.dataloader_unlabeled)["data"]
    data = torch.cat((batch["data"], unlabeled)).to(trainer.device)
    target = batch["target"]
    target = [t.to(trainer.device) for t in target] if isinstance(target, list) else target.to(trainer.device)
    return data, target, batch["data"].shape[0]


def joint_floor(trainer, batch: dict) -> None:
    """A and B forward on the concatenated batch, Dice+CE on the labelled rows, one backward, SGD."""
    from nnunet_ccesemi.training.dual_network_trainer import labeled_part

    data, target, n_labeled = _concatenated(trainer, batch)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = sum(trainer.loss(labeled_part(network(data), n_labeled), target)
               for network in (trainer.network, trainer.network_b))
    loss.backward()
    trainer.optimizer.step()


def sequential_floor(trainer, batch: dict) -> None:
    """B forward without grad (the pseudo-labels), A forward+backward, B forward+backward, SGD."""
    from nnunet_ccesemi.training.dual_network_trainer import labeled_part

    data, target, n_labeled = _concatenated(trainer, batch)
    trainer.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        trainer.network_b(data)
    for network in (trainer.network, trainer.network_b):
        trainer.loss(labeled_part(network(data), n_labeled), target).backward()
    trainer.optimizer.step()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or ID (planned; no preprocessing needed)")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--fp32", action="store_true", help="no AMP")
    parser.add_argument("--measure-cuda", action="store_true", help="also measure each row on the GPU")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), help="dual-network trainers to add as rows")
    parser.add_argument("--no-floor", action="store_true", help="skip the two bare floors")
    args = parser.parse_args(argv)

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ccesemi.cli.plans import load_plans
    from nnunet_ccesemi.training.memory_estimate import describe, estimate_step_memory

    plans, dataset_json, plans_file = load_plans(args.d, args.p)
    configuration = PlansManager(plans).get_configuration(args.c)
    dtype = None if args.fp32 else torch.bfloat16
    rows = [("nnUNetTrainer", "nnUNetTrainer", None)]
    if not args.no_floor:
        rows += [("floor, joint (A+B fwd+bwd, concatenated)", "nnUNetTrainerCPS", joint_floor),
                 ("floor, sequential (B no-grad fwd, A fwd+bwd, B fwd+bwd)", "nnUNetTrainerCPS", sequential_floor)]
    rows += [(name, name, None) for name in args.trainers]
    estimates, measured = [], []
    for name, trainer_name, step in rows:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        with contextlib.redirect_stdout(io.StringIO()):
            estimates.append(estimate_step_memory(trainer_class, plans, args.c, dataset_json, autocast_dtype=dtype,
                                                  step=step, name=name))
            if args.measure_cuda:
                measured.append(estimate_step_memory(trainer_class, plans, args.c, dataset_json, step=step, name=name,
                                                     device="cuda"))
                torch.cuda.empty_cache()
        print(f"{name}: estimate {estimates[-1].peak_gib:.2f} GiB"
              + (f", measured {measured[-1].peak_gib:.2f} GiB" if measured else ""), flush=True)
    print(f"\ntorch {torch.__version__}, Python {platform.python_version()}, fake tensors on the CPU, "
          f"{'float32' if args.fp32 else 'AMP modelled by bfloat16 autocast'}\n{plans_file}, {args.c}: "
          f"patch {'x'.join(map(str, configuration.patch_size))}, batch {configuration.batch_size} "
          f"(+{configuration.batch_size} unlabelled), A = {configuration.network_arch_class_name.split('.')[-1]} "
          f"{list(configuration.network_arch_init_kwargs['features_per_stage'])}\n")
    print(describe(estimates, estimates[0]))
    if measured:
        print(f"\nmeasured on {torch.cuda.get_device_name(0)}, AMP float16 + grad scaler, eager:\n")
        print("| row | estimate GiB | measured GiB | measured / estimate | measured / nnUNetTrainer |\n|---|---|---|---|---|")
        for estimate, real in zip(estimates, measured):
            print(f"| {estimate.trainer} | {estimate.peak_gib:.2f} | {real.peak_gib:.2f} | "
                  f"{real.peak_bytes / estimate.peak_bytes:.3f} | {real.peak_bytes / measured[0].peak_bytes:.2f} |")


if __name__ == "__main__":
    main()
