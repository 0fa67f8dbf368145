"""Cosine consistency between the two networks' probabilities (term 5 of ``METHOD.md``).

The regulariser of the released code of arXiv 2509.13084 (``consist_loss``), also used in arXiv
2505.17690.
"""
from __future__ import annotations

import torch

from .features import inverse_l2_norm


def cosine_consistency(probs_a: torch.Tensor, probs_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``L_cos = mean_v (1 - cos(p^A_v, p^B_v))``, cosine along the class axis.

    ``cos(a, b) = a·b / (max(|a|, eps) max(|b|, eps))``, as ``F.cosine_similarity``, written with
    sums of products: ``cosine_similarity``'s ``linalg.vector_norm`` over the (non-innermost) class
    axis takes a slow strided path on the CPU. Both inputs keep their gradient (each network is
    pulled towards the other). Probability vectors have norm >= 1/sqrt(C), so ``eps`` only guards
    against arbitrary inputs.

    Args:
        probs_a, probs_b: (B, C, *spatial) probabilities of networks A and B (any float dtype;
            computed in float32).

    Returns:
        0-dim float32 tensor in [0, 1] for probabilities.
    """
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probability shapes differ: {tuple(probs_a.shape)} vs {tuple(probs_b.shape)}")
    probs_a, probs_b = probs_a.float(), probs_b.float()
    similarity = (probs_a * probs_b).sum(1) * inverse_l2_norm(probs_a, eps=eps) * inverse_l2_norm(probs_b, eps=eps)
    return (1.0 - similarity).mean()
