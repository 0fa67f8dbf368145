"""``nnUNetv2_ccesemi_evaluate`` and :mod:`nnunet_ccesemi.evaluation.metrics`: every metric against medpy
(the test-only reference implementation) on random, hand-built and hypothesis-generated masks, in
voxels and with anisotropic spacing; a hand-computed example; the empty-mask conventions; the
largest-component post-processing; the CLI end to end on NIfTI files. A few seconds on a CPU."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from nnunet_ccesemi.cli.evaluate import main
from nnunet_ccesemi.evaluation import (
    asd,
    assd,
    binary_metrics,
    dice,
    hd95,
    jaccard,
    largest_connected_component,
    surface_distances,
)
from nnunet_ccesemi.evaluation.folders import EvaluationError, evaluate_folders, to_json
from tests.conftest import BIN, REPO_ROOT

TOLERANCE = 1e-6


def medpy_metrics(prediction, reference, spacing=None) -> dict:
    return {"Dice": medpy_binary.dc(prediction, reference), "Jaccard": medpy_binary.jc(prediction, reference),
            "HD95": medpy_binary.hd95(prediction, reference, voxelspacing=spacing),
            "ASD": medpy_binary.asd(prediction, reference, voxelspacing=spacing),
            "ASSD": medpy_binary.assd(prediction, reference, voxelspacing=spacing)}


def assert_matches_medpy(prediction, reference, spacing=None) -> None:
    expected = medpy_metrics(prediction, reference, spacing)
    ours = binary_metrics(prediction, reference, spacing)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=TOLERANCE, rel=TOLERANCE), name
    # the single-metric functions agree with the combined one
    assert dice(prediction, reference) == ours["Dice"]
    assert jaccard(prediction, reference) == ours["Jaccard"]
    assert hd95(prediction, reference, spacing) == pytest.approx(ours["HD95"], abs=TOLERANCE)
    assert asd(prediction, reference, spacing) == pytest.approx(ours["ASD"], abs=TOLERANCE)
    assert assd(prediction, reference, spacing) == pytest.approx(ours["ASSD"], abs=TOLERANCE)


def blob(shape, center, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


# ---------------------------------------------------------------- against medpy


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("spacing_kind", ["voxel", "anisotropic"])
@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_medpy(ndim, spacing_kind, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(4, 40 if ndim == 2 else 16, size=ndim))
    # sparse noise, dense noise and smoothed blobs: isolated voxels, holes, objects on the border
    density = rng.uniform(0.05, 0.7)
    prediction = rng.random(shape) < density
    reference = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5 if seed % 2 else rng.random(shape) < density
    if not reference.any():
        reference.flat[rng.integers(reference.size)] = True
    spacing = None if spacing_kind == "voxel" else tuple(rng.uniform(0.3, 3.0, size=ndim))
    assert_matches_medpy(prediction, reference, spacing)


@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 1.1)])
def test_hand_built_masks_match_medpy(spacing):
    shape = (9, 10, 11)
    full = np.ones(shape, bool)
    corner = np.zeros(shape, bool)
    corner[:4, :3, :5] = True  # touches three image faces
    slab = np.zeros(shape, bool)
    slab[:, 4:6, :] = True  # crosses the whole image: border surface on four faces
    single = np.zeros(shape, bool)
    single[4, 5, 6] = True
    single_on_border = np.zeros(shape, bool)
    single_on_border[0, 0, 10] = True
    cube = blob(shape, (4, 5, 5), (3, 3, 3))
    holed = cube.copy()
    holed[4, 5, 5] = False  # an inner hole has surface around it
    masks = [full, corner, slab, single, single_on_border, cube, holed]
    for prediction in masks:
        for reference in masks:
            assert_matches_medpy(prediction, reference, spacing)


def test_2d_and_1d_masks_match_medpy():
    reference = blob((30, 25), (15, 10), (8, 6))
    prediction = np.roll(reference, 3, axis=1) | blob((30, 25), (2, 24), (3, 3))  # an island on the border
    assert_matches_medpy(prediction, reference)
    assert_matches_medpy(prediction, reference, (0.5, 2.0))
    line = np.array([0, 1, 1, 1, 0, 0, 1, 0], bool)
    assert_matches_medpy(line, np.roll(line, 1))


def test_surface_distances_equal_medpys_in_order():
    rng = np.random.default_rng(3)
    prediction, reference = rng.random((12, 13, 9)) < 0.3, rng.random((12, 13, 9)) < 0.2
    # medpy's private helper, name-mangled at module level
    expected = getattr(medpy_binary, "__surface_distances")(prediction, reference, (1.5, 1.0, 0.5))
    np.testing.assert_array_equal(surface_distances(prediction, reference, (1.5, 1.0, 0.5)), expected)


@st.composite
def blobby_pair(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(3, 12 if ndim == 3 else 24), min_size=ndim, max_size=ndim)))
    seeds = [draw(hnp.arrays(bool, shape, elements=st.booleans())) for _ in range(2)]
    iterations = draw(st.integers(0, 2))
    masks = []
    for seed in seeds:
        # dilation of sparse random voxels: blobs of varied size, often merged, often on the border
        sparse = seed & (np.indices(shape).sum(0) % 3 == 0)
        mask = ndimage.binary_dilation(sparse, iterations=iterations) if iterations else sparse
        if not mask.any():
            mask.flat[0] = True
        masks.append(mask)
    spacing = draw(st.none() | st.tuples(*[st.floats(0.25, 4.0) for _ in range(ndim)]))
    return masks[0], masks[1], spacing


@settings(max_examples=50, deadline=None)
@given(blobby_pair())
def test_property_blobby_masks_match_medpy(pair):
    prediction, reference, spacing = pair
    assert_matches_medpy(prediction, reference, spacing)


# ---------------------------------------------------------------- by hand


def test_two_cubes_offset_by_one_voxel():
    """3x3x3 cubes, the second shifted by one voxel along the last axis, inside a 7^3 image.

    Overlap 18 voxels: Dice 36/54, Jaccard 18/36. Each cube's surface is its 26 non-centre voxels; from
    one cube's surface to the other's, the 9 voxels of the trailing face and the voxel on the other's
    centre are at distance 1, the other 16 at 0: ASD = ASSD = 10/26, and 20 of the 52 pooled distances
    are 1, so HD95 = 1. With spacing 2.5 along the shift the face costs 2.5 and the centre voxel still
    reaches a neighbour at 1 across: ASD = (9 * 2.5 + 1) / 26, HD95 = 2.5.
    """
    prediction = np.zeros((7, 7, 7), bool)
    prediction[2:5, 2:5, 2:5] = True
    reference = np.roll(prediction, 1, axis=2)
    voxel = binary_metrics(prediction, reference)
    assert voxel["Dice"] == pytest.approx(2 / 3)
    assert voxel["Jaccard"] == pytest.approx(0.5)
    assert voxel["ASD"] == pytest.approx(10 / 26)
    assert voxel["ASSD"] == pytest.approx(10 / 26)
    assert voxel["HD95"] == pytest.approx(1.0)
    physical = binary_metrics(prediction, reference, spacing=(1.0, 1.0, 2.5))
    assert physical["ASD"] == pytest.approx((9 * 2.5 + 1) / 26)
    assert physical["HD95"] == pytest.approx(2.5)
    assert_matches_medpy(prediction, reference, (1.0, 1.0, 2.5))


def test_asd_is_directed_and_assd_symmetric():
    reference = blob((20, 20, 20), (10, 10, 10), (6, 6, 6))
    prediction = reference.copy()
    prediction[1:3, 1:3, 1:3] = True  # a false-positive island far from the reference
    forward, backward = binary_metrics(prediction, reference), binary_metrics(reference, prediction)
    assert forward["ASD"] > backward["ASD"] == 0.0
    assert forward["ASSD"] == pytest.approx(backward["ASSD"])
    assert forward["HD95"] == pytest.approx(backward["HD95"])


# ---------------------------------------------------------------- empty masks


@pytest.mark.parametrize("convention, undefined", [("nan", math.nan), ("zero", 0.0)])
def test_empty_mask_conventions(convention, undefined):
    empty, cube = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    cube[1:4, 1:4, 1:4] = True
    cases = {"empty prediction": (empty, cube, 0.0), "empty reference": (cube, empty, 0.0),
             "both empty": (empty, empty, 1.0)}
    for name, (prediction, reference, overlap) in cases.items():
        scores = binary_metrics(prediction, reference, empty_convention=convention)
        assert scores["Dice"] == scores["Jaccard"] == overlap, name
        for metric in ("HD95", "ASD", "ASSD"):
            assert scores[metric] == pytest.approx(undefined, nan_ok=True), (name, metric)
    with pytest.raises(ValueError, match="empty"):
        hd95(empty, cube)
    with pytest.raises(ValueError, match="empty_convention"):
        binary_metrics(cube, cube, empty_convention="max")


# ---------------------------------------------------------------- largest connected component


def test_largest_connected_component_removes_island():
    reference = blob((24, 24, 24), (12, 12, 12), (7, 7, 7))
    prediction = reference.copy()
    prediction[0:2, 0:2, 0:2] = True
    kept = largest_connected_component(prediction)
    np.testing.assert_array_equal(kept, reference)
    assert binary_metrics(kept, reference)["ASD"] == 0.0 < binary_metrics(prediction, reference)["ASD"]
    # full connectivity: voxels touching by a corner are one component (skimage.measure.label's default)
    diagonal = np.zeros((4, 4, 4), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[3, 3, 3] = True
    assert largest_connected_component(diagonal).sum() == 2
    assert not largest_connected_component(np.zeros((3, 3), bool)).any()


# ---------------------------------------------------------------- the CLI on NIfTI files

SPACING_XYZ = (0.8, 0.6, 2.0)  # SimpleITK order; arrays are (z, y, x)
SPACING_ZYX = SPACING_XYZ[::-1]


def write(path, array, spacing_xyz=SPACING_XYZ):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    """Three cases with labels 1 and 2; case 2 predicts no label 2 and an island of label 1."""
    reference_folder, prediction_folder = tmp_path / "labels", tmp_path / "pred"
    reference_folder.mkdir()
    prediction_folder.mkdir()
    shape = (12, 24, 20)
    arrays = {}
    for i in range(3):
        reference = np.zeros(shape, np.uint8)
        reference[blob(shape, (6, 12, 8 + i), (4, 8, 5))] = 1
        reference[blob(shape, (6, 12, 16), (2, 3, 3))] = 2
        prediction = np.roll(reference, i, axis=1)
        if i == 2:
            prediction[prediction == 2] = 0
            prediction[0:2, 0:2, 0:2] = 1
        write(reference_folder / f"case_{i}.nii.gz", reference)
        write(prediction_folder / f"case_{i}.nii.gz", prediction)
        arrays[f"case_{i}"] = (reference, prediction)
    return reference_folder, prediction_folder, arrays


def run_main(argv, capsys):
    main([str(a) for a in argv])
    return capsys.readouterr().out


def test_cli_summary_matches_medpy(folders, tmp_path, capsys):
    reference_folder, prediction_folder, arrays = folders
    output = tmp_path / "summary.json"
    out = run_main(["-ref", reference_folder, "-pred", prediction_folder, "--units", "mm", "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert summary["labels"] == [1, 2] and summary["n_cases"] == 3
    assert (summary["units"], summary["lcc"], summary["empty_convention"]) == ("mm", False, "nan")
    assert summary["command"].startswith("nnUNetv2_ccesemi_evaluate -ref") and "--units mm" in summary["command"]
    assert summary["n_excluded_empty"] == {"1": 0, "2": 1}
    assert "NaN" in summary["conventions"]["empty"]
    for case in summary["metric_per_case"]:
        reference, prediction = arrays[case["case"]]
        assert case["spacing"] == pytest.approx(SPACING_ZYX)
        for label in (1, 2):
            scores = case["metrics"][str(label)]
            if not (prediction == label).any():
                assert scores["HD95"] is None and scores["Dice"] == 0.0
                continue
            expected = medpy_metrics(prediction == label, reference == label, SPACING_ZYX)
            for name, value in expected.items():
                assert scores[name] == pytest.approx(value, abs=TOLERANCE), (case["case"], label, name)
    label_2_dice = [c["metrics"]["2"]["Dice"] for c in summary["metric_per_case"]]
    assert summary["mean"]["2"]["Dice"] == pytest.approx(np.mean(label_2_dice))
    label_2_hd = [c["metrics"]["2"]["HD95"] for c in summary["metric_per_case"][:2]]
    assert summary["mean"]["2"]["HD95"] == pytest.approx(np.mean(label_2_hd))  # the empty case is left out
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        (summary["mean"]["1"]["Dice"] + summary["mean"]["2"]["Dice"]) / 2)
    assert "units: mm" in out and "foreground" in out and "excluded" in out


def test_cli_voxels_lcc_labels_and_zero_convention(folders, tmp_path, capsys):
    reference_folder, prediction_folder, arrays = folders
    output = tmp_path / "summary.json"
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "-l", 1, 2, "--lcc",
              "--empty-convention", "zero", "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert (summary["units"], summary["lcc"], summary["empty_convention"]) == ("voxel", True, "zero")
    assert summary["n_excluded_empty"] == {"1": 0, "2": 0}
    assert summary["mean"]["2"]["n_empty_prediction"] == 1
    case_2 = summary["metric_per_case"][2]
    assert case_2["metrics"]["2"]["HD95"] == 0.0  # the papers' convention
    reference, prediction = arrays["case_2"]
    expected = medpy_metrics(largest_connected_component(prediction == 1), reference == 1)  # island removed
    assert case_2["metrics"]["1"]["HD95"] == pytest.approx(expected["HD95"], abs=TOLERANCE)
    assert case_2["metrics"]["1"]["HD95"] < medpy_binary.hd95(prediction == 1, reference == 1)

    run_main(["-ref", reference_folder, "-pred", prediction_folder, "-l", 2, "-o", output], capsys)
    assert list(json.loads(output.read_text())["mean"]) == ["2"]


def test_cli_default_output_and_worker_processes(folders, capsys):
    reference_folder, prediction_folder, _ = folders
    serial = evaluate_folders(str(reference_folder), str(prediction_folder))
    parallel = evaluate_folders(str(reference_folder), str(prediction_folder), num_processes=2)
    assert to_json(serial["metric_per_case"]) == to_json(parallel["metric_per_case"])  # NaN compares unequal
    # the installed console script writes PRED/summary_ccesemi.json by default
    result = subprocess.run([str(BIN / "nnUNetv2_ccesemi_evaluate"), "-ref", str(reference_folder),
                             "-pred", str(prediction_folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((prediction_folder / "summary_ccesemi.json").read_text())["units"] == "voxel"


def test_cli_errors_name_the_files(folders, tmp_path, capsys):
    reference_folder, prediction_folder, arrays = folders
    (prediction_folder / "case_1.nii.gz").unlink()
    with pytest.raises(SystemExit, match=r"ERROR: .*pred/case_1\.nii\.gz is missing.*--missing-as-empty"):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder)])
    output = tmp_path / "summary.json"
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "--missing-as-empty", "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert summary["n_missing_predictions"] == 1
    assert summary["metric_per_case"][1]["metrics"]["1"]["Dice"] == 0.0

    write(prediction_folder / "case_1.nii.gz", np.zeros((12, 24, 21)))
    with pytest.raises(SystemExit, match=r"shape mismatch: reference .*labels/case_1\.nii\.gz .* "
                                         r"prediction .*pred/case_1\.nii\.gz"):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder)])
    write(prediction_folder / "case_1.nii.gz", arrays["case_1"][1], spacing_xyz=(1.0, 1.0, 1.0))
    with pytest.raises(SystemExit, match=r"spacing mismatch: reference .*labels/case_1\.nii\.gz .* "
                                         r"prediction .*pred/case_1\.nii\.gz"):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder)])


def cut_short(path, keep=0.5):
    """Keep the first ``keep`` of the file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("side", ["reference", "prediction"])
def test_truncated_segmentation_is_refused(folders, side):
    reference_folder, prediction_folder, _ = folders
    path = cut_short((reference_folder if side == "reference" else prediction_folder) / "case_1.nii.gz")
    with pytest.raises(EvaluationError, match=rf"the segmentation {re.escape(str(path))} is damaged: "
                                              r"the gzip stream ends early"):
        evaluate_folders(str(reference_folder), str(prediction_folder))


@pytest.mark.parametrize("side", ["reference", "prediction"])
def test_cli_refuses_truncated_segmentation_and_writes_no_summary(folders, tmp_path, side):
    reference_folder, prediction_folder, _ = folders
    path = cut_short((reference_folder if side == "reference" else prediction_folder) / "case_2.nii.gz")
    output = tmp_path / "summary.json"
    message = rf"^ERROR: the segmentation {re.escape(str(path))} is damaged: the gzip stream ends early"
    with pytest.raises(SystemExit, match=message):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder), "-o", str(output)])
    assert not output.exists()
    with pytest.raises(SystemExit, match=message):  # the default output, PRED/summary_ccesemi.json
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder)])
    assert sorted(p.name for p in prediction_folder.iterdir()) == [f"case_{i}.nii.gz" for i in range(3)]


def test_la_eval_wrapper_keeps_its_line(folders, capsys):
    reference_folder, prediction_folder, _ = folders
    spec = importlib.util.spec_from_file_location("la_eval", REPO_ROOT / "benchmarks" / "la_eval.py")
    la_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(la_eval)
    la_eval.main([str(reference_folder), str(prediction_folder), "--name", "ROW"])
    line = capsys.readouterr().out.strip()
    summary = evaluate_folders(str(reference_folder), str(prediction_folder), labels=[1])
    mean = summary["mean"]["1"]
    dice_min = min(c["metrics"]["1"]["Dice"] for c in summary["metric_per_case"])
    assert line == (f"{'ROW':<34} n= 3  Dice {100 * mean['Dice']:6.2f}  Jaccard {100 * mean['Jaccard']:6.2f}  "
                    f"95HD {mean['HD95']:6.2f}  ASD {mean['ASD']:5.2f}  (per-case Dice min {100 * dice_min:.1f})")
