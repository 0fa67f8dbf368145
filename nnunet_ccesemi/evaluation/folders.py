"""Scoring a folder of predictions against a folder of references: match, read, score, summarise, write.

The library behind ``nnUNetv2_ccesemi_evaluate`` (and the demo and the benchmarks). Cases are matched
by file name; each pair is scored per label with :func:`~nnunet_ccesemi.evaluation.metrics.binary_metrics`
(medpy's definitions), in worker processes if asked; the summary holds the per-case values, the means
over cases and the units and conventions that produced them, and is written as strict JSON (NaN as
``null``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from os.path import isdir, join
from typing import Optional, Sequence

import numpy as np

from nnunet_ccesemi import image_files
from nnunet_ccesemi.atomic import atomic_path
from nnunet_ccesemi.evaluation.metrics import (
    DISTANCE_METRICS,
    EMPTY_CONVENTIONS,
    METRICS,
    binary_metrics,
    largest_connected_component,
)
from nnunet_ccesemi.parallel import run_jobs

UNITS = ("voxel", "mm")
# nnU-Net writes predictions with the image's geometry, which can differ from the label's in the last digits
SPACING_RTOL = 1e-4

CONVENTIONS = {
    "Dice": "2|P and R| / (|P| + |R|); 0 when exactly one mask is empty, 1.0 when both are (medpy dc)",
    "Jaccard": "|P and R| / |P or R|; 1.0 when both masks are empty (medpy jc)",
    "surface": "voxels removed by one erosion with connectivity 1 (face neighbours); outside the image counts "
               "as background, so objects touching the image border have surface there (medpy)",
    "HD95": "95th percentile (numpy, linear) of the pooled distances prediction surface -> nearest reference "
            "surface voxel and reference surface -> nearest prediction surface voxel (medpy hd95)",
    "ASD": "mean distance prediction surface -> nearest reference surface voxel, directed (medpy asd(pred, ref), "
           "the papers' ASD)",
    "ASSD": "mean of the pooled distances of both directions (medpy assd)",
    "means": "over cases, ignoring NaN (n_excluded_empty counts the cases left out); foreground_mean is the "
             "mean over labels of the per-label means",
    "lcc": "when on, each predicted label is reduced to its largest connected component (full connectivity: "
           "26 neighbours in 3D) before scoring",
}
EMPTY_CONVENTION_TEXT = {
    "nan": "HD95, ASD and ASSD are NaN (null in JSON) when the prediction or the reference is empty; those "
           "cases are excluded from the distance means and counted in n_excluded_empty",
    "zero": "HD95, ASD and ASSD are 0 when the prediction or the reference is empty (the papers' test "
            "scripts; flatters empty predictions); no case is excluded",
}


class EvaluationError(Exception):
    """Unusable input: a missing prediction, a geometry mismatch, an empty folder, a damaged file."""


@dataclasses.dataclass(frozen=True)
class CasePair:
    """A reference file and its prediction; ``prediction_file=None`` scores an empty prediction."""

    case: str
    reference_file: str
    prediction_file: Optional[str]


@dataclasses.dataclass(frozen=True)
class CaseScores:
    """The metrics of one case per label, with the geometry they were computed on."""

    pair: CasePair
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    metrics: dict[int, dict]
    reference_labels: tuple[int, ...]
    """The labels present in the reference."""

    def record(self, labels: Sequence[int], empty_convention: str) -> dict:
        """The per-case record of the summary for ``labels``; a label not scored here (absent from both
        masks) gets the values of two empty masks."""
        both_empty = binary_metrics(np.zeros(1, bool), np.zeros(1, bool), empty_convention=empty_convention)
        return {
            "case": self.pair.case,
            "reference_file": self.pair.reference_file,
            "prediction_file": self.pair.prediction_file,
            "prediction_missing": self.pair.prediction_file is None,
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "metrics": {str(label): self.metrics.get(label, dict(both_empty)) for label in labels},
        }


def read_segmentation(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """The label array of an image file and its spacing, both in array axis order (z, y, x for 3D).

    Raises:
        EvaluationError: the file is truncated or unreadable.
    """
    import SimpleITK as sitk

    try:
        image = image_files.read_image(path, "segmentation")
    except image_files.ImageFileError as e:
        raise EvaluationError(str(e)) from e
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def match_cases(reference_folder: str, prediction_folder: str, *, file_ending: str = ".nii.gz",
                missing_as_empty: bool = False) -> tuple[list[CasePair], list[str]]:
    """The reference files paired with their predictions by file name, and the unmatched predictions.

    Raises:
        EvaluationError: a folder is missing, no reference has the file ending, or a prediction is
            missing (unless ``missing_as_empty``, which pairs it with ``None``).
    """
    for kind, folder in (("reference", reference_folder), ("prediction", prediction_folder)):
        if not isdir(folder):
            raise EvaluationError(f"{kind} folder {folder} does not exist")
    references = sorted(f for f in os.listdir(reference_folder) if f.endswith(file_ending))
    predictions = {f for f in os.listdir(prediction_folder) if f.endswith(file_ending)}
    if not references:
        raise EvaluationError(f"no reference file ending in {file_ending!r} in {reference_folder}")
    missing = [f for f in references if f not in predictions]
    if missing and not missing_as_empty:
        raise EvaluationError(
            f"{len(missing)} of {len(references)} references have no prediction in {prediction_folder}: "
            f"{join(prediction_folder, missing[0])} is missing" + (f" (and {', '.join(missing[1:4])}"
                                                                    f"{', ...' if len(missing) > 4 else ''})"
                                                                    if len(missing) > 1 else "")
            + "; pass --missing-as-empty to score them as empty predictions")
    pairs = [CasePair(f[:-len(file_ending)], join(reference_folder, f),
                      join(prediction_folder, f) if f in predictions else None) for f in references]
    return pairs, sorted(predictions.difference(references))


def evaluate_case(pair: CasePair, *, labels: Optional[Sequence[int]] = None, units: str = "voxel",
                  lcc: bool = False, empty_convention: str = "nan") -> CaseScores:
    """The metrics of one case per label: ``labels``, or every label of the reference or the prediction.

    Raises:
        EvaluationError: a file is damaged, or the prediction's shape or spacing differs from the
            reference's.
    """
    reference, spacing = read_segmentation(pair.reference_file)
    if pair.prediction_file is None:
        prediction = np.zeros_like(reference)
    else:
        prediction, prediction_spacing = read_segmentation(pair.prediction_file)
        if prediction.shape != reference.shape:
            raise EvaluationError(f"shape mismatch: reference {pair.reference_file} has shape {reference.shape}, "
                                  f"prediction {pair.prediction_file} has shape {prediction.shape}")
        if not np.allclose(prediction_spacing, spacing, rtol=SPACING_RTOL, atol=0):
            raise EvaluationError(f"spacing mismatch: reference {pair.reference_file} has spacing {spacing}, "
                                  f"prediction {pair.prediction_file} has spacing {prediction_spacing} "
                                  f"(array axis order)")
    reference_labels = present_labels(reference)
    if labels is None:
        # scored here, filtered by the caller once the labels of all references are known
        labels = sorted(set(reference_labels) | set(present_labels(prediction)))
    metrics = {}
    for label in labels:
        predicted = prediction == label
        if lcc:
            predicted = largest_connected_component(predicted)
        metrics[int(label)] = binary_metrics(predicted, reference == label, spacing if units == "mm" else None,
                                             empty_convention)
    return CaseScores(pair, tuple(reference.shape), spacing, metrics, tuple(reference_labels))


def present_labels(segmentation: np.ndarray) -> list[int]:
    """The non-zero values of a label map, as sorted ints."""
    if np.issubdtype(segmentation.dtype, np.integer) and segmentation.size and segmentation.min() >= 0:
        values = np.flatnonzero(np.bincount(segmentation.ravel()))  # much faster than np.unique on volumes
    else:
        values = np.unique(segmentation)
    return [int(v) for v in values if v != 0]


def evaluate_folders(reference_folder: str, prediction_folder: str, *, labels: Optional[Sequence[int]] = None,
                     units: str = "voxel", lcc: bool = False, empty_convention: str = "nan",
                     file_ending: str = ".nii.gz", missing_as_empty: bool = False, num_processes: int = 1,
                     command: Optional[str] = None) -> dict:
    """Scores every reference case against its prediction; returns the summary (NaN where undefined).

    Labels default to every foreground value found in the references; a label absent from both the
    reference and the prediction of a case scores as two empty masks there. ``command`` is recorded
    as given (the command line that asked for the evaluation).

    Raises:
        ValueError: an unknown ``units`` or ``empty_convention``.
        EvaluationError: see :func:`match_cases` and :func:`evaluate_case`; or no label to score.
        nnunet_ccesemi.parallel.WorkerDiedError: a worker process died.
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if empty_convention not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty_convention must be one of {EMPTY_CONVENTIONS}, got {empty_convention!r}")
    pairs, unmatched = match_cases(reference_folder, prediction_folder, file_ending=file_ending,
                                   missing_as_empty=missing_as_empty)
    score = functools.partial(evaluate_case, labels=None if labels is None else [int(label) for label in labels],
                              units=units, lcc=lcc, empty_convention=empty_convention)
    scores = run_jobs(score, pairs, num_processes=num_processes)
    if labels is None:
        labels = sorted({label for case in scores for label in case.reference_labels})
    labels = [int(label) for label in labels]
    if not labels:
        raise EvaluationError(f"the references in {reference_folder} hold no foreground label; choose with -l")
    cases = [case.record(labels, empty_convention) for case in scores]
    means = {str(label): label_mean([case["metrics"][str(label)] for case in cases]) for label in labels}
    return {
        "command": command,
        "reference_folder": reference_folder,
        "prediction_folder": prediction_folder,
        "file_ending": file_ending,
        "labels": labels,
        "units": units,
        "lcc": lcc,
        "empty_convention": empty_convention,
        "conventions": {**CONVENTIONS, "empty": EMPTY_CONVENTION_TEXT[empty_convention]},
        "n_cases": len(cases),
        "n_excluded_empty": {label: mean["n_excluded_empty"] for label, mean in means.items()},
        "n_missing_predictions": sum(case["prediction_missing"] for case in cases),
        "unmatched_predictions": unmatched,
        "mean": means,
        "foreground_mean": {metric: _nanmean([mean[metric] for mean in means.values()]) for metric in METRICS},
        "metric_per_case": cases,
    }


def label_mean(case_metrics: list[dict]) -> dict:
    """Means over cases ignoring NaN, with the counts of empty masks and of excluded cases."""
    mean = {metric: _nanmean([m[metric] for m in case_metrics]) for metric in METRICS}
    mean.update(
        n_cases=len(case_metrics),
        n_excluded_empty=sum(math.isnan(m[DISTANCE_METRICS[0]]) for m in case_metrics),
        n_empty_prediction=sum(m["prediction_voxels"] == 0 for m in case_metrics),
        n_empty_reference=sum(m["reference_voxels"] == 0 for m in case_metrics),
    )
    return mean


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def format_table(summary: dict) -> str:
    """Per-label means and the foreground mean, with the units and conventions that produced them."""
    unit = "vox" if summary["units"] == "voxel" else "mm"
    header = (f"{'label':<12}{'Dice %':>8}{'Jacc. %':>9}{'HD95 ' + unit:>11}{'ASD ' + unit:>10}{'ASSD ' + unit:>11}"
              f"{'n':>5}{'excl.':>7}")
    rows = [header, "-" * len(header)]
    for label, mean in summary["mean"].items():
        rows.append(_row(label, mean) + f"{mean['n_cases']:>5d}{mean['n_excluded_empty']:>7d}")
    if len(summary["mean"]) > 1:
        rows.append(_row("foreground", summary["foreground_mean"]))
    excluded = sum(summary["n_excluded_empty"].values())
    notes = [
        f"{summary['n_cases']} cases; units: {summary['units']}; largest connected component: "
        f"{'on' if summary['lcc'] else 'off'}; empty masks: {summary['empty_convention']}",
        f"empty-mask convention: {summary['conventions']['empty']}",
        "ASD = directed prediction->reference (medpy asd, the papers' ASD); ASSD = symmetric; "
        "Dice/Jaccard of two empty masks = 1",
    ]
    if excluded:
        notes.append(f"WARNING: {excluded} (case, label) pairs with an empty mask are excluded from the distance means")
    if summary["n_missing_predictions"]:
        notes.append(f"WARNING: {summary['n_missing_predictions']} missing predictions scored as empty")
    if summary["unmatched_predictions"]:
        notes.append(f"note: {len(summary['unmatched_predictions'])} predictions have no reference and were ignored")
    return "\n".join(rows + notes)


def _row(label: str, mean: dict) -> str:
    return (f"{label:<12}{100 * mean['Dice']:>8.2f}{100 * mean['Jaccard']:>9.2f}{mean['HD95']:>11.2f}"
            f"{mean['ASD']:>10.2f}{mean['ASSD']:>11.2f}")


def to_json(value):
    """The summary with NaN as ``null``: strict JSON, readable by any parser."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_summary(summary: dict, path: str | os.PathLike) -> None:
    """The summary as strict JSON (NaN as ``null``), written atomically (complete or not at all)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(to_json(summary), f, indent=2, allow_nan=False)
