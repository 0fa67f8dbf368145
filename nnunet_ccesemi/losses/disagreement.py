"""Confident-disagreement loss on labelled voxels (term 2 of ``METHOD.md``).

From the released code of arXiv 2509.13084, which takes it from the mutual-correction idea of
arXiv 2311.12617: where exactly one of the two networks is confidently foreground, the voxel is a
likely mistake of one of them, and both are pulled towards the ground truth there.
"""
from __future__ import annotations

from typing import Optional

import torch


def _confident_foreground(probs: torch.Tensor, confidence: float) -> torch.Tensor:
    max_probs, labels = probs.max(1)
    return (labels != 0) & (max_probs >= confidence)


def confident_disagreement_loss(
    probs_student: torch.Tensor,
    probs_a: torch.Tensor,
    probs_b: torch.Tensor,
    target: torch.Tensor,
    confidence: float = 0.6,
    *,
    ignore_index: Optional[int] = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``L = sum_v M_v ||p^s_v - onehot(y_v)||^2 / (sum_v M_v + eps)``.

    ``M_v`` = 1 where exactly one of networks A and B confidently predicts a foreground class
    (``argmax p != 0`` and ``max p >= confidence``); the mask carries no gradient. The squared
    distance is expanded as ``sum_c p_c^2 - 2 p_y + 1`` so that no one-hot tensor is built.

    Args:
        probs_student: (B, C, *spatial) probabilities of the network being trained (gradient flows).
        probs_a, probs_b: (B, C, *spatial) probabilities of the two networks (only define the mask).
        target: integer labels, (B, 1, *spatial) as nnU-Net gives them or (B, *spatial).
        confidence: the probability a foreground argmax needs to count as confident.
        ignore_index: label value excluded from the loss (nnU-Net's ignore label), or ``None``.
        eps: keeps the denominator positive; an empty mask gives exactly 0 (graph-connected).

    Returns:
        0-dim float32 tensor.
    """
    if not (probs_student.shape == probs_a.shape == probs_b.shape):
        raise ValueError(
            f"probability shapes differ: student {tuple(probs_student.shape)}, A {tuple(probs_a.shape)}, "
            f"B {tuple(probs_b.shape)}"
        )
    if target.ndim == probs_student.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target with a channel axis must have one channel, got {tuple(target.shape)}")
        target = target[:, 0]
    expected = probs_student.shape[:1] + probs_student.shape[2:]
    if target.shape != expected:
        raise ValueError(
            f"target must have shape {tuple(expected)} (or with a channel of 1), got {tuple(target.shape)}"
        )
    target = target.long()
    with torch.no_grad():
        disagreement_mask = _confident_foreground(probs_a, confidence) ^ _confident_foreground(probs_b, confidence)
        if ignore_index is not None:
            valid = target != ignore_index
            disagreement_mask &= valid
            # The ignore label may lie outside [0, C): gather needs a valid index there.
            target = torch.where(valid, target, torch.zeros_like(target))
    probs_student = probs_student.float()
    target_probs = probs_student.gather(1, target.unsqueeze(1)).squeeze(1)
    squared_distance = (probs_student * probs_student).sum(1) - 2.0 * target_probs + 1.0
    masked_sum = torch.where(disagreement_mask, squared_distance, torch.zeros_like(squared_distance)).sum()
    return masked_sum / (disagreement_mask.sum() + eps)
