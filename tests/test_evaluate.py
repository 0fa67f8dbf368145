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


# derandomize: CI keeps no example database, so a failing example must come back on the next run
@settings(max_examples=50, deadline=None, derandomize=True)
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


def empty_folders(tmp_path):
    """``tmp_path/labels`` and ``tmp_path/pred``, created empty."""
    folders = tmp_path / "labels", tmp_path / "pred"
    for folder in folders:
        folder.mkdir()
    return folders


def write(path, array, spacing_xyz=SPACING_XYZ):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    """Three cases with labels 1 and 2; case 2 predicts no label 2 and an island of label 1."""
    reference_folder, prediction_folder = empty_folders(tmp_path)
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
    assert json.loads(output.read_text())["absent_labels"] == []


def test_cli_warns_about_a_label_no_case_has(folders, tmp_path, capsys):
    reference_folder, prediction_folder, _ = folders
    output = tmp_path / "summary.json"
    out = run_main(["-ref", reference_folder, "-pred", prediction_folder, "-l", 1, 3, "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert summary["absent_labels"] == ["3"] and summary["mean"]["3"]["Dice"] == 1.0
    assert "WARNING: label 3 is in no reference and no prediction of the 3 cases" in out
    assert "WARNING: label" not in run_main(["-ref", reference_folder, "-pred", prediction_folder, "-l", 1, 2,
                                              "-o", output], capsys)


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


def test_chill_scores_only_the_predicted_cases(folders, tmp_path, capsys):
    """nnUNetv2_evaluate_folder's --chill: one fold's validation folder against all of labelsTr."""
    reference_folder, prediction_folder, _ = folders
    full = evaluate_folders(str(reference_folder), str(prediction_folder))
    (prediction_folder / "case_1.nii.gz").unlink()
    output = tmp_path / "summary.json"
    out = run_main(["-ref", reference_folder, "-pred", prediction_folder, "--chill", "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert summary["n_cases"] == full["n_cases"] - 1 and summary["n_missing_predictions"] == 0
    assert summary["references_without_prediction"] == ["case_1"]
    kept = [case for case in full["metric_per_case"] if case["case"] != "case_1"]
    assert [case["case"] for case in summary["metric_per_case"]] == [case["case"] for case in kept]
    assert summary["metric_per_case"][0]["metrics"] == to_json(kept[0]["metrics"])
    assert "1 references have no prediction and were left out (--chill)" in out
    with pytest.raises(SystemExit):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder), "--chill", "--missing-as-empty"])
    assert "not allowed with argument" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"ERROR: no reference in .* has a prediction in .*empty"):
        main(["-ref", str(reference_folder), "-pred", str(tmp_path / "empty"), "--chill"])


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


def test_cli_refuses_a_bad_output_path_before_scoring(folders, tmp_path):
    reference_folder, prediction_folder, _ = folders
    a_prediction = prediction_folder / "case_1.nii.gz"
    kept = a_prediction.read_bytes()
    for output, reason in [(tmp_path, r" \(it is a folder\)$"), (tmp_path / "no" / "s.json", "$"), (a_prediction, "$")]:
        with pytest.raises(SystemExit, match=rf"^ERROR: -o {re.escape(str(output))} must be a \.json file in an "
                                             rf"existing folder{reason}"):
            main(["-ref", str(reference_folder), "-pred", str(prediction_folder), "-o", str(output)])
    assert not (tmp_path / "no").exists() and a_prediction.read_bytes() == kept
    with pytest.raises(SystemExit, match=r"^ERROR: -np must be at least 1, got 0"):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder), "-np", "0"])


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


# ---------------------------------------------------------------- nnU-Net regions

REGION_DATASET_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}

#                     x: 0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
REGION_REFERENCE_ROW = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0, 0, 0, 0, 0]
REGION_PREDICTION_ROW = [0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 2, 2, 0, 0, 3, 0]  # x = 14: an island of label 3
# By hand, from the rows (every voxel row of the volume is the same, so counts scale and Dice does not):
#   (1, 2, 3): reference x 2-9 (8), prediction x 3-11 and 14 (10), overlap x 3-9 (7): 14/18;
#              largest component x 3-11 (9): 14/17
#   (2, 3):    reference x 5-9 (5), prediction x 6-11 and 14 (7), overlap x 6-9 (4): 8/12; largest x 6-11: 8/11
#   (3,) = 3:  reference x 8-9 (2), prediction x 7-9 and 14 (4), overlap 2: 4/6; largest x 7-9: 4/5
#   label 1:   reference x 2-4, prediction x 3-5, overlap 2: 4/6;  label 2: reference x 5-7, prediction
#              x 6, 10, 11, overlap 1: 2/6 (with --lcc label 2 keeps x 10-11 alone: 0)
REGION_DICE = {"(1, 2, 3)": 14 / 18, "(2, 3)": 8 / 12, "3": 4 / 6, "1": 4 / 6, "2": 2 / 6}
REGION_DICE_LCC = {"(1, 2, 3)": 14 / 17, "(2, 3)": 8 / 11, "3": 4 / 5, "1": 4 / 6, "2": 0.0}


def region_volume(row) -> np.ndarray:
    return np.broadcast_to(np.array(row, np.uint8), (2, 3, len(row))).copy()


@pytest.fixture
def region_folders(tmp_path):
    """A nested 3-label case (BraTS-like: 1 inside 2 inside 3 as regions) and a perfectly predicted one."""
    reference_folder, prediction_folder = empty_folders(tmp_path)
    reference, prediction = region_volume(REGION_REFERENCE_ROW), region_volume(REGION_PREDICTION_ROW)
    write(reference_folder / "case_0.nii.gz", reference)
    write(prediction_folder / "case_0.nii.gz", prediction)
    write(reference_folder / "case_1.nii.gz", reference)
    write(prediction_folder / "case_1.nii.gz", reference)
    return reference_folder, prediction_folder, (reference, prediction)


def write_dataset_json(path, labels, **extra):
    path.write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", **extra}))
    return path


def region_dataset_json(tmp_path):
    return write_dataset_json(tmp_path / "dataset.json", REGION_DATASET_LABELS, regions_class_order=[1, 2, 3])


@pytest.mark.parametrize("spelling, keys", [
    (["(1, 2, 3)", "(2,3)", "(3)", "1", "2"], ["(1, 2, 3)", "(2, 3)", "3", "1", "2"]),
    (["1,2,3", "2,3", "3", "1", "2"], ["(1, 2, 3)", "(2, 3)", "3", "1", "2"]),
    (["2", "[1, 2, 3]", "(3,)", "(3, 2)", "1"], ["2", "(1, 2, 3)", "3", "(3, 2)", "1"]),  # kept in the order given
])
def test_cli_regions_hand_computed(region_folders, tmp_path, capsys, spelling, keys):
    reference_folder, prediction_folder, (reference, prediction) = region_folders
    output = tmp_path / "summary.json"
    out = run_main(["-ref", reference_folder, "-pred", prediction_folder, "-l", *spelling, "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert list(summary["mean"]) == keys and list(summary["n_excluded_empty"]) == keys
    assert summary["labels"] == [int(k) for k in keys if not k.startswith("(")]
    assert summary["regions"] == [json.loads(k.replace("(", "[").replace(")", "]")) for k in keys if k.startswith("(")]
    assert summary["names"] == {} and summary["dataset_json"] is None
    assert "region_or_label_to_mask" in summary["conventions"]["regions"]
    case_0, case_1 = summary["metric_per_case"]
    assert list(case_0["metrics"]) == keys
    for key in keys:
        dice_0 = REGION_DICE["(2, 3)" if key == "(3, 2)" else key]
        assert case_0["metrics"][key]["Dice"] == pytest.approx(dice_0)
        assert case_1["metrics"][key]["Dice"] == 1.0
        assert summary["mean"][key]["Dice"] == pytest.approx((dice_0 + 1) / 2)
        # every metric is medpy's on the region masks (the voxels whose label is in the tuple)
        values = [int(v) for v in key.strip("()").split(",")]
        expected = medpy_metrics(np.isin(prediction, values), np.isin(reference, values))
        for name, value in expected.items():
            assert case_0["metrics"][key][name] == pytest.approx(value, abs=TOLERANCE), (key, name)
        assert case_0["metrics"][key]["prediction_voxels"] == np.isin(prediction, values).sum()
    assert summary["foreground_mean"]["Dice"] == pytest.approx(np.mean([(REGION_DICE[k] + 1) / 2 for k in REGION_DICE]))
    assert re.search(r"^\(1, 2, 3\) +88\.89 ", out, re.M)  # (14/18 + 1) / 2
    assert out.splitlines()[0].startswith("label/region")


def test_cli_regions_largest_component_of_the_region_mask(region_folders, tmp_path, capsys):
    reference_folder, prediction_folder, (reference, prediction) = region_folders
    output = tmp_path / "summary.json"
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "-l", "1,2,3", "2,3", "3", "1", "2", "--lcc",
              "--units", "mm", "-o", output], capsys)
    summary = json.loads(output.read_text())
    case_0 = summary["metric_per_case"][0]["metrics"]
    for key, dice_value in REGION_DICE_LCC.items():
        assert case_0[key]["Dice"] == pytest.approx(dice_value), key
    # not the union of the labels' largest components: label 2's is x 10-11 alone
    kept = largest_connected_component(np.isin(prediction, (2, 3)))
    expected = medpy_metrics(kept, np.isin(reference, (2, 3)), SPACING_ZYX)
    for name, value in expected.items():
        assert case_0["(2, 3)"][name] == pytest.approx(value, abs=TOLERANCE), name


def test_cli_file_ending_from_dataset_json(tmp_path, capsys):
    """A .nrrd dataset: the dataset.json that names the labels also gives the files' ending."""
    reference_folder, prediction_folder = empty_folders(tmp_path)
    reference = np.zeros((4, 8, 8), np.uint8)
    reference[1:3, 2:6, 2:6] = 1
    write(reference_folder / "case1.nrrd", reference)
    write(prediction_folder / "case1.nrrd", reference)
    dataset_json = write_dataset_json(tmp_path / "dataset.json", {"background": 0, "organ": 1}, file_ending=".nrrd")
    output = tmp_path / "summary.json"
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "--dataset-json", dataset_json, "-o", output],
             capsys)
    summary = json.loads(output.read_text())
    assert summary["mean"]["1"]["Dice"] == 1.0 and len(summary["metric_per_case"]) == 1


def test_tiff_distances_in_mm_use_nnunets_spacing_file(tmp_path, capsys):
    """nnU-Net's Tiff3DIO keeps a TIFF's spacing in <case>.json; ITK would read the TIFF at 1 mm."""
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    reference_folder, prediction_folder = empty_folders(tmp_path)
    reference = np.zeros((8, 8, 8), np.uint8)
    reference[2:5, 2:6, 2:6] = 1
    spacing = {"spacing": [3.0, 1.0, 1.0]}  # (z, y, x), as nnU-Net's TIFF datasets store it
    Tiff3DIO().write_seg(reference, str(reference_folder / "cell.tif"), spacing)
    Tiff3DIO().write_seg(np.roll(reference, 1, axis=0), str(prediction_folder / "cell.tif"), spacing)
    dataset_json = write_dataset_json(tmp_path / "dataset.json", {"background": 0, "cell": 1}, file_ending=".tif")
    output = tmp_path / "summary.json"
    argv = ["-ref", reference_folder, "-pred", prediction_folder, "--dataset-json", dataset_json, "-o", output]
    run_main([*argv, "--units", "mm"], capsys)
    case = json.loads(output.read_text())["metric_per_case"][0]
    assert case["spacing"] == [3.0, 1.0, 1.0] and case["metrics"]["1"]["HD95"] == pytest.approx(3.0)
    run_main(argv, capsys)  # voxels
    assert json.loads(output.read_text())["metric_per_case"][0]["metrics"]["1"]["HD95"] == pytest.approx(1.0)

    (reference_folder / "cell.json").unlink()
    with pytest.raises(SystemExit, match=r"--units mm: the TIFF reference .*cell.tif has no spacing file "
                                         r".*cell.json"):
        main([str(a) for a in [*argv, "--units", "mm"]])


def test_present_labels_of_instance_style_ids():
    """Label values near 2**31 (instance IDs): found without a counter for every value below them."""
    from nnunet_ccesemi.evaluation.folders import present_labels
    segmentation = np.array([[0, 7, 2_000_000_000], [7, 0, 3]], np.int64)
    assert present_labels(segmentation) == [3, 7, 2_000_000_000]
    assert present_labels(np.array([0, 2, 2, 5], np.uint8)) == [2, 5]


def test_cli_region_names_from_dataset_json(region_folders, tmp_path, capsys):
    reference_folder, prediction_folder, _ = region_folders
    dataset_json = region_dataset_json(tmp_path)
    output = tmp_path / "summary.json"
    out = run_main(["-ref", reference_folder, "-pred", prediction_folder, "--dataset-json", dataset_json,
                    "-l", "whole_tumor", "tumor_core", "1", "enhancing_tumor", "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert list(summary["mean"]) == ["(1, 2, 3)", "(2, 3)", "1", "3"]
    assert summary["regions"] == [[1, 2, 3], [2, 3]] and summary["labels"] == [1, 3]
    assert summary["names"] == {"(1, 2, 3)": "whole_tumor", "(2, 3)": "tumor_core", "3": "enhancing_tumor"}
    assert summary["dataset_json"] == str(dataset_json)
    assert summary["metric_per_case"][0]["metrics"]["(2, 3)"]["Dice"] == pytest.approx(REGION_DICE["(2, 3)"])
    assert re.search(r"^whole_tumor \(1, 2, 3\) +88\.89 ", out, re.M)
    assert re.search(r"^tumor_core \(2, 3\) ", out, re.M) and re.search(r"^1 +", out, re.M)
    # a tuple spelled by hand gets the dataset.json's name too; -djfile is nnU-Net's spelling
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "-djfile", dataset_json, "-l", "(2,3)", "2",
              "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert summary["names"] == {"(2, 3)": "tumor_core"} and list(summary["mean"]) == ["(2, 3)", "2"]


def test_cli_defaults_from_dataset_json(region_folders, tmp_path, capsys):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    reference_folder, prediction_folder, _ = region_folders
    dataset_json = region_dataset_json(tmp_path)
    output = tmp_path / "summary.json"
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "--dataset-json", dataset_json, "-o", output],
             capsys)
    summary = json.loads(output.read_text())
    manager = LabelManager(REGION_DATASET_LABELS, [1, 2, 3])
    assert manager.has_regions
    assert list(summary["mean"]) == [str(r) for r in manager.foreground_regions] == ["(1, 2, 3)", "(2, 3)", "3"]
    for key in summary["mean"]:
        assert summary["mean"][key]["Dice"] == pytest.approx((REGION_DICE[key] + 1) / 2)
    assert summary["names"] == {"(1, 2, 3)": "whole_tumor", "(2, 3)": "tumor_core", "3": "enhancing_tumor"}

    # a label dataset.json: its foreground labels, also one no reference holds (scored as two empty masks)
    labels = {"background": 0, "edema": 1, "core": 2, "enhancing": 3, "rare": 4}
    write_dataset_json(dataset_json, labels)
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "-djfile", dataset_json, "-o", output], capsys)
    summary = json.loads(output.read_text())
    assert list(summary["mean"]) == [str(v) for v in LabelManager(labels, None).foreground_labels] == ["1", "2", "3", "4"]
    assert summary["regions"] == [] and summary["labels"] == [1, 2, 3, 4]
    assert summary["mean"]["4"]["Dice"] == 1.0 and summary["mean"]["4"]["n_empty_reference"] == 2
    # without a dataset.json: the values found in the references, as before
    run_main(["-ref", reference_folder, "-pred", prediction_folder, "-o", output], capsys)
    assert list(json.loads(output.read_text())["mean"]) == ["1", "2", "3"]


BAD_LABELS = [
    (["-l", "(1, x)"], r"-l '\(1, x\)': malformed region, 'x' is not an int label; expected .*\"\(1, 2, 3\)\""),
    (["-l", "(1,,2)"], r"-l '\(1,,2\)': malformed region, '' is an empty entry"),
    (["-l", "(1, 2"], r"-l '\(1, 2': malformed region; expected"),
    (["-l", "1.5"], r"-l '1\.5': label values are ints, got 1\.5"),
    (["-l", "(1, 2.5)"], r"-l '\(1, 2\.5\)': malformed region, '2\.5' is not an int label"),
    (["-l", "-2"], r"-l '-2': label values are ints >= 0, got -2"),
    (["-l", "(0, 1)"], r"-l '\(0, 1\)': the region \(0, 1\) contains the background 0"),
    (["-l", "(1, 2, 1)"], r"-l '\(1, 2, 1\)': the region repeats label 1"),
    (["-l", "(2,3)", "3,2"], r"-l '3,2' and '\(2,3\)' are the same region \(3, 2\) \(a region is a set of labels\)"),
    (["-l", "3", "(3)"], r"-l '\(3\)' and '3' are the same label 3; give each"),
    (["-l", "whole_tumor"], r"-l 'whole_tumor' is not a label or region; a name needs --dataset-json FILE"),
    (["-l", "necrosis", "--dataset-json", "DATASET"],
     r"-l 'necrosis': no label or region of that name in --dataset-json .*dataset\.json \(it has: background, "
     r"whole_tumor, tumor_core, enhancing_tumor\)"),
    (["-l", "whole_tumor", "1,2,3", "-djfile", "DATASET"], r"-l '1,2,3' and 'whole_tumor' are the same region"),
    (["-l", "(2, 5)", "--dataset-json", "DATASET"],
     r"-l '\(2, 5\)': 5 is not a label of --dataset-json .*dataset\.json \(its labels: 0, 1, 2, 3\)"),
]


@pytest.mark.parametrize("argv, message", BAD_LABELS, ids=[" ".join(a) for a, _ in BAD_LABELS])
def test_cli_refuses_bad_labels_before_reading(tmp_path, argv, message):
    dataset_json = region_dataset_json(tmp_path)
    argv = [str(dataset_json) if a == "DATASET" else a for a in argv]
    prediction_folder = tmp_path / "pred"
    prediction_folder.mkdir()
    # no reference folder: the labels are refused before any folder or file is looked at
    with pytest.raises(SystemExit, match="^ERROR: " + message):
        main(["-ref", str(tmp_path / "no_such_folder"), "-pred", str(prediction_folder), *argv])
    assert not any(prediction_folder.iterdir())


BAD_DATASET_JSONS = [
    ({"labels": {"background": 0, "edema": "one"}},
     r'labels\["edema"\] = "one"; expected an int label or a list of int labels'),
    ({"labels": {"background": 0, "edema": [1, 2.0]}}, r'labels\["edema"\] = \[1, 2\.0\]; expected an int label'),
    ({"labels": {"background": 0, "edema": 1, "all": [0, 1]}, "regions_class_order": [1, 2]},
     r'labels\["all"\] = \[0, 1\]: the region \(0, 1\) contains the background 0'),
    ({"labels": {"background": 0, "whole_tumor": [1, 2, 3], "core": [2, 3]}},
     r"nnU-Net's LabelManager refuses its labels: .*regions_class_order"),
    ({"labels": {"edema": 1}}, r"nnU-Net's LabelManager refuses its labels: Background label not declared"),
    ({"name": "no labels"}, r'no "labels" mapping names to label values'),
    ("{not json", r"not a JSON file"),
    (None, r"cannot read it \(No such file or directory\)"),
]


@pytest.mark.parametrize("content, message", BAD_DATASET_JSONS,
                         ids=["str value", "float value", "background in region", "no regions_class_order",
                              "no background", "no labels", "not json", "missing"])
def test_cli_refuses_bad_dataset_json(tmp_path, content, message):
    dataset_json = tmp_path / "dataset.json"
    if content is not None:
        dataset_json.write_text(content if isinstance(content, str) else json.dumps(content))
    prediction_folder = tmp_path / "pred"
    prediction_folder.mkdir()
    with pytest.raises(SystemExit, match=rf"^ERROR: --dataset-json {re.escape(str(dataset_json))}: {message}"):
        main(["-ref", str(tmp_path / "no_such_folder"), "-pred", str(prediction_folder),
              "--dataset-json", str(dataset_json)])
    assert not any(prediction_folder.iterdir())


def test_ignore_label_of_dataset_json_is_refused(region_folders, tmp_path):
    reference_folder, prediction_folder, (reference, _) = region_folders
    dataset_json = write_dataset_json(tmp_path / "dataset.json",
                                      {"background": 0, "a": 1, "b": 2, "c": 3, "ignore": 4})
    with pytest.raises(SystemExit, match=r"ERROR: -l 'ignore': the ignore label of --dataset-json .* cannot be scored"):
        main(["-ref", str(reference_folder), "-pred", str(prediction_folder), "--dataset-json", str(dataset_json),
              "-l", "ignore"])
    summary = evaluate_folders(str(reference_folder), str(prediction_folder), dataset_json=dataset_json)
    assert summary["labels"] == [1, 2, 3]  # the ignore label is no foreground label, as in nnU-Net
    partly_ignored = reference.copy()
    partly_ignored[0, 0, 0] = 4
    write(reference_folder / "case_1.nii.gz", partly_ignored)
    with pytest.raises(EvaluationError, match=r"the reference .*labels/case_1\.nii\.gz holds the ignore label 4"):
        evaluate_folders(str(reference_folder), str(prediction_folder), dataset_json=dataset_json)


def test_library_takes_tuples_and_names(region_folders, tmp_path):
    reference_folder, prediction_folder, _ = region_folders
    summary = evaluate_folders(str(reference_folder), str(prediction_folder), labels=[(1, 2, 3), [2, 3], 1],
                               dataset_json=region_dataset_json(tmp_path))
    assert list(summary["mean"]) == ["(1, 2, 3)", "(2, 3)", "1"]
    assert summary["mean"]["(2, 3)"]["Dice"] == pytest.approx((REGION_DICE["(2, 3)"] + 1) / 2)
    with pytest.raises(EvaluationError, match=r"-l \(1, 0\): the region \(1, 0\) contains the background 0"):
        evaluate_folders(str(reference_folder), str(prediction_folder), labels=[(1, 0)])
