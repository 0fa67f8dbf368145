"""What is alive at a training step's CUDA memory peak, allocation by allocation (needs a GPU).

    nnUNet_preprocessed=benchmarks/plans python benchmarks/memory_peak_trace.py -d 602 -c 3d_fullres \
        --trainers nnUNetTrainerCPS_lowMem nnUNetTrainerCCE_lowMem

Runs each trainer's step as ``memory_estimate.py --measure-cuda`` does, with the CUDA caching
allocator's history recorded (Python stacks), replays the history to the moment the allocated
(requested) bytes peak, and prints the blocks alive then, largest first, each with the innermost frames
of the code that allocated it (blocks the autograd engine allocates in its own thread have no Python
frame). With two trainers, it also prints the blocks the second holds at its peak beyond the first:
where the second's extra memory is.
"""
from __future__ import annotations

import argparse
import contextlib
import io
from collections import Counter

import torch

MIB = 2 ** 20
# frames of these files say where an allocation comes from; torch's own frames say little
_OWN_CODE = ("nnunet_ccesemi", "dynamic_network_architectures", "nnunetv2", "benchmarks/")


def peak_blocks(trace: list[dict]) -> tuple[int, int, list[dict]]:
    """(peak bytes, index of the allocation that reached it, the blocks alive then) of an allocator trace.

    ``trace`` is one device's ``torch.cuda.memory._snapshot()["device_traces"]`` list: ``alloc`` adds a
    block, ``free_requested`` removes it, as the allocator's own ``allocated_bytes`` statistic does
    (``free_completed`` follows once no other stream uses the block, when it can be reused). The bytes
    are the requested sizes, a little under the rounded blocks that ``max_memory_allocated`` counts.
    """
    live: dict[int, dict] = {}
    allocated = peak = 0
    peak_index, peak_live = -1, {}
    for index, event in enumerate(trace):
        if event["action"] == "alloc":
            live[event["addr"]] = {**event, "index": index}
            allocated += event["size"]
            if allocated > peak:
                peak, peak_index, peak_live = allocated, index, dict(live)
        elif event["action"] == "free_requested" and event["addr"] in live:
            allocated -= live.pop(event["addr"])["size"]
    return peak, peak_index, sorted(peak_live.values(), key=lambda block: -block["size"])


def where(block: dict, depth: int = 2) -> str:
    """The innermost frames of the project's or nnU-Net's code that allocated ``block``.

    The measurement runs under the memory estimate's dispatch mode, whose ``__torch_dispatch__`` frame
    every allocation has: it is skipped. Blocks that the autograd engine allocates in its own thread (the
    backward pass) have no other frame.
    """
    frames = [f for f in block.get("frames", ()) if f.get("name") != "__torch_dispatch__"
              and any(part in f.get("filename", "") for part in _OWN_CODE)]
    if not frames:
        return "(backward: no Python frame)"
    return " < ".join(f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']} {f['name']}" for f in frames[:depth])


def describe_peak(name: str, trace: list[dict], top: int) -> list[dict]:
    peak, peak_index, blocks = peak_blocks(trace)
    print(f"\n== {name}: peak {peak / 2 ** 30:.2f} GiB at trace event {peak_index} of {len(trace)}, "
          f"{len(blocks)} blocks alive ==")
    print(f"reached by: {trace[peak_index]['size'] / MIB:.1f} MiB from {where(trace[peak_index], 4)}")
    for block in blocks[:top]:
        print(f"{block['size'] / MIB:9.1f} MiB  event {block['index']:7d}  {where(block)}")
    rest = blocks[top:]
    print(f"{sum(b['size'] for b in rest) / MIB:9.1f} MiB in the other {len(rest)} blocks")
    return blocks


def extra_blocks(reference: list[dict], blocks: list[dict]) -> list[dict]:
    """The blocks of ``blocks`` beyond ``reference``'s, matched by size and allocating code (a multiset
    difference; of several equal blocks, the last allocated count as the extra ones)."""
    remaining = Counter((b["size"], where(b)) for b in reference)
    extra = []
    for block in sorted(blocks, key=lambda b: b.get("index", 0)):
        key = (block["size"], where(block))
        if remaining[key] > 0:
            remaining[key] -= 1
        else:
            extra.append(block)
    return sorted(extra, key=lambda block: -block["size"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or ID (planned; no preprocessing needed)")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerCPS_lowMem", "nnUNetTrainerCCE_lowMem"])
    parser.add_argument("--top", type=int, default=25, help="blocks to list per trainer")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("memory_peak_trace.py records the CUDA caching allocator: it needs a GPU")

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ccesemi.cli.plans import load_plans
    from nnunet_ccesemi.training.memory_estimate import estimate_step_memory

    plans, dataset_json, _ = load_plans(args.d, args.p)
    peaks = []
    for name in args.trainers:
        trainer_class = recursive_find_trainer_class_by_name(name)
        torch.cuda.empty_cache()
        torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
        with contextlib.redirect_stdout(io.StringIO()):
            measured = estimate_step_memory(trainer_class, plans, args.c, dataset_json, device="cuda")
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        trace = snapshot["device_traces"][torch.cuda.current_device()]
        print(f"\n{name}: measured step peak {measured.peak_gib:.2f} GiB (max_memory_allocated after a reset)")
        peaks.append((name, describe_peak(name, trace, args.top)))
    for (reference_name, reference), (name, blocks) in zip(peaks, peaks[1:]):
        extra = extra_blocks(reference, blocks)
        print(f"\n== at its peak {name} holds {sum(b['size'] for b in extra) / MIB:.1f} MiB in {len(extra)} blocks "
              f"(size and allocating code) that {reference_name} does not hold at its own ==")
        for block in extra[:args.top]:
            print(f"{block['size'] / MIB:9.1f} MiB  event {block['index']:7d}  {where(block, 4)}")


if __name__ == "__main__":
    main()
