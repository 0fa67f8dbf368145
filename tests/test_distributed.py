"""The DDP reductions of the losses, on a real two-process ``torch.distributed`` group (gloo, CPU).

Under nnU-Net's ``-num_gpus N`` every rank gets its own share of the labelled and of the unlabelled
batch. ``METHOD.md`` §2 asks for the entropy threshold τ (the q-quantile "over all ranks under DDP")
and the class prototypes ("summed over ranks under DDP") to be global, so each rank's result must
equal the single-process computation on the concatenated batch. Checked here for:

* ``batch_quantile`` and ``class_quantiles`` (exact: order statistics of the gathered values) and
  ``class_prototypes``
  (to 1e-6), with a class present on one rank only and a class absent everywhere;
* the whole ``DualNetworkObjective`` (CCE): thresholds, each rank's reliable mask = its rows of the
  single-process mask, the prototype banks, the contrast term against the *global* prototypes, the
  per-voxel means (their mean over equal shares = the single-process value), the low-memory
  sequential step, finite gradients;
* uneven shares: nnU-Net splits a global batch of 3 as 2 + 1 over two GPUs (the unlabelled stream
  follows the per-rank batch size), and a rank without unlabelled rows must not deadlock the others;
* the trainer's ``shared_seed`` (the logged seed repeats a DDP run) and ``_values_over_ranks`` (the
  per-epoch statistics in the log and the dead-term warnings, which must see every rank's iterations).

One spawned pair of processes runs every computation once (module-scoped fixture) and saves its
results with ``torch.save``; the tests compare them with the single-process computation here.
"""
from __future__ import annotations

import datetime
import functools
import math
import os
import time
import traceback
import types

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from nnunet_ccesemi.config import CCE_CLASS_BALANCED_CONFIG
from nnunet_ccesemi.losses import (
    DualNetworkObjective,
    batch_quantile,
    class_prototypes,
    class_quantiles,
    l2_normalize_voxels,
    merge_sequential_stats,
    prototype_infonce_loss,
)
from nnunet_ccesemi.losses import objective as objective_module
from nnunet_ccesemi.training.diagnostics import dead_term_warnings

WORLD_SIZE = 2
SPATIAL = (3, 4, 5)
QUANTILES = (0.0, 0.2, 0.5, 0.77, 1.0)
INTERPOLATIONS = ("linear", "lower", "higher")
PROTOTYPE_CLASSES = 5  # 0, 1 everywhere; 2 only in rows 0-1; 3 only in row 3; 4 nowhere
FEATURE_DIM = 6
OBJECTIVE_CLASSES = 4
# The class-balanced thresholds of both networks (CCE's default reliable set).
THRESHOLD_KEYS = tuple(f"entropy_threshold_{net}_c{c}" for net in "ab" for c in range(OBJECTIVE_CLASSES))
# Every uncertain voxel is sampled (the cap 2048 exceeds the voxel count): the contrast term's value
# does not depend on the random draw.
# the class-balanced rule: its per-class thresholds are the reductions most worth checking across ranks
CONFIG = CCE_CLASS_BALANCED_CONFIG.replace(contrast_sample_fraction=1.0)
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=30)  # a mismatched collective fails instead of hanging
JOIN_TIMEOUT_S = 120

# Rows of the 4-row tensors of the quantile/prototype checks held by each rank.
TENSOR_SPLITS = {
    "equal": ([0, 1], [2, 3]),
    "uneven": ([0, 1, 2], [3]),
    "one_rank_empty": ([0, 1, 2, 3], []),
}
# (labelled rows, unlabelled rows) of each rank in the objective checks.
OBJECTIVE_SPLITS = {
    "equal": (([0], [0, 1]), ([1], [2, 3])),
    "uneven": (([0, 1], [0, 1]), ([2], [2])),  # nnU-Net's split of a global batch of 3 over 2 GPUs
    "one_rank_empty": (([0], [0, 1]), ([1], [])),
}
# one statistic's per-iteration values on each rank; the second is 0 on rank 0 only (a term alive on rank 1)
OVER_RANKS_VALUES = {
    "mean": ([np.float32(1.0), np.float32(2.0), float("nan")], [np.float32(4.0), np.float32(5.0)]),
    "entropy_filter_a": ([np.float32(0.0), np.float32(0.0)], [np.float32(0.0), np.float32(0.3)]),
}


# ---------------------------------------------------------------------------------------- data
def tensor_data() -> dict:
    """Entropy-like values with ties, unit features, labels and mask; identical in every process."""
    generator = torch.Generator().manual_seed(2024)
    values = torch.floor(torch.rand(4, *SPATIAL, generator=generator) * 16) / 16  # many ties
    features = F.normalize(torch.randn(4, FEATURE_DIM, *SPATIAL, generator=generator), dim=1)
    labels = torch.randint(0, 2, (4, *SPATIAL), generator=generator)
    labels[:2][torch.rand(2, *SPATIAL, generator=generator) < 0.3] = 2  # rank 0's rows only
    labels[3][torch.rand(*SPATIAL, generator=generator) < 0.3] = 3  # row 3 only
    mask = torch.rand(4, *SPATIAL, generator=generator) > 0.4
    mask[:, 0, 0, 0] = True  # every row has a reliable voxel
    return {"values": values, "features": features, "labels": labels, "mask": mask}


def objective_pool() -> dict:
    """Logits, features and targets of 3 labelled and 4 unlabelled rows."""
    generator = torch.Generator().manual_seed(7)
    rows = {"labeled": 3, "unlabeled": 4}
    pool = {}
    for kind, n in rows.items():
        pool[kind] = {
            "logits_a": torch.randn(n, OBJECTIVE_CLASSES, *SPATIAL, generator=generator) * 3.0,
            "logits_b": torch.randn(n, OBJECTIVE_CLASSES, *SPATIAL, generator=generator) * 3.0,
            "features_a": torch.randn(n, FEATURE_DIM, *SPATIAL, generator=generator),
            "features_b": torch.randn(n, FEATURE_DIM, *SPATIAL, generator=generator),
        }
    pool["target"] = torch.randint(0, OBJECTIVE_CLASSES, (3, 1, *SPATIAL), generator=generator)
    return pool


def objective_batch(pool: dict, labeled_rows: list[int], unlabeled_rows: list[int]) -> dict:
    """``[labelled ; unlabelled]`` leaf tensors as the trainer passes them to the objective."""
    batch = {
        name: torch.cat((pool["labeled"][name][labeled_rows], pool["unlabeled"][name][unlabeled_rows]))
        .clone().requires_grad_()
        for name in ("logits_a", "logits_b", "features_a", "features_b")
    }
    return {**batch, "n_labeled": len(labeled_rows), "target_labeled": pool["target"][labeled_rows]}


def global_rows(split: tuple) -> tuple[list[int], list[int]]:
    return ([r for labeled, _ in split for r in labeled], [r for _, unlabeled in split for r in unlabeled])


def run_objective(batch: dict, students=("a", "b"), objective=None):
    """The objective at full weights; returns it, the loss, its stats and the reliable mask it used."""
    objective = objective or DualNetworkObjective(CONFIG, OBJECTIVE_CLASSES)
    captured = []
    original = objective._unlabeled_targets

    def capture(*args, **kwargs):
        targets = original(*args, **kwargs)
        captured.append(targets.reliable)
        return targets

    objective._unlabeled_targets = capture
    try:
        loss, stats = objective(**batch, unsup_weight=1.0, contrast_weight=0.1, students=students)
    finally:
        del objective._unlabeled_targets  # back to the class's method
    return objective, loss, stats, (captured[0] if captured else None)


def run_sequential(batch: dict) -> dict:
    """The trainer's low-memory step: A's terms with B detached, then B's with A detached."""
    objective = DualNetworkObjective(CONFIG, OBJECTIVE_CLASSES)
    calls = {}
    for student, peer in (("a", "b"), ("b", "a")):
        inputs = {**batch, f"logits_{peer}": batch[f"logits_{peer}"].detach(), f"features_{peer}": None}
        _, _, calls[student], _ = run_objective(inputs, students=(student,), objective=objective)
    return merge_sequential_stats(calls["a"], calls["b"])


# ---------------------------------------------------------------------------------------- worker
def _quantile_section(rank: int) -> dict:
    values = tensor_data()["values"]
    results = {}
    for split_name, split in TENSOR_SPLITS.items():
        local = values[split[rank]]
        for q in QUANTILES:
            for interpolation in INTERPOLATIONS:
                results[split_name, q, interpolation] = batch_quantile(local, q, interpolation=interpolation)
    return results


def _class_quantile_section(rank: int) -> dict:
    data = tensor_data()
    results = {}
    for split_name, split in TENSOR_SPLITS.items():
        rows = split[rank]
        for q in QUANTILES:
            results[split_name, q] = class_quantiles(data["values"][rows], data["labels"][rows], PROTOTYPE_CLASSES, q)
    return results


def _prototype_section(rank: int) -> dict:
    data = tensor_data()
    results = {}
    for split_name, split in TENSOR_SPLITS.items():
        rows = split[rank]
        results[split_name] = class_prototypes(
            data["features"][rows], data["labels"][rows], data["mask"][rows], PROTOTYPE_CLASSES
        )
    return results


def _objective_section(rank: int, split_name: str) -> dict:
    pool = objective_pool()
    labeled_rows, unlabeled_rows = OBJECTIVE_SPLITS[split_name][rank]
    batch = objective_batch(pool, labeled_rows, unlabeled_rows)
    objective, loss, stats, mask = run_objective(batch)
    loss.backward()
    return {
        "loss": loss.detach(),
        "stats": stats,
        "reliable": mask,
        "banks": {net: (bank.prototypes.clone(), bank.present.clone())
                  for net, bank in objective.prototype_banks.items()},
        "finite_gradients": all(
            batch[name].grad is not None and bool(torch.isfinite(batch[name].grad).all())
            for name in ("logits_a", "logits_b", "features_a", "features_b")
            if name.startswith("logits") or unlabeled_rows  # no unlabelled row: no feature is used
        ),
        "sequential_stats": run_sequential(objective_batch(pool, labeled_rows, unlabeled_rows)),
    }


def _values_over_ranks_section(rank: int) -> dict:
    from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork

    gather = nnUNetTrainerDualNetwork._values_over_ranks
    return {f"{mode}/{key}": gather(types.SimpleNamespace(is_ddp=mode == "ddp"), values[rank])
            for key, values in OVER_RANKS_VALUES.items() for mode in ("ddp", "local")}


def _shared_seed_section(rank: int) -> dict:
    from nnunet_ccesemi.training.seeding import shared_seed

    return {"seed": shared_seed(1000 + rank)}  # each rank's own draw (nnUNet_ccesemi_seed unset)


# Run in this order; a crash (gloo aborts on a collective mismatch) only loses the sections after it.
SECTIONS = {
    "quantile": _quantile_section,
    "class_quantiles": _class_quantile_section,
    "prototypes": _prototype_section,
    "values_over_ranks": _values_over_ranks_section,
    "shared_seed": _shared_seed_section,
    **{f"objective/{split_name}": functools.partial(_objective_section, split_name=split_name)
       for split_name in OBJECTIVE_SPLITS},
}


def _worker(rank: int, out_dir: str) -> None:
    """One rank: every section in turn; a failing section records its traceback instead.

    The results are saved after each section: gloo aborts the whole process on a collective mismatch
    (e.g. ranks gathering different sizes), and the sections before it still report.
    """
    torch.set_num_threads(1)
    path = os.path.join(out_dir, f"rank{rank}.pt")
    results = {"errors": {}, "finished": [], "seconds": {}}
    try:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                                world_size=WORLD_SIZE, timeout=COLLECTIVE_TIMEOUT)
    except Exception:
        results["errors"]["process_group"] = traceback.format_exc()
        torch.save(results, path)
        return
    for name, section in SECTIONS.items():
        started = time.perf_counter()
        try:
            results[name] = section(rank)
        except Exception:
            results["errors"][name] = traceback.format_exc()
        results["seconds"][name] = time.perf_counter() - started
        results["finished"].append(name)
        torch.save(results, path)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """The results of both ranks, from one spawned pair of processes."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.get_context("spawn")
    processes = [context.Process(target=_worker, args=(rank, str(out_dir)), daemon=True) for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for rank in hung:
        processes[rank].kill()
        processes[rank].join()
    if hung:
        pytest.fail(f"ranks {hung} still running after {JOIN_TIMEOUT_S} s (a collective deadlocked?)")
    results = []
    for rank, process in enumerate(processes):
        path = out_dir / f"rank{rank}.pt"
        rank_results = torch.load(path, weights_only=False) if path.exists() else {"errors": {}, "finished": []}
        for name in SECTIONS:  # sections a crash (exit code -6: gloo's abort) kept from finishing
            if name not in rank_results["finished"]:
                rank_results["errors"][name] = f"process exited with code {process.exitcode} before finishing"
        results.append(rank_results)
    if any("process_group" in r["errors"] for r in results):
        pytest.fail("process group: " + "\n".join(r["errors"].get("process_group", "") for r in results))
    return results


def section(ranks: list[dict], name: str) -> list:
    errors = [f"rank {rank}:\n{r['errors'][name]}" for rank, r in enumerate(ranks) if name in r["errors"]]
    if errors:
        pytest.fail(f"section {name} failed:\n" + "\n".join(errors))
    return [r[name] for r in ranks]


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("split_name", sorted(TENSOR_SPLITS))
def test_batch_quantile_is_the_quantile_of_the_concatenated_batch(ranks, split_name):
    values = tensor_data()["values"]
    per_rank = section(ranks, "quantile")
    for q in QUANTILES:
        for interpolation in INTERPOLATIONS:
            expected = batch_quantile(values, q, interpolation=interpolation, distributed=False)
            for rank in range(WORLD_SIZE):
                got = per_rank[rank][split_name, q, interpolation]
                assert got.dtype == torch.float32 and got.shape == ()
                # exact: the same order statistics (kthvalue), whatever the order of the gathered values
                assert got.item() == expected.item(), (split_name, q, interpolation, rank)


@pytest.mark.parametrize("split_name", sorted(TENSOR_SPLITS))
def test_class_balanced_thresholds_are_those_of_the_concatenated_batch(ranks, split_name):
    """Per-class thresholds (the default reliable set): global, exactly, with a class on one rank
    only (2, 3) and a class absent everywhere (4: NaN on every rank)."""
    data = tensor_data()
    per_rank = section(ranks, "class_quantiles")
    for q in QUANTILES:
        expected, expected_counts = class_quantiles(data["values"], data["labels"], PROTOTYPE_CLASSES, q,
                                                    distributed=False)
        assert torch.isnan(expected[4]) and expected_counts[4] == 0
        for rank in range(WORLD_SIZE):
            thresholds, counts = per_rank[rank][split_name, q]
            torch.testing.assert_close(thresholds, expected, rtol=0, atol=0, equal_nan=True,
                                       msg=f"{split_name} q={q} rank {rank}")
            assert torch.equal(counts, expected_counts)


@pytest.mark.parametrize("split_name", sorted(TENSOR_SPLITS))
def test_class_prototypes_are_those_of_the_concatenated_batch(ranks, split_name):
    data = tensor_data()
    expected_prototypes, expected_present = class_prototypes(
        data["features"], data["labels"], data["mask"], PROTOTYPE_CLASSES, distributed=False
    )
    # the fixture covers both cases: class 2 only on rank 0's rows, class 3 only in row 3, class 4 nowhere
    assert expected_present.tolist() == [True, True, True, True, False]
    for rank, results in enumerate(section(ranks, "prototypes")):
        prototypes, present = results[split_name]
        assert present.tolist() == expected_present.tolist(), rank
        torch.testing.assert_close(prototypes, expected_prototypes, rtol=0, atol=1e-6, msg=f"rank {rank}")
        assert not prototypes[4].any()


@pytest.mark.parametrize("split_name", sorted(OBJECTIVE_SPLITS))
def test_objective_thresholds_masks_and_prototypes_are_global(ranks, split_name):
    split = OBJECTIVE_SPLITS[split_name]
    labeled_rows, unlabeled_rows = global_rows(split)
    pool = objective_pool()
    reference, _, stats, mask = run_objective(objective_batch(pool, labeled_rows, unlabeled_rows))
    per_rank = section(ranks, f"objective/{split_name}")

    start = 0
    for rank, results in enumerate(per_rank):
        assert set(results["stats"]) == set(stats), rank  # same keys: the epoch-end reduction stays in step
        for key in (*THRESHOLD_KEYS, "num_prototypes"):
            torch.testing.assert_close(results["stats"][key], stats[key], rtol=0, atol=0, equal_nan=True,
                                       msg=f"{key} rank {rank}")
        rows = len(split[rank][1])
        assert torch.equal(results["reliable"], mask[start:start + rows]), rank
        start += rows
        for net, (prototypes, present) in results["banks"].items():
            expected_prototypes, expected_present = reference.prototype_banks[net].prototypes, \
                reference.prototype_banks[net].present
            assert torch.equal(present, expected_present), (net, rank)
            torch.testing.assert_close(prototypes, expected_prototypes, rtol=0, atol=1e-6, msg=f"{net} rank {rank}")
        assert results["finite_gradients"], rank
        assert torch.isfinite(results["loss"]), rank
    assert 2 <= stats["num_prototypes"].item() <= OBJECTIVE_CLASSES  # the contrast term is really exercised


@pytest.mark.parametrize("split_name", sorted(OBJECTIVE_SPLITS))
def test_objective_contrast_term_uses_the_global_prototypes(ranks, split_name):
    """Each rank's InfoNCE = its own uncertain voxels against the single-process prototypes."""
    split = OBJECTIVE_SPLITS[split_name]
    labeled_rows, unlabeled_rows = global_rows(split)
    pool = objective_pool()
    reference, _, _, mask = run_objective(objective_batch(pool, labeled_rows, unlabeled_rows))
    start = 0
    for rank, results in enumerate(section(ranks, f"objective/{split_name}")):
        rows = split[rank][1]
        uncertain = ~mask[start:start + len(rows)]
        start += len(rows)
        for net in ("a", "b"):
            if not rows:
                expected = torch.tensor(0.0)
            else:
                features = l2_normalize_voxels(pool["unlabeled"][f"features_{net}"][rows]).movedim(1, -1)
                own_labels = pool["unlabeled"][f"logits_{net}"][rows].argmax(1)
                bank = reference.prototype_banks[net]
                expected = prototype_infonce_loss(features[uncertain], own_labels[uncertain], bank.prototypes,
                                                  bank.present, CONFIG.contrast_temperature)
            torch.testing.assert_close(results["stats"][f"contrast_{net}"], expected.detach(), rtol=1e-5,
                                       atol=1e-6, msg=f"{net} rank {rank}")


def test_objective_per_voxel_means_average_to_the_single_process_value(ranks):
    """reliable_fraction, agreement and mean_kl_weight are per-rank means (reduced at epoch end by
    ``_mean_over_ranks``); over equal shares their mean is the single-process value."""
    labeled_rows, unlabeled_rows = global_rows(OBJECTIVE_SPLITS["equal"])
    _, _, stats, _ = run_objective(objective_batch(objective_pool(), labeled_rows, unlabeled_rows))
    per_rank = [results["stats"] for results in section(ranks, "objective/equal")]
    for key in ("reliable_fraction", "agreement", "mean_kl_weight", "cosine"):
        mean = torch.stack([s[key] for s in per_rank]).mean()
        torch.testing.assert_close(mean, stats[key], rtol=1e-5, atol=1e-6, msg=key)


def test_objective_rank_without_unlabelled_rows(ranks):
    """It joins the collectives (no deadlock), gets the global threshold, logs NaN for the per-voxel
    means of no voxel (skipped by the epoch-end nanmean) and a zero contrast term."""
    stats = section(ranks, "objective/one_rank_empty")[1]["stats"]
    assert math.isnan(stats["reliable_fraction"].item()) and math.isnan(stats["agreement"].item())
    assert stats["entropy_filter_a"].item() == 0.0 and stats["contrast_a"].item() == 0.0
    assert torch.isfinite(stats["total"])


@pytest.mark.parametrize("split_name", sorted(OBJECTIVE_SPLITS))
def test_sequential_step_reduces_like_the_joint_step(ranks, split_name):
    """Two objective calls per step (students A then B): same collectives on every rank, same stats."""
    for rank, results in enumerate(section(ranks, f"objective/{split_name}")):
        joint, sequential = results["stats"], results["sequential_stats"]
        assert set(sequential) == set(joint), rank
        for key in (*THRESHOLD_KEYS, "num_prototypes", "contrast_a", "contrast_b"):
            torch.testing.assert_close(sequential[key], joint[key], rtol=1e-5, atol=1e-6, equal_nan=True,
                                       msg=f"{key} rank {rank}")


def test_every_rank_takes_rank_0s_seed(ranks):
    assert [results["seed"] for results in section(ranks, "shared_seed")] == [1000, 1000]


def test_trainer_gathers_every_ranks_statistics(ranks):
    for rank, results in enumerate(section(ranks, "values_over_ranks")):
        for key, values in OVER_RANKS_VALUES.items():
            np.testing.assert_array_equal(np.asarray(results[f"ddp/{key}"], dtype=np.float64),
                                          np.concatenate(values).astype(np.float64), err_msg=f"{key} rank {rank}")
            np.testing.assert_array_equal(np.asarray(results[f"local/{key}"], dtype=np.float64),
                                          np.asarray(values[rank], dtype=np.float64), err_msg=f"{key} rank {rank}")
        assert float(np.nanmean(results["ddp/mean"])) == 3.0, rank
        # the entropy-filtered term trained on rank 1 only: rank 0 (the one that logs) must not call it dead
        assert dead_term_warnings({"entropy_filter_a": results["ddp/entropy_filter_a"]}) == [], rank
    assert dead_term_warnings({"entropy_filter_a": OVER_RANKS_VALUES["entropy_filter_a"][0]}) != []
