"""Voxel uncertainty: normalised entropy, its batch quantile and the reliable-voxel mask.

Term 3 of ``METHOD.md`` (our specification of arXiv 2509.13084, "CCE"): a voxel of the unlabelled
batch is *reliable* when it is among the ``q`` most confident voxels of at least one of the two
networks, confidence being measured by the normalised entropy of the softmax probabilities.

Everything here is computed in float32 whatever the input precision (the entropy of float16
probabilities loses its small terms, and the quantile of a half tensor is refused by
``torch.quantile``), and on the device: no ``.item()``, no numpy (under DDP, one host
synchronisation exchanges the ranks' sizes).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.distributed as dist

from .distributed import distributed_active

QuantileInterpolation = Literal["linear", "lower", "higher"]


def normalized_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Normalised Shannon entropy of class probabilities, per voxel.

    ``H_v = -sum_c p_{c,v} log p_{c,v} / log C``, in [0, 1]: 0 for a one-hot voxel, 1 for the uniform
    distribution (arXiv 2509.13084, term 3 of ``METHOD.md``).

    Args:
        probs: probabilities (not logits), shape (B, C, *spatial) with the classes on ``dim``; any
            floating dtype. C >= 2.
        dim: the class axis.

    Returns:
        float32 tensor of shape (B, *spatial) (``probs`` without ``dim``). Keeps the graph of
        ``probs``; callers that use it as a threshold pass detached probabilities.

    Raises:
        ValueError: fewer than two classes.
    """
    num_classes = probs.shape[dim]
    if num_classes < 2:
        raise ValueError(f"normalized_entropy needs C >= 2 classes on dim {dim}, got shape {tuple(probs.shape)}")
    probs = probs.float()
    # xlogy(0, 0) = 0: a saturated softmax (exact zeros, common in float16) must not give NaN.
    return -torch.special.xlogy(probs, probs).sum(dim) / math.log(num_classes)


def normalized_entropy_from_logits(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Normalised Shannon entropy from logits, through ``log_softmax``, in float32.

    ``H_v = -sum_c p_{c,v} log p_{c,v} / log C`` with ``log p = log_softmax(z)`` and ``p = exp(log p)``.
    Same value as :func:`normalized_entropy` of ``softmax(z)``, but it keeps saturated voxels apart:
    the log-probability of a minority class stays finite (``-80`` rather than ``log 0``) and a voxel
    with a larger logit gap gets a smaller, non-zero entropy down to float32's smallest subnormal,
    so a quantile over confident voxels ranks them instead of tying them at 0 (our deviation from the
    released code, ``METHOD.md`` §2.3).

    Args:
        logits: (B, C, *spatial) with the classes on ``dim``, any floating dtype; C >= 2.
        dim: the class axis.

    Returns:
        float32 (B, *spatial), ``>= +0.0``; keeps the graph of ``logits``.
    """
    num_classes = logits.shape[dim]
    if num_classes < 2:
        raise ValueError(f"normalized_entropy_from_logits needs C >= 2 classes on dim {dim}, got shape "
                         f"{tuple(logits.shape)}")
    log_probs = torch.log_softmax(logits.float(), dim=dim)
    entropy = -(log_probs.exp() * log_probs).sum(dim) / math.log(num_classes)
    # log_softmax <= 0, so every term is <= 0; adding +0.0 turns a -0.0 sum into +0.0 (the sort key
    # of class_quantiles reads the float's bits).
    return entropy + 0.0


def _gather_from_all_ranks(flat: torch.Tensor) -> torch.Tensor:
    """The concatenation of every rank's 1-D ``flat``, in rank order, on every rank.

    Ranks may hold different numbers of values: nnU-Net splits a global batch of 5 as 3 + 2 over two
    GPUs (and the unlabelled stream follows the per-rank batch size), and ``all_gather`` needs equal
    sizes (gloo aborts the process on a mismatch, NCCL reads garbage). So the sizes are exchanged
    first (one small all_gather and one host synchronisation, to size the buffers), every rank pads
    to the largest, and the padding is cut off again.
    """
    world_size = dist.get_world_size()
    # all_gather (not all_gather_into_tensor) works on both the NCCL and the gloo backend.
    size = torch.tensor([flat.numel()], dtype=torch.long, device=flat.device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = torch.cat(sizes).tolist()
    largest = max(sizes)
    if flat.numel() < largest:
        flat = torch.cat((flat, flat.new_zeros(largest - flat.numel())))
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat.contiguous())
    if min(sizes) < largest:
        gathered = [values[:count] for values, count in zip(gathered, sizes)]
    return torch.cat(gathered)


def batch_quantile(
    values: torch.Tensor,
    q: float,
    *,
    interpolation: QuantileInterpolation = "linear",
    distributed: Optional[bool] = None,
) -> torch.Tensor:
    """The ``q``-quantile of all elements of ``values``, on their device, in float32.

    Definition (that of ``torch.quantile`` and ``numpy.percentile``, which the released code used;
    the rank is computed exactly, in float64, where ``torch.quantile`` rounds it in float32):
    sort the ``n`` elements ``v_(0) <= ... <= v_(n-1)``, let ``r = q (n - 1)``; then
    ``linear``: ``v_(floor r) + (r - floor r) (v_(ceil r) - v_(floor r))``, ``lower``: ``v_(floor r)``,
    ``higher``: ``v_(ceil r)``. So q = 0 gives the minimum and q = 1 the maximum. The order
    statistics come from ``torch.kthvalue`` (at most two calls), which, unlike ``torch.quantile``,
    accepts more than 2^24 elements; the input is cast to float32 first (half is refused too).

    Under ``torch.distributed`` the flattened values of every rank are all-gathered first, so all ranks
    get the same, global threshold (exactly that of the concatenated batch). Ranks may pass different
    numbers of elements, none included (nnU-Net's per-rank batch sizes differ by one when the global
    batch does not divide evenly); learning the other ranks' counts costs one host synchronisation.
    Every rank must call this function (it is a collective).

    Args:
        values: any shape, any floating dtype; not differentiated through (detached).
        q: quantile level in [0, 1] (a host float: the rank is computed on the host from the shape,
            which costs no device synchronisation).
        interpolation: ``linear`` (default), ``lower`` or ``higher``, as in ``torch.quantile``.
        distributed: gather over ranks; ``None`` = whenever a process group of more than one rank
            is initialised.

    Returns:
        0-dim float32 tensor on ``values.device``; NaN under ``torch.distributed`` when no rank has any
        element (every rank then gets NaN, instead of one rank raising while the others wait).

    Raises:
        ValueError: ``q`` outside [0, 1], an unknown interpolation, or no elements (single process).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    if interpolation not in ("linear", "lower", "higher"):
        raise ValueError(f"interpolation must be 'linear', 'lower' or 'higher', got {interpolation!r}")
    flat = values.detach().reshape(-1).float()
    gathered = distributed_active(distributed)
    if gathered:
        flat = _gather_from_all_ranks(flat)
    n = flat.numel()
    if n == 0:
        if gathered:
            return torch.full((), math.nan, dtype=torch.float32, device=values.device)
        raise ValueError(f"batch_quantile of an empty tensor (shape {tuple(values.shape)})")
    rank = q * (n - 1)
    lower_index = min(int(math.floor(rank)), n - 1)
    upper_index = min(int(math.ceil(rank)), n - 1)
    if interpolation == "lower" or (interpolation == "linear" and lower_index == upper_index):
        return torch.kthvalue(flat, lower_index + 1).values
    upper = torch.kthvalue(flat, upper_index + 1).values
    if interpolation == "higher":
        return upper
    lower = torch.kthvalue(flat, lower_index + 1).values
    return torch.lerp(lower, upper, rank - lower_index)


_CLASS_KEY_SHIFT = 32


def class_quantiles(
    values: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    q: float,
    *,
    distributed: Optional[bool] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``q``-quantile of ``values`` within each class of ``labels``: ``τ_c`` for c in [0, C).

    ``τ_c = v^c_(floor(q (n_c - 1)))``, the lower order statistic of the ``n_c`` values labelled c
    (``interpolation='lower'`` of :func:`batch_quantile`: an actual value, so ``v <= τ_c`` keeps at
    least ``floor(q (n_c - 1)) + 1`` voxels of class c, more only where values tie at ``τ_c``). The
    class-balanced threshold of ``METHOD.md`` §2.3: on a background-dominated batch a global quantile
    is reached by background alone, a per-class one gives every class its most confident fraction.

    One sort for all classes, on the device, no host synchronisation: the int64 key is
    ``class · 2^32 + bits(v)``, where ``bits`` is the float32 bit pattern read as an integer, which
    orders non-negative floats exactly as their values. Position ``start_c + floor(q (n_c - 1))`` of
    the sorted keys is then the order statistic, with ``n_c`` and ``start_c`` from an integer
    scatter-add and a cumulative sum. Under ``torch.distributed`` the keys of every rank are gathered
    first (global thresholds, exactly those of the concatenated batch; one host synchronisation to
    learn the ranks' sizes, as :func:`batch_quantile`).

    Args:
        values: non-negative values (entropies), any shape and floating dtype; detached. Negative
            values (and -0.0) count as +0.0: their bits would sort after every positive value;
            NaN counts as +inf (least confident), so a NaN entropy never lowers a threshold.
        labels: integer class labels in [0, C), the shape of ``values``.
        num_classes: C.
        q: quantile level in [0, 1].
        distributed: gather over ranks; ``None`` = whenever a process group of more than one rank is
            initialised.

    Returns:
        ``(thresholds, counts)``: float32 (C,), NaN for a class without a value; int64 (C,), the
        number of values of each class (over all ranks under DDP).

    Raises:
        ValueError: ``q`` outside [0, 1] or mismatched shapes.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    if values.shape != labels.shape:
        raise ValueError(f"values and labels differ in shape: {tuple(values.shape)} vs {tuple(labels.shape)}")
    flat = values.detach().reshape(-1).float()
    flat = flat.nan_to_num(nan=float("inf"), posinf=float("inf"))
    flat = torch.where(flat > 0, flat, torch.zeros_like(flat))
    keys = (labels.reshape(-1).long() << _CLASS_KEY_SHIFT) | flat.view(torch.int32).long()
    if distributed_active(distributed):
        keys = _gather_from_all_ranks(keys)
    sorted_keys = torch.sort(keys).values
    sorted_classes = sorted_keys >> _CLASS_KEY_SHIFT
    sorted_values = (sorted_keys & 0xFFFFFFFF).int().view(torch.float32)
    counts = torch.zeros(num_classes, dtype=torch.long, device=keys.device).scatter_add_(
        0, sorted_classes, torch.ones_like(sorted_classes))
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.floor(q * (counts - 1).clamp_min(0).double()).long()
    positions = (starts + offsets).clamp(0, max(sorted_values.numel() - 1, 0))
    if sorted_values.numel() == 0:
        return torch.full((num_classes,), math.nan, device=keys.device), counts
    thresholds = torch.where(counts > 0, sorted_values[positions], torch.full_like(sorted_values[positions], math.nan))
    return thresholds, counts


def class_balanced_reliable(
    entropy: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """``H_v <= τ_{y_v}``: the voxel is among the most confident of its own class (NaN τ: never)."""
    return entropy <= thresholds[labels]


def reliable_mask(
    entropy_a: torch.Tensor,
    entropy_b: torch.Tensor,
    threshold_a: torch.Tensor | float,
    threshold_b: torch.Tensor | float,
    *,
    strict: bool = False,
) -> torch.Tensor:
    """Voxels among the most confident of at least one network: ``H^A_v <= τ^A or H^B_v <= τ^B``.

    The method's original specification writes ``<``; we default to ``<=`` deliberately
    (``docs/METHOD.md``). With ``τ`` = the q-quantile of ``H`` (:func:`batch_quantile`), ``<=`` keeps
    at least ``floor(q (n-1)) + 1`` voxels of each net: the minimum-entropy voxel is always reliable,
    and q = 1 marks every voxel reliable. With ``<``, ties at the threshold drop out entirely: once
    more than a fraction q of the voxels are saturated (entropy exactly 0, frequent with float16
    softmax late in training) ``τ = 0`` and *no* voxel would be reliable, which switches the term off
    exactly when the nets are confident.
    ``strict=True`` gives ``<`` (the released code's ``~(H >= τ)``).

    Args:
        entropy_a, entropy_b: (B, *spatial) normalised entropies of networks A and B.
        threshold_a, threshold_b: 0-dim tensors (or floats), e.g. from :func:`batch_quantile`.
        strict: use ``<`` instead of ``<=``.

    Returns:
        bool tensor of shape (B, *spatial).
    """
    if entropy_a.shape != entropy_b.shape:
        raise ValueError(f"entropy shapes differ: {tuple(entropy_a.shape)} vs {tuple(entropy_b.shape)}")
    if strict:
        return (entropy_a < threshold_a) | (entropy_b < threshold_b)
    return (entropy_a <= threshold_a) | (entropy_b <= threshold_b)
