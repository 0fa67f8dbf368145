"""Scoring a folder of predictions against a folder of references: match, read, score, summarise, write.

The library behind ``nnUNetv2_ccesemi_evaluate`` (and the demo and the benchmarks). Cases are matched
by file name; each pair is scored per label with :func:`~nnunet_ccesemi.evaluation.metrics.binary_metrics`
(medpy's definitions), in worker processes if asked; the summary holds the per-case values, the means
over cases and the units and conventions that produced them, and is written as strict JSON (NaN as
``null``).

Besides labels, nnU-Net *regions* can be scored as nnU-Net's own evaluator does
(``nnunetv2.evaluation.evaluate_predictions``): a region is a tuple of label values, its mask the
voxels whose label is one of them, its summary key the tuple as ``str`` (``"(1, 2, 3)"``). Labels and
regions are given as ints and tuples, as text (``"2"``, ``"(1, 2, 3)"``, ``"1,2,3"``) or as names of a
dataset.json's ``labels`` (:func:`resolve_labels`); with a dataset.json and no choice, the foreground
regions or labels of nnU-Net's ``LabelManager`` are scored.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from os.path import isdir, join
from typing import Optional, Sequence, Union

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

LabelOrRegion = Union[int, tuple[int, ...]]
"""A label value, or a region: a tuple of two or more distinct foreground label values."""

UNITS = ("voxel", "mm")
# nnU-Net writes predictions with the image's geometry, which can differ from the label's in the last digits
SPACING_RTOL = 1e-4

CONVENTIONS = {
    "Dice": "2|P and R| / (|P| + |R|) (medpy dc); 0 when exactly one mask is empty, 1.0 when both are (our "
            "convention, as jc's; medpy dc and nnU-Net give NaN there, and nnU-Net leaves the case out)",
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
REGION_CONVENTION = ("a region (a tuple of labels) is scored on the mask of the voxels whose label is in the tuple, "
                     "in the reference and in the prediction (nnU-Net's region_or_label_to_mask); its key is the "
                     "tuple as nnU-Net writes it, e.g. \"(1, 2, 3)\" (a one-label region is keyed as that label, "
                     "\"3\", where nnU-Net writes \"(3,)\" for a dataset.json entry [3]; the masks are the same); "
                     "with lcc on, the predicted region mask is reduced to its largest connected component; "
                     "foreground_mean averages labels and regions")
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
    metrics: dict[LabelOrRegion, dict]
    reference_labels: tuple[int, ...]
    """The labels present in the reference."""

    def record(self, labels: Sequence[LabelOrRegion], empty_convention: str) -> dict:
        """The per-case record of the summary for ``labels`` (labels and regions, keyed by
        :func:`label_key`); a label not scored here (absent from both masks) gets the values of two
        empty masks."""
        both_empty = binary_metrics(np.zeros(1, bool), np.zeros(1, bool), empty_convention=empty_convention)
        return {
            "case": self.pair.case,
            "reference_file": self.pair.reference_file,
            "prediction_file": self.pair.prediction_file,
            "prediction_missing": self.pair.prediction_file is None,
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "metrics": {label_key(label): self.metrics.get(label, dict(both_empty)) for label in labels},
        }


TIFF_ENDINGS = (".tif", ".tiff")


def read_segmentation(path: str) -> tuple[np.ndarray, Optional[tuple[float, ...]]]:
    """The label array of an image file and its spacing, both in array axis order (z, y, x for 3D).

    3D TIFFs are read as nnU-Net's Tiff3DIO reads them: the spacing is that of ``<case>.json`` beside
    the file (None without one; ITK would say 1 mm).

    Raises:
        EvaluationError: the file is truncated or unreadable.
    """
    import SimpleITK as sitk

    if path.lower().endswith(TIFF_ENDINGS):
        return _read_tiff_segmentation(path)

    try:
        image = image_files.read_image(path, "segmentation")
    except image_files.ImageFileError as e:
        raise EvaluationError(str(e)) from e
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def _read_tiff_segmentation(path: str) -> tuple[np.ndarray, Optional[tuple[float, ...]]]:
    import tifffile

    try:
        array = tifffile.imread(path)
    except Exception as e:  # tifffile raises several types for damaged files
        raise EvaluationError(f"cannot read the segmentation {path}: {e}") from e
    sidecar = path[:path.rfind(".")] + ".json"
    if not os.path.isfile(sidecar):
        return array, None
    try:
        with open(sidecar) as f:
            spacing = tuple(float(s) for s in json.load(f)["spacing"])
    except (ValueError, KeyError, TypeError) as e:
        raise EvaluationError(f"{sidecar} must hold {{\"spacing\": [z, y, x]}} (nnU-Net's TIFF spacing file): "
                              f"{e}") from e
    if len(spacing) != array.ndim:
        raise EvaluationError(f"{sidecar} gives {len(spacing)} spacings for the {array.ndim}D image {path}")
    return array, spacing


def match_cases(reference_folder: str, prediction_folder: str, *, file_ending: str = ".nii.gz",
                missing_as_empty: bool = False, only_predicted: bool = False
                ) -> tuple[list[CasePair], list[str], list[str]]:
    """The reference files paired with their predictions by file name, the unmatched predictions and the
    references left out for want of a prediction (``only_predicted``, nnU-Net's ``--chill``).

    Raises:
        EvaluationError: a folder is missing, no reference has the file ending, or a prediction is
            missing (unless ``missing_as_empty``, which pairs it with ``None``, or ``only_predicted``,
            which leaves the reference out; then no reference having a prediction is the error).
    """
    if missing_as_empty and only_predicted:
        raise ValueError("missing_as_empty and only_predicted exclude each other")
    for kind, folder in (("reference", reference_folder), ("prediction", prediction_folder)):
        if not isdir(folder):
            raise EvaluationError(f"{kind} folder {folder} does not exist")
    references = sorted(f for f in os.listdir(reference_folder) if f.endswith(file_ending))
    predictions = {f for f in os.listdir(prediction_folder) if f.endswith(file_ending)}
    if not references:
        raise EvaluationError(f"no reference file ending in {file_ending!r} in {reference_folder}")
    missing = [f for f in references if f not in predictions]
    if only_predicted:
        references = [f for f in references if f in predictions]
        if not references:
            raise EvaluationError(f"no reference in {reference_folder} has a prediction in {prediction_folder} "
                                  f"(file ending {file_ending!r})")
    elif missing and not missing_as_empty:
        raise EvaluationError(
            f"{len(missing)} of {len(references)} references have no prediction in {prediction_folder}: "
            f"{join(prediction_folder, missing[0])} is missing" + (f" (and {', '.join(missing[1:4])}"
                                                                    f"{', ...' if len(missing) > 4 else ''})"
                                                                    if len(missing) > 1 else "")
            + "; pass --chill to score only the cases predicted (e.g. one fold's validation folder "
              "against all of labelsTr) or --missing-as-empty to score them as empty predictions")
    pairs = [CasePair(f[:-len(file_ending)], join(reference_folder, f),
                      join(prediction_folder, f) if f in predictions else None) for f in references]
    left_out = [f[:-len(file_ending)] for f in missing] if only_predicted else []
    return pairs, sorted(predictions.difference(references)), left_out


@dataclasses.dataclass(frozen=True)
class DatasetLabels:
    """The ``labels`` of an nnU-Net dataset.json, checked, as nnU-Net's ``LabelManager`` reads them."""

    path: str
    names: dict[str, LabelOrRegion]
    """Every name but ``ignore``, with its label or region (a one-label list is the label)."""
    all_labels: tuple[int, ...]
    """The label values of ``labels``, ``ignore`` left out (``LabelManager.all_labels``)."""
    ignore_label: Optional[int]
    defaults: tuple[LabelOrRegion, ...]
    """``LabelManager.foreground_regions`` if the dataset has regions, else ``foreground_labels``."""
    file_ending: Optional[str] = None
    """The dataset's ``file_ending`` (None where the file has none)."""


def load_dataset_labels(path: str | os.PathLike) -> DatasetLabels:
    """The labels and regions of a dataset.json (``labels``, ``regions_class_order``).

    Raises:
        EvaluationError: the file is unreadable or not JSON, ``labels`` is missing, a value is not an
            int or a list of ints, a region holds the background 0 or a label twice, or nnU-Net's
            ``LabelManager`` refuses the labels (no background 0, regions without
            ``regions_class_order``, ...).
    """
    path = os.fspath(path)
    where = f"--dataset-json {path}"
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except OSError as e:
        raise EvaluationError(f"{where}: cannot read it ({e.strerror or e})") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise EvaluationError(f"{where}: not a JSON file ({e})") from e
    label_dict = content.get("labels") if isinstance(content, dict) else None
    if not isinstance(label_dict, dict) or not label_dict:
        raise EvaluationError(f'{where}: no "labels" mapping names to label values, as an nnU-Net dataset.json has')
    names = {}
    for name, value in label_dict.items():
        show = f'{where}: labels["{name}"] = {json.dumps(value)}'
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_int(v) for v in values):
            raise EvaluationError(f"{show}; expected an int label or a list of int labels (a region)")
        if name != "ignore":
            names[name] = _label_or_region([int(v) for v in values], show)
    from nnunetv2.utilities.label_handling.label_handling import LabelManager  # imports torch: only here

    try:
        manager = LabelManager(label_dict, content.get("regions_class_order"))
    except (AssertionError, RuntimeError, ValueError, TypeError) as e:
        raise EvaluationError(f"{where}: nnU-Net's LabelManager refuses its labels: {e}") from e
    defaults = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    return DatasetLabels(
        path=path, names=names, all_labels=tuple(int(v) for v in manager.all_labels),
        ignore_label=None if manager.ignore_label is None else int(manager.ignore_label),
        defaults=tuple(_label_or_region([int(v) for v in (d if isinstance(d, (tuple, list)) else [d])],
                                        f"{where}: the foreground region {d}") for d in defaults),
        file_ending=content["file_ending"] if isinstance(content.get("file_ending"), str) else None)


def resolve_labels(labels: Optional[Sequence[Union[LabelOrRegion, str, list]]],
                   dataset: Optional[DatasetLabels] = None) -> tuple[Optional[list[LabelOrRegion]],
                                                                      dict[LabelOrRegion, str]]:
    """The labels and regions to score, and the dataset.json names of those that have one.

    Each of ``labels`` is a label (``2``, ``"2"``), a region (``(1, 2, 3)``, ``[2, 3]``,
    ``"(1, 2, 3)"``, ``"(2,3)"``, ``"1,2,3"``) or a name of ``dataset``'s labels (``"whole tumor"``).
    A one-label region (``"(3)"``, a name of ``3`` or ``[3]``) is the label. Without ``labels``:
    ``dataset.defaults``, or ``None`` (every foreground value of the references) without a dataset.

    Raises:
        EvaluationError: naming the ``-l`` value at fault: not an int, a malformed tuple, a negative
            value, a region with the background 0 or a label twice, a name without a dataset.json or
            unknown to it, a value the dataset.json does not have or its ignore label, a label or
            region given twice (regions are sets: ``(2, 3)`` is ``(3, 2)``).
    """
    if labels is None:
        if dataset is None:
            return None, {}
        chosen = [(label, label_key(label), None) for label in dataset.defaults]
    else:
        if isinstance(labels, (str, int)):
            raise EvaluationError(f"labels must be a list of labels, regions or names, got {labels!r}")
        chosen = [_parse_label(spec, dataset) for spec in labels]
    resolved, names, seen = [], {}, {}
    # the first name of a value in the file names it
    by_value = {} if dataset is None else {_canonical(v): n for n, v in reversed(list(dataset.names.items()))}
    for label, show, name in chosen:
        canonical = _canonical(label)
        if canonical in seen and labels is None:
            continue  # two names of one region in the dataset.json: nnU-Net's summary holds it once too
        if canonical in seen:
            kind = "region" if isinstance(label, tuple) else "label"
            raise EvaluationError(f"-l {show} and {seen[canonical]} are the same {kind} {label_key(label)}"
                                  f"{' (a region is a set of labels)' if kind == 'region' else ''}; give each "
                                  f"label or region once")
        seen[canonical] = show
        resolved.append(label)
        name = name or by_value.get(canonical)
        if name is not None:
            names[label] = name
    return resolved, names


def _parse_label(spec, dataset: Optional[DatasetLabels]) -> tuple[LabelOrRegion, str, Optional[str]]:
    """One ``-l`` value as (label or region, how to show it in a message, its name if given by name)."""
    show = repr(spec) if isinstance(spec, str) else str(spec)
    where = f"-l {show}"
    expected = 'expected a label (2), a region as "(1, 2, 3)", "(2,3)" or 1,2,3, or a name of --dataset-json\'s labels'
    name = None
    if _is_int(spec):
        label = _label_or_region([int(spec)], where)
    elif isinstance(spec, (tuple, list)):
        if not spec or not all(_is_int(v) for v in spec):
            raise EvaluationError(f"{where}: a region is a non-empty tuple of int labels")
        label = _label_or_region([int(v) for v in spec], where)
    elif not isinstance(spec, str):
        raise EvaluationError(f"{where}: {expected}")
    else:
        text = spec.strip()
        if text[:1] in "([" or "," in text:
            body = text
            if text[:1] in "([":
                if len(text) < 2 or text[-1] != {"(": ")", "[": "]"}[text[0]]:
                    raise EvaluationError(f"{where}: malformed region; {expected}")
                body = text[1:-1]
            parts = [part.strip() for part in body.split(",")]
            if len(parts) > 1 and parts[-1] == "":
                parts.pop()  # "(3,)", as Python writes a one-label tuple
            for part in parts:
                if not _INT_TEXT.fullmatch(part):
                    what = "is not an int label" if part else "is an empty entry"
                    raise EvaluationError(f"{where}: malformed region, {part!r} {what}; {expected}")
            label = _label_or_region([int(part) for part in parts], where)
        elif _INT_TEXT.fullmatch(text):
            label = _label_or_region([int(text)], where)
        elif _is_number(text):
            raise EvaluationError(f"{where}: label values are ints, got {text}; {expected}")
        elif dataset is None:
            raise EvaluationError(f"{where} is not a label or region; a name needs --dataset-json FILE "
                                  f"(nnU-Net's dataset.json, whose labels it names); {expected}")
        elif text == "ignore":
            raise EvaluationError(f"{where}: the ignore label of --dataset-json {dataset.path} cannot be scored")
        elif text not in dataset.names:
            raise EvaluationError(f"{where}: no label or region of that name in --dataset-json {dataset.path} "
                                  f"(it has: {', '.join(dataset.names)})")
        else:
            label, name = dataset.names[text], text
    if dataset is not None:
        for value in label if isinstance(label, tuple) else (label,):
            if value == dataset.ignore_label:
                raise EvaluationError(f"{where}: {value} is the ignore label of --dataset-json {dataset.path}, "
                                      f"which cannot be scored")
            if value not in dataset.all_labels:
                raise EvaluationError(f"{where}: {value} is not a label of --dataset-json {dataset.path} "
                                      f"(its labels: {', '.join(map(str, dataset.all_labels))})")
    return label, show, name


_INT_TEXT = re.compile(r"[+-]?\d+")


def _label_or_region(values: list[int], where: str) -> LabelOrRegion:
    """A label (one value) or a region (a tuple of distinct foreground values, in the order given)."""
    if not values:
        raise EvaluationError(f"{where}: a region needs at least one label")
    for value in values:
        if value < 0:
            raise EvaluationError(f"{where}: label values are ints >= 0, got {value}")
    if len(values) == 1:
        return values[0]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise EvaluationError(f"{where}: the region repeats label {repeated[0]}; a region is a set of distinct labels")
    if 0 in values:
        raise EvaluationError(f"{where}: the region {tuple(values)} contains the background 0; a region is a set of "
                              f"foreground labels")
    return tuple(values)


def _canonical(label: LabelOrRegion):
    return frozenset(label) if isinstance(label, tuple) else label


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def evaluate_case(pair: CasePair, *, labels: Optional[Sequence[LabelOrRegion]] = None, units: str = "voxel",
                  lcc: bool = False, empty_convention: str = "nan") -> CaseScores:
    """The metrics of one case per label or region: ``labels`` (ints and tuples, as
    :func:`resolve_labels` gives them), or every label of the reference or the prediction.

    Raises:
        EvaluationError: a file is damaged, or the prediction's shape or spacing differs from the
            reference's.
    """
    reference, spacing = read_segmentation(pair.reference_file)
    if spacing is None:
        if units == "mm":
            raise EvaluationError(f"--units mm: the TIFF reference {pair.reference_file} has no spacing file "
                                  f"{os.path.splitext(pair.reference_file)[0]}.json (nnU-Net's Tiff3DIO layout)")
        spacing = (1.0,) * reference.ndim
    if pair.prediction_file is None:
        prediction = np.zeros_like(reference)
    else:
        prediction, prediction_spacing = read_segmentation(pair.prediction_file)
        prediction_spacing = spacing if prediction_spacing is None else prediction_spacing
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
        label = label if isinstance(label, tuple) else int(label)
        predicted = label_mask(prediction, label)
        if lcc:
            predicted = largest_connected_component(predicted)
        metrics[label] = binary_metrics(predicted, label_mask(reference, label), spacing if units == "mm" else None,
                                        empty_convention)
    return CaseScores(pair, tuple(reference.shape), spacing, metrics, tuple(reference_labels))


def label_mask(segmentation: np.ndarray, label: LabelOrRegion) -> np.ndarray:
    """The voxels of a label, or of a region: those whose label is in the tuple (nnU-Net's
    ``region_or_label_to_mask``)."""
    if isinstance(label, tuple):
        return np.isin(segmentation, label)
    return segmentation == label


def label_key(label: LabelOrRegion) -> str:
    """The summary key of a label or region, nnU-Net's ``str``: ``"3"``, ``"(1, 2, 3)"``."""
    return str(label)


BINCOUNT_MAX_LABEL = 1 << 20  # bincount allocates a counter per value up to the largest (instance IDs ~1e9)


def present_labels(segmentation: np.ndarray) -> list[int]:
    """The non-zero values of a label map, as sorted ints."""
    if (np.issubdtype(segmentation.dtype, np.integer) and segmentation.size and segmentation.min() >= 0
            and segmentation.max() < BINCOUNT_MAX_LABEL):
        values = np.flatnonzero(np.bincount(segmentation.ravel()))  # much faster than np.unique on volumes
    else:
        values = np.unique(segmentation)
    return [int(v) for v in values if v != 0]


def evaluate_folders(reference_folder: str, prediction_folder: str, *,
                     labels: Optional[Sequence[Union[LabelOrRegion, str, list]]] = None,
                     dataset_json: Optional[str | os.PathLike] = None, units: str = "voxel", lcc: bool = False,
                     empty_convention: str = "nan", file_ending: Optional[str] = None, missing_as_empty: bool = False,
                     only_predicted: bool = False, num_processes: int = 1, command: Optional[str] = None) -> dict:
    """Scores every reference case against its prediction; returns the summary (NaN where undefined).

    ``labels`` are labels and regions in any form :func:`resolve_labels` reads (names need
    ``dataset_json``). They default to the foreground regions or labels of ``dataset_json`` if given,
    else to every foreground value found in the references; a label absent from both the reference
    and the prediction of a case scores as two empty masks there (Dice 1), and one absent from every case
    is listed under ``absent_labels``. ``file_ending`` defaults to ``dataset_json``'s, else ``.nii.gz``.
    ``only_predicted`` scores only the references that have a prediction (nnU-Net's ``--chill``) and lists
    the others under ``references_without_prediction``.
    ``command`` is recorded as given
    (the command line that asked for the evaluation).

    Raises:
        ValueError: an unknown ``units`` or ``empty_convention``.
        EvaluationError: a bad label, region, name or dataset.json (before any file is read); see
            :func:`match_cases` and :func:`evaluate_case`; no label to score; a reference holding the
            dataset.json's ignore label.
        nnunet_ccesemi.parallel.WorkerDiedError: a worker process died.
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if empty_convention not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty_convention must be one of {EMPTY_CONVENTIONS}, got {empty_convention!r}")
    dataset = load_dataset_labels(dataset_json) if dataset_json is not None else None
    labels, names = resolve_labels(labels, dataset)
    file_ending = file_ending or (dataset.file_ending if dataset is not None else None) or ".nii.gz"
    pairs, unmatched, left_out = match_cases(reference_folder, prediction_folder, file_ending=file_ending,
                                             missing_as_empty=missing_as_empty, only_predicted=only_predicted)
    score = functools.partial(evaluate_case, labels=labels, units=units, lcc=lcc, empty_convention=empty_convention)
    scores = run_jobs(score, pairs, num_processes=num_processes)
    if dataset is not None and dataset.ignore_label is not None:
        for case in scores:
            if dataset.ignore_label in case.reference_labels:
                raise EvaluationError(
                    f"the reference {case.pair.reference_file} holds the ignore label {dataset.ignore_label} of "
                    f"--dataset-json {dataset.path}: nnU-Net leaves those voxels out of its scores, this "
                    f"evaluator cannot (surface distances need complete masks); use nnUNetv2_evaluate_folder")
    if labels is None:
        labels = sorted({label for case in scores for label in case.reference_labels})
    if not labels:
        raise EvaluationError(f"the references in {reference_folder} hold no foreground label; choose with -l")
    cases = [case.record(labels, empty_convention) for case in scores]
    means = {label_key(label): label_mean([case["metrics"][label_key(label)] for case in cases]) for label in labels}
    regions = [list(label) for label in labels if isinstance(label, tuple)]
    conventions = {**CONVENTIONS, "empty": EMPTY_CONVENTION_TEXT[empty_convention]}
    if regions:
        conventions["regions"] = REGION_CONVENTION
    return {
        "command": command,
        "reference_folder": reference_folder,
        "prediction_folder": prediction_folder,
        "file_ending": file_ending,
        "labels": [label for label in labels if not isinstance(label, tuple)],
        "regions": regions,
        "names": {label_key(label): names[label] for label in labels if label in names},
        "dataset_json": None if dataset is None else dataset.path,
        "units": units,
        "lcc": lcc,
        "empty_convention": empty_convention,
        "conventions": conventions,
        "n_cases": len(cases),
        "n_excluded_empty": {label: mean["n_excluded_empty"] for label, mean in means.items()},
        "n_missing_predictions": sum(case["prediction_missing"] for case in cases),
        # scored Dice 1 in every case (two empty masks), so they raise foreground_mean: usually a typo in -l
        "absent_labels": [key for key, mean in means.items()
                          if mean["n_empty_prediction"] == mean["n_empty_reference"] == mean["n_cases"]],
        "unmatched_predictions": unmatched,
        "references_without_prediction": left_out,
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
    """Per-label (and per-region) means and the foreground mean, with the units and conventions that
    produced them; a label or region with a dataset.json name is shown as ``name key``."""
    unit = "vox" if summary["units"] == "voxel" else "mm"
    names = summary.get("names") or {}
    titles = {key: f"{names[key]} {key}" if key in names else key for key in summary["mean"]}
    width = max([12] + [len(title) + 2 for title in titles.values()])
    first = "label/region" if summary.get("regions") else "label"
    header = (f"{first:<{width}}{'Dice %':>8}{'Jacc. %':>9}{'HD95 ' + unit:>11}{'ASD ' + unit:>10}"
              f"{'ASSD ' + unit:>11}{'n':>5}{'excl.':>7}")
    rows = [header, "-" * len(header)]
    for label, mean in summary["mean"].items():
        rows.append(_row(titles[label], mean, width) + f"{mean['n_cases']:>5d}{mean['n_excluded_empty']:>7d}")
    if len(summary["mean"]) > 1:
        rows.append(_row("foreground", summary["foreground_mean"], width))
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
    for label in summary["absent_labels"]:
        notes.append(f"WARNING: label {label} is in no reference and no prediction of the {summary['n_cases']} "
                     f"cases: it scores Dice 1 in each and raises the foreground mean (a typo in -l?)")
    if summary["references_without_prediction"]:
        notes.append(f"note: {len(summary['references_without_prediction'])} references have no prediction and "
                     f"were left out (--chill)")
    if summary["unmatched_predictions"]:
        notes.append(f"note: {len(summary['unmatched_predictions'])} predictions have no reference and were ignored")
    return "\n".join(rows + notes)


def _row(label: str, mean: dict, width: int = 12) -> str:
    return (f"{label:<{width}}{100 * mean['Dice']:>8.2f}{100 * mean['Jaccard']:>9.2f}{mean['HD95']:>11.2f}"
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
