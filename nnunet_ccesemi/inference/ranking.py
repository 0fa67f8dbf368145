"""Which unlabelled case to annotate next: per-case scores of a two-network prediction, as pure tensor functions.

Every score looks at the voxels either network calls foreground (argmax ≠ background), the region
where a segmentation can be wrong in a way an annotator would fix; background far from the structure
would drown the mean otherwise. Where neither network predicts any foreground the region is empty and
the scores take defined values (the networks agree there is nothing), flagged ``empty_foreground``.

For a region dataset (nnU-Net's sigmoid outputs) the foreground is the union of the regions
(``p_r > 0.5`` for some r), its probability the largest region probability, and the voxel maps
those of :mod:`~nnunet_ccesemi.inference.uncertainty` with ``regions=True``.

Scores are computed on the network grid (the preprocessed, resampled case): a ranking needs no
resampling back to the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nnunet_ccesemi.inference.uncertainty import predictive_entropy, symmetric_kl


@dataclass(frozen=True)
class Score:
    definition: str
    higher_is_more_informative: bool
    value_when_empty: float


SCORES: dict[str, Score] = {
    "disagreement": Score("mean symmetric KL divergence KL(A||B) + KL(B||A) between the two networks' softmax over "
                          "the voxels either network calls foreground (regions: the Bernoulli KL summed over the "
                          "regions); high = the networks disagree", True, 0.0),
    "entropy": Score("mean normalised entropy (0..1) of the averaged softmax (regions: the binary entropy averaged "
                     "over the regions) over the same voxels; high = the ensemble is unsure", True, 0.0),
    "soft_dice": Score("soft Dice 2·Σ fA·fB / (Σ fA + Σ fB) of the two networks' foreground probabilities "
                       "f = 1 − p(background) (regions: f = max_r p_r), over the whole case; low = the networks "
                       "segment different structures", False, 1.0),
    "volume_ml": Score("foreground volume of the averaged prediction in ml (argmax ≠ background, regions: any "
                       "p_r > 0.5; network grid); large first", True, 0.0),
}
# Spearman against the true error on the Left Atrium development data (60 unlabelled cases): soft_dice
# +0.726 (CPS model) and +0.630 (CCE model), the best score on both (benchmarks/results/la_ranking_*.txt)
DEFAULT_SCORE = "soft_dice"


def _foreground(probs: torch.Tensor, regions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, probability) of the foreground: argmax ≠ background and 1 − p(background), or for regions
    any p_r > 0.5 and max_r p_r."""
    if regions:
        return (probs > 0.5).any(0), probs.max(0).values
    return probs.argmax(0) != 0, 1 - probs[0]


def score_case(probs_a: torch.Tensor, probs_b: torch.Tensor, voxel_volume_mm3: float, regions: bool = False
               ) -> dict[str, float | bool | int]:
    """The scores of :data:`SCORES` for one case from both networks' probabilities of shape (C, *spatial)
    (class softmax, or with ``regions`` the sigmoid of each region).

    Also returns ``foreground_voxels`` (the size of the region scored) and ``empty_foreground``.
    """
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probability maps differ in shape: {tuple(probs_a.shape)} vs {tuple(probs_b.shape)}")
    if probs_a.shape[0] < (1 if regions else 2):
        raise ValueError(f"need at least two classes (background first), got shape {tuple(probs_a.shape)}")
    probs_a, probs_b = probs_a.float(), probs_b.float()
    mean = (probs_a + probs_b) / 2
    (mask_a, foreground_a), (mask_b, foreground_b) = _foreground(probs_a, regions), _foreground(probs_b, regions)
    region = mask_a | mask_b
    foreground_voxels = int(region.sum())
    overlap, total = (foreground_a * foreground_b).sum(), foreground_a.sum() + foreground_b.sum()
    scores: dict[str, float | bool | int] = {
        # Without a foreground voxel the networks agree there is nothing, however faint the probabilities
        # (softmax is never exactly 0): the faint ones' soft Dice would be near 0 and rank the case first.
        "soft_dice": (float(2 * overlap / total) if foreground_voxels and total > 0
                      else SCORES["soft_dice"].value_when_empty),
        "volume_ml": float(_foreground(mean, regions)[0].sum()) * voxel_volume_mm3 / 1000.0,
    }
    if foreground_voxels:
        scores["disagreement"] = float(symmetric_kl(probs_a, probs_b, regions=regions)[region].mean())
        scores["entropy"] = float(predictive_entropy(mean, regions=regions)[region].mean())
    else:
        scores["disagreement"] = SCORES["disagreement"].value_when_empty
        scores["entropy"] = SCORES["entropy"].value_when_empty
    scores["foreground_voxels"] = foreground_voxels
    scores["empty_foreground"] = foreground_voxels == 0
    return {name: scores[name] for name in (*SCORES, "foreground_voxels", "empty_foreground")}


def rank(scores_by_case: dict[str, dict], score: str = DEFAULT_SCORE) -> list[str]:
    """Case IDs, most informative first by ``score``; ties broken by case ID for a stable order."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    sign = -1.0 if SCORES[score].higher_is_more_informative else 1.0
    return sorted(scores_by_case, key=lambda case: (sign * scores_by_case[case][score], case))


def network_grid_spacing(properties: dict, configuration_spacing, transpose_forward) -> list[float]:
    """Voxel spacing (mm) of the grid the networks predict on; a 2D configuration keeps the slice spacing."""
    spacing = list(configuration_spacing)
    original = [properties["spacing"][i] for i in transpose_forward]
    return spacing if len(spacing) == len(original) else [original[0], *spacing]
