"""Overlap and surface-distance metrics of binary masks, numerically identical to medpy's.

The semi-supervised segmentation literature (UA-MT, DTC, MC-Net, SS-Net, BCP, CCE) reports Dice,
Jaccard, the 95 % Hausdorff distance and the average surface distance as computed by
``medpy.metric.binary`` (0.5). This module reproduces those definitions exactly, without medpy:

* surface of a mask ``X``: ``X xor erode(X)``, one binary erosion with the face-connected structuring
  element (connectivity 1) and ``border_value=0``, i.e. outside the image counts as background, so an
  object touching the image border has surface voxels there;
* ``d(a, B)``: Euclidean distance from a surface voxel ``a`` of one mask to the nearest surface voxel
  of the other mask, in voxels or, with ``spacing``, in physical units (``distance_transform_edt``
  of the complement of B's surface, ``sampling=spacing``);
* ``HD95 = percentile_95(d(P->R) U d(R->P))`` of the pooled directed distances, numpy's default
  (linear) percentile, as ``medpy.metric.binary.hd95``;
* ``ASD = mean d(P->R)``, directed from the prediction to the reference, as ``medpy asd(pred, ref)``
  and the papers' tables; ``ASSD = mean(d(P->R) U d(R->P))``, as ``medpy assd``.

Unlike medpy, everything is computed inside the bounding box of ``P or R`` only, and each distance
transform is done once for all three distance metrics. The crop changes no value: outside that box
both masks are background, which is exactly what ``border_value=0`` assumes beyond the crop's faces,
so the erosion (hence the surfaces) is unchanged; and both surfaces lie inside the box, so the
nearest surface voxel of every surface voxel is inside it too. Distances stay exact (the EDT is
exact), and the percentile and means see the same values in the same (raster) order.

Empty masks, where medpy raises: see :func:`binary_metrics`.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from scipy import ndimage

EmptyConvention = Literal["nan", "zero"]
EMPTY_CONVENTIONS = ("nan", "zero")
DISTANCE_METRICS = ("HD95", "ASD", "ASSD")
METRICS = ("Dice", "Jaccard") + DISTANCE_METRICS


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """``2 |P and R| / (|P| + |R|)``; 1.0 when both masks are empty (``medpy.metric.binary.dc``'s intent;
    medpy itself returns NaN there, its division by a zero numpy count does not raise)."""
    prediction, reference = _as_bool(prediction), _as_bool(reference)
    return _dice(np.count_nonzero(prediction & reference), np.count_nonzero(prediction),
                 np.count_nonzero(reference))


def jaccard(prediction: np.ndarray, reference: np.ndarray) -> float:
    """``|P and R| / |P or R|``; 1.0 when both masks are empty (as ``medpy.metric.binary.jc``)."""
    prediction, reference = _as_bool(prediction), _as_bool(reference)
    return _jaccard(np.count_nonzero(prediction & reference), np.count_nonzero(prediction),
                    np.count_nonzero(reference))


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that one face-connected erosion removes (``border_value=0``), as medpy.

    Outside the array counts as background: an object touching the array's border has surface there.
    """
    mask = _as_bool(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(result: np.ndarray, reference: np.ndarray,
                      spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Directed distances from each surface voxel of ``result`` to the nearest surface voxel of ``reference``.

    The values, in raster order of the ``result`` surface, of medpy's private
    ``__surface_distances(result, reference, voxelspacing=spacing)``; computed on the union bounding box.

    Raises:
        ValueError: either mask is empty (the distance is undefined).
    """
    result, reference = _as_bool(result), _as_bool(reference)
    _check_pair(result, reference, spacing)
    if not result.any() or not reference.any():
        raise ValueError("surface distances are undefined when a mask is empty "
                         f"(result {np.count_nonzero(result)} voxels, reference {np.count_nonzero(reference)})")
    box = union_bounding_box(result, reference)
    return _directed_distances(surface(result[box]), surface(reference[box]), spacing)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile of the pooled directed surface distances (``medpy.metric.binary.hd95``).

    Raises ValueError when a mask is empty; :func:`binary_metrics` applies an empty-mask convention.
    """
    return float(np.percentile(np.concatenate([surface_distances(prediction, reference, spacing),
                                               surface_distances(reference, prediction, spacing)]), 95))


def asd(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Mean distance from the prediction's surface to the reference's (directed; ``medpy asd(pred, ref)``)."""
    return float(surface_distances(prediction, reference, spacing).mean())


def assd(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Mean of the pooled directed surface distances of both directions (``medpy.metric.binary.assd``)."""
    return float(np.concatenate([surface_distances(prediction, reference, spacing),
                                 surface_distances(reference, prediction, spacing)]).mean())


def binary_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None,
                   empty_convention: EmptyConvention = "nan") -> dict:
    """Dice, Jaccard, HD95, ASD and ASSD of one pair of masks, with two distance transforms in all.

    Empty masks (medpy raises for the distances):
        * Dice and Jaccard follow their formulas: 0 when exactly one mask is empty, 1.0 when both are
          (medpy's ``dc``/``jc`` convention: nothing to find and nothing found).
        * HD95, ASD, ASSD when either mask is empty: ``"nan"`` (default) gives NaN, so a caller can
          exclude and count the case; ``"zero"`` gives 0.0, the silent convention of the papers' test
          scripts, which rewards an empty prediction with a perfect distance.

    Args:
        prediction, reference: masks of the same shape, any dtype (non-zero = object), 1D to nD.
        spacing: voxel size per axis (array axis order) for distances in physical units; ``None``
            gives voxel units (medpy's ``voxelspacing=None``).
        empty_convention: ``"nan"`` or ``"zero"``, see above.

    Returns:
        dict with float ``Dice``, ``Jaccard``, ``HD95``, ``ASD``, ``ASSD`` and int
        ``prediction_voxels``, ``reference_voxels``.
    """
    if empty_convention not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty_convention must be one of {EMPTY_CONVENTIONS}, got {empty_convention!r}")
    prediction, reference = _as_bool(prediction), _as_bool(reference)
    _check_pair(prediction, reference, spacing)
    n_prediction, n_reference = np.count_nonzero(prediction), np.count_nonzero(reference)
    scores = {"prediction_voxels": int(n_prediction), "reference_voxels": int(n_reference)}
    if n_prediction == 0 or n_reference == 0:
        undefined = np.nan if empty_convention == "nan" else 0.0
        scores.update(Dice=_dice(0, n_prediction, n_reference), Jaccard=_jaccard(0, n_prediction, n_reference),
                      HD95=undefined, ASD=undefined, ASSD=undefined)
        return scores
    box = union_bounding_box(prediction, reference)
    prediction, reference = prediction[box], reference[box]
    intersection = np.count_nonzero(prediction & reference)
    prediction_surface, reference_surface = surface(prediction), surface(reference)
    to_reference = _directed_distances(prediction_surface, reference_surface, spacing)
    to_prediction = _directed_distances(reference_surface, prediction_surface, spacing)
    pooled = np.concatenate([to_reference, to_prediction])
    scores.update(Dice=_dice(intersection, n_prediction, n_reference),
                  Jaccard=_jaccard(intersection, n_prediction, n_reference),
                  HD95=float(np.percentile(pooled, 95)), ASD=float(to_reference.mean()), ASSD=float(pooled.mean()))
    return scores


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (full connectivity: 26 neighbours in 3D, 8 in 2D).

    The ``getLargestCC`` post-processing of DTC, SS-Net and BCP (``skimage.measure.label``'s default
    connectivity is the full one). Ties go to the component ``scipy.ndimage.label`` numbers first
    (raster order), as ``argmax`` over component sizes does there. An empty mask stays empty.
    """
    mask = _as_bool(mask)
    labelled, n_components = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n_components <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel(), minlength=n_components + 1)[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


def union_bounding_box(*masks: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every non-zero voxel of all ``masks`` (empty slices if none)."""
    union = np.logical_or.reduce([_as_bool(m) for m in masks]) if len(masks) > 1 else _as_bool(masks[0])
    box = []
    for axis in range(union.ndim):
        # project onto one axis at a time: cheaper than np.nonzero on the whole volume
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(box)


def _directed_distances(from_surface: np.ndarray, to_surface: np.ndarray,
                        spacing: Optional[Sequence[float]]) -> np.ndarray:
    # the EDT gives each voxel its distance to the nearest zero: make the target surface the zeros
    sampling = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    return ndimage.distance_transform_edt(~to_surface, sampling=sampling)[from_surface]


def _dice(intersection: int, n_prediction: int, n_reference: int) -> float:
    total = n_prediction + n_reference
    return 2.0 * float(intersection) / float(total) if total else 1.0


def _jaccard(intersection: int, n_prediction: int, n_reference: int) -> float:
    union = n_prediction + n_reference - intersection
    return float(intersection) / float(union) if union else 1.0


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask.astype(bool)


def _check_pair(a: np.ndarray, b: np.ndarray, spacing: Optional[Sequence[float]]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 0:
        raise ValueError("masks must have at least one axis")
    if spacing is not None and len(spacing) != a.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for {a.ndim}D masks")
