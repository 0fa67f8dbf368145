"""Two-network prediction through nnU-Net's predictor, and the uncertainty maps."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO, SimpleITKIOWithReorient

from nnunet_ccesemi.image_files import check_image_file
from nnunet_ccesemi.inference.map_export import write_float_map
from nnunet_ccesemi.inference.uncertainty import (logits_of_mean_probability, predictive_entropy, symmetric_kl,
                                                  uncertainty_maps)
from tests.conftest import CONFIG, DATASET_ID, copy_dataset, run_cli, trained_folder

TRAINER = "nnUNetTrainerCCE_5epochs"


def test_predictive_entropy_by_hand():
    probs = torch.tensor([[1.0, 0.5, 0.9], [0.0, 0.5, 0.1]])  # (C=2, 3 voxels)
    expected = [0.0, 1.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)]
    torch.testing.assert_close(predictive_entropy(probs), torch.tensor(expected))


def test_symmetric_kl_by_hand():
    probs_a = torch.tensor([[0.8, 0.5], [0.2, 0.5]])
    probs_b = torch.tensor([[0.4, 0.5], [0.6, 0.5]])
    expected = (0.8 - 0.4) * math.log(0.8 / 0.4) + (0.2 - 0.6) * math.log(0.2 / 0.6)
    torch.testing.assert_close(symmetric_kl(probs_a, probs_b), torch.tensor([expected, 0.0]))
    torch.testing.assert_close(symmetric_kl(probs_b, probs_a), symmetric_kl(probs_a, probs_b))


def test_symmetric_kl_of_saturated_outputs_is_finite():
    one_hot = torch.tensor([[1.0], [0.0]])
    assert torch.isfinite(symmetric_kl(one_hot, one_hot.flip(0))).all()
    with pytest.raises(ValueError, match="differ in shape"):
        symmetric_kl(one_hot, torch.ones(3, 1) / 3)


@pytest.mark.parametrize("regions", [False, True])
def test_uncertainty_maps_made_slab_by_slab_are_those_of_the_whole_volume(regions):
    generator = torch.Generator().manual_seed(0)
    logits_a, logits_b = (8 * torch.randn(3, 7, 4, 5, generator=generator) for _ in range(2))
    nonlin = torch.sigmoid if regions else (lambda z: torch.softmax(z, 0))
    probs_a, probs_b = nonlin(logits_a), nonlin(logits_b)
    whole = {"entropy": predictive_entropy((probs_a + probs_b) / 2, regions=regions),
             "disagreement": symmetric_kl(probs_a, probs_b, regions=regions)}
    for slab_voxels in (1, 40, 41, 10 ** 6):  # one row, two rows, two rows and a bit, everything
        maps = uncertainty_maps([logits_a, logits_b], regions=regions, slab_voxels=slab_voxels)
        assert list(maps) == ["entropy", "disagreement"]
        for name in whole:  # per voxel the same sums, up to the order SIMD lanes add them in
            torch.testing.assert_close(maps[name], whole[name], atol=1e-6, rtol=1e-6)
    alone = uncertainty_maps([logits_a], regions=regions, slab_voxels=20)
    assert list(alone) == ["entropy"]
    torch.testing.assert_close(alone["entropy"], predictive_entropy(probs_a, regions=regions), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        uncertainty_maps([logits_a, logits_b[:, :3]])


def test_without_network_b_the_predictor_refuses_what_needs_it(tmp_path):
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    data = torch.zeros(1, 4, 4, 4)
    for kwargs in ({"networks": "both"}, {"networks": "b"}, {"networks": "a", "uncertainty_folder": str(tmp_path)}):
        predictor = DualNetworkPredictor(device=torch.device("cpu"), **kwargs)  # network B never loaded
        with pytest.raises(RuntimeError, match="network B is not loaded"):
            predictor.predict_logits_from_preprocessed_data(data)
        with pytest.raises(RuntimeError, match="network B is not loaded"):  # before nnU-Net writes into -o
            predictor.predict_from_files(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not by nnU-Net's sequential mode"):
        predictor = DualNetworkPredictor(device=torch.device("cpu"), uncertainty_folder=str(tmp_path))
        predictor.predict_from_files_sequential(str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_maps_go_back_to_the_input_geometry_as_nnunets_export_does(configuration):
    """A map on the network grid lands where nnU-Net's export puts the probabilities of the same grid, through a
    transpose, a crop and a resampling that each change something (the trained test datasets have none)."""
    import json

    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    plans_dir = Path(__file__).resolve().parents[1] / "benchmarks" / "plans" / "Dataset602_LA0625"
    plans = json.loads((plans_dir / "nnUNetPlans.json").read_text())
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    predictor = DualNetworkPredictor(device=torch.device("cpu"))
    predictor.plans_manager = PlansManager(plans)
    predictor.configuration_manager = predictor.plans_manager.get_configuration(configuration)
    predictor.dataset_json = json.loads((plans_dir / "dataset.json").read_text())
    label_manager = predictor.plans_manager.get_label_manager(predictor.dataset_json)
    # the image is (14, 11, 9) voxels of 1.0 x 0.8 x 0.625 mm; transposed (9, 14, 11), cropped to (7, 11, 10)
    properties = {"spacing": [1.0, 0.8, 0.625], "shape_before_cropping": (9, 14, 11),
                  "bbox_used_for_cropping": [[1, 8], [2, 13], [0, 10]],
                  "shape_after_cropping_and_before_resampling": (7, 11, 10)}
    network_grid = (7, 18, 13) if configuration == "3d_fullres" else (7, 14, 10)
    generator = torch.Generator().manual_seed(0)
    logit_map = 4 * torch.rand(network_grid, generator=generator) - 2

    mine = predictor._to_input_geometry(logit_map[None], properties)[0]
    # nnU-Net's export of the two-class logits (0, z): its class-1 probability is sigmoid(resampled z)
    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        torch.stack((torch.zeros(network_grid), logit_map)), predictor.plans_manager,
        predictor.configuration_manager, label_manager, properties, return_probabilities=True, num_threads_torch=1)
    assert mine.shape == probabilities.shape[1:] == (14, 11, 9)
    inside = probabilities[0] < 1  # nnU-Net gives the voxels outside its crop background probability 1
    assert inside.sum() == 7 * 11 * 10
    np.testing.assert_allclose(mine[inside], np.log(probabilities[1][inside] / probabilities[0][inside]), atol=1e-4)
    assert np.all(mine[~inside] == 0)


def test_mean_softmax_logits_in_log_space():
    # (C=3, 4 voxels); the last voxel's gaps of 120 underflow float32 softmax probabilities to 0
    za = torch.tensor([[2.0, 0.0, -1.0, 60.0], [0.5, 0.0, 3.0, -60.0], [-1.0, 0.0, 0.0, 0.0]])
    zb = torch.tensor([[0.0, 1.0, -1.0, 60.0], [1.5, -2.0, 2.0, -60.0], [0.0, 0.0, 4.0, 0.0]])
    logits = logits_of_mean_probability(iter([za, zb]))
    mean = (torch.softmax(za.double(), 0) + torch.softmax(zb.double(), 0)) / 2
    torch.testing.assert_close(logits.double(), mean.log(), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all() and logits[1, 3] == pytest.approx(-120.0, abs=1e-3)
    torch.testing.assert_close(logits_of_mean_probability([za]), torch.log_softmax(za, 0))
    with pytest.raises(ValueError, match="no member logits"):
        logits_of_mean_probability([])


@pytest.mark.parametrize("reader", [SimpleITKIO, SimpleITKIOWithReorient, NibabelIO, NibabelIOWithReorient],
                         ids=lambda reader: reader.__name__)
def test_a_map_of_the_input_is_written_back_as_the_input(reader, tmp_path):
    """A float map equal to the image nnU-Net read lands voxel for voxel on that image, with its affine,
    whichever reader read it (the oblique, axis-flipped affine makes the reorienting readers reorient)."""
    data = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)  # nibabel's (x, y, z)
    affine = np.array([[0.0, 0.0, -2.5, 40.0], [-0.8, 0.0, 0.0, 120.0], [0.0, 1.2, 0.0, -33.0], [0, 0, 0, 1]])
    source = tmp_path / "case_0000.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, affine), source)
    image, properties = reader().read_images([str(source)])

    written = tmp_path / "case_entropy.nii.gz"
    write_float_map(image[0], properties, str(written))

    back = nibabel.load(written)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    np.testing.assert_allclose(back.get_fdata(), data, atol=1e-6)


def test_a_nibabel_read_case_refuses_a_non_nifti_map_path(tmp_path):
    properties = {"nibabel_stuff": {"original_affine": np.eye(4)}, "spacing": [1.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="case_entropy.nrrd.*NIfTI"):
        write_float_map(np.zeros((2, 2, 2)), properties, str(tmp_path / "case_entropy.nrrd"))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("dataset_ending, map_ending", [(".mhd", ".mha"), (".nhdr", ".nrrd"), (".nrrd", ".nrrd"),
                                                         (".tif", ".nii.gz")])
def test_maps_of_a_detached_header_dataset_are_single_files(dataset_ending, map_ending, tmp_path):
    """A map written as .mhd would keep SimpleITK's data file under the temporary name atomic_path
    gave the header, and leave it behind: maps of .mhd/.nhdr datasets are .mha/.nrrd."""
    from types import SimpleNamespace
    from nnunet_ccesemi.atomic import atomic_path
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor

    ending = DualNetworkPredictor._map_ending(SimpleNamespace(dataset_json={"file_ending": dataset_ending}))
    assert ending == map_ending
    source = tmp_path / "images" / "case_0000.mhd"
    source.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)), str(source))
    image, properties = SimpleITKIO().read_images([str(source)])
    maps = tmp_path / "uncertainty"
    maps.mkdir()
    with atomic_path(maps / f"case_entropy{ending}") as tmp:
        write_float_map(image[0], properties, tmp)
    assert [p.name for p in maps.iterdir()] == [f"case_entropy{ending}"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(maps / f"case_entropy{ending}"))),
                                  image[0])


def test_sequential_prediction_predicts_its_part_only(tmp_path):
    """-npp 0 -nps 0 with -num_parts: nnU-Net's sequential mode would predict every case in every call."""
    from nnunet_ccesemi.cli.predict import sequential_inputs
    for case in ("a", "b", "c", "d", "e"):
        for channel in (0, 1):
            (tmp_path / f"{case}_{channel:04d}.nii.gz").write_bytes(b"")
    assert sequential_inputs(str(tmp_path), ".nii.gz", 1, 0) == str(tmp_path)
    part = sequential_inputs(str(tmp_path), ".nii.gz", 2, 1)
    assert part == [[str(tmp_path / f"{case}_{channel:04d}.nii.gz") for channel in (0, 1)] for case in ("b", "d")]


def _predict(planned, output, *extra, command="nnUNetv2_ccesemi_predict"):
    run_cli([command, "-i", str(planned["raw"] / "imagesTs"), "-o", str(output), "-d", str(DATASET_ID), "-c", CONFIG,
             "-f", "all", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar",
             *extra], planned["env"])


def _probabilities(folder, case):
    return np.load(folder / f"{case}.npz")["probabilities"]


@pytest.fixture(scope="module")
def both_with_maps(trained_cce, tmp_path_factory):
    """The mean of both networks with probabilities and uncertainty maps, predicted once for the tests
    that read it (copy it before changing it)."""
    output = tmp_path_factory.mktemp("both_with_maps")
    _predict(trained_cce[0], output, "--save_probabilities", "--uncertainty")
    return output


@pytest.mark.integration
def test_mean_of_both_networks_with_uncertainty_maps(trained_cce, both_with_maps, tmp_path):
    planned, _ = trained_cce
    outputs = {name: tmp_path / name for name in ("stock", "a", "b", "both_no_maps")}
    outputs["both"] = both_with_maps
    _predict(planned, outputs["stock"], "--save_probabilities", command="nnUNetv2_predict")
    for networks in ("a", "b"):
        _predict(planned, outputs[networks], "--networks", networks, "--save_probabilities")
    _predict(planned, outputs["both_no_maps"], "--save_probabilities")  # without maps: one member at a time

    for image_file in sorted((planned["raw"] / "imagesTs").iterdir()):
        case = image_file.name.replace("_0000.nii.gz", "")
        # network A alone is exactly the stock predictor
        np.testing.assert_allclose(_probabilities(outputs["a"], case), _probabilities(outputs["stock"], case),
                                   atol=1e-6)
        # the ensemble is the mean of the two networks' softmax (no resampling on this dataset)
        mean = (_probabilities(outputs["a"], case) + _probabilities(outputs["b"], case)) / 2
        np.testing.assert_allclose(_probabilities(outputs["both"], case), mean, atol=1e-5)
        np.testing.assert_allclose(_probabilities(outputs["both_no_maps"], case), mean, atol=1e-5)
        segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["both"] / f"{case}.nii.gz")))
        np.testing.assert_array_equal(segmentation, mean.argmax(0))

        source = sitk.ReadImage(str(image_file))
        entropy = sitk.ReadImage(str(outputs["both"] / "uncertainty" / f"{case}_entropy.nii.gz"))
        disagreement = sitk.ReadImage(str(outputs["both"] / "uncertainty" / f"{case}_disagreement.nii.gz"))
        for image in (entropy, disagreement):
            assert image.GetSize() == source.GetSize()
            np.testing.assert_allclose(image.GetSpacing(), source.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-6)
            np.testing.assert_allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
        entropy = sitk.GetArrayFromImage(entropy)
        expected = predictive_entropy(torch.from_numpy(mean)).numpy()
        np.testing.assert_allclose(entropy, expected, atol=1e-4)
        expected = symmetric_kl(torch.from_numpy(_probabilities(outputs["a"], case)),
                                torch.from_numpy(_probabilities(outputs["b"], case))).numpy()
        assert expected.max() > 1e-3  # two networks that do disagree somewhere: a map of zeros would not pass
        np.testing.assert_allclose(sitk.GetArrayFromImage(disagreement), expected, atol=1e-4, rtol=1e-3)
    # nothing but segmentations where evaluation tools look
    assert sorted(p.name for p in outputs["both"].glob("*.nii.gz")) == \
        sorted(p.name.replace("_0000", "") for p in (planned["raw"] / "imagesTs").iterdir())


@pytest.mark.integration
def test_sequential_parts_and_continuing_with_maps(trained_cce, both_with_maps, tmp_path):
    planned, _ = trained_cce
    cases = sorted(p.name.replace("_0000.nii.gz", "") for p in (planned["raw"] / "imagesTs").iterdir())
    workers = Path(shutil.copytree(both_with_maps, tmp_path / "workers"))
    sequential, parts = tmp_path / "sequential", tmp_path / "parts"
    # nnUNetv2_predict's -npp 0 -nps 0: no worker processes, the same mean of both networks
    _predict(planned, sequential, "--save_probabilities", "-npp", "0", "-nps", "0")
    for case in cases:
        np.testing.assert_allclose(_probabilities(sequential, case), _probabilities(workers, case), atol=1e-6)
    # -num_parts 2 -part_id 1 predicts every second case, starting with the second
    _predict(planned, parts, "-num_parts", "2", "-part_id", "1")
    assert sorted(p.name for p in parts.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases[1::2]]

    # --continue_prediction --uncertainty redoes a case whose maps are missing, and only that case
    (workers / "uncertainty" / f"{cases[0]}_disagreement.nii.gz").unlink()
    kept = {case: (workers / f"{case}.nii.gz").stat().st_mtime_ns for case in cases}
    _predict(planned, workers, "--save_probabilities", "--uncertainty", "--continue_prediction")
    assert (workers / "uncertainty" / f"{cases[0]}_disagreement.nii.gz").is_file()
    assert (workers / f"{cases[0]}.nii.gz").stat().st_mtime_ns != kept[cases[0]]
    assert all((workers / f"{case}.nii.gz").stat().st_mtime_ns == kept[case] for case in cases[1:])
    # ... and one whose segmentation an interrupted export left truncated (nnU-Net would keep it)
    truncated = workers / f"{cases[1]}.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    kept = {case: (workers / f"{case}.nii.gz").stat().st_mtime_ns for case in cases}
    _predict(planned, workers, "--save_probabilities", "--uncertainty", "--continue_prediction")
    assert (workers / f"{cases[0]}.nii.gz").stat().st_mtime_ns == kept[cases[0]]
    assert truncated.stat().st_mtime_ns != kept[cases[1]]
    check_image_file(truncated)  # complete again (ITK alone would read the cut file as zeros at the end)


def test_a_case_counts_as_predicted_only_with_complete_outputs(tmp_path):
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    predictor = DualNetworkPredictor(networks="both", uncertainty_folder=str(tmp_path / "uncertainty"),
                                     device=torch.device("cpu"))
    predictor.dataset_json = {"file_ending": ".nii.gz"}
    (tmp_path / "uncertainty").mkdir()
    case = str(tmp_path / "la001")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), case + ".nii.gz")
    np.savez_compressed(case + ".npz", probabilities=np.random.default_rng(0).random((2, 4, 5, 6)))
    for name in ("entropy", "disagreement"):
        (tmp_path / "uncertainty" / f"la001_{name}.nii.gz").write_bytes(b"written atomically")
    assert predictor._case_is_done(case, save_probabilities=True)

    (tmp_path / "uncertainty" / "la001_disagreement.nii.gz").unlink()
    assert not predictor._case_is_done(case, save_probabilities=True)
    predictor.uncertainty_folder = None  # no maps asked for
    assert predictor._case_is_done(case, save_probabilities=True)
    for path, damage in ((case + ".npz", lambda b: b[:-30]), (case + ".nii.gz", lambda b: b[:-20])):
        intact = Path(path).read_bytes()
        Path(path).write_bytes(damage(intact))
        assert not predictor._case_is_done(case, save_probabilities=True), path
        Path(path).write_bytes(intact)
    Path(case + ".npz").unlink()
    assert predictor._case_is_done(case, save_probabilities=False)
    assert not predictor._case_is_done(case, save_probabilities=True)


def _arguments(*extra):
    from nnunet_ccesemi.cli.predict import build_parser
    return build_parser().parse_args(["-i", "in", "-o", "out", "-d", "1", "-c", "3d_fullres", *extra])


@pytest.mark.parametrize("extra, message", [
    (("-num_parts", "2", "-part_id", "2"), "-part_id must be between 0 and -num_parts - 1 = 1, got 2"),
    (("-num_parts", "0"), "-num_parts must be at least 1, got 0"),
    (("-npp", "0"), "both at least 1, or both 0"),
    (("-npp", "0", "-nps", "0", "--uncertainty"), "--uncertainty needs nnU-Net's worker path"),
    (("-prev_stage_predictions", "prev"), "cascades are not supported"),
    (("-step_size", "0"), "-step_size must be in (0, 1], got 0.0"),
])
def test_prediction_arguments_refused_with_the_reason(extra, message):
    from nnunet_ccesemi.cli.predict import check_arguments
    with pytest.raises(ValueError, match=re.escape(message)):
        check_arguments(_arguments(*extra))


def test_prediction_defaults_follow_nnunets_environment(monkeypatch):
    monkeypatch.setenv("nnUNet_npp", "5")
    monkeypatch.setenv("nnUNet_nps", "not a number")
    args = _arguments()
    assert (args.npp, args.nps, args.num_parts, args.part_id) == (5, 3, 1, 0)


def _model_with_two_channels(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "dataset.json").write_text('{"file_ending": ".nii.gz", "channel_names": {"0": "T1", "1": "T2"}}')
    return model


def _image(path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(path))


def test_input_folder_without_images_in_the_models_naming(tmp_path):
    from nnunet_ccesemi.cli.predict import check_input_files
    from nnunet_ccesemi.image_files import ImageFileError
    model, images = _model_with_two_channels(tmp_path), tmp_path / "images"
    images.mkdir()
    (images / "case_0000.nrrd").write_bytes(b"")
    (images / "notes.txt").write_text("other endings are passed over, as by nnUNetv2_predict")
    with pytest.raises(ImageFileError, match=rf"{re.escape(str(images))} holds no <case>_<XXXX>.nii.gz \(e.g."):
        check_input_files(str(images), str(model))
    for channel in (0, 1):
        _image(images / f"la001_{channel:04d}.nii.gz")
    check_input_files(str(images), str(model))
    # a label beside the images: nnU-Net would take it for a case with an empty ID and stop with an IndexError
    _image(images / "la001.nii.gz")
    with pytest.raises(ImageFileError, match=r"not named <case>_<XXXX>.nii.gz .*: la001.nii.gz"):
        check_input_files(str(images), str(model))
    (images / "la001.nii.gz").unlink()
    _image(images / "la002_0000.nii.gz")  # a case without its second channel
    with pytest.raises(ImageFileError, match=r"case 'la002' .* has channel files _0000; .* expects exactly "
                                             r"_0000 \(T1\), _0001 \(T2\)"):
        check_input_files(str(images), str(model))


def test_hidden_files_nnunet_would_read_as_cases_and_legacy_modality_keys(tmp_path):
    from nnunet_ccesemi.cli.predict import check_input_files
    from nnunet_ccesemi.image_files import ImageFileError
    model, images = tmp_path / "model", tmp_path / "images"
    model.mkdir(), images.mkdir()
    # nnU-Net's first dataset.json files name the channels "modality"; nnU-Net v2 still reads them
    (model / "dataset.json").write_text('{"file_ending": ".nii.gz", "modality": {"0": "CT"}}')
    _image(images / "la001_0000.nii.gz")
    (images / ".DS_Store").write_bytes(b"")
    check_input_files(str(images), str(model))
    (images / "._la001_0000.nii.gz").write_bytes(b"AppleDouble")  # copied from a Mac: nnU-Net lists it
    with pytest.raises(ImageFileError, match=r"1 hidden file\(s\) .* would read them as cases .*: "
                                             r"\._la001_0000.nii.gz"):
        check_input_files(str(images), str(model))


def test_output_folder_must_be_a_folder_other_than_the_input(tmp_path):
    from nnunet_ccesemi.cli.predict import check_output_folder
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(ValueError, match="is the input folder -i"):
        check_output_folder(str(images), str(images))
    with pytest.raises(ValueError, match="is the input folder -i"):
        check_output_folder(str(images), str(tmp_path / "." / "images") + "/")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"-o .*a_file exists and is not a folder"):
        check_output_folder(str(images), str(tmp_path / "a_file"))
    check_output_folder(str(images), str(tmp_path / "new"))
    check_output_folder(str(tmp_path / "missing"), str(images))  # a missing -i is reported by the input check


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_default_cuda_device_without_a_gpu_is_refused_up_front(tmp_path):
    from nnunet_ccesemi.cli.arguments import check_device
    with pytest.raises(ValueError, match="torch finds no CUDA GPU on this machine; pass -device cpu"):
        check_device("cuda")
    check_device("cpu")
    result = run_cli(["nnUNetv2_ccesemi_predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-d", "1",
                      "-c", "3d_fullres"], {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "pass -device cpu" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_folds_are_named_with_the_folds_that_exist(tmp_path):
    """nnUNetv2_ccesemi_predict's default -f is 0 1 2 3 4, the demo and the protocols train fold all."""
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    (tmp_path / "fold_all").mkdir()
    (tmp_path / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "fold_3").mkdir()  # started, never finished
    predictor = DualNetworkPredictor(device=torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*fold_0/checkpoint_final.pth \(5 of the 5 folds "
                                                r"asked for lack checkpoint_final.pth\); folds with "
                                                r"checkpoint_final.pth: all \(pick them with -f"):
        predictor.initialize_from_trained_model_folder(str(tmp_path), [0, 1, 2, 3, 4], "checkpoint_final.pth")
    with pytest.raises(FileNotFoundError, match="folds with checkpoint_best.pth: none"):
        predictor.initialize_from_trained_model_folder(str(tmp_path), ["all"], "checkpoint_best.pth")


def test_damaged_checkpoint_is_named(tmp_path):
    from nnunet_ccesemi.inference.predictor import DualNetworkPredictor
    from nnunet_ccesemi.training.checkpoint import CheckpointError
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])  # an interrupted copy
    with pytest.raises(CheckpointError, match=f"cannot read the checkpoint {re.escape(str(path))}"):
        DualNetworkPredictor._peer_weights(str(path))


@pytest.mark.integration
def test_single_network_checkpoint_is_refused_with_a_sentence(trained_cce, tmp_path):
    planned = copy_dataset(trained_cce[0], tmp_path / "copy")
    checkpoint_file = trained_folder(planned, TRAINER) / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    del checkpoint["network_b_weights"]
    checkpoint["trainer_name"] = "nnUNetTrainer"
    torch.save(checkpoint, checkpoint_file)
    result = run_cli(["nnUNetv2_ccesemi_predict", "-i", str(planned["raw"] / "imagesTs"), "-o", str(tmp_path / "o"),
                      "-d", str(DATASET_ID), "-c", CONFIG, "-f", "all", "-tr", TRAINER, "-device", "cpu"],
                     planned["env"], check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds no network B" in result.stderr and "nnUNetv2_predict" in result.stderr
    missing = run_cli(["nnUNetv2_ccesemi_predict", "-i", str(planned["raw"] / "imagesTs"), "-o", str(tmp_path / "o"),
                       "-d", str(DATASET_ID), "-c", CONFIG, "-f", "all", "-tr", "nnUNetTrainerCPS", "-device", "cpu"],
                      planned["env"], check=False)
    assert missing.returncode != 0 and "no trained model at" in missing.stderr
    shutil.rmtree(tmp_path / "copy")
