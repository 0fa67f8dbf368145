"""Peak memory and time of the uncertainty maps of a two-network prediction: whole-volume probabilities
against :func:`nnunet_ccesemi.inference.uncertainty.uncertainty_maps` (slab by slab).

    python benchmarks/map_memory.py [--classes 8] [--shape 160 160 160] [--slab-voxels 262144]

Each variant runs in a fresh process on random float32 logits of both networks; the figure is the
process's peak resident memory above what the logits themselves hold, and the time of the maps alone.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def measure(variant: str, classes: int, shape: list[int], slab_voxels: int) -> None:
    import torch

    from nnunet_ccesemi.inference.uncertainty import predictive_entropy, symmetric_kl, uncertainty_maps

    torch.set_num_threads(1)
    logits_a, logits_b = torch.randn(classes, *shape), torch.randn(classes, *shape)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "whole":
        probs_a, probs_b = torch.softmax(logits_a, 0), torch.softmax(logits_b, 0)
        maps = {"entropy": predictive_entropy((probs_a + probs_b) / 2), "disagreement": symmetric_kl(probs_a, probs_b)}
    else:
        maps = uncertainty_maps([logits_a, logits_b], slab_voxels=slab_voxels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"{variant:<6} logits {2 * logits_a.numel() * 4 / 2**20:7.0f} MiB  peak above them "
          f"{(peak - before) / 1024:7.0f} MiB  maps {seconds:6.2f} s  ({len(maps)} maps)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 160])
    parser.add_argument("--slab-voxels", type=int, default=2 ** 18)
    parser.add_argument("--variant", choices=("whole", "slabs"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.variant:
        measure(args.variant, args.classes, args.shape, args.slab_voxels)
        return
    print(f"{args.classes} classes, {'x'.join(map(str, args.shape))} voxels, slabs of {args.slab_voxels} voxels, "
          f"1 thread")
    for variant in ("whole", "slabs"):
        subprocess.run([sys.executable, __file__, "--variant", variant, "--classes", str(args.classes), "--shape",
                        *map(str, args.shape), "--slab-voxels", str(args.slab_voxels)], check=True)


if __name__ == "__main__":
    main()
