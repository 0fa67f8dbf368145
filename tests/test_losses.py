"""Unit tests of the loss terms in ``nnunet_ccesemi.losses``: hand-computed values, gradient routing,
degenerate masks and precisions. Each test runs in milliseconds on a CPU."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ccesemi.losses import (
    IGNORE_LABEL,
    DecoderFeatureHook,
    PrototypeBank,
    batch_quantile,
    class_prototypes,
    confident_disagreement_loss,
    contrast_rampup,
    cosine_consistency,
    cross_pseudo_supervision,
    joint_pseudo_labels,
    kl_divergence_map,
    kl_weighted_cross_pseudo_supervision,
    l2_normalize_voxels,
    last_decoder_stage,
    masked_cross_entropy,
    normalized_entropy,
    normalized_entropy_from_logits,
    prototype_infonce_loss,
    prototype_l2_loss,
    reliable_mask,
    sample_uncertain_voxels,
    sigmoid_rampup,
    unsupervised_rampup,
)
from nnunet_ccesemi.losses.ramps import ramp_weights, unsupervised_rampup_length

torch.set_num_threads(1)

SHAPES = [(2, 2, 5, 4), (2, 4, 3, 4, 5)]  # (B, C, *spatial): 2D with C=2, 3D with C=4
SHAPE_IDS = ["2d-c2", "3d-c4"]


def probs_at_voxel(*values: float) -> torch.Tensor:
    """A (1, C, 1, 1) probability tensor holding one voxel."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)


def logits_at_voxel(*values: float, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1).requires_grad_(requires_grad)


# ---------------------------------------------------------------- entropy


@pytest.mark.parametrize(
    "probs, expected",
    [
        ((0.5, 0.5), 1.0),
        ((0.25, 0.25, 0.25, 0.25), 1.0),
        ((1.0, 0.0), 0.0),
        ((0.0, 0.0, 1.0, 0.0), 0.0),
        ((0.5, 0.5, 0.0, 0.0), math.log(2) / math.log(4)),
        ((0.9, 0.1), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)),
    ],
)
def test_normalized_entropy_hand_values(probs, expected):
    entropy = normalized_entropy(probs_at_voxel(*probs))
    assert entropy.shape == (1, 1, 1) and entropy.dtype == torch.float32
    assert entropy.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_normalized_entropy_float32_from_low_precision(shape, dtype):
    probs = torch.softmax(torch.randn(shape) * 30, dim=1).to(dtype)  # saturated: exact zeros in half
    entropy = normalized_entropy(probs)
    assert entropy.dtype == torch.float32 and entropy.shape == (shape[0], *shape[2:])
    assert torch.isfinite(entropy).all() and (entropy >= -1e-6).all() and (entropy <= 1 + 1e-3).all()


def test_normalized_entropy_rejects_one_class():
    with pytest.raises(ValueError, match="C >= 2"):
        normalized_entropy(torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("interpolation", ["linear", "lower", "higher"])
@pytest.mark.parametrize("q", [0.0, 0.013, 0.2, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3, 5, 4), (2, 9, 8, 7)])
def test_batch_quantile_matches_torch_quantile(shape, q, interpolation):
    values = torch.randn(shape, generator=torch.Generator().manual_seed(hash((shape, q)) % 1000))
    expected = torch.quantile(values.reshape(-1), q, interpolation=interpolation)
    result = batch_quantile(values, q, interpolation=interpolation)
    assert result.shape == () and result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def test_batch_quantile_with_ties_and_half_input():
    values = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0], dtype=torch.float16)
    assert batch_quantile(values, 0.2).item() == 0.0
    assert batch_quantile(values, 0.875).item() == pytest.approx(1.5)
    assert batch_quantile(values, 1.0).dtype == torch.float32


def test_batch_quantile_above_torch_quantile_limit():
    # torch.quantile (up to at least 2.8) refuses more than 2**24 elements; the kthvalue path must
    # not. A sorted input makes the order statistics known: v_(i) = values[i].
    n = 2**24 + 5
    values = torch.arange(n, dtype=torch.float32)
    q = 0.3
    rank = q * (n - 1)
    lower, upper = math.floor(rank), math.ceil(rank)
    expected = torch.lerp(values[lower], values[upper], torch.tensor(rank - lower))
    torch.testing.assert_close(batch_quantile(values, q), expected)


@pytest.mark.parametrize("q, interpolation", [(-0.1, "linear"), (1.5, "linear"), (0.5, "midpoint")])
def test_batch_quantile_rejects_bad_arguments(q, interpolation):
    with pytest.raises(ValueError):
        batch_quantile(torch.rand(10), q, interpolation=interpolation)


def test_batch_quantile_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        batch_quantile(torch.zeros(0), 0.5)


def test_distributed_paths_with_one_rank(tmp_path):
    """All-gather / all-reduce code paths on a one-process gloo group give the local answers."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        values = torch.rand(3, 4, 5)
        torch.testing.assert_close(
            batch_quantile(values, 0.2, distributed=True), batch_quantile(values, 0.2, distributed=False)
        )
        features = F.normalize(torch.randn(2, 3, 4, 4), dim=1)
        labels = torch.randint(0, 3, (2, 4, 4))
        mask = torch.rand(2, 4, 4) > 0.3
        global_result = class_prototypes(features, labels, mask, 3, distributed=True)
        local_result = class_prototypes(features, labels, mask, 3, distributed=False)
        torch.testing.assert_close(global_result, local_result)
    finally:
        dist.destroy_process_group()


def test_reliable_mask_is_or_of_the_two_thresholds():
    entropy_a = torch.tensor([[0.1, 0.5, 0.9, 0.5]])
    entropy_b = torch.tensor([[0.9, 0.2, 0.9, 0.3]])
    mask = reliable_mask(entropy_a, entropy_b, torch.tensor(0.2), torch.tensor(0.3))
    assert mask.tolist() == [[True, True, False, True]]
    strict = reliable_mask(entropy_a, entropy_b, torch.tensor(0.2), torch.tensor(0.3), strict=True)
    assert strict.tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("q", [1e-6, 0.2, 1.0])
def test_reliable_mask_keeps_at_least_the_quantile_and_all_at_q1(q):
    entropy_a, entropy_b = torch.rand(2, 6, 7), torch.rand(2, 6, 7)
    mask = reliable_mask(entropy_a, entropy_b, batch_quantile(entropy_a, q), batch_quantile(entropy_b, q))
    assert mask.reshape(-1)[entropy_a.argmin()] and mask.reshape(-1)[entropy_b.argmin()]
    assert mask.sum() >= math.floor(q * (entropy_a.numel() - 1)) + 1
    if q == 1.0:
        assert mask.all()


def test_reliable_mask_survives_saturated_ties():
    # More than q of the voxels at entropy exactly 0: '<=' keeps them, '<' would keep none.
    entropy = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5])
    threshold = batch_quantile(entropy, 0.2)
    assert reliable_mask(entropy, entropy, threshold, threshold).sum() == 4
    assert reliable_mask(entropy, entropy, threshold, threshold, strict=True).sum() == 0


# ---------------------------------------------------------------- pseudo-labels


def test_joint_pseudo_labels_confident_rule_by_hand():
    # voxels: A confident | B confident | tie (goes to A) | both background
    probs_a = torch.tensor([[0.1, 0.8, 0.1], [0.4, 0.3, 0.3], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05]]).t()
    probs_b = torch.tensor([[0.4, 0.2, 0.4], [0.05, 0.05, 0.9], [0.2, 0.2, 0.6], [0.8, 0.1, 0.1]]).t()
    probs_a, probs_b = probs_a.reshape(1, 3, 4, 1), probs_b.reshape(1, 3, 4, 1)
    entropy_a, entropy_b = normalized_entropy(probs_a), normalized_entropy(probs_b)
    labels = joint_pseudo_labels(probs_a, probs_b, entropy_a, entropy_b)
    assert labels.dtype == torch.int64 and labels.shape == (1, 4, 1)
    assert labels.reshape(-1).tolist() == [1, 2, 1, 0]


def test_joint_pseudo_labels_union_rule_by_hand():
    # A vs B argmax: 0/2 -> 2; 1/0 -> 1; 1/2 with B more confident -> 2; 0/0 -> 0
    probs_a = torch.tensor([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.3, 0.4, 0.3], [0.5, 0.3, 0.2]]).t()
    probs_b = torch.tensor([[0.4, 0.1, 0.5], [0.95, 0.03, 0.02], [0.05, 0.05, 0.9], [0.6, 0.2, 0.2]]).t()
    probs_a, probs_b = probs_a.reshape(1, 3, 4, 1), probs_b.reshape(1, 3, 4, 1)
    labels = joint_pseudo_labels(
        probs_a, probs_b, normalized_entropy(probs_a), normalized_entropy(probs_b), rule="union"
    )
    assert labels.reshape(-1).tolist() == [2, 1, 2, 0]


def test_joint_pseudo_labels_union_is_logical_or_for_two_classes():
    probs_a = torch.softmax(torch.randn(2, 2, 4, 4, 3), 1)
    probs_b = torch.softmax(torch.randn(2, 2, 4, 4, 3), 1)
    labels = joint_pseudo_labels(
        probs_a, probs_b, normalized_entropy(probs_a), normalized_entropy(probs_b), rule="union"
    )
    assert torch.equal(labels, probs_a.argmax(1) | probs_b.argmax(1))


def test_joint_pseudo_labels_is_detached_and_validates():
    probs_a = torch.softmax(torch.randn(1, 3, 4, 4, requires_grad=True), 1)
    probs_b = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    labels = joint_pseudo_labels(probs_a, probs_b, normalized_entropy(probs_a), normalized_entropy(probs_b))
    assert not labels.requires_grad
    with pytest.raises(ValueError, match="rule"):
        joint_pseudo_labels(probs_a, probs_b, normalized_entropy(probs_a), normalized_entropy(probs_b), rule="vote")
    with pytest.raises(ValueError, match="shape"):
        joint_pseudo_labels(probs_a, probs_b[:, :2], normalized_entropy(probs_a), normalized_entropy(probs_b))


# ---------------------------------------------------------------- cross pseudo supervision and KL


def test_cross_pseudo_supervision_one_voxel_by_hand():
    logits_student = logits_at_voxel(1.0, 2.0, 0.0)
    logits_teacher = logits_at_voxel(3.0, 0.0, 1.0)  # teacher says class 0
    expected = math.log(math.exp(1) + math.exp(2) + math.exp(0)) - 1.0
    assert cross_pseudo_supervision(logits_student, logits_teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kl_divergence_map_by_hand():
    logits_teacher = logits_at_voxel(math.log(0.25), math.log(0.75))
    logits_student = logits_at_voxel(0.0, 0.0)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    divergence = kl_divergence_map(logits_student, logits_teacher)
    assert divergence.shape == (1, 1, 1)
    assert divergence.item() == pytest.approx(expected, rel=1e-5)
    assert kl_divergence_map(logits_teacher, logits_teacher).abs().max() < 1e-6


def test_kl_divergence_map_is_stable_for_extreme_logits():
    logits_teacher = logits_at_voxel(200.0, -200.0, 0.0)
    logits_student = logits_at_voxel(-200.0, 200.0, 0.0, requires_grad=True)
    divergence = kl_divergence_map(logits_student, logits_teacher)
    assert divergence.item() == pytest.approx(400.0, rel=1e-4)
    divergence.sum().backward()
    assert torch.isfinite(logits_student.grad).all()


def test_kl_weighted_cps_one_voxel_by_hand():
    logits_teacher = logits_at_voxel(math.log(0.25), math.log(0.75))
    logits_student = logits_at_voxel(0.0, 0.0)
    divergence = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    cross_entropy = math.log(2.0)  # teacher label 1, student uniform
    loss, mean_weight = kl_weighted_cross_pseudo_supervision(logits_student, logits_teacher)
    assert loss.item() == pytest.approx(math.exp(-divergence) * cross_entropy + divergence, rel=1e-5)
    assert mean_weight.item() == pytest.approx(math.exp(-divergence), rel=1e-5)
    assert not mean_weight.requires_grad


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cps_terms_train_the_student_only(shape):
    logits_student = torch.randn(shape, requires_grad=True)
    logits_teacher = torch.randn(shape, requires_grad=True)
    loss = cross_pseudo_supervision(logits_student, logits_teacher)
    kl_loss, _ = kl_weighted_cross_pseudo_supervision(logits_student, logits_teacher)
    (loss + kl_loss + kl_divergence_map(logits_student, logits_teacher).mean()).backward()
    assert logits_teacher.grad is None
    assert logits_student.grad.abs().sum() > 0 and torch.isfinite(logits_student.grad).all()


def test_kl_weight_is_detached_by_default_and_attached_on_request():
    logits_student = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits_teacher = torch.randn(2, 3, 4, 4)

    def manual(attached: bool) -> torch.Tensor:
        divergence = kl_divergence_map(logits_student, logits_teacher)
        weight = torch.exp(-divergence) if attached else torch.exp(-divergence).detach()
        cross_entropy = F.cross_entropy(logits_student, logits_teacher.argmax(1), reduction="none")
        return (weight * cross_entropy).mean() + divergence.mean()

    gradients = {}
    for detach_weight in (True, False):
        loss, _ = kl_weighted_cross_pseudo_supervision(logits_student, logits_teacher, detach_weight=detach_weight)
        (gradient,) = torch.autograd.grad(loss, logits_student)
        (expected,) = torch.autograd.grad(manual(attached=not detach_weight), logits_student)
        torch.testing.assert_close(gradient, expected)
        gradients[detach_weight] = gradient
    assert not torch.allclose(gradients[True], gradients[False])


def test_masked_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]).t().reshape(1, 2, 3, 1)
    pseudo_labels = torch.tensor([0, 0, 1]).reshape(1, 3, 1)
    mask = torch.tensor([True, True, False]).reshape(1, 3, 1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert masked_cross_entropy(logits, pseudo_labels, mask).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_masked_cross_entropy_full_and_empty_mask(shape):
    logits = torch.randn(shape, requires_grad=True)
    pseudo_labels = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    full = torch.ones_like(pseudo_labels, dtype=torch.bool)
    torch.testing.assert_close(masked_cross_entropy(logits, pseudo_labels, full), F.cross_entropy(logits, pseudo_labels))
    empty = masked_cross_entropy(logits, pseudo_labels, ~full)
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_cross_entropy_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        masked_cross_entropy(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 3, dtype=torch.long), torch.ones(1, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cross_pseudo_terms_accept_low_precision_logits(dtype):
    logits_student = (torch.randn(2, 3, 4, 4) * 20).to(dtype).requires_grad_()
    logits_teacher = (torch.randn(2, 3, 4, 4) * 20).to(dtype)
    mask = torch.rand(2, 4, 4) > 0.5
    loss, weight = kl_weighted_cross_pseudo_supervision(logits_student, logits_teacher)
    total = loss + cross_pseudo_supervision(logits_student, logits_teacher)
    total = total + masked_cross_entropy(logits_student, logits_teacher.argmax(1), mask)
    assert loss.dtype == torch.float32 and torch.isfinite(total) and 0 < weight <= 1
    total.backward()
    assert logits_student.grad.dtype == dtype and torch.isfinite(logits_student.grad).all()


# ---------------------------------------------------------------- confident disagreement


def test_confident_disagreement_by_hand():
    # voxel 0: only A confidently foreground -> counted; voxel 1: both -> not; voxel 2: B at 0.59 -> not confident
    probs_a = torch.tensor([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]]).t().reshape(1, 2, 3, 1)
    probs_b = torch.tensor([[0.7, 0.3], [0.1, 0.9], [0.41, 0.59]]).t().reshape(1, 2, 3, 1)
    probs_student = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.5, 0.5]]).t().reshape(1, 2, 3, 1)
    target = torch.tensor([0, 1, 1]).reshape(1, 1, 3, 1)
    expected = (0.4**2 + 0.4**2) / (1 + 1e-6)
    loss = confident_disagreement_loss(probs_student, probs_a, probs_b, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the threshold is inclusive: B at exactly the confidence counts
    loss_at_threshold = confident_disagreement_loss(probs_student, probs_a, probs_b, target, confidence=0.59)
    assert loss_at_threshold.item() == pytest.approx((0.4**2 + 0.4**2 + 0.5) / (2 + 1e-6), rel=1e-6)


def test_confident_disagreement_target_layouts_ignore_label_and_empty_mask():
    probs_a = torch.softmax(torch.randn(2, 3, 4, 5) * 5, 1)
    probs_b = torch.softmax(torch.randn(2, 3, 4, 5) * 5, 1)
    probs_student = torch.softmax(torch.randn(2, 3, 4, 5, requires_grad=True), 1)
    target = torch.randint(0, 3, (2, 1, 4, 5), dtype=torch.int16)
    with_channel = confident_disagreement_loss(probs_student, probs_a, probs_b, target)
    without_channel = confident_disagreement_loss(probs_student, probs_a, probs_b, target[:, 0])
    torch.testing.assert_close(with_channel, without_channel)

    ignored = target.clone()
    ignored[0] = 255  # an ignore label outside [0, C) must neither crash nor count
    loss_ignored = confident_disagreement_loss(probs_student, probs_a, probs_b, ignored, ignore_index=255)
    loss_second_item = confident_disagreement_loss(probs_student[1:], probs_a[1:], probs_b[1:], target[1:])
    torch.testing.assert_close(loss_ignored, loss_second_item)

    empty = confident_disagreement_loss(probs_student, probs_a, probs_a, target)  # identical nets never disagree
    assert empty.item() == 0.0 and empty.requires_grad


def test_confident_disagreement_gradient_reaches_student_only():
    logits_student = torch.randn(1, 3, 6, 6, requires_grad=True)
    logits_other = torch.randn(1, 3, 6, 6, requires_grad=True)
    probs_student, probs_other = torch.softmax(logits_student * 4, 1), torch.softmax(logits_other * 4, 1)
    target = torch.randint(0, 3, (1, 6, 6))
    loss = confident_disagreement_loss(probs_student, probs_student, probs_other, target, confidence=0.5)
    assert loss > 0
    loss.backward()
    assert logits_student.grad.abs().sum() > 0 and logits_other.grad is None


def test_confident_disagreement_rejects_bad_target():
    probs = torch.softmax(torch.randn(1, 2, 4, 4), 1)
    with pytest.raises(ValueError, match="one channel"):
        confident_disagreement_loss(probs, probs, probs, torch.zeros(1, 2, 4, 4, dtype=torch.long))


# ---------------------------------------------------------------- cosine consistency


@pytest.mark.parametrize(
    "p, q, expected",
    [
        ((0.3, 0.7), (0.3, 0.7), 0.0),
        ((1.0, 0.0), (0.0, 1.0), 1.0),
        ((0.5, 0.5), (1.0, 0.0), 1.0 - 1.0 / math.sqrt(2.0)),
        ((0.2, 0.3, 0.5, 0.0), (0.0, 0.0, 0.0, 1.0), 1.0),
    ],
)
def test_cosine_consistency_by_hand(p, q, expected):
    assert cosine_consistency(probs_at_voxel(*p), probs_at_voxel(*q)).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cosine_consistency_trains_both(shape):
    logits_a = torch.randn(shape, requires_grad=True)
    logits_b = torch.randn(shape, requires_grad=True)
    cosine_consistency(torch.softmax(logits_a, 1), torch.softmax(logits_b.half(), 1)).backward()
    assert logits_a.grad.abs().sum() > 0 and logits_b.grad.abs().sum() > 0


# ---------------------------------------------------------------- prototypes


def reference_prototypes(features, labels, mask, num_classes):
    flat_features = features.movedim(1, -1).reshape(-1, features.shape[1])
    flat_labels, flat_mask = labels.reshape(-1), mask.reshape(-1)
    prototypes = torch.zeros(num_classes, features.shape[1])
    present = torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        selected = flat_features[(flat_labels == c) & flat_mask]
        if len(selected):
            prototypes[c] = F.normalize(selected.mean(0), dim=0)
            present[c] = True
    return prototypes, present


def test_class_prototypes_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]]).t().reshape(1, 2, 4, 1)
    labels = torch.tensor([0, 0, 1, 1]).reshape(1, 4, 1)
    mask = torch.tensor([True, True, True, False]).reshape(1, 4, 1)
    prototypes, present = class_prototypes(features, labels, mask, num_classes=3)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(prototypes, torch.tensor([[s, s], [0.6, 0.8], [0.0, 0.0]]))
    assert present.tolist() == [True, True, False]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_class_prototypes_match_loop_reference_and_are_detached(shape):
    num_classes = shape[1]
    features = l2_normalize_voxels(torch.randn(shape[0], 6, *shape[2:], requires_grad=True))
    labels = torch.randint(0, num_classes - 1, (shape[0], *shape[2:]))  # the last class is absent
    mask = torch.rand(labels.shape) > 0.4
    prototypes, present = class_prototypes(features, labels, mask, num_classes)
    expected_prototypes, expected_present = reference_prototypes(features.detach(), labels, mask, num_classes)
    torch.testing.assert_close(prototypes, expected_prototypes)
    assert torch.equal(present, expected_present) and not present[-1]
    assert not prototypes.requires_grad and prototypes.dtype == torch.float32


def test_class_prototypes_from_half_features():
    features = F.normalize(torch.randn(2, 4, 8, 8), dim=1)
    labels, mask = torch.randint(0, 2, (2, 8, 8)), torch.ones(2, 8, 8, dtype=torch.bool)
    prototypes, _ = class_prototypes(features.half(), labels, mask, 2)
    expected, _ = class_prototypes(features, labels, mask, 2)
    torch.testing.assert_close(prototypes, expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_class_prototypes_of_normalised_voxels_without_the_normalised_map(shape):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(shape[0], 6, *shape[2:], generator=generator) * 5
    features[0, :, 0] = 0.0  # all-zero voxels stay zero, as in F.normalize
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    mask = torch.rand(labels.shape, generator=generator) > 0.3
    prototypes, present = class_prototypes(features, labels, mask, shape[1], normalize_voxels=True)
    expected, expected_present = class_prototypes(l2_normalize_voxels(features), labels, mask, shape[1])
    torch.testing.assert_close(prototypes, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(present, expected_present)


@pytest.mark.parametrize("normalize_voxels", [False, True])
# B x F = 12 elements per voxel, V = 105 voxels: chunks of one voxel, of 8 (the last one short), one chunk
@pytest.mark.parametrize("chunk_elements", [1, 8 * 12, 10**9])
def test_class_prototypes_are_the_same_in_any_chunking(normalize_voxels, chunk_elements):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 6, 5, 7, 3, generator=generator) * 3
    labels = torch.randint(0, 3, (2, 5, 7, 3), generator=generator)
    mask = torch.rand(labels.shape, generator=generator) > 0.3
    prototypes, present = class_prototypes(features, labels, mask, 3, normalize_voxels=normalize_voxels,
                                           chunk_elements=chunk_elements)
    reference_features = l2_normalize_voxels(features) if normalize_voxels else features
    expected, expected_present = reference_prototypes(reference_features, labels, mask, 3)
    torch.testing.assert_close(prototypes, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(present, expected_present)


def test_class_prototypes_never_copy_the_whole_map_to_float32():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nnunet_ccesemi.training.memory_estimate import LiveTensorMemory

    # float16 features as under AMP: 2 x 32 x 64^3 voxels, 32 MiB; a float32 copy would add 64 MiB
    with FakeTensorMode():
        features = torch.empty(2, 32, 64, 64, 64, dtype=torch.float16)
        labels = torch.zeros(2, 64, 64, 64, dtype=torch.long)
        mask = torch.ones(2, 64, 64, 64, dtype=torch.bool)
        with LiveTensorMemory() as memory:
            memory.track([features, labels, mask])
            inputs = memory.current_bytes
            class_prototypes(features, labels, mask, 2, normalize_voxels=True, chunk_elements=2**20)
    extra_mib = (memory.peak_bytes - inputs) / 2**20
    # a few chunks of 4 MiB (the float32 copy, its squares, the one-hot and the label column), no whole map
    assert extra_mib < 16, extra_mib


def test_class_argmax_is_argmax_with_its_tie_rule():
    from nnunet_ccesemi.losses.pseudo_labels import class_argmax

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (4, 5, 6, 7), generator=generator).float()  # many ties
    assert torch.equal(class_argmax(scores), scores.argmax(1))
    assert torch.equal(class_argmax(scores.half()), scores.half().argmax(1))


def test_cosine_consistency_equals_torch_cosine_similarity_with_gradients():
    generator = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(2, 3, 4, 5, generator=generator), 1).requires_grad_()
    q = torch.softmax(torch.randn(2, 3, 4, 5, generator=generator), 1).requires_grad_()
    ours = cosine_consistency(p, q)
    reference = (1.0 - F.cosine_similarity(p, q, dim=1, eps=1e-8)).mean()
    torch.testing.assert_close(ours, reference)
    for mine, theirs in zip(torch.autograd.grad(ours, (p, q)), torch.autograd.grad(reference, (p, q))):
        torch.testing.assert_close(mine, theirs)
    zeros = torch.zeros(1, 3, 2)
    assert cosine_consistency(zeros, zeros) == 1.0  # as cosine_similarity: zero vectors have similarity 0


def test_prototype_bank_momentum_zero_is_the_batch():
    bank = PrototypeBank(num_classes=3, momentum=0.0)
    first = torch.eye(3)[:, :2].contiguous()
    bank.update(first, torch.tensor([True, True, False]))
    prototypes, present = bank.update(torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]), torch.tensor([True, False, True]))
    assert present.tolist() == [True, False, True]
    torch.testing.assert_close(prototypes, torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))


def test_prototype_bank_ema_blends_and_keeps_absent_classes():
    bank = PrototypeBank(num_classes=3, momentum=0.5)
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.tensor([True, True, False]))
    prototypes, present = bank.update(
        torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]), torch.tensor([True, False, True])
    )
    s = 1 / math.sqrt(2)
    # class 0 blended, class 1 kept (absent now, present before), class 2 new
    torch.testing.assert_close(prototypes, torch.tensor([[s, s], [0.0, 1.0], [1.0, 0.0]]))
    assert present.tolist() == [True, True, True]


def test_prototype_bank_keeps_the_new_prototype_when_the_blend_cancels():
    bank = PrototypeBank(num_classes=2, momentum=0.5)
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([True, True]))
    prototypes, present = bank.update(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([True, True]))
    s = 1 / math.sqrt(2)
    # class 0: old and new are opposite, their mean is no direction; class 1 blends as usual
    torch.testing.assert_close(prototypes, torch.tensor([[-1.0, 0.0], [s, s]]))
    assert present.tolist() == [True, True]


def test_prototype_bank_state_dict_round_trip():
    bank = PrototypeBank(num_classes=2, momentum=0.9)
    bank.update(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([True, False]))
    restored = PrototypeBank(num_classes=2, momentum=0.9)  # width unknown until loaded
    restored.load_state_dict(bank.state_dict())
    torch.testing.assert_close(restored.prototypes, bank.prototypes)
    assert torch.equal(restored.present, bank.present)
    with pytest.raises(ValueError, match="width"):
        restored.update(torch.zeros(2, 5), torch.tensor([True, True]))


def feature_index_map(batch_size, spatial):
    """Features whose single channel is the flat voxel index: a sampled row names its voxel."""
    return torch.arange(batch_size * math.prod(spatial), dtype=torch.float32).reshape(batch_size, 1, *spatial)


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
@pytest.mark.parametrize("fraction, max_per_class", [(0.1, 100), (0.5, 3), (1.0, 1000), (0.0, 10)])
def test_sample_uncertain_voxels_quota_labels_and_uniqueness(spatial, fraction, max_per_class):
    num_classes, batch_size = 3, 2
    generator = torch.Generator().manual_seed(0)
    features = feature_index_map(batch_size, spatial)
    own_labels = torch.randint(0, num_classes, (batch_size, *spatial), generator=generator)
    uncertain = torch.rand(own_labels.shape, generator=generator) > 0.3
    sampled_features, sampled_labels = sample_uncertain_voxels(
        features, own_labels, uncertain, fraction, max_per_class, generator=generator, num_classes=num_classes
    )
    total_voxels = batch_size * math.prod(spatial)
    assert sampled_features.shape == (num_classes * min(max_per_class, total_voxels), 1)
    keep = sampled_labels != IGNORE_LABEL
    voxel_index = sampled_features[keep, 0].long()
    assert len(voxel_index.unique()) == len(voxel_index)
    assert uncertain.reshape(-1)[voxel_index].all()
    assert torch.equal(own_labels.reshape(-1)[voxel_index], sampled_labels[keep])
    for c in range(num_classes):
        candidates = int((uncertain & (own_labels == c)).sum())
        assert int((sampled_labels == c).sum()) == min(math.ceil(fraction * candidates - 1e-9), max_per_class)


def test_sample_uncertain_voxels_is_random_reproducible_and_compact():
    features = feature_index_map(2, (8, 8))
    own_labels = torch.randint(0, 2, (2, 8, 8))
    uncertain = torch.ones(2, 8, 8, dtype=torch.bool)

    def draw(seed):
        return sample_uncertain_voxels(
            features, own_labels, uncertain, 0.2, 50, generator=torch.Generator().manual_seed(seed),
            num_classes=2, compact=True,
        )

    first, second, other = draw(1), draw(1), draw(2)
    assert torch.equal(first[0], second[0]) and not torch.equal(first[0], other[0])
    assert (first[1] != IGNORE_LABEL).all()
    inferred = sample_uncertain_voxels(features, own_labels, uncertain, 0.2, 50, compact=True)  # C inferred
    assert inferred[0].shape == first[0].shape


def test_sample_uncertain_voxels_gradient_reaches_sampled_voxels_only():
    features = torch.randn(1, 4, 5, 5, requires_grad=True)
    own_labels = torch.zeros(1, 5, 5, dtype=torch.long)
    uncertain = torch.zeros(1, 5, 5, dtype=torch.bool)
    uncertain[0, 1, 2] = uncertain[0, 3, 4] = True
    sampled_features, sampled_labels = sample_uncertain_voxels(features, own_labels, uncertain, 1.0, 10, num_classes=2)
    (sampled_features * (sampled_labels != IGNORE_LABEL).unsqueeze(1)).sum().backward()
    touched = features.grad.abs().sum(1)[0] > 0
    assert torch.equal(touched, uncertain[0])


def test_sample_uncertain_voxels_nothing_uncertain():
    features = torch.randn(1, 3, 4, 4)
    sampled_features, sampled_labels = sample_uncertain_voxels(
        features, torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.bool), 0.5, 8, num_classes=2
    )
    assert (sampled_labels == IGNORE_LABEL).all() and sampled_features.shape == (16, 3)


def test_gather_voxels_is_advanced_indexing_with_its_gradient_repeats_included():
    from nnunet_ccesemi.losses import gather_voxels

    features = torch.randn(3, 4, 5, 6, requires_grad=True)
    batch_index, spatial_index = torch.tensor([2, 0, 2, 2]), torch.tensor([7, 29, 7, 0])  # a voxel twice
    weights = torch.randn(4, 4)
    (gather_voxels(features, batch_index, spatial_index) * weights).sum().backward()
    reference = features.detach().clone().requires_grad_()
    gathered = reference.reshape(3, 4, 30)[batch_index, :, spatial_index]
    (gathered * weights).sum().backward()
    assert torch.equal(gather_voxels(features, batch_index, spatial_index), gathered)
    torch.testing.assert_close(features.grad, reference.grad)
    assert gather_voxels(features[:0], batch_index[:0], spatial_index[:0]).shape == (0, 4)


def test_gather_voxels_backward_writes_one_map():
    """Not a second, out-of-place copy of it, as autograd's own formula does under fake tensors: the
    memory estimate would count a map a GPU never allocates."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nnunet_ccesemi.losses import gather_voxels
    from nnunet_ccesemi.training.memory_estimate import LiveTensorMemory

    with FakeTensorMode():
        features = torch.empty(2, 32, 64, 64, 64, requires_grad=True)  # 64 MiB
        index = torch.zeros(4096, dtype=torch.long)
        with LiveTensorMemory() as memory:
            memory.track([features, index])
            before = memory.current_bytes
            gather_voxels(features, index, index).sum().backward()
    assert (memory.peak_bytes - before) / 2**20 < 66


TWO_PROTOTYPES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
BOTH_PRESENT = torch.tensor([True, True])


@pytest.mark.parametrize(
    "label, expected",
    [(0, math.log(1 + math.exp(-10.0))), (1, math.log(1 + math.exp(10.0)))],
)
def test_prototype_infonce_by_hand(label, expected):
    sampled_features = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = prototype_infonce_loss(sampled_features, torch.tensor([label]), TWO_PROTOTYPES, BOTH_PRESENT, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)  # float32 log-sum-exp


def test_prototype_infonce_ignores_padding_and_absent_prototypes():
    features = F.normalize(torch.randn(5, 2), dim=1)
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, IGNORE_LABEL, 2, 1])
    present = torch.tensor([True, True, False])
    loss = prototype_infonce_loss(features, labels, prototypes, present, 0.1)
    keep = torch.tensor([0, 1, 4])
    expected = F.cross_entropy(features[keep] @ TWO_PROTOTYPES.t() / 0.1, labels[keep])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("loss_function", [prototype_infonce_loss, prototype_l2_loss], ids=["infonce", "l2"])
@pytest.mark.parametrize("present", [[False, False], [True, False]], ids=["none", "one"])
def test_prototype_losses_zero_and_attached_with_fewer_than_two_prototypes(loss_function, present):
    features = F.normalize(torch.randn(6, 2), dim=1).requires_grad_()
    loss = loss_function(features, torch.tensor([0, 1, 0, 1, 0, 1]), TWO_PROTOTYPES, torch.tensor(present))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


@pytest.mark.parametrize("loss_function", [prototype_infonce_loss, prototype_l2_loss], ids=["infonce", "l2"])
def test_prototype_losses_empty_samples_and_detached_prototypes(loss_function):
    prototypes = TWO_PROTOTYPES.clone().requires_grad_()
    empty = loss_function(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, dtype=torch.long), prototypes, BOTH_PRESENT)
    assert empty.item() == 0.0 and empty.requires_grad
    features = F.normalize(torch.randn(8, 2), dim=1).requires_grad_()
    loss = loss_function(features, torch.tensor([0, 1] * 4), prototypes, BOTH_PRESENT)
    loss.backward()
    assert prototypes.grad is None
    assert features.grad.abs().sum() > 0 and torch.isfinite(features.grad).all()


def test_prototype_infonce_is_stable_at_low_temperature():
    features = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    prototypes = F.normalize(torch.randn(4, 8), dim=1)
    loss = prototype_infonce_loss(features, torch.randint(0, 4, (16,)), prototypes, torch.ones(4, dtype=torch.bool), 1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


def test_prototype_l2_loss_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    loss = prototype_l2_loss(features, torch.tensor([0, 1]), TWO_PROTOTYPES, BOTH_PRESENT)
    pull = (0.0 + math.sqrt(0.6**2 + 0.2**2)) / 2
    # class means = the samples; pair (0 -> μ1) is sqrt(2) apart (no hinge), pair (1 -> μ0) is sqrt(0.8) apart
    separation = (0.0 + (math.sqrt(2.0) - math.sqrt(0.8))) / 2
    assert loss.item() == pytest.approx(pull + separation, rel=1e-5)


def test_prototype_l2_separation_pushes_away_from_other_prototypes():
    # A sample sitting on its own prototype gets no pull; the separation term still moves it away
    # from the other class's prototype.
    features = torch.tensor([[0.8, 0.6], [0.0, 1.0]], requires_grad=True)
    prototypes = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    loss = prototype_l2_loss(features, torch.tensor([0, 1]), prototypes, BOTH_PRESENT)
    loss.backward()
    step = -features.grad[0]
    away_from_other = F.normalize(features[0].detach() - prototypes[1], dim=0)
    assert torch.dot(step, away_from_other) > 0


# ---------------------------------------------------------------- features and ramps


def test_l2_normalize_voxels():
    features = torch.randn(2, 5, 3, 4, 2)
    features[0, :, 1, 1, 1] = 0
    normalized = l2_normalize_voxels(features.half())
    assert normalized.dtype == torch.float32 and torch.isfinite(normalized).all()
    norms = normalized.norm(dim=1)
    assert norms[0, 1, 1, 1] == 0
    norms[0, 1, 1, 1] = 1
    torch.testing.assert_close(norms, torch.ones_like(norms))


class TupleOutput(torch.nn.Module):
    def forward(self, x):
        return x * 2, x


def test_decoder_feature_hook_captures_and_removes():
    stage = torch.nn.Conv2d(1, 3, 1)
    network = torch.nn.Sequential(stage, torch.nn.Conv2d(3, 2, 1))
    with DecoderFeatureHook(stage) as hook:
        network(torch.randn(2, 1, 4, 4))
        assert hook.features.shape == (2, 3, 4, 4) and hook.features.requires_grad
        hook.clear()
        assert hook.features is None
    network(torch.randn(2, 1, 4, 4))
    assert hook.features is None
    hook.remove()  # idempotent


def test_last_decoder_stage_of_a_unet_and_a_clear_error_without_one():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    unet = PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), 2, 2, 2, norm_op=torch.nn.InstanceNorm3d)
    assert last_decoder_stage(unet) is unet.decoder.stages[-1]
    with pytest.raises(ValueError, match="Sequential does not have .*nnUNetTrainerCCE_noContrast"):
        last_decoder_stage(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1)))


def test_decoder_feature_hook_takes_first_element_of_tuple_output():
    module = TupleOutput()
    hook = DecoderFeatureHook(module)
    module(torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(hook.features, torch.full((1, 1, 2, 2), 2.0))
    hook.remove()


@pytest.mark.parametrize(
    "step, length, expected",
    [(0, 10, math.exp(-5)), (5, 10, math.exp(-1.25)), (10, 10, 1.0), (25, 10, 1.0), (-3, 10, math.exp(-5)), (7, 0, 1.0)],
)
def test_sigmoid_rampup(step, length, expected):
    assert sigmoid_rampup(step, length) == pytest.approx(expected)


@pytest.mark.parametrize(
    "step, total, max_weight, expected",
    [(0, 100, 0.1, 0.1 * math.exp(-5)), (50, 100, 0.1, 0.1 * math.exp(-1.25)), (100, 100, 0.1, 0.1), (200, 100, 0.2, 0.2)],
)
def test_contrast_rampup(step, total, max_weight, expected):
    assert contrast_rampup(step, total, max_weight) == pytest.approx(expected)


def test_unsupervised_rampup():
    assert unsupervised_rampup(0, 1000, 0.0) == 1.0  # released code: constant weight
    assert unsupervised_rampup(50, 1000, 0.1) == pytest.approx(math.exp(-1.25))
    assert unsupervised_rampup(100, 1000, 0.1) == 1.0
    assert unsupervised_rampup_length(1000, 0.1) == 100.0
    with pytest.raises(ValueError, match="ramp length must be >= 0, got -1"):
        sigmoid_rampup(1, -1)
    with pytest.raises(ValueError, match=r"rampup_fraction must lie in \[0, 1\], got 1.5"):
        unsupervised_rampup_length(1000, 1.5)


@pytest.mark.parametrize("step, total, rampup_fraction, contrast_max_weight, expected", [
    # T = epochs x iterations per epoch (here 5 x 50): λ_u ramps over rampup_fraction * T = 25, λ_c over T
    (0, 250, 0.1, 0.1, (math.exp(-5), 0.1 * math.exp(-5))),
    (10, 250, 0.1, 0.1, (math.exp(-5 * 0.6 ** 2), 0.1 * math.exp(-5 * 0.96 ** 2))),
    (25, 250, 0.1, 0.1, (1.0, 0.1 * math.exp(-5 * 0.9 ** 2))),
    (250, 250, 0.1, 0.1, (1.0, 0.1)),
    (10, 250, 0.1, 0.0, (math.exp(-5 * 0.6 ** 2), 0.0)),  # contrast term off (CPS)
    (10, 250, 0.0, 0.1, (1.0, 0.1 * math.exp(-5 * 0.96 ** 2))),  # constant λ_u (the released code)
])
def test_ramp_weights(step, total, rampup_fraction, contrast_max_weight, expected):
    """The function the trainer's steps take λ_u(t) and λ_c(t) from."""
    assert ramp_weights(step, total, rampup_fraction, contrast_max_weight) == pytest.approx(expected, rel=1e-12)


def test_prototype_l2_loss_with_a_prototype_but_no_sample_of_its_class():
    features = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    prototypes = F.normalize(torch.randn(3, 3), dim=1)
    loss = prototype_l2_loss(features, torch.tensor([0, 0, IGNORE_LABEL, 0]), prototypes, torch.ones(3, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    assert features.grad[2].abs().sum() == 0  # the padding row


def _logits(*shape):
    return torch.randn(*shape)


@pytest.mark.parametrize("call, message", [
    (lambda: cross_pseudo_supervision(_logits(2, 3, 4, 4), _logits(2, 3, 4, 5)), "must have the same shape"),
    (lambda: kl_divergence_map(_logits(2, 1, 4, 4), _logits(2, 1, 4, 4)), r"\(B, C>=2, \*spatial\)"),
    (lambda: kl_weighted_cross_pseudo_supervision(_logits(2, 3), _logits(2, 3)), r"\(B, C>=2, \*spatial\)"),
    (lambda: cosine_consistency(torch.rand(2, 3, 4), torch.rand(2, 3, 5)), "probability shapes differ"),
    (lambda: reliable_mask(torch.rand(2, 4), torch.rand(2, 5), 0.1, 0.1), "entropy shapes differ"),
    (lambda: PrototypeBank(2, momentum=1.0), r"momentum must lie in \[0, 1\), got 1.0"),
    (lambda: PrototypeBank(2).update(torch.rand(3, 4), torch.ones(3, dtype=torch.bool)),
     r"expected prototypes \(2, F\) and present \(2,\), got \(3, 4\)"),
    (lambda: prototype_infonce_loss(torch.rand(4, 3), torch.zeros(4, dtype=torch.long), torch.rand(2, 3),
                                    torch.ones(2, dtype=torch.bool), temperature=0.0), "temperature must be > 0"),
    (lambda: prototype_l2_loss(torch.rand(4, 3), torch.zeros(4, dtype=torch.long), torch.rand(2, 5),
                               torch.ones(2, dtype=torch.bool)), r"expected prototypes \(C, 3\)"),
    (lambda: normalized_entropy_from_logits(_logits(2, 1, 4)), "needs C >= 2 classes"),
    (lambda: sample_uncertain_voxels(torch.rand(1, 3, 4), torch.zeros(1, 4, dtype=torch.long),
                                     torch.ones(1, 4, dtype=torch.bool), 1.5, 8), "need 0 <= fraction <= 1"),
])
def test_bad_arguments_are_refused_with_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_l2_prototype_loss_without_margin_is_the_pull_alone():
    features = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, -0.3]]), dim=1)
    labels = torch.tensor([0, 1, 0])
    prototypes = torch.eye(2)
    present = torch.ones(2, dtype=torch.bool)
    pull = (features - prototypes[labels]).norm(dim=1).mean()
    torch.testing.assert_close(prototype_l2_loss(features, labels, prototypes, present, margin=0.0), pull)
    assert prototype_l2_loss(features, labels, prototypes, present) > pull  # sqrt(2): the classes are pushed apart
