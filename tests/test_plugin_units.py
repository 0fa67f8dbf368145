"""Unit tests of the plugin's pieces that need no training: discovery, networks, layout, CPU plans."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_ccesemi import _discovery
from nnunet_ccesemi.atomic import _RUN_TOKEN, _sibling
from nnunet_ccesemi.config import CCE_CONFIG, CPS_CONFIG, MethodConfig
from nnunet_ccesemi.data.layout import UnlabeledDataError, find_unlabeled_cases, source_changed, source_record
from tests.conftest import REPO_ROOT


# ---------------------------------------------------------------- discovery
def test_register_appends_and_keeps_user_folders():
    env = {"nnUNet_extTrainer": "/my/trainers"}
    _discovery.register_trainer_folder(env)
    _discovery.register_trainer_folder(env)  # idempotent
    assert env["nnUNet_extTrainer"].split(os.pathsep) == ["/my/trainers", _discovery.TRAINER_FOLDER]


def test_register_on_empty_environment():
    env = {}
    _discovery.register_trainer_folder(env)
    assert env["nnUNet_extTrainer"] == _discovery.TRAINER_FOLDER


def test_new_interpreter_finds_trainers_without_any_variable():
    """The installed .pth sets the variable at start-up; nnU-Net's own lookup then finds our class."""
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
            "import pickle; c = f('nnUNetTrainerCPS'); print(c.__module__); pickle.dumps(c)")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "nnunet_ccesemi.trainers.cps"


# Every method configuration has the short budgets the README promises.
METHOD_TRAINERS = ["nnUNetTrainerCCE", "nnUNetTrainerCCE_noEntropyFilter", "nnUNetTrainerCCE_noKLWeight",
                   "nnUNetTrainerCCE_noContrast", "nnUNetTrainerCCE_globalRule", "nnUNetTrainerCCE_classBalanced",
                   "nnUNetTrainerCCE_releasedCode",
                   "nnUNetTrainerCCE_lowMem", "nnUNetTrainerCPS", "nnUNetTrainerCPS_sameArch", "nnUNetTrainerCPS_lowMem"]


@pytest.mark.parametrize("base", METHOD_TRAINERS)
def test_every_method_trainer_has_each_short_budget(base):
    from nnunet_ccesemi import trainers
    from nnunet_ccesemi.training.budgets import ShortBudget
    for epochs in (5, 10, 20):
        variant = getattr(trainers, f"{base}_{epochs}epochs")
        assert issubclass(variant, getattr(trainers, base)) and issubclass(variant, ShortBudget)
        assert variant.budget_epochs == epochs
        assert variant.method_config == getattr(trainers, base).method_config


def test_every_trainer_the_docs_name_exists():
    import re
    from nnunet_ccesemi import trainers
    nnunet_own = {"nnUNetTrainer", "nnUNetTrainer_1epoch", "nnUNetTrainer_5epochs", "nnUNetTrainerAdam",
                  "nnUNetTrainerCCEE"}  # nnUNetTrainerCCEE: the troubleshooting table's typo example
    docs = [REPO_ROOT / "README.md", REPO_ROOT / "benchmarks" / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    named = {name for doc in docs for name in re.findall(r"`(nnUNetTrainer\w*)", doc.read_text(encoding="utf-8"))}
    missing = sorted(name for name in named - nnunet_own
                     if not name.endswith("_") and "__" not in name and not hasattr(trainers, name))
    assert not missing, f"the docs name trainers that do not exist: {missing}"


def test_wheel_installs_pth_and_namespaced_packages(tmp_path):
    """``pip install .`` path: the wheel carries the .pth hook, and trainers/ only inside the package."""
    # a module left in the in-tree build folder by an earlier build (since renamed) must not ship again
    stale = REPO_ROOT / "build" / "lib" / "nnunet_ccesemi" / "_nnunet_ext" / "stale_module.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("raise RuntimeError('a module removed from the source')\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(REPO_ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nnunet_ccesemi-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnunet_ccesemi.pth" in names
    assert "nnunet_ccesemi/trainers/cps.py" in names
    assert "nnunet_ccesemi/dataset_conversion/convert_LA.py" in names
    assert "nnunet_ccesemi/_nnunet_ext/nnunet_ccesemi_trainers.py" in names
    assert not any(n.startswith(("trainers/", "dataset_conversion/", "tests/")) for n in names)
    assert "nnunet_ccesemi/_nnunet_ext/stale_module.py" not in names and not stale.exists()
    shipped_lists = {path.name for path in (REPO_ROOT / "dataset_conversion" / "splits").glob("*.list")}
    assert shipped_lists and {f"nnunet_ccesemi/dataset_conversion/splits/{name}" for name in shipped_lists} <= set(names)
    # the tested set, pinned (the brief's required packages among them)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line.split(": ", 1)[1] for line in zipfile.ZipFile(wheel).read(metadata).decode("utf-8").splitlines()
                if line.startswith("Requires-Dist: ")]
    for package in ("nnunetv2", "torch", "batchgenerators", "batchgeneratorsv2", "numpy", "SimpleITK", "acvl-utils",
                    "dynamic-network-architectures", "h5py", "pytest", "hypothesis", "medpy"):
        assert any(re.match(rf"{re.escape(package)}==[\d.]+($|;| )", requirement) for requirement in requires), package


# ---------------------------------------------------------------- configuration
def test_config_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CCE_CONFIG.entropy_quantile = 0.5
    with pytest.raises(ValueError, match="entropy_quantile"):
        MethodConfig(entropy_quantile=0.0)
    with pytest.raises(ValueError, match="pseudo_label_rule"):
        MethodConfig(pseudo_label_rule="majority")
    with pytest.raises(ValueError, match="peer_decoder_convs_per_stage must be >= 1 or None, got 0"):
        MethodConfig(peer_decoder_convs_per_stage=0)
    for blocks in ((), (1, 0, 2)):  # an empty tuple used to fail inside initialize() with an IndexError
        with pytest.raises(ValueError, match=r"peer_blocks_per_stage must hold one or more values >= 1"):
            MethodConfig(peer_blocks_per_stage=blocks)


@pytest.mark.parametrize("field, value, message", [
    ("contrast_weight", -0.1, "contrast_weight must be >= 0"),
    ("cps_weight", float("nan"), "cps_weight must be >= 0"),
    ("disagreement_confidence", 1.0, "disagreement_confidence must lie in"),
    ("contrast_sample_fraction", 0.0, "contrast_sample_fraction must lie in"),
    ("contrast_max_samples_per_class", 0, "contrast_max_samples_per_class must be >= 1"),
    ("unsupervised_rampup_fraction", 1.5, "unsupervised_rampup_fraction must lie in"),
])
def test_config_rejects_out_of_range_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        CCE_CONFIG.replace(**{field: value})


def test_config_momentum_needs_the_memory():
    with pytest.raises(ValueError, match="prototype_momentum > 0 needs prototype_memory=True"):
        CCE_CONFIG.replace(prototype_memory=False, prototype_momentum=0.9)
    assert CCE_CONFIG.replace(prototype_memory=False).prototype_momentum == 0.0


def test_add_cpu_config_names_the_missing_plans_file_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from nnunet_ccesemi.cli.add_cpu_config import main

    (tmp_path / "Dataset778_Empty").mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["-d", "Dataset778_Empty"])
    assert "no plans file " + str(tmp_path / "Dataset778_Empty" / "nnUNetPlans.json") in capsys.readouterr().err
    assert list((tmp_path / "Dataset778_Empty").iterdir()) == []


@pytest.mark.parametrize("command", ["predict", "rank_unlabeled"])
def test_model_commands_refuse_an_unknown_dataset_and_a_bad_fold(command, tmp_path, capsys, monkeypatch):
    import importlib

    main = importlib.import_module(f"nnunet_ccesemi.cli.{command}").main
    with pytest.raises(SystemExit, match=r"^ERROR: .*nnUNet_results"):
        main(["-d", "Dataset999_Nowhere", "-c", "3d_fullres", "-tr", "nnUNetTrainerCCE", "-i", str(tmp_path),
              "-o", str(tmp_path / "out"), "-device", "cpu"])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))  # nnU-Net reads it at each use
    tmp_path = tmp_path / "inputs"
    tmp_path.mkdir()
    common = ["-d", "Dataset999_Nowhere", "-c", "3d_fullres", "-tr", "nnUNetTrainerCCE", "-device", "cpu"]
    outputs = ["-i", str(tmp_path), "-o", str(tmp_path / ("out" if command == "predict" else "r.csv"))]
    with pytest.raises(SystemExit, match=r"^ERROR: no trained model at .*Dataset999_Nowhere"):
        main(common + outputs)
    with pytest.raises(SystemExit):
        main(common + outputs + ["-f", "0", "one"])
    assert "argument -f: expected 'all' or a fold number (0, 1, ...), got 'one'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_dataset_name_explains_an_unknown_id(tmp_path, monkeypatch):
    from nnunet_ccesemi.cli.plans import dataset_name, fold

    with pytest.raises(FileNotFoundError, match="dataset '998': Could not find a dataset with the ID 998"):
        dataset_name("998")
    assert dataset_name("Dataset998_X") == "Dataset998_X"
    assert [fold("all"), fold("3")] == ["all", 3]


def test_cps_config_switches_off_everything_but_cps():
    assert CPS_CONFIG.cps_weight > 0 and not CPS_CONFIG.kl_weighting
    assert CPS_CONFIG.entropy_filter_weight == CPS_CONFIG.contrast_weight == CPS_CONFIG.cosine_weight == 0
    assert CPS_CONFIG.disagreement_weight == 0


# ---------------------------------------------------------------- networks
def _configuration_manager(class_name="PlainConvUNet", n_stages=4):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    kwargs = {
        "n_stages": n_stages, "features_per_stage": [8, 16, 32, 32][:n_stages],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n_stages,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
        "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if class_name == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = [2] * n_stages
    else:
        kwargs["n_blocks_per_stage"] = [1, 2, 2, 2][:n_stages]
    return ConfigurationManager({
        "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16, 16, 16], "spacing": [1, 1, 1],
        "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{class_name}",
                         "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                        "nonlin"]}})


@pytest.mark.parametrize("a_class, kind, b_class", [
    ("PlainConvUNet", "residual", "ResidualEncoderUNet"),
    ("ResidualEncoderUNet", "residual", "PlainConvUNet"),
    ("PlainConvUNet", "same", "PlainConvUNet"),
])
def test_peer_network_family_and_output_shape(a_class, kind, b_class):
    from nnunet_ccesemi.training.networks import build_peer_network

    network_b = build_peer_network(_configuration_manager(a_class), 1, 3, True, kind, (1, 3, 4, 6, 6, 6))
    assert network_b.__class__.__name__ == b_class
    outputs = network_b(torch.zeros(1, 1, 16, 16, 16))
    assert [tuple(o.shape) for o in outputs][:2] == [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]


@pytest.mark.parametrize("decoder_convs, expected", [(1, [1, 1]), (3, [3, 3]), (None, [2, 2])])
def test_residual_peer_decoder_follows_the_resenc_presets_unless_told(decoder_convs, expected):
    from nnunet_ccesemi.training.networks import peer_architecture

    cm = _configuration_manager("PlainConvUNet", n_stages=3)
    cm.configuration["architecture"]["arch_kwargs"]["n_conv_per_stage_decoder"] = [2, 2]  # nnU-Net's default plans
    _, kwargs, _ = peer_architecture(cm, "residual", (1, 3), decoder_convs)
    assert list(kwargs["n_conv_per_stage_decoder"]) == expected


def test_checkpoints_without_the_decoder_field_rebuild_the_old_network_b():
    from nnunet_ccesemi.config import CCE_CONFIG
    from nnunet_ccesemi.training.checkpoint import saved_method_config

    saved = CCE_CONFIG.as_dict()
    del saved["peer_decoder_convs_per_stage"]
    assert CCE_CONFIG.peer_decoder_convs_per_stage == 1
    assert saved_method_config({"method_config": saved}).peer_decoder_convs_per_stage is None
    assert saved_method_config({"method_config": CCE_CONFIG.as_dict()}) == CCE_CONFIG


def test_peer_network_has_its_own_initialisation():
    from nnunet_ccesemi.training.networks import build_peer_network

    cm = _configuration_manager()
    a = build_peer_network(cm, 1, 2, False, "same", (1,))
    b = build_peer_network(cm, 1, 2, False, "same", (1,))
    first = next(iter(a.state_dict()))
    assert not torch.equal(a.state_dict()[first], b.state_dict()[first])


def test_peer_network_rejects_unknown_architecture():
    from nnunet_ccesemi.training.networks import peer_architecture

    cm = _configuration_manager()
    cm.configuration["architecture"]["network_class_name"] = "my.models.FancyNet"
    with pytest.raises(ValueError, match="peer_architecture='same'"):
        peer_architecture(cm, "residual", (1,))


# ---------------------------------------------------------------- raw unlabelled layout
def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


DATASET_JSON = {"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz", "labels": {"background": 0}}


def test_find_unlabeled_cases_groups_channels(tmp_path):
    _touch(tmp_path / "imagesUnlabeled", "b_0001.nii.gz", "b_0000.nii.gz", "a_1_0000.nii.gz", "a_1_0001.nii.gz")
    cases = find_unlabeled_cases(str(tmp_path), DATASET_JSON)
    assert list(cases) == ["a_1", "b"]
    assert [os.path.basename(p) for p in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]


@pytest.mark.parametrize("files, message", [
    (None, "does not exist"),
    ([], "holds no"),
    (["a_0000.nii.gz"], "expects exactly _0000 (T1), _0001 (T2)"),
    (["a_0000.nrrd", "a_0001.nrrd"], "not named <case>_<XXXX>.nii.gz"),
    (["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"], "has channel files _0000, _0001, _0002"),
    (["liver_seg_0000.nii.gz", "liver_seg_0001.nii.gz"], "end in '_seg', which nnU-Net's preprocessed layout reserves"),
])
def test_find_unlabeled_cases_errors(tmp_path, files, message):
    if files is not None:
        _touch(tmp_path / "imagesUnlabeled", *files)
    with pytest.raises(UnlabeledDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_unlabeled_cases(str(tmp_path), DATASET_JSON)


RGB_JSON = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "file_ending": ".png", "labels": {"background": 0}}


def test_one_natural_image_file_holds_every_channel(tmp_path):
    # nnU-Net's convention (Dataset120_RoadSegmentation): road_0000.png is R, G and B
    _touch(tmp_path / "imagesUnlabeled", "road_0000.png", "sea_0000.png")
    cases = find_unlabeled_cases(str(tmp_path), RGB_JSON)
    assert {case: [os.path.basename(p) for p in files] for case, files in cases.items()} == \
        {"road": ["road_0000.png"], "sea": ["sea_0000.png"]}
    _touch(tmp_path / "imagesUnlabeled", "sea_0001.png")  # one file per channel must still be complete
    with pytest.raises(UnlabeledDataError, match=r"'sea' .* has channel files _0000, _0001; .* expects exactly"):
        find_unlabeled_cases(str(tmp_path), RGB_JSON)


TIFF_JSON = {"channel_names": {"0": "EM"}, "file_ending": ".tif", "labels": {"background": 0}}


def test_3d_tiff_spacing_files_belong_to_their_case(tmp_path):
    """nnU-Net's Tiff3DIO reads cell_0000.tif's spacing from cell.json beside it: not a misnamed file,
    and part of what the preprocessed case was made from."""
    folder = tmp_path / "imagesUnlabeled"
    _touch(folder, "cell_0000.tif", "cell.json", "dish_0000.tif")
    (folder / "cell.json").write_text('{"spacing": [0.5, 0.1, 0.1]}')
    cases = find_unlabeled_cases(str(tmp_path), TIFF_JSON)
    assert {case: [os.path.basename(p) for p in files] for case, files in cases.items()} == \
        {"cell": ["cell_0000.tif"], "dish": ["dish_0000.tif"]}
    record = source_record(cases["cell"])
    assert [entry["file"] for entry in record] == ["cell_0000.tif", "cell.json"]
    assert source_changed(record, cases["cell"]) is None
    (folder / "cell.json").write_text('{"spacing": [1.0, 0.1, 0.1]}')  # a new spacing: the case must be redone
    assert source_changed(record, cases["cell"]) == f"{folder / 'cell.json'} changed since it was preprocessed"
    _touch(folder, "orphan.json")  # no images of its own
    with pytest.raises(UnlabeledDataError, match="not named <case>_<XXXX>.tif .*: orphan.json"):
        find_unlabeled_cases(str(tmp_path), TIFF_JSON)


def test_channel_count_after_reading_is_checked(tmp_path):
    from types import SimpleNamespace

    from nnunet_ccesemi.data.preprocess import preprocess_case

    class GreyscalePreprocessor:  # what nnU-Net's reader returns for a greyscale PNG
        def __init__(self, verbose):
            pass

        def run_case(self, image_files, seg_file, plans_manager, configuration_manager, dataset_json):
            return np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 4, 4), np.int8), {}

    configuration = SimpleNamespace(preprocessor_class=GreyscalePreprocessor, patch_size=(1, 4, 4))
    with pytest.raises(UnlabeledDataError, match=r"case 'road' \(in/road_0000.png\) holds 1 channel\(s\); "
                                                 r"dataset.json channel_names expects 3"):
        preprocess_case(str(tmp_path), "road", ["in/road_0000.png"], None, configuration, RGB_JSON)
    assert list(tmp_path.iterdir()) == []


def test_a_preprocessing_error_names_the_case_and_its_files(monkeypatch):
    from nnunet_ccesemi.data import preprocess

    def reader_fails(*job):
        raise IndexError("index 2 is out of bounds for axis 0 with size 2")
    monkeypatch.setattr(preprocess, "preprocess_case", reader_fails)
    with pytest.raises(UnlabeledDataError, match=r"preprocessing the unlabelled case 'u7' \(in/u7_0000.nii.gz\) "
                                                 r"failed: IndexError: index 2 is out of bounds"):
        preprocess._preprocess_job(("out", "u7", ["in/u7_0000.nii.gz"], None, None, {}))


def test_find_unlabeled_cases_refuses_labelled_ids(tmp_path):
    _touch(tmp_path / "imagesUnlabeled", "a_0000.nii.gz", "a_0001.nii.gz")
    with pytest.raises(UnlabeledDataError, match="also labelled"):
        find_unlabeled_cases(str(tmp_path), DATASET_JSON, labeled_identifiers=["a"])


# ---------------------------------------------------------------- CPU configuration
def test_shrink_patch_respects_budget_and_aspect():
    from nnunet_ccesemi.cli.add_cpu_config import shrink_patch

    patch = shrink_patch([48, 80, 96], [1.25] * 3, 32 * 64 * 64)
    assert patch[0] * patch[1] * patch[2] <= 32 * 64 * 64 * 1.05
    assert patch[0] < patch[1] < patch[2]
    assert shrink_patch([16, 32, 32], [1, 1, 1], 32 * 64 * 64) == [16, 32, 32]


def _cpu_test_plans(cm) -> dict:
    source = {**cm.configuration, "patch_size": [48, 80, 96], "spacing": [1.25, 1.25, 1.25]}
    return {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
            "original_median_shape_after_transp": [48, 80, 96], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": source},
            "experiment_planner_used": "x", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}}


def test_add_cpu_config_prints_a_train_command_for_the_plans_it_changed(tmp_path, monkeypatch, capsys):
    from nnunet_ccesemi.cli.add_cpu_config import main

    folder = tmp_path / "Dataset001_X"
    folder.mkdir()
    (folder / "nnUNetResEncUNetMPlans.json").write_text(json.dumps(_cpu_test_plans(_configuration_manager())))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    main(["-d", "Dataset001_X", "-p", "nnUNetResEncUNetMPlans"])
    assert "Train with: nnUNetv2_train Dataset001_X 3d_cpu FOLD -tr TRAINER -p nnUNetResEncUNetMPlans" in \
        capsys.readouterr().out
    assert "3d_cpu" in json.loads((folder / "nnUNetResEncUNetMPlans.json").read_text())["configurations"]


@pytest.mark.parametrize("extra, message", [
    (["--patch", "0", "0", "0"], "--patch 0 0 0: every axis needs at least 8 voxels"),
    (["--patch", "-4", "32", "32"], "every axis needs at least 8 voxels"),
    (["--max-voxels", "0"], "--max-voxels must be at least 64, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--base-features", "0"], "--base-features must be at least 1, got 0"),
    (["--base-features", "32", "--max-features", "16"], r"--max-features \(16\) must be at least --base-features"),
    (["--name", "3d_fullres", "--overwrite"], "--name '3d_fullres' would inherit from itself"),
    (["--name", "3d_fullres", "--source", "3d_cpu", "--overwrite"],
     r"would inherit from itself \(--source '3d_cpu' is 3d_cpu <- 3d_fullres\)"),
    (["--name", "3d_cpu", "--overwrite"],
     r"'3d_cpu' is named by 3d_cpu2 \(its inherits_from\); replacing it would change them too"),
    (["--name", "3d_lowres", "--overwrite"], r"'3d_lowres' is named by 3d_cascade_fullres \(its previous_stage\)"),
    (["--name", "3d_cascade_fullres", "--overwrite"], r"'3d_cascade_fullres' is named by 3d_lowres \(its next_stage\)"),
    (["--max-voxels", "300", "--name", "3d_new"], r"--max-voxels 300 cannot hold a 3D patch of at least 8 voxels per axis \(512\)"),
])
def test_add_cpu_config_refuses_sizes_and_names_that_make_no_network(extra, message, tmp_path, monkeypatch, capsys):
    from nnunet_ccesemi.cli.add_cpu_config import main

    folder = tmp_path / "Dataset001_X"
    folder.mkdir()
    plans = _cpu_test_plans(_configuration_manager())
    plans["configurations"]["3d_cpu"] = {"inherits_from": "3d_fullres", "batch_size": 2}
    plans["configurations"]["3d_cpu2"] = {"inherits_from": "3d_cpu", "batch_size": 1}
    # nnU-Net's cascade: the full-resolution stage names the low-resolution one without inheriting from it
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "batch_size": 2,
                                            "next_stage": ["3d_cascade_fullres"]}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    before = (folder / "nnUNetPlans.json").read_bytes()
    with pytest.raises(SystemExit):
        main(["-d", "Dataset001_X", *extra])
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert (folder / "nnUNetPlans.json").read_bytes() == before


@pytest.mark.parametrize("source_patch, spacing, max_voxels, patch, hint", [
    ([24, 128, 224], [1.25, 2.5, 7.0], 8000, None, "raise --max-voxels"),  # shrinking would end at one stage
    ([48, 80, 96], [1.25, 2.5, 7.0], 32 * 64 * 64, [8, 8, 8], "pass a larger --patch"),
])
def test_cpu_configuration_refuses_a_one_stage_network(source_patch, spacing, max_voxels, patch, hint):
    """One resolution stage is no U-Net: nnU-Net's PlainConvUNet then has no decoder and fails at its
    first training step, so the plans must not be written."""
    from nnunet_ccesemi.cli.add_cpu_config import cpu_configuration

    plans = _cpu_test_plans(_configuration_manager())
    plans["configurations"]["3d_fullres"].update(patch_size=source_patch, spacing=spacing)
    with pytest.raises(ValueError, match=f"allows a network of one resolution stage only.*{hint}"):
        cpu_configuration(plans, "3d_fullres", patch, max_voxels, 16, 128, 2)


def test_the_smallest_budget_still_makes_two_stages():
    from nnunet_ccesemi.cli.add_cpu_config import cpu_configuration

    config = cpu_configuration(_cpu_test_plans(_configuration_manager()), "3d_fullres", None, 8 ** 3, 16, 128, 2)
    assert config["patch_size"] == [8, 8, 8] and config["architecture"]["arch_kwargs"]["n_stages"] == 2


def test_cpu_configuration_is_a_valid_network():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ccesemi.cli.add_cpu_config import count_parameters, cpu_configuration

    plans = _cpu_test_plans(_configuration_manager())
    plans["configurations"]["3d_cpu"] = cpu_configuration(plans, "3d_fullres", None, 32 * 64 * 64, 16, 128, 2)
    config = PlansManager(plans).get_configuration("3d_cpu")
    assert config.data_identifier == "x"  # reuses 3d_fullres' preprocessed data
    assert config.batch_size == 2 and max(config.network_arch_init_kwargs["features_per_stage"]) <= 128
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}}
    n_parameters = count_parameters(plans, "3d_cpu", dataset_json)
    assert 0.2e6 < n_parameters < 5e6
    json.dumps(plans)  # still serialisable


def test_feature_hook_does_not_break_the_compiled_graph():
    """The contrast term's forward hook must not split ``torch.compile``'s graph (a slow-down on GPUs)."""
    import torch._dynamo
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_ccesemi.losses import DecoderFeatureHook

    network = PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], 1, 2, 1, conv_bias=True,
                            norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                            nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    hook = DecoderFeatureHook(network.decoder.stages[-1])
    explanation = torch._dynamo.explain(network)(torch.randn(1, 1, 8, 16, 16))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert hook.features is not None and hook.features.shape == (1, 4, 8, 16, 16)


def test_atomic_path_replaces_only_on_success(tmp_path):
    from nnunet_ccesemi.atomic import atomic_path

    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    with atomic_path(target) as tmp:
        assert tmp.endswith("summary.json") and tmp != str(target)
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from nnunet_ccesemi.atomic import remove_stale_temporaries

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    mine = os.path.basename(_sibling(str(tmp_path / "progress_ssl.png"), "tmp"))  # this process's, being written
    # an earlier run of this PID (a container's PID 1 in every run) has another token: it is dead
    earlier_run = f"tmp{os.getpid()}-{'0' * 8 if _RUN_TOKEN != '0' * 8 else '1' * 8}_checkpoint_best.pth"
    for name in (f"tmp{dead_pid}-0a1b2c3d_checkpoint_latest.pth", mine, earlier_run, "checkpoint_latest.pth",
                 "tmp_notes.txt", "tmp20240101_checkpoint_best.pth",  # a user's files, not ours
                 "tmp99999999999999999999-0a1b2c3d_x.pth"):  # no process has that number
        (tmp_path / name).write_text(name)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        [f"tmp{dead_pid}-0a1b2c3d_checkpoint_latest.pth", earlier_run, "tmp99999999999999999999-0a1b2c3d_x.pth"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint_latest.pth", "tmp_notes.txt", "tmp20240101_checkpoint_best.pth", mine])
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_atomic_folder_replaces_only_on_success(tmp_path):
    from nnunet_ccesemi.atomic import atomic_folder

    target = tmp_path / "Dataset001_X"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as tmp:
            with open(os.path.join(tmp, "new.txt"), "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with atomic_folder(target) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    with pytest.raises(NotADirectoryError):
        with atomic_folder(target / "new.txt"):
            pass


def test_stale_folders_are_removed_and_a_set_aside_one_is_put_back(tmp_path):
    from nnunet_ccesemi.atomic import remove_stale_temporaries

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    dead = f"{dead_pid}-0a1b2c3d"
    live = os.path.basename(_sibling(str(tmp_path / "Dataset004_D"), "tmp"))
    for name in (f"tmp{dead}_Dataset001_A", f"old{dead}_Dataset001_A",  # killed between the two renames
                 f"old{dead}_Dataset002_B", "Dataset002_B",  # killed while deleting the replaced folder
                 f"tmp{dead}_Dataset003_C", live):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text(name)
    assert remove_stale_temporaries(tmp_path, "Dataset002_B") == [str(tmp_path / f"old{dead}_Dataset002_B")]
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A", "Dataset002_B", live]
    assert (tmp_path / "Dataset001_A" / "file").read_text() == f"old{dead}_Dataset001_A"  # the old one, back


def test_a_folder_swap_interrupted_between_its_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    from nnunet_ccesemi.atomic import atomic_folder

    target = tmp_path / "Dataset001_X"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename, calls = os.rename, []

    def interrupted_after_the_first(source, destination):
        calls.append(destination)
        real_rename(source, destination)
        if len(calls) == 1:  # the old folder is set aside, the new one not yet in place
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", interrupted_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as tmp:
            (Path(tmp) / "new.txt").write_text("new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]
    assert (target / "old.txt").read_text() == "old"


def test_every_cli_help_reads_cleanly(capsys):
    """Each console script's --help description (the paragraph after the usage) has no reST markup left."""
    import importlib
    import re
    setup_text = (REPO_ROOT / "setup.py").read_text(encoding="utf-8")
    scripts = re.findall(r'"(nnUNetv2_ccesemi_\w+) = ([\w.]+):main"', setup_text)
    assert len(scripts) >= 12
    for script, module in scripts:
        with pytest.raises(SystemExit) as exited:
            importlib.import_module(module).main(["--help"])
        assert exited.value.code == 0
        description = capsys.readouterr().out.split("\n\n")[1]
        assert "`" not in description and ":func:" not in description, f"{script} --help: {description}"
