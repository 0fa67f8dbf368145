"""Forward+backward time of the semi-supervised objective alone, eager and compiled, and where it goes.

    python benchmarks/objective_time.py [--shape 4 2 48 80 96] [--features 32] [--device cpu|cuda]
                                        [--repeats 5] [--no-compile] [--profile]

Random logits and decoder features of both networks for a labelled+unlabelled batch (half and half),
``nnUNetTrainerCCE``'s configuration, mid-training ramp weights. Prints the torch version, device,
threads, shapes, the median seconds per call of ``DualNetworkObjective`` eagerly and under
``torch.compile`` (after warm-up calls that absorb compilation), and with ``--profile`` torch.profiler's
table of the eager call's most expensive operators (CUDA time on a GPU).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(objective, inputs: dict, device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``repeats`` forward+backward calls after ``warmup`` untimed ones (NaN if none)."""
    times = []
    for index in range(warmup + repeats):
        _synchronize(device)
        started = time.perf_counter()
        loss, _ = objective(**inputs)
        loss.backward()
        _synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times) if times else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 2, 48, 80, 96],
                        help="logits (N, C, *spatial); the first half of N is labelled")
    parser.add_argument("--features", type=int, default=32, help="decoder feature channels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    from nnunet_ccesemi.config import CCE_CONFIG
    from nnunet_ccesemi.losses import DualNetworkObjective

    device = torch.device(args.device)
    generator = torch.Generator(device).manual_seed(0)
    n_rows, num_classes, spatial = args.shape[0], args.shape[1], args.shape[2:]
    n_labeled = n_rows // 2

    def random(*shape):
        return torch.randn(*shape, generator=generator, device=device, requires_grad=True)

    inputs = dict(logits_a=random(*args.shape), logits_b=random(*args.shape), n_labeled=n_labeled,
                  target_labeled=torch.randint(0, num_classes, (n_labeled, 1, *spatial), generator=generator,
                                               device=device),
                  features_a=random(n_rows, args.features, *spatial), features_b=random(n_rows, args.features, *spatial),
                  unsup_weight=0.8, contrast_weight=0.05)
    eager = DualNetworkObjective(CCE_CONFIG, num_classes).to(device)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads; logits {tuple(args.shape)} ({n_labeled} labelled rows), "
          f"features {args.features} channels, nnUNetTrainerCCE's configuration")
    eager_s = time_calls(eager, inputs, device, args.repeats, warmup=1)
    print(f"eager:    {eager_s * 1000:9.1f} ms per forward+backward")
    if not args.no_compile:
        compiled = torch.compile(DualNetworkObjective(CCE_CONFIG, num_classes).to(device))
        started = time.perf_counter()
        time_calls(compiled, {**inputs, "unsup_weight": 0.7}, device, repeats=0, warmup=1)
        time_calls(compiled, inputs, device, repeats=0, warmup=1)  # the ramp weights become dynamic: once
        compile_s = time.perf_counter() - started
        compiled_s = time_calls(compiled, inputs, device, args.repeats, warmup=1)
        print(f"compiled: {compiled_s * 1000:9.1f} ms per forward+backward ({eager_s / compiled_s:.2f}x; "
              f"compilation {compile_s:.0f} s)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            time_calls(eager, inputs, device, repeats=1, warmup=0)
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=15))


if __name__ == "__main__":
    main()
