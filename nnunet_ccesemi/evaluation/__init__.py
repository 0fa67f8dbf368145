"""Segmentation metrics as the semi-supervised literature reports them (medpy definitions)."""
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
