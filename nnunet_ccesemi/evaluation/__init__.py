"""Segmentation metrics as the semi-supervised literature reports them (medpy definitions).

The scoring of a prediction folder against its references (match, score, summarise, write) is
:mod:`nnunet_ccesemi.evaluation.folders`."""
from .metrics import (
    DISTANCE_METRICS,
    EMPTY_CONVENTIONS,
    METRICS,
    asd,
    assd,
    binary_metrics,
    dice,
    hd95,
    jaccard,
    largest_connected_component,
    surface,
    surface_distances,
    union_bounding_box,
)

__all__ = [
    "DISTANCE_METRICS",
    "EMPTY_CONVENTIONS",
    "METRICS",
    "asd",
    "assd",
    "binary_metrics",
    "dice",
    "hd95",
    "jaccard",
    "largest_connected_component",
    "surface",
    "surface_distances",
    "union_bounding_box",
]
