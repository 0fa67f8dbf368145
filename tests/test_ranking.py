"""Ranking unlabelled cases by the two networks' disagreement: the scores by hand, and the command end to end."""
from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from nnunet_ccesemi.inference.ranking import SCORES, rank, score_case
from tests.conftest import CONFIG, DATASET_ID, copy_dataset, run_cli, trained_folder

TRAINER = "nnUNetTrainerCCE_5epochs"


def _two_class(foreground: list[float]) -> torch.Tensor:
    """(C=2, N voxels) probabilities from foreground probabilities."""
    p = torch.tensor(foreground)
    return torch.stack([1 - p, p])


def test_identical_networks_do_not_disagree():
    probs = _two_class([0.9, 0.8, 0.1, 0.0])
    scores = score_case(probs, probs.clone(), voxel_volume_mm3=2.0)
    assert scores["disagreement"] == 0.0
    # entropy over the two foreground voxels (0.9 and 0.8), normalised by log 2
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)  # noqa: E731
    assert scores["entropy"] == pytest.approx((h(0.9) + h(0.8)) / 2, rel=1e-5)
    # soft Dice of a map with itself: Σf² / Σf
    assert scores["soft_dice"] == pytest.approx((0.81 + 0.64 + 0.01) / (0.9 + 0.8 + 0.1), rel=1e-6)
    assert scores["volume_ml"] == pytest.approx(2 * 2.0 / 1000)
    assert scores["foreground_voxels"] == 2 and scores["empty_foreground"] is False


def test_one_network_empty_scores_the_other_ones_foreground():
    probs_a = _two_class([0.0, 0.0, 0.0])
    probs_b = _two_class([1.0, 0.6, 0.0])
    scores = score_case(probs_a, probs_b, voxel_volume_mm3=1000.0)
    eps = 1e-8  # symmetric_kl clamps probabilities at eps inside the logarithms
    expected_voxel_0 = (1.0 - 0.0) * (math.log(1.0) - math.log(eps)) + (0.0 - 1.0) * (math.log(eps) - math.log(1.0))
    expected_voxel_1 = (1.0 - 0.4) * (math.log(1.0) - math.log(0.4)) + (0.0 - 0.6) * (math.log(eps) - math.log(0.6))
    assert scores["disagreement"] == pytest.approx((expected_voxel_0 + expected_voxel_1) / 2, rel=1e-4)
    assert scores["soft_dice"] == 0.0  # no overlap at all
    assert scores["foreground_voxels"] == 2 and not scores["empty_foreground"]
    # the averaged prediction: 0.5 and 0.3 foreground -> argmax background (ties go to the first class)
    assert scores["volume_ml"] == 0.0


def test_both_networks_empty_is_a_defined_value_not_nan():
    empty = _two_class([0.0, 0.1, 0.2])
    scores = score_case(empty, empty.clone(), voxel_volume_mm3=1.0)
    assert scores["empty_foreground"] is True and scores["foreground_voxels"] == 0
    assert scores["disagreement"] == 0.0 and scores["entropy"] == 0.0 and scores["volume_ml"] == 0.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in scores.values())
    assert scores["soft_dice"] == SCORES["soft_dice"].value_when_empty == 1.0
    nothing = _two_class([0.0, 0.0])
    assert score_case(nothing, nothing, 1.0)["soft_dice"] == 1.0


def test_faint_foreground_everywhere_ranks_as_agreement_not_first():
    """Softmax is never exactly 0: two networks that find no foreground still give it 1-2 % everywhere,
    whose soft Dice alone (about 0.015) would put the case above every real disagreement."""
    faint = score_case(_two_class([0.01, 0.02, 0.015]), _two_class([0.02, 0.01, 0.01]), 1.0)
    good = score_case(_two_class([0.95, 0.9, 0.01]), _two_class([0.9, 0.95, 0.02]), 1.0)
    disagree = score_case(_two_class([0.9, 0.2, 0.01]), _two_class([0.2, 0.9, 0.02]), 1.0)
    assert faint["empty_foreground"] and faint["soft_dice"] == 1.0
    assert rank({"faint": faint, "good": good, "disagree": disagree}) == ["disagree", "good", "faint"]


def test_multi_class_foreground_is_every_non_background_class():
    probs_a = torch.tensor([[0.1, 0.9], [0.8, 0.05], [0.1, 0.05]])  # voxel 0 class 1, voxel 1 background
    probs_b = torch.tensor([[0.1, 0.2], [0.1, 0.1], [0.8, 0.7]])  # voxel 0 class 2, voxel 1 class 2
    scores = score_case(probs_a, probs_b, 1.0)
    assert scores["foreground_voxels"] == 2 and scores["disagreement"] > 0


def test_bad_probability_maps_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        score_case(torch.ones(2, 3) / 2, torch.ones(2, 4) / 2, 1.0)
    with pytest.raises(ValueError, match="at least two classes"):
        score_case(torch.ones(1, 3), torch.ones(1, 3), 1.0)


def test_rank_sorts_most_informative_first_with_stable_ties():
    scores = {"c": {"disagreement": 0.5, "soft_dice": 0.9}, "a": {"disagreement": 0.5, "soft_dice": 0.2},
              "b": {"disagreement": 2.0, "soft_dice": 0.5}}
    assert rank(scores, "disagreement") == ["b", "a", "c"]
    assert rank(scores, "soft_dice") == ["a", "b", "c"]  # low soft Dice = the networks disagree
    # the default is the score that tracked the true error best on the Left Atrium data
    assert rank(scores) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unknown score 'dice'"):
        rank(scores, "dice")


# ------------------------------------------------------------------ the command
def _rank(planned, *extra, check=True):
    return run_cli(["nnUNetv2_ccesemi_rank_unlabeled", "-d", str(DATASET_ID), "-c", CONFIG, "-f", "all", "-tr", TRAINER,
                    "-device", "cpu", "-npp", "1", *extra], planned["env"], check=check)


def _read_csv(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    return comments, rows


@pytest.mark.integration
def test_rank_unlabeled_end_to_end(trained_cce, tmp_path):
    planned, _ = trained_cce
    output = tmp_path / "out" / "ranking.csv"
    result = _rank(planned, "-o", str(output), "--save-maps", "--score", "soft_dice", "--top", "2")
    comments, rows = _read_csv(output)
    unlabeled = sorted(p.name[:-len("_0000.nii.gz")] for p in (planned["raw"] / "imagesUnlabeled").iterdir())
    assert sorted(row["case"] for row in rows) == unlabeled
    assert list(rows[0]) == ["rank", "case", "disagreement", "entropy", "soft_dice", "volume_ml", "foreground_voxels",
                             "empty_foreground"]
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    soft_dice = [float(row["soft_dice"]) for row in rows]
    assert soft_dice == sorted(soft_dice)  # low soft Dice first
    assert all(row["empty_foreground"] in ("yes", "no") for row in rows)
    assert any("nnUNetv2_ccesemi_rank_unlabeled" in line and "--score soft_dice" in line for line in comments)
    assert any(str(trained_folder(planned, TRAINER) / "checkpoint_final.pth") in line for line in comments)
    assert "sorted by soft_dice" in result.stdout and f"... {len(rows) - 2} more in the CSV" in result.stdout
    maps = sorted(p.name for p in (tmp_path / "out" / "ranking_maps").iterdir())
    assert maps == sorted(f"{case}_{kind}.nii.gz" for case in unlabeled for kind in ("disagreement", "entropy"))


@pytest.mark.integration
def test_rank_unlabeled_refuses_bad_input_and_writes_nothing(trained_cce, tmp_path):
    planned = copy_dataset(trained_cce[0], tmp_path / "copy")
    output = tmp_path / "ranking.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["-i", str(empty)], r"No input images: .*empty holds no <case>_<XXXX>\.nii\.gz \(e\.g\. case001_0000\.nii\.gz\) "
                             r"files\. Nothing was written"),
        (["-i", str(planned["raw"])], "holds folders .*imagesTr.* Pass the folder of the images themselves"),
    ]
    extra_channel = planned["raw"] / "imagesUnlabeled" / "unl000_0001.nii.gz"
    extra_channel.write_bytes((planned["raw"] / "imagesUnlabeled" / "unl000_0000.nii.gz").read_bytes())
    cases.append(([], "Input case 'unl000' .* has channel files _0000, _0001"))
    for args, message in cases:
        result = _rank(planned, "-o", str(output), *args, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert re.search(message, result.stderr), result.stderr
        assert not output.exists()
    extra_channel.unlink()

    checkpoint_file = trained_folder(planned, TRAINER) / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    del checkpoint["network_b_weights"]
    checkpoint["trainer_name"] = "nnUNetTrainer"
    torch.save(checkpoint, checkpoint_file)
    result = _rank(planned, "-o", str(output), check=False)
    assert result.returncode != 0 and "holds no network B" in result.stderr and not output.exists()


@pytest.mark.parametrize("extra, message", [
    (["-step_size", "0"], r"-step_size must be in \(0, 1\], got 0.0"),
    (["-step_size", "2"], r"-step_size must be in \(0, 1\], got 2.0"),
    (["-npp", "0"], "-npp must be at least 1, got 0"),
    (["--top", "0"], "--top must be at least 1"),
    (["-o", "{file}/sub/ranking.csv"], r"a_file is a file, not a folder"),
    (["-o", "{tmp}"], r"is a folder; give the CSV file to write"),
])
def test_rank_arguments_refused_before_the_model_loads(extra, message, tmp_path):
    from nnunet_ccesemi.cli.rank_unlabeled import build_parser, check_arguments
    (tmp_path / "a_file").write_text("")
    extra = [value.format(file=tmp_path / "a_file", tmp=tmp_path) for value in extra]
    args = build_parser().parse_args(["-d", "1", "-tr", "nnUNetTrainerCCE", "-device", "cpu", *extra])
    with pytest.raises(ValueError, match=message):
        check_arguments(args)


@pytest.mark.parametrize("environment, npp", [("2", 2), ("0", 1), ("many", 3)])
def test_rank_csv_in_a_folder_still_to_be_made_is_accepted(environment, npp, tmp_path, monkeypatch):
    """-npp defaults to $nnUNet_npp; its 0 (nnUNetv2_predict's sequential mode) means one process here."""
    from nnunet_ccesemi.cli.rank_unlabeled import build_parser, check_arguments
    monkeypatch.setenv("nnUNet_npp", environment)
    args = build_parser().parse_args(["-d", "1", "-tr", "nnUNetTrainerCCE", "-device", "cpu",
                                      "-o", str(tmp_path / "new" / "deeper" / "ranking.csv")])
    check_arguments(args)
    assert args.npp == npp and not (tmp_path / "new").exists()
