"""Voxel-prototype contrastive learning (term 6 of ``METHOD.md``, arXiv 2509.13084).

Class prototypes are the normalised mean features of the reliable unlabelled voxels of each
(pseudo-)class; a small random sample of the *uncertain* voxels, labelled by the network's own
prediction, is pulled towards its class prototype and away from the others.

Device-side throughout: prototypes are a one-hot matrix product, the sampling is one sort of random
integer keys. The sample has a fixed size (``C * min(max_per_class, V)`` rows, unused rows labelled
``-1``) so that no step waits for the host to learn how many voxels were drawn. Matrix products
run with autocast disabled: a float16 sum over a million voxels overflows.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .distributed import distributed_active
from .features import inverse_l2_norm

IGNORE_LABEL = -1
"""Label of the padding rows of :func:`sample_uncertain_voxels` (dropped by the losses)."""

# Sort keys are class * 2**31 + a random 31-bit integer: exact int64 arithmetic, so the sort groups
# voxels by class and shuffles them within a class (float keys c + u may round up into class c + 1).
_KEY_STRIDE = 2**31

# Float32 elements of one voxel chunk of the prototype sums. A float32 copy of a whole full-resolution
# feature map (and its squares, for the norms) is about a gigabyte at nnU-Net's Left Atrium plans, and
# it is made where the low-memory step peaks; chunks of 32 MiB (two such copies of a chunk, and its
# one-hot and label columns) bound that transient to about 0.07 GiB instead.
PROTOTYPE_CHUNK_ELEMENTS = 2**23


def _autocast_off(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def class_prototypes(
    features: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
    *,
    distributed: Optional[bool] = None,
    eps: float = 1e-12,
    normalize_voxels: bool = False,
    chunk_elements: int = PROTOTYPE_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``μ_c = normalise(sum_v [m_v and y_v = c] f_v)``, the direction of the class-mean feature.

    Normalising the sum equals normalising the mean, so no division by the count is needed. The
    sums are ``features (B, F, V) @ one_hot (B, V, C+1)`` (masked-out voxels go to an extra column
    that is dropped): matrix products in float32 over fixed chunks of voxels, deterministic, no
    per-class loop. Under ``torch.distributed`` the per-class sums and counts are all-reduced first,
    so every rank gets the same, global prototypes (a class seen on one rank only is present on all);
    every rank must call this function, also one with no rows (B = 0).

    Args:
        features: (B, F, *spatial) voxel features; detached here.
        labels: (B, *spatial) integer (pseudo-)labels in [0, C).
        mask: (B, *spatial) bool: voxels that contribute (the reliable ones).
        num_classes: C.
        distributed: all-reduce over ranks; ``None`` = whenever a process group of more than one
            rank is initialised.
        eps: the norm floor, as in ``F.normalize``.
        normalize_voxels: use the L2-normalised voxel features ``f_v / max(||f_v||, eps)`` (the
            prototypes of :func:`~nnunet_ccesemi.losses.features.l2_normalize_voxels` features) without
            writing a normalised copy of the map: the one-hot matrix carries each voxel's inverse norm.
        chunk_elements: float32 elements per chunk (B x F x voxels): the float32 copy of the (float16
            under AMP) features is made one chunk at a time, never for the whole map.

    Returns:
        ``(prototypes, present)``: float32 (C, F), unit rows for present classes and zero rows
        otherwise, detached; bool (C,), whether class c had any voxel.
    """
    expected = features.shape[:1] + features.shape[2:]
    if labels.shape != expected or mask.shape != expected:
        raise ValueError(
            f"labels and mask must have shape {tuple(expected)} for features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)} and {tuple(mask.shape)}"
        )
    batch_size, feature_dim = features.shape[:2]
    # Explicit voxel count, not -1: a rank without unlabelled rows (B = 0) still joins the all-reduce.
    num_voxels = math.prod(features.shape[2:])
    flat_features = features.detach().reshape(batch_size, feature_dim, num_voxels)
    flat_labels, flat_mask = labels.reshape(batch_size, num_voxels), mask.reshape(batch_size, num_voxels)
    chunk = max(1, chunk_elements // max(1, batch_size * feature_dim))
    with _autocast_off(features.device):
        class_sums = torch.zeros(num_classes + 1, feature_dim, device=features.device, dtype=torch.float32)
        class_counts = torch.zeros(num_classes + 1, dtype=torch.long, device=features.device)
        for start in range(0, num_voxels, chunk):
            stop = start + chunk
            # masked-out voxels go to an extra column, dropped at the end
            column = torch.where(flat_mask[:, start:stop].bool(), flat_labels[:, start:stop].long(), num_classes)
            chunk_features = flat_features[:, :, start:stop].float()
            voxel_weight = inverse_l2_norm(chunk_features, eps=eps).unsqueeze(2) if normalize_voxels else 1.0
            one_hot = torch.zeros(
                batch_size, column.shape[1], num_classes + 1, device=features.device, dtype=torch.float32
            ).scatter_(2, column.unsqueeze(2), voxel_weight)
            class_sums += torch.bmm(chunk_features, one_hot).sum(0).t()
            # integer counts: exact in any summation order (bincount would ask the host for the output size)
            class_counts.scatter_add_(0, column.reshape(-1), class_counts.new_ones(1).expand(column.numel()))
        class_sums, class_counts = class_sums[:num_classes], class_counts[:num_classes].float()
    if distributed_active(distributed):
        # One all-reduce of a fresh, contiguous (C, F + 1) tensor: gloo reduces a view's underlying
        # storage as if it were contiguous (wrong sums, silently) and NCCL refuses non-contiguous tensors.
        reduced = torch.cat((class_sums, class_counts.unsqueeze(1)), dim=1)
        dist.all_reduce(reduced)
        class_sums, class_counts = reduced[:, :-1], reduced[:, -1]
    prototypes = F.normalize(class_sums, p=2.0, dim=1, eps=eps)
    return prototypes, class_counts > 0


class PrototypeBank(nn.Module):
    """Class prototypes carried across iterations as an exponential moving average.

    ``update(μ_t, present_t)``: for a class present now and before,
    ``μ <- normalise(m μ + (1 - m) μ_t)``; present now only: ``μ <- μ_t``; present before only: the
    stored prototype is kept (it stays present) if the bank has a ``memory``; never present: absent.
    With ``momentum == 0`` a present class takes this batch's prototype; with ``memory`` off as well the
    bank is just the current batch (an absent class has no prototype this step: the released code's
    per-batch prototypes). The memory is what keeps the contrastive term alive on a task where a
    class is missing from many batches (a small foreground structure in random patches).

    The prototypes and the presence flags are buffers, so they go into ``state_dict`` (and follow
    ``.to(device)``). The feature width is taken from the first update unless given; loading a
    state dict into a fresh bank adopts the stored width.

    Args:
        num_classes: C.
        momentum: m in [0, 1).
        feature_dim: F, if known up front.
        memory: keep a class's last prototype through batches without it; ``None`` = only when
            ``momentum > 0`` (an EMA always remembers).
    """

    prototypes: torch.Tensor
    present: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.0, feature_dim: Optional[int] = None,
                 memory: Optional[bool] = None):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.memory = momentum > 0 if memory is None else memory
        self.register_buffer("prototypes", torch.zeros(num_classes, feature_dim or 0))
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, prototypes: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Folds this step's prototypes (C, F) and presence flags (C,) in; returns the bank's."""
        if prototypes.ndim != 2 or prototypes.shape[0] != self.num_classes or present.shape != (self.num_classes,):
            raise ValueError(
                f"expected prototypes ({self.num_classes}, F) and present ({self.num_classes},), got "
                f"{tuple(prototypes.shape)} and {tuple(present.shape)}"
            )
        prototypes = prototypes.detach().float()
        present = present.bool()
        if self.prototypes.numel() == 0 or not self.memory:
            stored_prototypes = torch.zeros_like(prototypes)
            stored_present = torch.zeros_like(present)
        else:
            if self.prototypes.shape != prototypes.shape:
                raise ValueError(
                    f"feature width changed: bank holds {tuple(self.prototypes.shape)}, got {tuple(prototypes.shape)}"
                )
            stored_prototypes = self.prototypes.to(prototypes.device)
            stored_present = self.present.to(present.device)
        blended = F.normalize(self.momentum * stored_prototypes + (1.0 - self.momentum) * prototypes, dim=1)
        # Opposite old and new directions blend to the zero vector, which is no direction: keep new.
        usable_blend = present & stored_present & (blended.norm(dim=1) > 0.5)
        fresh_or_blended = torch.where(usable_blend.unsqueeze(1), blended, prototypes)
        new_prototypes = torch.where(present.unsqueeze(1), fresh_or_blended, stored_prototypes)
        # Rebind rather than copy_: the tensors handed out last step may still be saved in a graph.
        self.prototypes = new_prototypes
        self.present = present | stored_present
        return self.prototypes, self.present

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A fresh bank does not know the feature width yet: adopt the stored one instead of
        # reporting a size mismatch.
        stored = state_dict.get(prefix + "prototypes")
        if stored is not None and self.prototypes.numel() == 0 and stored.shape != self.prototypes.shape:
            self.prototypes = torch.zeros_like(stored, device=self.prototypes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, momentum={self.momentum}, memory={self.memory}, "
                f"feature_dim={self.prototypes.shape[1]}")


def sample_uncertain_voxels(
    features: torch.Tensor,
    own_labels: torch.Tensor,
    uncertain_mask: torch.Tensor,
    fraction: float,
    max_per_class: int,
    generator: Optional[torch.Generator] = None,
    *,
    num_classes: Optional[int] = None,
    compact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uncertain voxels per class: ``min(ceil(fraction * n_c), max_per_class)`` of class c.

    The features of the voxels :func:`sample_uncertain_voxel_indices` draws (see there), gathered by
    :func:`gather_voxels`. ``compact=True`` drops the padding rows (one host synchronisation).

    Args:
        features: (B, F, *spatial) features; gradients flow into the sampled rows.
        own_labels, uncertain_mask, fraction, max_per_class, generator, num_classes: as
            :func:`sample_uncertain_voxel_indices` takes them, on ``features.device``.
        compact: drop the padding rows.

    Returns:
        ``(sampled_features (N, F), sampled_labels (N,) int64)``; features keep their dtype.
    """
    expected = features.shape[:1] + features.shape[2:]
    if own_labels.shape != expected or uncertain_mask.shape != expected:
        raise ValueError(
            f"own_labels and uncertain_mask must have shape {tuple(expected)} for features {tuple(features.shape)}, "
            f"got {tuple(own_labels.shape)} and {tuple(uncertain_mask.shape)}"
        )
    batch_index, spatial_index, sampled_labels = sample_uncertain_voxel_indices(
        own_labels, uncertain_mask, fraction, max_per_class, generator, num_classes=num_classes)
    sampled_features = gather_voxels(features, batch_index, spatial_index)
    if compact:
        keep = sampled_labels != IGNORE_LABEL
        return sampled_features[keep], sampled_labels[keep]
    return sampled_features, sampled_labels


@torch.no_grad()
def sample_uncertain_voxel_indices(
    own_labels: torch.Tensor,
    uncertain_mask: torch.Tensor,
    fraction: float,
    max_per_class: int,
    generator: Optional[torch.Generator] = None,
    *,
    num_classes: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where :func:`sample_uncertain_voxels` samples: ``min(ceil(fraction * n_c), max_per_class)`` of class c.

    ``n_c`` = the number of uncertain voxels the network itself assigns to class c. One sort of
    int64 keys ``c * 2^31 + random`` (certain voxels sort last) groups the candidates by class in a
    random order; the first ``k_c`` of each group are taken. The result has a fixed size,
    ``N = C * min(max_per_class, V)`` rows with ``V`` = all voxels, so nothing waits on the host; rows
    beyond a class's quota carry the label ``-1`` (:data:`IGNORE_LABEL`) and are ignored by
    :func:`prototype_infonce_loss` and :func:`prototype_l2_loss`.

    Args:
        own_labels: (B, *spatial) integer labels in [0, C), the network's own argmax.
        uncertain_mask: (B, *spatial) bool, the candidates (voxels that are not reliable).
        fraction: fraction of each class's candidates to take (``METHOD.md``: 0.01).
        max_per_class: cap per class.
        generator: random generator on the labels' device, for reproducibility.
        num_classes: C; if omitted it is inferred as ``own_labels.max() + 1`` (a host sync) — pass it.

    Returns:
        ``(batch_index (N,), spatial_index (N,), sampled_labels (N,))``, int64: row ``i`` is voxel
        ``spatial_index[i]`` of the flattened spatial axes of batch item ``batch_index[i]``.
    """
    if own_labels.shape != uncertain_mask.shape:
        raise ValueError(f"own_labels and uncertain_mask must have the same shape, got {tuple(own_labels.shape)} "
                         f"and {tuple(uncertain_mask.shape)}")
    if not 0.0 <= fraction <= 1.0 or max_per_class < 0:
        raise ValueError(f"need 0 <= fraction <= 1 and max_per_class >= 0, got {fraction} and {max_per_class}")
    if num_classes is None:
        num_classes = int(own_labels.max()) + 1 if own_labels.numel() else 1
    device = own_labels.device
    voxels_per_item = math.prod(own_labels.shape[1:])
    num_voxels = own_labels.numel()
    per_class = min(max_per_class, num_voxels)
    if per_class == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), empty.clone()

    labels_flat = own_labels.reshape(-1).long()
    random_keys = torch.randint(0, _KEY_STRIDE, (num_voxels,), generator=generator, device=device)
    keys = torch.where(
        uncertain_mask.reshape(-1).bool(),
        labels_flat * _KEY_STRIDE + random_keys,
        torch.full_like(labels_flat, num_classes * _KEY_STRIDE),
    )
    sorted_keys, order = torch.sort(keys)
    class_starts = torch.searchsorted(sorted_keys, torch.arange(num_classes + 1, device=device) * _KEY_STRIDE)
    candidates_per_class = class_starts[1:] - class_starts[:-1]
    # The small epsilon keeps 0.01 * 700 = 7.000000000000001 from rounding up to 8.
    quota = torch.ceil(candidates_per_class.double() * fraction - 1e-9).clamp(0, max_per_class).long()
    offsets = torch.arange(per_class, device=device)
    positions = (class_starts[:-1, None] + offsets).clamp_max(num_voxels - 1)
    voxel_index = order[positions].reshape(-1)
    class_of_row = torch.arange(num_classes, device=device)[:, None].expand(-1, per_class)
    sampled_labels = torch.where(offsets < quota[:, None], class_of_row, IGNORE_LABEL).reshape(-1)
    return voxel_index // voxels_per_item, voxel_index % voxels_per_item, sampled_labels


def gather_voxels(features: torch.Tensor, batch_index: torch.Tensor, spatial_index: torch.Tensor) -> torch.Tensor:
    """``features[b_i, :, v_i]`` for every row i, an (N, F) tensor (``v`` indexes the flattened spatial axes).

    Differentiable. Its backward pass adds the rows' gradients into one zero map of ``features``' shape,
    so gather all samples of a map at once, from the map the network made rather than from a slice of
    it: a gather from a slice costs a map of the slice and then one of the whole, one gather per set of
    samples costs a map each, all where the step's memory peaks.
    """
    batch_size, feature_dim = features.shape[:2]
    # Explicit voxel count, not -1: a map without rows (B = 0) has one too.
    flat = features.reshape(batch_size, feature_dim, math.prod(features.shape[2:]))
    return _GatherVoxels.apply(flat, batch_index, spatial_index)


class _GatherVoxels(torch.autograd.Function):
    """Advanced indexing whose backward always adds into its zero map in place. Autograd's own formula
    does so too, except under a tensor subclass or dispatch mode (fake tensors, the memory estimate),
    where it writes a second, out-of-place map: the estimate would count memory a GPU never uses."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, batch_index: torch.Tensor, spatial_index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(batch_index, spatial_index)
        ctx.flat_shape = flat.shape
        # advanced indices on dims 0 and 2 around a slice put the index dimension first: (N, F)
        return flat[batch_index, :, spatial_index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        batch_index, spatial_index = ctx.saved_tensors
        channels = torch.arange(ctx.flat_shape[1], device=grad.device)
        grad_flat = grad.new_zeros(ctx.flat_shape)
        # accumulate: on region tasks two regions' samples can be the same voxel (and a class short of
        # samples repeats one in its padding rows, whose gradient is zero)
        grad_flat.index_put_((batch_index[:, None], channels[None, :], spatial_index[:, None]), grad, accumulate=True)
        return grad_flat, None, None


def _check_samples(sampled_features, sampled_labels, prototypes, present):
    if sampled_features.ndim != 2 or sampled_labels.shape != sampled_features.shape[:1]:
        raise ValueError(
            f"expected sampled_features (N, F) and sampled_labels (N,), got {tuple(sampled_features.shape)} "
            f"and {tuple(sampled_labels.shape)}"
        )
    feature_dim = sampled_features.shape[1]
    if prototypes.ndim != 2 or prototypes.shape[1] != feature_dim or present.shape != prototypes.shape[:1]:
        raise ValueError(
            f"expected prototypes (C, {sampled_features.shape[1]}) and present (C,), got {tuple(prototypes.shape)} "
            f"and {tuple(present.shape)}"
        )


def _usable_samples(sampled_labels: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples with a label whose class has a prototype, and labels safe to index with."""
    safe_labels = sampled_labels.long().clamp(0, present.shape[0] - 1)
    usable = (sampled_labels >= 0) & (sampled_labels < present.shape[0]) & present[safe_labels]
    return usable, safe_labels


def prototype_infonce_loss(
    sampled_features: torch.Tensor,
    sampled_labels: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """InfoNCE against class prototypes: ``mean_i -log softmax_{c'}(f_i · μ_{c'} / t)[c_i]``.

    The softmax runs over the *present* prototypes only (absent columns get the most negative
    float32 logit, so they weigh nothing yet keep every value finite), computed by
    ``F.cross_entropy`` on the logits (stable at small t, unlike ``exp(a) / sum(exp(b))``). The
    prototypes are constants. Term 6 of ``METHOD.md``; the prototype form of the supervised
    contrastive loss (Khosla et al., NeurIPS 2020), as in arXiv 2509.13084.

    Samples labelled ``-1`` or whose class has no prototype are dropped. The loss is exactly 0 (and
    attached to ``sampled_features``) when fewer than two prototypes are present or nothing is left.

    Args:
        sampled_features: (N, F) features (L2-normalised per voxel), e.g. from
            :func:`sample_uncertain_voxels`.
        sampled_labels: (N,) int labels, -1 = padding.
        prototypes: (C, F) prototypes (detached here).
        present: (C,) bool.
        temperature: t > 0.

    Returns:
        0-dim float32 tensor.
    """
    _check_samples(sampled_features, sampled_labels, prototypes, present)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if sampled_features.shape[0] == 0:
        return sampled_features.float().sum() * 0.0
    present = present.bool()
    usable, safe_labels = _usable_samples(sampled_labels, present)
    with _autocast_off(sampled_features.device):
        logits = sampled_features.float() @ prototypes.detach().float().t() / temperature
        logits = logits.masked_fill(~present, torch.finfo(torch.float32).min)
        cross_entropy = F.cross_entropy(logits, safe_labels, reduction="none")
    loss = torch.where(usable, cross_entropy, torch.zeros_like(cross_entropy)).sum() / usable.sum().clamp_min(1)
    return torch.where(present.sum() >= 2, loss, torch.zeros_like(loss))


def _pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Clamped before the square root: d sqrt(s)/ds is infinite at s = 0 (cdist's backward at 0 is
    # not safe across versions either).
    squared = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1) - 2.0 * x @ y.t()
    return squared.clamp_min(1e-12).sqrt()


def prototype_l2_loss(
    sampled_features: torch.Tensor,
    sampled_labels: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
    margin: float = math.sqrt(2.0),
) -> torch.Tensor:
    """The released code's Euclidean pull, plus a separation term that actually separates.

    ``L = mean_i ||f_i - μ_{c_i}||  +  mean_{a != b} max(0, margin - ||f̄_a - μ_b||)``

    * pull: each sampled feature towards its class prototype (the released code's
      ``cdist(candidates, prototype).mean()``, averaged over all samples rather than per class);
    * separation: ``f̄_a`` = the normalised mean of the sampled features of class a. The released
      code's third term, ``||μ_f - μ_b||``, is *minimised* (it pulls the prototypes together) and,
      prototypes being constants, would pass no gradient anyway; here the class means of the
      samples, which do carry gradient, are pushed away from the *other* classes' prototypes until
      they are ``margin`` apart (default sqrt(2): orthogonal unit vectors, reachable by C classes
      when F >= C). Pairs run over classes a with samples and b != a with a prototype.

    Samples labelled ``-1`` or whose class has no prototype are dropped; exactly 0 (attached) when
    fewer than two prototypes are present or nothing is left.

    Args:
        sampled_features: (N, F) L2-normalised features.
        sampled_labels: (N,) int labels, -1 = padding.
        prototypes: (C, F) unit prototypes (detached here).
        present: (C,) bool.
        margin: separation margin on the Euclidean distance of unit vectors, in [0, 2].

    Returns:
        0-dim float32 tensor.
    """
    _check_samples(sampled_features, sampled_labels, prototypes, present)
    if sampled_features.shape[0] == 0:
        return sampled_features.float().sum() * 0.0
    present = present.bool()
    num_classes = present.shape[0]
    usable, safe_labels = _usable_samples(sampled_labels, present)
    with _autocast_off(sampled_features.device):
        features = sampled_features.float()
        prototypes = prototypes.detach().float()
        pull_distance = ((features - prototypes[safe_labels]) ** 2).sum(1).clamp_min(1e-12).sqrt()
        pull = torch.where(usable, pull_distance, torch.zeros_like(pull_distance)).sum() / usable.sum().clamp_min(1)

        # scatter, not F.one_hot: one_hot validates its input range on the host (a sync on some devices).
        sample_weight = torch.zeros(features.shape[0], num_classes, device=features.device).scatter_(
            1, safe_labels.unsqueeze(1), usable.unsqueeze(1).float()
        )  # (N, C)
        class_means = F.normalize(sample_weight.t() @ features, dim=1)  # (C, F)
        has_samples = sample_weight.sum(0) > 0
        other_class = ~torch.eye(num_classes, dtype=torch.bool, device=present.device)
        pair_mask = has_samples[:, None] & present[None, :] & other_class
        hinge = F.relu(margin - _pairwise_distance(class_means, prototypes))
        separation = torch.where(pair_mask, hinge, torch.zeros_like(hinge)).sum() / pair_mask.sum().clamp_min(1)
    loss = pull + separation
    return torch.where(present.sum() >= 2, loss, torch.zeros_like(loss))
