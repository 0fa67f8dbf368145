"""Voxel-wise uncertainty of a two-network prediction, as pure tensor functions.

Both take class probabilities of shape (C, *spatial) (one case, nnU-Net's predictor layout) and
return a float32 map of shape (*spatial). With ``regions=True`` the C channels are nnU-Net's
independent sigmoid outputs of a region dataset: each channel is the Bernoulli distribution
``(1 - p_r, p_r)``, and the map is reduced over the regions (entropy: mean; disagreement: sum, the
symmetric KL of the joint distribution of independent outputs).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from nnunet_ccesemi.losses.entropy import normalized_entropy


def bernoulli(probs: torch.Tensor) -> torch.Tensor:
    """(R, *spatial) sigmoid probabilities -> (2, R, *spatial), the distributions ``(1 - p_r, p_r)``."""
    probs = probs.float()
    return torch.stack((1.0 - probs, probs))


def predictive_entropy(probs: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Normalised entropy of the (averaged) prediction, ``-Σ_c p̄_c log p̄_c / log C``, in [0, 1].

    0 where the ensemble is certain of one class, 1 where it is uniform over the C classes. Regions:
    the mean over regions of the binary entropy ``-(p̄ log p̄ + (1 - p̄) log(1 - p̄)) / log 2``.
    """
    if regions:
        return normalized_entropy(bernoulli(probs).unsqueeze(0))[0].mean(0)
    return normalized_entropy(probs.unsqueeze(0))[0]


def symmetric_kl(probs_a: torch.Tensor, probs_b: torch.Tensor, eps: float = 1e-8, regions: bool = False
                 ) -> torch.Tensor:
    """The networks' disagreement ``KL(p_a ‖ p_b) + KL(p_b ‖ p_a) = Σ_c (p_a,c − p_b,c)(log p_a,c − log p_b,c)``.

    Non-negative, 0 where both networks give the same distribution; the probabilities are clamped at
    ``eps`` inside the logarithms so that saturated softmax outputs give finite values. Regions: summed
    over the regions' Bernoulli distributions.
    """
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probability maps differ in shape: {tuple(probs_a.shape)} vs {tuple(probs_b.shape)}")
    if regions:
        return symmetric_kl(bernoulli(probs_a), bernoulli(probs_b), eps).sum(0)
    probs_a, probs_b = probs_a.float(), probs_b.float()
    log_ratio = probs_a.clamp_min(eps).log() - probs_b.clamp_min(eps).log()
    return ((probs_a - probs_b) * log_ratio).sum(0)


def uncertainty_maps(member_logits: Sequence[torch.Tensor], regions: bool = False, slab_voxels: int = 2 ** 18
                     ) -> dict[str, torch.Tensor]:
    """The maps of :func:`predictive_entropy` (of the members' mean probability) and, for two members,
    :func:`symmetric_kl`, from the members' (C, *spatial) logits.

    Probabilities are softmax over axis 0 (sigmoid per channel with ``regions``), as nnU-Net's inference
    nonlinearity. They are made one slab of about ``slab_voxels`` voxels along the first spatial axis at a
    time: every step is per voxel, so the maps are the same, and a large case never holds the members'
    full probability volumes and their temporaries besides the logits (``benchmarks/map_memory.py``, 8
    classes on 160³ voxels: 147 MiB above the logits instead of 647, in half the time, the slabs staying
    in cache).
    """
    if not member_logits:
        raise ValueError("no member logits to make uncertainty maps of")
    shape = member_logits[0].shape
    if any(logits.shape != shape for logits in member_logits):
        raise ValueError(f"member logits differ in shape: {[tuple(logits.shape) for logits in member_logits]}")
    names = ("entropy", "disagreement") if len(member_logits) == 2 else ("entropy",)
    maps = {name: torch.empty(shape[1:], dtype=torch.float32, device=member_logits[0].device) for name in names}
    step = max(1, slab_voxels // max(1, math.prod(shape[2:])))
    for start in range(0, shape[1], step):
        slab = slice(start, start + step)
        probs = [torch.sigmoid(logits[:, slab].float()) if regions else torch.softmax(logits[:, slab].float(), 0)
                 for logits in member_logits]
        maps["entropy"][slab] = predictive_entropy(sum(probs) / len(probs), regions=regions)
        if len(probs) == 2:
            maps["disagreement"][slab] = symmetric_kl(probs[0], probs[1], regions=regions)
    return maps


def logits_of_mean_probability(member_logits: Iterable[torch.Tensor], regions: bool = False) -> torch.Tensor:
    """Logits whose inference nonlinearity gives the mean of the members' probabilities p̄.

    Softmax over the class axis 0: ``log p̄_c = logsumexp_m log_softmax(z_m)_c − log M``. Regions
    (sigmoid): ``logit p̄ = logsumexp_m log σ(z_m) − logsumexp_m log σ(−z_m)``. Both stay in log
    space, so a saturated member keeps its own logit where ``log p̄`` of float32 probabilities would
    have collapsed it onto ±87 (σ(z) is exactly 1 in float32 from z ≈ 17), which moves the 0.5
    boundary when nnU-Net's export resamples the logits. The members are consumed one at a time: a
    generator keeps one member's logits in memory besides the running sums.
    """
    positive = negative = None
    count = 0
    for logits in member_logits:
        logits = logits.float()
        if regions:
            log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        else:
            log_p, log_not_p = torch.log_softmax(logits, 0), None
        if positive is None:
            positive, negative = log_p, log_not_p
        else:
            torch.logaddexp(positive, log_p, out=positive)
            if regions:
                torch.logaddexp(negative, log_not_p, out=negative)
        count += 1
    if positive is None:
        raise ValueError("no member logits to average")
    if regions:
        return positive.sub_(negative)  # the log M of both sums cancels
    return positive.sub_(math.log(count))
