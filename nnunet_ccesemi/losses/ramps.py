"""Ramp-up schedules of the unlabelled and contrastive weights (term 7 of ``METHOD.md``).

Host-side scalars: the step and the schedule length are known on the host, so these return Python
floats (no tensor, no synchronisation). The sigmoid ramp is Laine & Aila's (arXiv 1610.02242), as in
SSL4MIS's ``ramps.py`` and the released code of arXiv 2509.13084.
"""
from __future__ import annotations

import math


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(step / length, 0, 1)``; 1.0 when ``length == 0``.

    Goes from exp(-5) ~ 0.0067 at step 0 to 1 at ``step >= length``.
    """
    if length < 0:
        raise ValueError(f"ramp length must be >= 0, got {length}")
    if length == 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def contrast_rampup(step: float, total: float, max_weight: float = 0.1) -> float:
    """``λ_c(t) = max_weight * exp(-5 (1 - min(t / T, 1))^2)`` with T = ``total`` (all iterations).

    The released code's weight of the prototype contrastive term; ``total == 0`` gives ``max_weight``.
    """
    return max_weight * sigmoid_rampup(step, total)


def unsupervised_rampup_length(total: float, rampup_fraction: float) -> float:
    """``rampup_fraction * T``: the iterations over which λ_u rises to its maximum (0: no ramp)."""
    if not 0.0 <= rampup_fraction <= 1.0:
        raise ValueError(f"rampup_fraction must lie in [0, 1], got {rampup_fraction}")
    return rampup_fraction * total


def unsupervised_rampup(step: float, total: float, rampup_fraction: float, max_weight: float = 1.0) -> float:
    """``λ_u(t) = max_weight * sigmoid_rampup(t, rampup_fraction * T)``: terms 3-5's weight.

    ``rampup_fraction == 0`` gives the constant ``max_weight`` (the released code).
    """
    return max_weight * sigmoid_rampup(step, unsupervised_rampup_length(total, rampup_fraction))


def ramp_weights(step: float, total: float, rampup_fraction: float, contrast_max_weight: float) -> tuple[float, float]:
    """``(λ_u(t), λ_c(t))`` at iteration ``step`` of ``total``: the trainer's weights of terms 3-5 and 6.

    ``λ_u = unsupervised_rampup(t, T, rampup_fraction)`` (maximum 1: the terms carry their own weights)
    and ``λ_c = contrast_rampup(t, T, contrast_max_weight)`` (0 when the contrast term is off).
    """
    return unsupervised_rampup(step, total, rampup_fraction), contrast_rampup(step, total, contrast_max_weight)
