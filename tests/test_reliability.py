"""The class-balanced reliable set, the prototype memory and the dead-term warnings (issue 14).

The failure these guard against, measured on Left Atrium: with one global entropy quantile over a
background-dominated unlabelled batch, the most confident fifth of the voxels is saturated background,
so no foreground voxel is ever reliable, the entropy-filtered CE supervises nothing useful and only
the background class has a prototype (the contrastive term is exactly 0).
"""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_ccesemi.config import CCE_CLASS_BALANCED_CONFIG, CCE_CONFIG, CCE_RELEASED_CODE_CONFIG, MethodConfig
from nnunet_ccesemi.losses import (
    DualNetworkObjective,
    PrototypeBank,
    batch_quantile,
    class_balanced_reliable,
    class_quantiles,
    normalized_entropy,
    normalized_entropy_from_logits,
    reliable_mask,
)
from nnunet_ccesemi.training.diagnostics import dead_term_warnings

SPATIAL = (10, 10, 10)
FOREGROUND_PER_ROW = 10  # 1 % of the 1000 voxels of a row


def background_dominated_logits(foreground_order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 1000 voxels: 1 % foreground with moderately confident, distinct logit gaps
    (2.0, 2.1, ... in ``foreground_order``), and background saturated (gaps 15 to 25, distinct).

    Returns logits (2, 2, *SPATIAL) and the foreground mask (2, *SPATIAL).
    """
    generator = torch.Generator().manual_seed(0)
    gaps = 15.0 + 10.0 * torch.rand(2, *SPATIAL, generator=generator)  # background: class 0 by 15-25
    foreground = torch.zeros(2, *SPATIAL, dtype=torch.bool)
    foreground.view(2, -1)[:, :FOREGROUND_PER_ROW] = True
    steps = torch.arange(2 * FOREGROUND_PER_ROW, dtype=torch.float32)
    if foreground_order == "reversed":
        steps = steps.flip(0)
    gaps[foreground] = -(2.0 + 0.1 * steps)  # negative gap: class 1
    logits = torch.stack((gaps / 2, -gaps / 2), dim=1)
    return logits, foreground


def test_global_rule_keeps_no_foreground_and_class_balanced_keeps_its_quantile():
    """METHOD.md §2.3: q = 0.2 of 2000 voxels of which 20 are foreground."""
    logits, foreground = background_dominated_logits("ascending")
    entropy = normalized_entropy_from_logits(logits)
    labels = logits.argmax(1)
    assert torch.equal(labels == 1, foreground)

    global_threshold = batch_quantile(entropy, 0.2)
    assert not (foreground & (entropy <= global_threshold)).any()  # the released rule: no foreground at all

    thresholds, counts = class_quantiles(entropy, labels, 2, 0.2)
    assert counts.tolist() == [2000 - 20, 20]
    reliable = class_balanced_reliable(entropy, labels, thresholds)
    # floor(q (n_c - 1)) + 1 voxels of each class (distinct entropies): 4 of 20, 396 of 1980
    assert (reliable & foreground).sum() == math.floor(0.2 * 19) + 1 == 4
    assert (reliable & ~foreground).sum() == math.floor(0.2 * 1979) + 1
    # and they are the most confident foreground voxels: the largest gaps, the last four of the order
    assert torch.equal(entropy[reliable & foreground].sort().values, entropy[foreground].sort().values[:4])


def test_objective_reliable_set_per_network_on_a_background_dominated_batch():
    """Each network keeps its own most confident foreground fifth; with opposite orders the two
    sets are disjoint, so the union holds 8 of the 20 foreground voxels (the global rule: none)."""
    logits_a, foreground = background_dominated_logits("ascending")
    logits_b, _ = background_dominated_logits("reversed")
    config = MethodConfig(disagreement_weight=0.0, cps_weight=0.0, cosine_weight=0.0, contrast_weight=0.0)

    _, new_stats = DualNetworkObjective(config, 2)(logits_a, logits_b, n_labeled=0)
    assert new_stats["reliable_fraction_c1"].item() == pytest.approx(8 / 20)
    assert new_stats["entropy_filter_a"] > 0

    released = config.replace(reliability_rule="global")
    _, old_stats = DualNetworkObjective(released, 2)(logits_a, logits_b, n_labeled=0)
    assert old_stats["reliable_fraction_c1"].item() == 0.0


def test_thresholds_with_ties_keep_every_tied_voxel():
    values = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.3, 0.3])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    thresholds, counts = class_quantiles(values, labels, 2, 0.2)
    assert thresholds.tolist() == pytest.approx([0.5, 0.1]) and counts.tolist() == [4, 4]
    assert class_balanced_reliable(values, labels, thresholds).tolist() == [True] * 6 + [False] * 2


def test_saturated_voxels_keep_distinct_ordered_entropies():
    """Logits with gaps 10, 40, 90: probabilities say 7e-4, 2e-16, 1e-37 (not 0) from log_softmax."""
    logits = torch.zeros(1, 2, 3)
    logits[0, 1] = torch.tensor([10.0, 40.0, 90.0])
    entropy = normalized_entropy_from_logits(logits)[0]
    assert (entropy > 0).all() and entropy[0] > entropy[1] > entropy[2]
    torch.testing.assert_close(entropy, normalized_entropy(torch.softmax(logits, 1))[0])
    assert str(normalized_entropy_from_logits(torch.full((1, 2, 1), 1e4) * torch.tensor([0.0, 1.0]).view(1, 2, 1))
               .item()) == "0.0"  # +0.0, never -0.0 (its bits would sort last)


def test_class_absent_from_the_batch():
    values = torch.rand(3, 4, 5)
    labels = torch.randint(0, 2, (3, 4, 5))  # classes 0 and 1 of 4
    thresholds, counts = class_quantiles(values, labels, 4, 0.2)
    assert counts[2:].tolist() == [0, 0] and torch.isnan(thresholds[2:]).all()
    for c in (0, 1):
        expected = torch.quantile(values[labels == c], 0.2, interpolation="lower")
        assert thresholds[c] == expected
    reliable = class_balanced_reliable(values, labels, thresholds)
    assert reliable.sum() == sum(math.floor(0.2 * (int(n) - 1)) + 1 for n in counts[:2])


@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 1.0])
def test_class_quantiles_match_torch_quantile_with_many_classes_and_ties(q):
    generator = torch.Generator().manual_seed(3)
    values = (torch.floor(torch.rand(2, 7, 9, 5, generator=generator) * 20) / 20).half()  # ties
    labels = torch.randint(0, 5, values.shape, generator=generator)
    thresholds, counts = class_quantiles(values, labels, 6, q)  # half input: computed in float32
    assert thresholds.dtype == torch.float32
    values = values.float()
    for c in range(5):
        assert thresholds[c] == torch.quantile(values[labels == c], q, interpolation="lower")
        assert counts[c] == (labels == c).sum()
    assert torch.isnan(thresholds[5])


def test_nan_entropy_counts_as_least_confident():
    values = torch.tensor([float("nan"), 0.3, 0.1, 0.2, float("nan")])
    thresholds, counts = class_quantiles(values, torch.zeros(5, dtype=torch.long), 1, 0.5)
    # sorted 0.1, 0.2, 0.3, +inf, +inf: the lower median is 0.3, where NaN as 0 would give 0.1
    assert thresholds.tolist() == [pytest.approx(0.3)] and counts.tolist() == [5]


def test_negative_values_and_negative_zero_count_as_zero():
    """-0.0 and negative values have the sign bit set: read as the sort key's bits they would sort after
    every positive value and raise the threshold, or corrupt the class part of the key."""
    values = torch.tensor([-0.0, -1e-7, 0.1, 0.2, -0.0, 0.3])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    thresholds, counts = class_quantiles(values, labels, 2, 0.0)
    assert thresholds.tolist() == [0.0, 0.0] and counts.tolist() == [4, 2]
    assert not math.copysign(1.0, thresholds[0].item()) < 0  # +0.0, not -0.0
    thresholds, _ = class_quantiles(values, labels, 2, 0.5)  # class 0 sorted: 0, 0, 0.1, 0.2
    assert thresholds[0].item() == 0.0 and thresholds[1].item() == 0.0


def test_class_quantiles_reject_bad_input():
    with pytest.raises(ValueError, match="q must lie in"):
        class_quantiles(torch.rand(4), torch.zeros(4, dtype=torch.long), 2, 1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        class_quantiles(torch.rand(4), torch.zeros(5, dtype=torch.long), 2, 0.2)


def test_empty_batch_gives_nan_thresholds():
    thresholds, counts = class_quantiles(torch.zeros(0), torch.zeros(0, dtype=torch.long), 3, 0.2)
    assert torch.isnan(thresholds).all() and counts.tolist() == [0, 0, 0]


def test_prototype_memory_keeps_a_class_through_batches_without_it():
    bank = PrototypeBank(num_classes=2, momentum=0.0, memory=True)
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank.update(first, torch.tensor([True, True]))
    second = torch.tensor([[0.6, 0.8], [0.0, 0.0]])
    prototypes, present = bank.update(second, torch.tensor([True, False]))  # no foreground this batch
    assert present.tolist() == [True, True]
    torch.testing.assert_close(prototypes, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))  # fresh 0, remembered 1

    per_batch = PrototypeBank(num_classes=2, momentum=0.0, memory=False)  # the released code
    per_batch.update(first, torch.tensor([True, True]))
    _, present = per_batch.update(second, torch.tensor([True, False]))
    assert present.tolist() == [True, False]


def test_contrast_term_alive_with_remembered_prototypes():
    """A batch whose reliable voxels are all background still contrasts against the foreground
    prototype remembered from an earlier batch (the default), not against background alone (0)."""
    config = MethodConfig(disagreement_weight=0.0, entropy_filter_weight=0.0, cps_weight=0.0, cosine_weight=0.0,
                          contrast_sample_fraction=1.0, reliability_rule="global")
    logits, _ = background_dominated_logits("ascending")
    features = torch.randn(2, 4, *SPATIAL, generator=torch.Generator().manual_seed(1), requires_grad=True)
    kwargs = dict(n_labeled=0, features_a=features, features_b=features, contrast_weight=1.0)
    results = {}
    for memory in (True, False):
        objective = DualNetworkObjective(config.replace(prototype_memory=memory), 2)
        objective(logits.flip(1), logits.flip(1), **kwargs)  # an earlier batch: mostly class 1, both reliable
        _, results[memory] = objective(logits, logits, **kwargs)  # global rule: reliable = background only
    assert results[True]["prototype_present_c1"] == 1 and results[True]["contrast_a"] > 0
    assert results[False]["prototype_present_c1"] == 0 and results[False]["contrast_a"] == 0


def test_default_and_released_code_configurations_keep_the_global_rule():
    assert CCE_RELEASED_CODE_CONFIG.reliability_rule == "global"
    assert not CCE_RELEASED_CODE_CONFIG.prototype_memory
    # the validation cases' choice (benchmarks/README.md), with the prototype memory of issue 14
    assert CCE_CONFIG.reliability_rule == "global" and CCE_CONFIG.prototype_memory
    assert CCE_CLASS_BALANCED_CONFIG == CCE_CONFIG.replace(reliability_rule="class_balanced")
    with pytest.raises(ValueError, match="reliability_rule"):
        MethodConfig(reliability_rule="per_voxel")


# ---------------------------------------------------------------- dead terms


def test_dead_term_warnings_name_the_term_and_the_reason():
    epoch = {
        "entropy_filter_a": [0.0, 0.0, 0.0],
        "entropy_filter_b": [0.0, 0.01, 0.0],  # alive in one iteration: alive
        "contrast_a": [0.0, 0.0, 0.0],
        "contrast_b": [0.0, 0.0, 0.0],
        "cps_a": [0.1, 0.2, 0.1],
        "cosine": [0.0, 0.0, 0.0],
        "reliable_fraction": [0.2, 0.2, 0.2],
        "reliable_fraction_c0": [0.25, 0.25, 0.25],
        "reliable_fraction_c1": [0.0, math.nan, 0.0],
        "prototype_present_c0": [1.0, 1.0, 1.0],
        "prototype_present_c1": [0.0, 0.0, 0.0],
        "num_prototypes": [1.0, 1.0, 1.0],
        "agreement": [1.0, 1.0, 1.0],
    }
    warnings = dead_term_warnings(epoch)
    assert len(warnings) == 4
    contrast = next(w for w in warnings if "contrast (network A)" in w)
    assert "prototypes of two classes" in contrast and "num_prototypes 1" in contrast
    assert "class 1 0" in contrast  # the foreground prototype was never there
    entropy_filter = next(w for w in warnings if "entropy_filter (network A)" in w)
    assert "reliable_fraction 0.2" in entropy_filter and "class 1 0" in entropy_filter
    assert any("cosine term" in w and "agreement 1" in w for w in warnings)
    assert not any("entropy_filter (network B)" in w or "cps" in w for w in warnings)


def test_dead_entropy_filter_with_reliable_voxels_is_called_saturated():
    """F.cross_entropy is exactly 0 once the logit gap passes ~17: reliable voxels can train nothing."""
    warnings = dead_term_warnings({"entropy_filter_a": [0.0, 0.0], "reliable_fraction": [0.3, 0.3]})
    assert len(warnings) == 1 and "saturated" in warnings[0] and "reliable_fraction 0.3" in warnings[0]


def test_no_entropy_filter_ablation_does_not_compute_the_contrast_it_zeroes():
    """Every voxel reliable leaves nothing uncertain: term 6 is off, so no statistic can call it dead."""
    from nnunet_ccesemi.trainers import nnUNetTrainerCCE_noEntropyFilter

    config = nnUNetTrainerCCE_noEntropyFilter.method_config
    assert not config.filter_entropy
    logits_a, _ = background_dominated_logits("ascending")
    logits_b, _ = background_dominated_logits("reversed")
    features = torch.randn(2, 4, *SPATIAL, generator=torch.Generator().manual_seed(1), requires_grad=True)
    _, stats = DualNetworkObjective(config, 2)(logits_a, logits_b, n_labeled=0, features_a=features,
                                                features_b=features, contrast_weight=1.0)
    assert "contrast_a" not in stats and "num_prototypes" not in stats
    assert stats["reliable_fraction"].item() == 1.0 and stats["entropy_filter_a"] > 0


def test_no_warning_for_live_terms_or_statistics():
    assert dead_term_warnings({"cps_a": [0.1], "agreement": [0.0], "reliable_fraction": [0.0],
                               "num_prototypes": [0.0], "supervised_a": [0.0]}) == []
    assert dead_term_warnings({}) == []
