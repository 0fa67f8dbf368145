"""Joint pseudo-labels of the two networks on unlabelled voxels (term 3 of ``METHOD.md``)."""
from __future__ import annotations

import torch

from ..config import PseudoLabelRule


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``argmax_c scores[:, c]``: the class axis (dim 1) reduced to the index of its first maximum.

    ``scores.max(1).indices``, which gives exactly ``argmax(1)`` (same tie rule: the first maximum) but
    runs 15x faster on the CPU for a class axis that is not the innermost one (13 ms against 200 ms for
    (4, 2, 48, 80, 96), one thread), where argmax takes a slow strided path.
    """
    return scores.max(1).indices


@torch.no_grad()
def joint_pseudo_labels(
    probs_a: torch.Tensor,
    probs_b: torch.Tensor,
    entropy_a: torch.Tensor,
    entropy_b: torch.Tensor,
    rule: PseudoLabelRule = "confident",
) -> torch.Tensor:
    """Hard pseudo-labels fused from networks A and B (arXiv 2509.13084, term 3 of ``METHOD.md``).

    ``confident``: ``ŷ_v = argmax p^A_v`` if ``H^A_v <= H^B_v`` else ``argmax p^B_v`` (ties go to A).

    ``union`` (the released code, which writes ``ŷ^A | ŷ^B`` for two classes): a voxel is foreground
    (class != 0) if either net predicts foreground; where both do, the class of the more confident
    net (as ``confident``); where one does, that net's class; background elsewhere. For C = 2 this is
    exactly the logical or of the two argmax maps.

    Args:
        probs_a, probs_b: (B, C, *spatial) probabilities (logits give the same argmax and also work).
        entropy_a, entropy_b: (B, *spatial) per-voxel uncertainties, lower = more confident
            (e.g. :func:`~nnunet_ccesemi.losses.entropy.normalized_entropy`).
        rule: ``confident`` or ``union``.

    Returns:
        int64 tensor (B, *spatial), detached.

    Raises:
        ValueError: mismatched shapes or an unknown rule.
    """
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probability shapes differ: {tuple(probs_a.shape)} vs {tuple(probs_b.shape)}")
    expected = probs_a.shape[:1] + probs_a.shape[2:]
    if entropy_a.shape != expected or entropy_b.shape != expected:
        raise ValueError(
            f"entropies must have shape {tuple(expected)}, got {tuple(entropy_a.shape)} and {tuple(entropy_b.shape)}"
        )
    if rule not in ("confident", "union"):
        raise ValueError(f"rule must be 'confident' or 'union', got {rule!r}")
    labels_a = class_argmax(probs_a)
    labels_b = class_argmax(probs_b)
    confident_labels = torch.where(entropy_a <= entropy_b, labels_a, labels_b)
    if rule == "confident":
        return confident_labels
    foreground_a = labels_a != 0
    foreground_b = labels_b != 0
    # Background where neither net sees foreground: labels_b is 0 there, so the inner where covers it.
    single_net_labels = torch.where(foreground_a, labels_a, labels_b)
    return torch.where(foreground_a & foreground_b, confident_labels, single_net_labels)
