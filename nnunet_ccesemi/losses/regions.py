"""Region outputs (nnU-Net's sigmoid heads for overlapping regions) as binary softmax problems.

nnU-Net trains a dataset whose ``dataset.json`` defines regions (BraTS: whole tumour ⊃ tumour core ⊃
enhancing tumour) with one sigmoid output per region. Every term of CCE has an exact sigmoid
counterpart through one identity: a region logit ``z`` is the two-class softmax of ``(0, z)``,

    ``softmax((0, z)) = (1 - σ(z), σ(z))``,

so the binary entropy, the binary cross-entropy, the Bernoulli KL and the cosine of the Bernoulli
vectors ``(1 - p, p)`` are the softmax formulas with C = 2. :func:`binary_logits` folds the R region
channels of (N, R, *spatial) logits into the batch axis as (N·R, 2, *spatial) (row ``n·R + r``),
and the objective applies its softmax terms to that. Two things couple the regions and are done
here: the hard labels are *nested* as nnU-Net's label manager nests them (:meth:`RegionLayout.nest`),
and the prototypes of term 6 are per region, with the region's complement as the negative class
(:meth:`RegionLayout.group_index`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

Region = Union[int, Sequence[int]]


@dataclass(frozen=True)
class RegionLayout:
    """nnU-Net's regions: the label values of each output channel and ``regions_class_order``.

    Args:
        regions: per output channel r, the label values the region is made of (nnU-Net's
            ``label_manager.foreground_regions``; an int is a one-label region).
        class_order: ``regions_class_order``: the label value written where channel r's probability
            exceeds 0.5, channels applied in order (later ones overwrite earlier ones).
    """

    regions: tuple[tuple[int, ...], ...]
    class_order: tuple[int, ...]

    @classmethod
    def from_label_manager(cls, label_manager) -> Optional["RegionLayout"]:
        """The layout of a region dataset's label manager, ``None`` for a dataset of labels."""
        if not label_manager.has_regions:
            return None
        regions = tuple(tuple(int(v) for v in r) if isinstance(r, (list, tuple)) else (int(r),)
                        for r in label_manager.foreground_regions)
        return cls(regions, tuple(int(c) for c in label_manager.regions_class_order))

    def __post_init__(self):
        if not self.regions or len(self.class_order) != len(self.regions):
            raise ValueError(f"need one regions_class_order entry per region, got {len(self.class_order)} for "
                             f"{len(self.regions)} regions {self.regions}")

    @property
    def num_regions(self) -> int:
        return len(self.regions)

    @property
    def group_names(self) -> list[str]:
        """Names of the 2R binary classes, in :meth:`group_index` order: ``r{r}_out``, ``r{r}_in``."""
        return [f"r{r}_{side}" for r in range(self.num_regions) for side in ("out", "in")]

    def labels_to_regions(self, labels: torch.Tensor) -> torch.Tensor:
        """bool (N, R, *spatial): whether each voxel's label value lies in region r; labels (N, *spatial)."""
        return torch.stack([_isin(labels, values) for values in self.regions], dim=1)

    @torch.no_grad()
    def nest(self, inside: torch.Tensor) -> torch.Tensor:
        """Hard region maps made consistent the way nnU-Net turns sigmoid outputs into a label map.

        ``inside`` (N, R, *spatial) bool (``σ(z) > 0.5`` per channel) becomes the label map of
        ``LabelManager.convert_probabilities_to_segmentation`` (0, then ``class_order[r]`` wherever
        channel r is inside, channels in order) and back into regions. For BraTS's nested regions
        this makes an enhancing-tumour voxel also core and whole tumour, as nnU-Net's exported
        segmentation does, so the pseudo-labels are the segmentation the network would export.
        """
        labels = torch.zeros(inside.shape[:1] + inside.shape[2:], dtype=torch.long, device=inside.device)
        for r, value in enumerate(self.class_order):
            labels = torch.where(inside[:, r], torch.full_like(labels, value), labels)
        return self.labels_to_regions(labels)

    def region_index(self, rows: int, device: torch.device) -> torch.Tensor:
        """(rows,) the region of each folded row (row ``n·R + r`` is region r)."""
        return torch.arange(self.num_regions, device=device).repeat(rows // self.num_regions)

    def group_index(self, folded_labels: torch.Tensor) -> torch.Tensor:
        """``2 r + ŷ`` for folded 0/1 labels (N·R, *spatial): the binary class within its region."""
        regions = self.region_index(folded_labels.shape[0], folded_labels.device)
        return folded_labels.long() + 2 * regions.view(-1, *([1] * (folded_labels.ndim - 1)))


def _isin(labels: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    inside = labels == values[0]
    for value in values[1:]:
        inside = inside | (labels == value)
    return inside


def binary_logits(region_logits: torch.Tensor) -> torch.Tensor:
    """(N, R, *spatial) sigmoid logits -> (N·R, 2, *spatial) softmax logits ``(0, z)``, row ``n·R + r``.

    ``softmax((0, z))[1] = σ(z)``: every softmax formula of the objective applied to the result is its
    Bernoulli counterpart for each region. Differentiable; costs one copy of the logits.
    """
    folded = region_logits.reshape(region_logits.shape[0] * region_logits.shape[1], 1, *region_logits.shape[2:])
    return torch.cat((torch.zeros_like(folded), folded), dim=1)


def fold_labels(region_maps: torch.Tensor) -> torch.Tensor:
    """(N, R, *spatial) 0/1 region maps -> (N·R, *spatial) int64 labels, row ``n·R + r``."""
    return region_maps.reshape(region_maps.shape[0] * region_maps.shape[1], *region_maps.shape[2:]).long()


def unfold(folded: torch.Tensor, num_regions: int) -> torch.Tensor:
    """(N·R, *rest) -> (N, R, *rest)."""
    return folded.reshape(folded.shape[0] // num_regions, num_regions, *folded.shape[1:])


def fold_region_target(target: torch.Tensor, num_regions: int, ignore_index: int) -> torch.Tensor:
    """nnU-Net's region target of the labelled rows as folded labels, ignored voxels as ``ignore_index``.

    Args:
        target: (n, R, *spatial) region maps, or (n, R + 1, *spatial) where the dataset has an ignore
            label (nnU-Net converts it into a last channel that marks the ignored voxels).
        num_regions: R.
        ignore_index: the value that marks ignored voxels in the result.

    Returns:
        int64 (n·R, *spatial), values 0, 1 or ``ignore_index`` (every region of an ignored voxel).
    """
    if target.shape[1] not in (num_regions, num_regions + 1):
        raise ValueError(f"a region target has R={num_regions} channels (R + 1 with an ignore label), got "
                         f"{tuple(target.shape)}")
    labels = target[:, :num_regions].long()
    if target.shape[1] == num_regions + 1:
        ignored = target[:, num_regions:].bool().expand_as(labels)
        labels = torch.where(ignored, torch.full_like(labels, ignore_index), labels)
    return fold_labels(labels)
