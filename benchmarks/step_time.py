"""Per-iteration time and memory of nnUNetTrainer, the dual-network trainers, and the bare floor.

Builds each trainer on an already planned and preprocessed dataset (unlabelled cases included), runs
its real ``train_step`` on its real loaders, and times iterations after a warm-up. The floor is
forward+backward of network A and network B on the concatenated labelled+unlabelled batch with
random tensors and nnU-Net's Dice+CE (what any dual-network step must pay), measured in the same run.

    python benchmarks/step_time.py -d 601 -c 3d_cpu --iterations 20 --device cpu

Prints each row as it is measured (the floor first), then a table with one line per trainer: mean
and median seconds per iteration, the ratio to the first trainer and to the floor, the unlabelled-batch
wait, and peak memory (CPU RSS; CUDA max allocated). Each row runs in its own fresh process, so every
peak belongs to its row alone.

On a region dataset (BraTS's regions), ``TRAINER@labels`` builds the trainer with each label value as
its own class instead of the regions (same data, patch and network; softmax over the label values
instead of one sigmoid per region), the row that regions are compared with:

    python benchmarks/step_time.py -d 778 -c 3d_cpu --trainers nnUNetTrainerCCE@labels nnUNetTrainerCCE --no-floor
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback

import torch

DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerCPS", "nnUNetTrainerCCE", "nnUNetTrainerCPS_lowMem",
                    "nnUNetTrainerCCE_lowMem")
FLOOR = "floor (A+B fwd+bwd, concatenated)"


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kB on Linux


def build_trainer(name: str, dataset: str, configuration: str, plans_identifier: str, device: torch.device):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ccesemi.cli.plans import load_plans

    plans, dataset_json, _ = load_plans(dataset, plans_identifier)
    plans["continue_training"] = False  # nnUNetTrainer.__init__ pops it
    name, _, variant = name.partition("@")
    if variant == "labels":
        dataset_json = labels_instead_of_regions(dataset_json)
    elif variant:
        raise ValueError(f"unknown row variant @{variant} (only @labels)")
    trainer_class = recursive_find_trainer_class_by_name(name)
    return trainer_class(plans=plans, configuration=configuration, fold="all", dataset_json=dataset_json,
                         device=device)


def labels_instead_of_regions(dataset_json: dict) -> dict:
    """The dataset.json with every label value of its regions as a class of its own (no regions)."""
    values = sorted({int(v) for value in dataset_json["labels"].values()
                     for v in (value if isinstance(value, (list, tuple)) else [value])})
    if "regions_class_order" not in dataset_json:
        raise ValueError("@labels needs a region dataset (dataset.json with regions_class_order)")
    labels = {("background" if v == 0 else f"label {v}"): v for v in values}
    return {**{k: v for k, v in dataset_json.items() if k != "regions_class_order"}, "labels": labels}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finish_loaders(trainer) -> None:
    for loader in (trainer.dataloader_train, trainer.dataloader_val, getattr(trainer, "dataloader_unlabeled", None)):
        if hasattr(loader, "_finish"):
            loader._finish()


def time_trainer(trainer, iterations: int, warmup: int) -> dict:
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    times, waits = [], []
    try:
        for i in range(warmup + iterations):
            batch = next(trainer.dataloader_train)
            synchronize(trainer.device)
            started = time.perf_counter()
            output = trainer.train_step(batch)
            synchronize(trainer.device)
            if i >= warmup:
                times.append(time.perf_counter() - started)
                waits.append(float(output.get("ccesemi_unlabeled_wait_s", 0.0)))
    finally:
        finish_loaders(trainer)
    return {"mean": statistics.mean(times), "median": statistics.median(times), "wait": statistics.mean(waits),
            "peak_gib": peak_memory_gib(trainer.device)}


def time_floor(trainer, iterations: int, warmup: int) -> dict:
    """Forward+backward of A and B on a random concatenated batch: the cost no dual-network step avoids."""
    from nnunet_ccesemi.training.dual_network_trainer import labeled_part

    # the CPS trainer's own networks (compiled where it compiles them): the floor's B is the trainers' B
    networks = (trainer.network, trainer.network_b)
    optimizer = torch.optim.SGD([p for n in networks for p in n.parameters()], 1e-3, momentum=0.99, nesterov=True)
    n = trainer.batch_size
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(2 * n, trainer.num_input_channels, *patch, device=trainer.device)
    batch = next(trainer.dataloader_train)
    target = [t.to(trainer.device) for t in batch["target"]]
    scaler = trainer.grad_scaler
    times = []
    for i in range(warmup + iterations):
        synchronize(trainer.device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(trainer.device.type, enabled=trainer.device.type == "cuda"):
            loss = sum(trainer.loss(labeled_part(net(data), n), target) for net in networks)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        synchronize(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return {"mean": statistics.mean(times), "median": statistics.median(times), "wait": 0.0,
            "peak_gib": peak_memory_gib(trainer.device)}


def measure_rows(results, name: str, dataset: str, configuration: str, plans: str, device: str,
                 iterations: int, warmup: int, describe: bool) -> None:
    try:
        results.put(_measure_rows(name, dataset, configuration, plans, torch.device(device), iterations, warmup,
                                  describe))
    except BaseException:
        results.put(traceback.format_exc())
        raise


def _measure_rows(name, dataset, configuration, plans, device, iterations, warmup, describe) -> dict:
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    # the floor borrows the CPS trainer's network A, loaders, loss and network-B recipe
    trainer = build_trainer("nnUNetTrainerCPS" if name == FLOOR else name, dataset, configuration, plans, device)
    if describe:
        manager = trainer.configuration_manager
        print(f"dataset {dataset}, configuration {configuration}: patch {manager.patch_size}, batch "
              f"{manager.batch_size}, network {manager.network_arch_class_name.split('.')[-1]}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if name == FLOOR:
        trainer.on_train_start()
        try:
            return {name: time_floor(trainer, iterations, warmup)}
        finally:
            finish_loaders(trainer)
    return {name: time_trainer(trainer, iterations, warmup)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or ID (planned, preprocessed, unlabelled done)")
    parser.add_argument("-c", default="3d_cpu", help="configuration (default 3d_cpu)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare two-network floor")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="ccesemi_bench_"))
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, nnUNet_n_proc_DA {os.environ.get('nnUNet_n_proc_DA', 'default')}, "
          f"compile {os.environ.get('nnUNet_compile', 'default (on for CUDA)')}, AMP {device.type == 'cuda'}")

    rows = {}
    context = multiprocessing.get_context("spawn")
    # the floor first: it compiles A and B, whose graphs the trainers' rows then find in the compile cache
    for name in ([] if args.no_floor else [FLOOR]) + list(args.trainers):
        # a fresh (non-daemonic: nnU-Net starts augmentation workers) process per row: its own peak memory
        results = context.Queue()
        process = context.Process(target=measure_rows, args=(results, name, args.d, args.c, args.p, str(device),
                                                             args.iterations, args.warmup, not rows))
        process.start()
        measured = results.get()
        process.join()
        if isinstance(measured, str):
            sys.exit(f"{name} failed:\n{measured}")
        rows.update(measured)
        # each row as it lands, so that a run cut by a timeout still reports the rows it finished
        row = measured[name]
        print(f"{time.strftime('%H:%M:%S')} measured {name}: mean {row['mean']:.3f} s, median {row['median']:.3f} s, "
              f"peak {row['peak_gib']:.2f} GiB", flush=True)

    first = rows[args.trainers[0]]["mean"]
    floor = next((r["mean"] for k, r in rows.items() if k.startswith("floor")), None)
    print(f"{'step':<36} {'mean s':>8} {'median s':>9} {'/ ' + args.trainers[0][:14]:>17} {'/ floor':>8} "
          f"{'wait %':>7} {'peak GiB':>9}")
    for name, row in sorted(rows.items(), key=lambda item: item[0] == FLOOR):  # the floor's row last, as before
        to_floor = f"{row['mean'] / floor:8.2f}" if floor else f"{'-':>8}"
        print(f"{name:<36} {row['mean']:8.3f} {row['median']:9.3f} {row['mean'] / first:17.2f} {to_floor} "
              f"{100 * row['wait'] / row['mean']:7.1f} {row['peak_gib']:9.2f}")


if __name__ == "__main__":
    main()
