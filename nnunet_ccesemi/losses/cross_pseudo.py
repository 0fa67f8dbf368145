"""Cross pseudo supervision, its KL-weighted form, and masked pseudo-label cross-entropy.

Terms 3 and 4 of ``METHOD.md`` (arXiv 2509.13084):

* plain cross pseudo supervision (CPS; Chen et al., "Semi-Supervised Semantic Segmentation with
  Cross Pseudo Supervision", CVPR 2021): the student is trained with cross-entropy on the teacher's
  hard labels;
* KL-weighted CPS (Zheng & Yang, "Rectifying Pseudo Label Learning via Uncertainty Estimation for
  Domain Adaptive Semantic Segmentation", IJCV 2021; the URPC form of Luo et al., MICCAI 2021):
  each voxel's cross-entropy is weighted by ``exp(-KL(p_teacher || p_student))`` and the mean KL is
  added as a regulariser.

All logits are promoted to float32 before the (log-)softmax: the KL of two nearly equal float16
distributions is mostly rounding error.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .pseudo_labels import class_argmax


def _check_logits_pair(logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> None:
    if logits_student.shape != logits_teacher.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape (B, C, *spatial), got "
            f"{tuple(logits_student.shape)} and {tuple(logits_teacher.shape)}"
        )
    if logits_student.ndim < 3 or logits_student.shape[1] < 2:
        raise ValueError(f"logits must be (B, C>=2, *spatial), got {tuple(logits_student.shape)}")


def cross_pseudo_supervision(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    reduction: Literal["mean", "none"] = "mean",
    *,
    teacher_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain CPS: ``mean_v CE(z^s_v, argmax z^t_v)`` with the teacher's label detached.

    Chen et al., CVPR 2021 (the ``nnUNetTrainerCPS`` baseline and the ``kl_weighting=False`` ablation).

    Args:
        logits_student: (B, C, *spatial) logits of the network being trained by this term.
        logits_teacher: (B, C, *spatial) logits of the other network; only its argmax is used
            (no gradient).
        reduction: ``mean`` (0-dim) or ``none`` (the (B, *spatial) per-voxel map).
        teacher_labels: (B, *spatial) hard labels to use instead of ``argmax z^t`` (the nested region
            labels of :meth:`~nnunet_ccesemi.losses.regions.RegionLayout.nest`).
    """
    _check_logits_pair(logits_student, logits_teacher)
    pseudo_labels = class_argmax(logits_teacher.detach()) if teacher_labels is None else teacher_labels.long()
    return F.cross_entropy(logits_student.float(), pseudo_labels, reduction=reduction)


def kl_divergence_map(logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``D_v = KL(p^t_v || p^s_v) = sum_c p^t_c (log p^t_c - log p^s_c)``, teacher detached.

    Both distributions come from ``log_softmax`` in float32, so the difference of logs never
    meets ``log 0`` (a saturated softmax gives a large finite log-probability, not -inf).

    Args:
        logits_student, logits_teacher: (B, C, *spatial) logits.

    Returns:
        float32 (B, *spatial); differentiable with respect to the student only. Not clamped at 0:
        the KL of two equal distributions may round to a tiny negative value.
    """
    _check_logits_pair(logits_student, logits_teacher)
    log_probs_student = F.log_softmax(logits_student.float(), dim=1)
    log_probs_teacher = F.log_softmax(logits_teacher.detach().float(), dim=1)
    return (log_probs_teacher.exp() * (log_probs_teacher - log_probs_student)).sum(1)


def kl_weighted_cross_pseudo_supervision(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    detach_weight: bool = True,
    *,
    teacher_labels: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-weighted CPS: ``L = mean_v[exp(-D_v) CE(z^s_v, ŷ^t_v)] + mean_v D_v``.

    ``D_v`` is :func:`kl_divergence_map` (teacher detached), ``ŷ^t = argmax z^t`` (detached). Where the
    two networks disagree the pseudo-label gets a low weight, and the KL term pulls the student's
    distribution towards the teacher's (Zheng & Yang, IJCV 2021; URPC, MICCAI 2021; term 4 of
    ``METHOD.md``).

    Args:
        logits_student, logits_teacher: (B, C, *spatial) logits.
        detach_weight: ``True`` (default): the weight ``exp(-D_v)`` is a constant confidence
            weight, so the student is not rewarded for lowering the weight of hard voxels through
            the CE factor. ``False`` reproduces the released code, where the weight is attached.
        teacher_labels: as in :func:`cross_pseudo_supervision`.

    Returns:
        ``(loss, mean_weight)``: the 0-dim loss and the detached 0-dim mean of ``exp(-D_v)`` (for
        logging).
    """
    divergence = kl_divergence_map(logits_student, logits_teacher)
    voxel_weight = torch.exp(-divergence)
    if detach_weight:
        voxel_weight = voxel_weight.detach()
    cross_entropy = cross_pseudo_supervision(logits_student, logits_teacher, reduction="none",
                                             teacher_labels=teacher_labels)
    loss = (voxel_weight * cross_entropy).mean() + divergence.mean()
    return loss, voxel_weight.detach().mean()


def masked_cross_entropy(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy averaged over the masked voxels: ``sum_v m_v CE(z_v, ŷ_v) / sum_v m_v``.

    The entropy-filtered pseudo-label term ``L_ef`` (term 3 of ``METHOD.md``) with ``mask`` = the
    reliable voxels. An empty mask gives exactly 0, still attached to the graph of ``logits``, so a
    step without any reliable voxel backpropagates zeros instead of NaN.

    Args:
        logits: (B, C, *spatial) logits.
        pseudo_labels: (B, *spatial) integer labels in [0, C) (detached by the caller or not: they are
            integers and carry no gradient).
        mask: (B, *spatial) bool (or 0/1) mask of voxels that count.
    """
    expected = logits.shape[:1] + logits.shape[2:]
    if pseudo_labels.shape != expected or mask.shape != expected:
        raise ValueError(
            f"pseudo_labels and mask must have shape {tuple(expected)} for logits {tuple(logits.shape)}, "
            f"got {tuple(pseudo_labels.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    cross_entropy = F.cross_entropy(logits.float(), pseudo_labels.long(), reduction="none")
    # where (not a product) so that a non-finite value outside the mask cannot leak in as 0 * inf.
    masked_sum = torch.where(mask, cross_entropy, torch.zeros_like(cross_entropy)).sum()
    return masked_sum / mask.sum().clamp_min(1)
