"""``nnUNetv2_ccesemi_add_cpu_config``: add a CPU-sized configuration to a dataset's plans.

nnU-Net plans for a GPU: the Left Atrium network at 1.25 mm costs about 11 s per forward+backward on
two CPU threads, a dual-network step four times that. The added configuration (default ``3d_cpu``)
inherits from ``3d_fullres`` and so reuses its preprocessed data (same ``data_identifier``, same
spacing and normalisation); only the network is narrower and the patch smaller. The topology
(strides, kernel sizes, number of stages) is re-derived for the smaller patch with nnU-Net's own
``get_pool_and_conv_props``.
"""
from __future__ import annotations

import argparse
import json
import math

from nnunet_ccesemi.atomic import atomic_path
from nnunet_ccesemi.cli.plans import load_plans

DEFAULT_MAX_VOXELS = 32 * 64 * 64


def shrink_patch(patch_size: list[int], spacing: list[float], max_voxels: int) -> list[int]:
    """Scale a patch down uniformly (in mm) until it holds at most ``max_voxels`` voxels."""
    patch = [float(p) for p in patch_size]
    if math.prod(patch) <= max_voxels:
        return [int(p) for p in patch]
    factor = (max_voxels / math.prod(patch)) ** (1 / len(patch))
    return [max(8, int(round(p * factor))) for p in patch]


def cpu_configuration(plans: dict, source: str, patch_size: list[int] | None, max_voxels: int,
                      base_features: int, max_features: int, batch_size: int) -> dict:
    """The plans entry of the CPU configuration (``inherits_from`` the source configuration)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    source_config = _resolved(plans, source)
    spacing = source_config["spacing"]
    if patch_size is None and max_voxels < MIN_PATCH ** len(spacing):
        raise ValueError(f"--max-voxels {max_voxels} cannot hold a {len(spacing)}D patch of at least {MIN_PATCH} "
                         f"voxels per axis ({MIN_PATCH ** len(spacing)})")
    wanted = patch_size or shrink_patch(source_config["patch_size"], spacing, max_voxels)
    if len(wanted) != len(spacing):
        raise ValueError(f"--patch has {len(wanted)} axes but configuration {source!r} is {len(spacing)}D")
    _, strides, kernel_sizes, patch, divisible_by = get_pool_and_conv_props(spacing, wanted, 4, 999999)
    # the topology rounds the patch to multiples of the total stride, which can overshoot the budget:
    # shrink the axis that is longest in mm by one multiple at a time, as nnU-Net's planner does
    while patch_size is None and math.prod(patch) > max_voxels:
        # an axis may only shrink while it keeps MIN_PATCH voxels: below that the topology loses its stages
        shrinkable = [i for i in range(len(patch)) if patch[i] - divisible_by[i] >= MIN_PATCH]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda i: patch[i] * spacing[i])
        shrunk = list(patch)
        shrunk[axis] -= divisible_by[axis]
        _, strides, kernel_sizes, patch, divisible_by = get_pool_and_conv_props(spacing, shrunk, 4, 999999)
    n_stages = len(strides)
    if n_stages < 2:
        raise ValueError(f"patch {[int(p) for p in patch]} at spacing {list(spacing)} allows a network of one "
                         f"resolution stage only, which nnU-Net's U-Nets cannot train; "
                         + ("pass a larger --patch" if patch_size else
                            "pass --patch with more voxels along the finest-spacing axis, or raise --max-voxels"))

    architecture = json.loads(json.dumps(source_config["architecture"]))  # deep copy
    kwargs = architecture["arch_kwargs"]
    kwargs.update({
        "n_stages": n_stages,
        "features_per_stage": [min(base_features * 2 ** i, max_features) for i in range(n_stages)],
        "kernel_sizes": [[int(k) for k in kernel] for kernel in kernel_sizes],
        "strides": [[int(s) for s in stride] for stride in strides],
        "n_conv_per_stage_decoder": _stretch(kwargs["n_conv_per_stage_decoder"], n_stages - 1),
    })
    for per_stage_key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if per_stage_key in kwargs:
            kwargs[per_stage_key] = _stretch(kwargs[per_stage_key], n_stages)
    return {"inherits_from": source, "patch_size": [int(p) for p in patch], "batch_size": batch_size,
            "architecture": architecture}


def _stretch(values, n: int) -> list:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return (values + [values[-1]] * n)[:n]


def _resolved(plans: dict, name: str) -> dict:
    configurations = plans["configurations"]
    if name not in configurations:
        raise KeyError(f"configuration {name!r} not in the plans; available: {sorted(configurations)}")
    config = configurations[name]
    if "inherits_from" in config:
        return {**_resolved(plans, config["inherits_from"]), **config}
    return config


MIN_PATCH = 8  # two resolution stages at least: nnU-Net's topology keeps feature maps of 4 voxels or more


def size_problem(args: argparse.Namespace) -> str | None:
    """Why the sizes asked for cannot make a network, or None (checked before the plans are touched)."""
    if args.patch is not None and min(args.patch) < MIN_PATCH:
        return f"--patch {' '.join(map(str, args.patch))}: every axis needs at least {MIN_PATCH} voxels"
    if args.max_voxels < MIN_PATCH ** 2:
        return f"--max-voxels must be at least {MIN_PATCH ** 2}, got {args.max_voxels}"
    for flag, value in (("--base-features", args.base_features), ("--batch-size", args.batch_size)):
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.max_features < args.base_features:
        return f"--max-features ({args.max_features}) must be at least --base-features ({args.base_features})"
    return None


def inheritance_problem(plans: dict, name: str, source: str) -> str | None:
    """Why configuration ``name`` cannot become a child of ``source``, or None: it would inherit from
    itself, or replace a configuration that others inherit from (their data and network would change)."""
    configurations = plans["configurations"]
    chain, current = [], source
    while current in configurations and current not in chain:
        chain.append(current)
        current = configurations[current].get("inherits_from")
    if name in chain:
        return (f"--name {name!r} would inherit from itself (--source {source!r} is {' <- '.join(chain)}); "
                f"choose another --name")
    # a cascade's stages name each other (previous_stage, next_stage): dependants too
    def fields_naming(config: dict) -> list[str]:
        next_stages = config.get("next_stage") or []
        next_stages = [next_stages] if isinstance(next_stages, str) else next_stages
        return ([key for key in ("inherits_from", "previous_stage") if config.get(key) == name]
                + (["next_stage"] if name in next_stages else []))
    dependants = [f"{other} (its {' and '.join(fields)})" for other, config in sorted(configurations.items())
                  if (fields := fields_naming(config))]
    if dependants:
        return (f"configuration {name!r} is named by {', '.join(dependants)}; replacing it would change them "
                f"too; choose another --name")
    return None


def count_parameters(plans: dict, configuration: str, dataset_json: dict) -> int:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration(configuration)
    network = get_network_from_plans(
        config.network_arch_class_name, config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import, determine_num_input_channels(plans_manager, config, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, allow_init=False)
    return sum(p.numel() for p in network.parameters())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Add a CPU-sized configuration to a dataset's plans: a narrow network and a small patch "
                    "that inherit the source configuration's preprocessed data.")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("--source", default="3d_fullres", help="configuration to inherit from (default 3d_fullres)")
    parser.add_argument("--name", default="3d_cpu", help="name of the new configuration (default 3d_cpu)")
    parser.add_argument("--patch", type=int, nargs="+", help="patch size (default: the source's, shrunk to at most "
                                                             "--max-voxels voxels)")
    parser.add_argument("--max-voxels", type=int, default=DEFAULT_MAX_VOXELS,
                        help=f"voxel budget of the default patch (default {DEFAULT_MAX_VOXELS} = 32x64x64)")
    parser.add_argument("--base-features", type=int, default=16, help="features of the first stage (default 16)")
    parser.add_argument("--max-features", type=int, default=128, help="feature cap per stage (default 128)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing configuration of that name")
    args = parser.parse_args(argv)
    problem = size_problem(args)
    if problem:
        parser.error(problem)

    try:
        plans, dataset_json, plans_file = load_plans(args.d, args.p)
    except FileNotFoundError as e:
        parser.error(str(e))
    if args.name in plans["configurations"] and not args.overwrite:
        parser.error(f"configuration {args.name!r} already exists in {plans_file}; pass --overwrite to replace it")
    problem = inheritance_problem(plans, args.name, args.source)
    if problem:
        parser.error(f"{plans_file}: {problem}")
    try:
        plans["configurations"][args.name] = cpu_configuration(
            plans, args.source, args.patch, args.max_voxels, args.base_features, args.max_features, args.batch_size)
    except (KeyError, ValueError) as e:
        parser.error(f"{plans_file}: {e}")
    n_parameters = count_parameters(plans, args.name, dataset_json)

    with atomic_path(plans_file) as tmp, open(tmp, "w") as f:
        json.dump(plans, f, indent=4)
    config = plans["configurations"][args.name]
    kwargs = config["architecture"]["arch_kwargs"]
    print(f"Added configuration {args.name!r} to {plans_file}: inherits {args.source}, patch {config['patch_size']}, "
          f"batch {config['batch_size']}, {kwargs['n_stages']} stages, features {kwargs['features_per_stage']}, "
          f"{n_parameters / 1e6:.2f} M parameters. Train with: nnUNetv2_train {args.d} {args.name} FOLD -tr TRAINER"
          + (f" -p {args.p}" if args.p != "nnUNetPlans" else ""))


if __name__ == "__main__":
    main()
