"""The dual-network trainer without data: its optimiser with nnU-Net's optimiser and schedule variants
mixed in, the optimiser's checkpoint, and the ramp weights of its steps.

Trainers here are initialised (both networks, optimiser, loss) from a hand-written tiny 2D plan; nothing
is preprocessed or loaded, so each test takes about a second instead of the planned dataset's minutes.
"""
from __future__ import annotations

import copy
import math
import os
import types

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainerCosAnneal import nnUNetTrainerCosAnneal
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import (nnUNetTrainerAdam,
                                                                                   nnUNetTrainerVanillaAdam)
from torch.optim.lr_scheduler import CosineAnnealingLR, CyclicLR, ExponentialLR, LambdaLR, LRScheduler, StepLR

from nnunet_ccesemi.trainers import nnUNetTrainerCCE_5epochs, nnUNetTrainerCPS_5epochs
from nnunet_ccesemi.training.dual_network_trainer import add_peer_parameter_group, split_single_group_state
from nnunet_ccesemi.training.networks import unwrap

DATASET_NAME = "Dataset999_Unit"
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1}, "numTraining": 2,
                "file_ending": ".nii.gz"}
TINY_2D = {
    "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
    "patch_size": [16, 16], "median_image_size_in_voxels": [16, 16], "spacing": [1.0, 1.0],
    "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], "batch_dice": True,
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
}
PLANS = {"dataset_name": DATASET_NAME, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0, 1.0],
         "original_median_shape_after_transp": [16, 16], "image_reader_writer": "SimpleITKIO",
         "transpose_forward": [0, 1], "transpose_backward": [0, 1], "configurations": {"2d": TINY_2D},
         "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
         "foreground_intensity_properties_per_channel": {}}


# How users combine our trainers with nnU-Net's variants, in both orders of the bases.
class nnUNetTrainerAdam_CPS_5epochs(nnUNetTrainerAdam, nnUNetTrainerCPS_5epochs):
    """The variant first: the MRO resolves to its configure_optimizers, which calls no super()."""


class nnUNetTrainerCPS_5epochs_CosAnneal(nnUNetTrainerCPS_5epochs, nnUNetTrainerCosAnneal):
    """Ours first: nnU-Net's initialize reaches the variant's configure_optimizers through the MRO."""


class nnUNetTrainerCCE_5epochs_VanillaAdam(nnUNetTrainerCCE_5epochs, nnUNetTrainerVanillaAdam):
    pass


class nnUNetTrainerCPS_5epochs_TwoGroups(nnUNetTrainerCPS_5epochs):
    """A variant with its own lr for A's decoder: B, another architecture, has no counterpart of the groups."""

    def configure_optimizers(self):
        encoder = list(self.network.encoder.parameters())
        decoder = [p for p in self.network.parameters() if all(p is not q for q in encoder)]
        optimizer = torch.optim.SGD([{"params": encoder}, {"params": decoder, "lr": self.initial_lr / 10}],
                                    self.initial_lr, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


def poly(epoch: int, epochs: int, initial_lr: float = 1e-2) -> float:
    return initial_lr * (1 - epoch / epochs) ** 0.9


def cosine(epoch: int, epochs: int, initial_lr: float = 1e-2) -> float:
    return initial_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """nnU-Net's three folders in tmp_path; the preprocessed one holds a single empty ``.b2nd`` file,
    all that ``initialize`` reads (it infers the dataset class from the file endings)."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    data = tmp_path / "nnUNet_preprocessed" / DATASET_NAME / TINY_2D["data_identifier"]
    data.mkdir(parents=True)
    (data / "case_000.b2nd").touch()
    return tmp_path


def initialized(trainer_class):
    trainer = trainer_class(plans={**copy.deepcopy(PLANS), "continue_training": False}, configuration="2d", fold=0,
                            dataset_json=DATASET_JSON, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def learning_rates_per_epoch(trainer) -> list[list[float]]:
    """Each group's lr after nnU-Net's per-epoch hook (which steps the scheduler), for every epoch."""
    rates = []
    for epoch in range(trainer.num_epochs):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        rates.append([group["lr"] for group in trainer.optimizer.param_groups])
    return rates


# ---------------------------------------------------------------- optimiser and schedule variants
@pytest.mark.parametrize("trainer_class, optimizer_class, schedule", [
    (nnUNetTrainerCPS_5epochs, torch.optim.SGD, poly),
    (nnUNetTrainerAdam_CPS_5epochs, torch.optim.AdamW, poly),
    (nnUNetTrainerCPS_5epochs_CosAnneal, torch.optim.SGD, cosine),
    (nnUNetTrainerCCE_5epochs_VanillaAdam, torch.optim.Adam, poly),
])
def test_network_b_joins_the_variants_optimiser_and_schedule(nnunet_folders, trainer_class, optimizer_class,
                                                             schedule):
    trainer = initialized(trainer_class)
    optimizer = trainer.optimizer
    assert type(optimizer) is optimizer_class
    group_a, group_b = optimizer.param_groups
    assert group_a["params"] == list(unwrap(trainer.network).parameters())
    assert group_b["params"] == list(unwrap(trainer.network_b).parameters())
    assert {k: v for k, v in group_b.items() if k != "params"} == {k: v for k, v in group_a.items() if k != "params"}

    rates = learning_rates_per_epoch(trainer)
    expected = [schedule(epoch, trainer.num_epochs) for epoch in range(trainer.num_epochs)]
    assert [lr_a for lr_a, _ in rates] == pytest.approx(expected, rel=1e-12)
    assert [lr_b for _, lr_b in rates] == [lr_a for lr_a, _ in rates]
    assert len(set(expected)) == trainer.num_epochs  # the schedule moves: equal rates are no accident

    before = [p.detach().clone() for p in group_b["params"]]
    for p in group_a["params"] + group_b["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(not torch.equal(p, old) for p, old in zip(group_b["params"], before))


def test_a_variant_with_several_groups_is_refused_by_name(nnunet_folders):
    with pytest.raises(ValueError, match=r"^nnUNetTrainerCPS_5epochs_TwoGroups \(configure_optimizers of "
                                         r"nnUNetTrainerCPS_5epochs_TwoGroups\) builds 2 parameter groups"):
        initialized(nnUNetTrainerCPS_5epochs_TwoGroups)


# ---------------------------------------------------------------- add_peer_parameter_group on its own
def _pair(make_scheduler, network: torch.nn.Module):
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    return optimizer, make_scheduler(optimizer)


SCHEDULERS = {
    "poly (nnU-Net)": lambda optimizer: PolyLRScheduler(optimizer, 1e-2, 20),
    "cosine": lambda optimizer: CosineAnnealingLR(optimizer, T_max=20),
    "lambda": lambda optimizer: LambdaLR(optimizer, lambda epoch: 1 / (1 + epoch)),
    "step": lambda optimizer: StepLR(optimizer, step_size=3, gamma=0.5),
    "exponential": lambda optimizer: ExponentialLR(optimizer, gamma=0.9),
}


@pytest.mark.parametrize("make_scheduler", SCHEDULERS.values(), ids=SCHEDULERS.keys())
def test_added_group_follows_the_first_and_leaves_its_schedule_as_it_was(make_scheduler):
    torch.manual_seed(0)
    network_a, network_b = torch.nn.Linear(3, 2), torch.nn.Linear(4, 1)
    optimizer, scheduler = _pair(make_scheduler, network_a)
    alone, alone_scheduler = _pair(make_scheduler, copy.deepcopy(network_a))
    add_peer_parameter_group(optimizer, scheduler, network_b, 20, "T")
    for epoch in range(20):  # as nnU-Net: step(epoch) at the start of every epoch
        scheduler.step(epoch)
        alone_scheduler.step(epoch)
        lr_a, lr_b = (group["lr"] for group in optimizer.param_groups)
        assert lr_a == lr_b == alone.param_groups[0]["lr"], epoch


class FirstGroupOnly(LRScheduler):
    """A scheduler written for one group: it halves the first group's lr and leaves the others alone."""

    def step(self, epoch=None):
        self.optimizer.param_groups[0]["lr"] = 1e-2 * 0.5 ** (epoch or 0)


@pytest.mark.parametrize("make_pair, error, message", [
    (lambda net: (object(), None), TypeError, r"^T returned a object as optimiser, not a torch.optim.Optimizer"),
    (lambda net: _pair(lambda o: "poly", net), TypeError, r"^T returned a str as learning-rate scheduler"),
    (lambda net: (_pair(SCHEDULERS["cosine"], net)[0], _pair(SCHEDULERS["cosine"], net)[1]), TypeError,
     r"not a torch LRScheduler of its optimiser"),
    (lambda net: _pair(FirstGroupOnly, net), ValueError,
     r"^T: its FirstGroupOnly gives network B's parameter group lr 0.01 but network A's 0.005 at epoch 1: it does "
     r"not schedule an added group as the first one"),
    (lambda net: _pair(lambda o: CyclicLR(o, 1e-3, 1e-2), net), ValueError,
     r"^T: its CyclicLR cannot step with network B's parameter group added"),
])
def test_pairs_that_cannot_take_network_b_are_refused(make_pair, error, message):
    optimizer, scheduler = make_pair(torch.nn.Linear(3, 2))
    with pytest.raises(error, match=message):
        add_peer_parameter_group(optimizer, scheduler, torch.nn.Linear(4, 1), 5, "T")


# ---------------------------------------------------------------- the optimiser in checkpoints
def assert_same_optimizer_state(saved: dict, restored: dict) -> None:
    assert restored["param_groups"] == saved["param_groups"]
    assert restored["state"].keys() == saved["state"].keys()
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(restored["state"][index][key]), torch.as_tensor(value)), (index, key)


def _stepped(trainer):
    """One optimiser step with non-zero gradients, so that every parameter has momentum/moment state."""
    for network in (trainer.network, trainer.network_b):
        for p in network.parameters():
            p.grad = torch.randn_like(p)
    trainer.optimizer.step()
    return trainer


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerCPS_5epochs, nnUNetTrainerAdam_CPS_5epochs])
def test_optimizer_state_round_trips_through_the_checkpoint(nnunet_folders, tmp_path, trainer_class):
    trainer = _stepped(initialized(trainer_class))
    trainer.save_checkpoint(str(tmp_path / "checkpoint.pth"))
    restored = trainer_class(plans={**copy.deepcopy(PLANS), "continue_training": False}, configuration="2d",
                             fold=0, dataset_json=DATASET_JSON, device=torch.device("cpu"))
    restored.load_checkpoint(str(tmp_path / "checkpoint.pth"))
    assert len(restored.optimizer.param_groups) == 2
    assert_same_optimizer_state(trainer.optimizer.state_dict(), restored.optimizer.state_dict())


def test_single_group_optimizer_state_of_older_versions_is_split_on_load(nnunet_folders, tmp_path):
    """nnunet_ccesemi <= 0.2 built one SGD group over A's parameters followed by B's."""
    trainer = _stepped(initialized(nnUNetTrainerCPS_5epochs))
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    group_a, group_b = checkpoint["optimizer_state"]["param_groups"]
    checkpoint["optimizer_state"]["param_groups"] = [{**group_a, "params": group_a["params"] + group_b["params"]}]
    torch.save(checkpoint, path)

    restored = initialized(nnUNetTrainerCPS_5epochs)
    restored.load_checkpoint(path)
    assert_same_optimizer_state(trainer.optimizer.state_dict(), restored.optimizer.state_dict())
    assert restored.optimizer._optimizer_load_state_dict_pre_hooks == {}  # the converter is gone after loading


def test_a_resumed_run_keeps_its_seed_unless_told_otherwise(nnunet_folders, tmp_path, monkeypatch):
    """Without nnUNet_ccesemi_seed a resumed run would draw a new seed and log it as the one that
    repeats the run, though the epochs before the resume used another."""
    monkeypatch.delenv("nnUNet_ccesemi_seed", raising=False)
    trainer = initialized(nnUNetTrainerCPS_5epochs)
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    resumed = initialized(nnUNetTrainerCPS_5epochs)
    assert resumed.seed != trainer.seed  # a fresh draw (equal once in 2**31) ...
    resumed.load_checkpoint(path)
    assert resumed.seed == trainer.seed  # ... replaced by the run's own
    monkeypatch.setenv("nnUNet_ccesemi_seed", "7")
    told = initialized(nnUNetTrainerCPS_5epochs)
    told.load_checkpoint(path)
    assert told.seed == 7


def not_initialized(trainer_class):
    return trainer_class(plans={**copy.deepcopy(PLANS), "continue_training": False}, configuration="2d", fold=0,
                         dataset_json=DATASET_JSON, device=torch.device("cpu"))


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSupervised_5epochs", "nnUNetTrainerCPS_5epochs"])
def test_resume_goes_on_with_the_checkpoints_seed_and_logs_only_that_one(trainer_name, nnunet_folders, tmp_path,
                                                                         monkeypatch):
    """nnUNetv2_train --c builds a fresh trainer and loads the checkpoint into it: the log's seed line must
    name the checkpoint's seed (the one the run goes on with), for the baseline as for CPS/CCE."""
    import nnunet_ccesemi.trainers as trainers

    monkeypatch.delenv("nnUNet_ccesemi_seed", raising=False)
    trainer_class = getattr(trainers, trainer_name)
    trainer = initialized(trainer_class)
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    assert torch.load(path, map_location="cpu", weights_only=False)["seed"] == trainer.seed
    os.remove(trainer.log_file)  # the resumed trainer may get the same log file (named to the second)
    resumed = not_initialized(trainer_class)
    fresh_draw = resumed.seed
    resumed.load_checkpoint(path)  # initialises, as nnU-Net's --c does
    assert resumed.seed == trainer.seed != fresh_draw
    with open(resumed.log_file) as log:
        text = log.read()
    assert f"continuing with the checkpoint's seed {trainer.seed}" in text
    assert f"seed {trainer.seed} for Python, NumPy and torch" in text and f"seed {fresh_draw} " not in text

    monkeypatch.setenv("nnUNet_ccesemi_seed", "7")  # asked for another seed: said once, kept
    os.remove(resumed.log_file)
    told = not_initialized(trainer_class)
    told.load_checkpoint(path)
    with open(told.log_file) as log:
        assert told.seed == 7 and log.read().count(f"the checkpoint's run used seed {trainer.seed}") == 1


def test_the_seed_of_a_checkpoint_in_torchs_legacy_format_is_read(tmp_path):
    from nnunet_ccesemi.training.seeding import saved_seed

    path = str(tmp_path / "legacy.pth")
    torch.save({"seed": 42, "network_weights": {"w": torch.ones(3)}}, path, _use_new_zipfile_serialization=False)
    assert saved_seed(path) == 42
    torch.save({"network_weights": {}}, path)  # nnU-Net's own checkpoint: no seed
    assert saved_seed(path) is None


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSupervised_5epochs", "nnUNetTrainerCCE_5epochs"])
def test_checkpoints_hold_nnunets_keys_and_are_written_atomically(trainer_name, nnunet_folders, tmp_path,
                                                                   monkeypatch):
    """Stock nnU-Net (predictor, --c, export) reads its own keys: a key a newer nnU-Net adds must show here.
    A save that dies mid-write leaves the previous checkpoint as it was."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ccesemi.trainers as trainers

    trainer = initialized(getattr(trainers, trainer_name))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stock, ours = str(folder / "stock.pth"), str(folder / "ours.pth")
    nnUNetTrainer.save_checkpoint(trainer, stock)
    trainer.save_checkpoint(ours)
    stock_keys = set(torch.load(stock, map_location="cpu", weights_only=False))
    assert stock_keys <= set(torch.load(ours, map_location="cpu", weights_only=False))

    before = open(ours, "rb").read()

    def dies_mid_write(obj, filename):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(ours)
    assert open(ours, "rb").read() == before
    assert sorted(p.name for p in folder.iterdir()) == ["ours.pth", "stock.pth"]  # no temporary left


def test_supervised_baseline_is_seeded_like_the_dual_network_trainers(nnunet_folders, monkeypatch):
    """nnUNetTrainerSupervised_*: the same nnUNet_ccesemi_seed gives the same initial network, and the log
    names the seed, so that baseline rows are as repeatable as the semi-supervised ones."""
    from nnunet_ccesemi.trainers import nnUNetTrainerSupervised_5epochs

    def first_weights():
        trainer = initialized(nnUNetTrainerSupervised_5epochs)
        return trainer, torch.cat([p.detach().flatten() for p in trainer.network.parameters()])

    monkeypatch.setenv("nnUNet_ccesemi_seed", "11")
    trainer, weights = first_weights()
    assert trainer.seed == 11 and torch.equal(weights, first_weights()[1])
    monkeypatch.setenv("nnUNet_ccesemi_seed", "12")
    assert not torch.equal(weights, first_weights()[1])
    with open(trainer.log_file) as log:
        assert "seed 11 for Python, NumPy and torch" in log.read()


def test_a_statistic_the_resumed_configuration_no_longer_logs_is_padded(nnunet_folders):
    """nnU-Net's progress.png plots up to its shortest logger list: a statistic of the checkpoint's
    configuration left one entry short would freeze the plot at the resume epoch."""
    trainer = initialized(nnUNetTrainerCPS_5epochs)
    logging = trainer.logger.local_logger.my_fantastic_logging
    logging["ccesemi_entropy_threshold_a"] = [0.25]  # logged by the checkpoint's run only
    trainer.current_epoch = 1
    trainer.on_train_epoch_end([{"loss": 1.0, "ccesemi_cps_a": 0.5}, {"loss": 2.0, "ccesemi_cps_a": 0.7}])
    assert logging["ccesemi_cps_a"][1] == pytest.approx(0.6)
    assert logging["ccesemi_entropy_threshold_a"][0] == 0.25 and math.isnan(logging["ccesemi_entropy_threshold_a"][1])


def test_network_b_settings_that_cannot_change_b_do_not_block_a_resume(nnunet_folders, tmp_path):
    """With peer_architecture 'same' the residual settings build nothing; a checkpoint that saved other
    values (or none, as 0.1 did) holds the same network B."""
    from nnunet_ccesemi.trainers import nnUNetTrainerCPS_sameArch
    from nnunet_ccesemi.training.checkpoint import CheckpointError

    path = str(tmp_path / "checkpoint.pth")
    initialized(nnUNetTrainerCPS_sameArch).save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["method_config"]["peer_blocks_per_stage"] = [3, 3, 3]
    del checkpoint["method_config"]["peer_decoder_convs_per_stage"]
    torch.save(checkpoint, path)
    initialized(nnUNetTrainerCPS_sameArch).load_checkpoint(path)

    initialized(nnUNetTrainerCPS_5epochs).save_checkpoint(path)  # B residual: the blocks do build B
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["method_config"]["peer_blocks_per_stage"] = [3, 3, 3]
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="was trained with network B"):
        initialized(nnUNetTrainerCPS_5epochs).load_checkpoint(path)


def test_validation_alone_runs_without_feature_hooks(nnunet_folders, monkeypatch):
    """nnUNetv2_train --val: no training, so nothing removed the contrast term's decoder hooks."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = initialized(nnUNetTrainerCCE_5epochs)
    decoder_stage = trainer._feature_hooks[0]
    seen = []
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation",
                        lambda self, save_probabilities=False: seen.append(list(self._feature_hooks)))
    trainer.perform_actual_validation()
    assert seen == [[]]
    trainer.network(torch.zeros(1, 1, *PLANS["configurations"]["2d"]["patch_size"]))
    assert decoder_stage.features is None  # the hook is off the module


def test_split_single_group_state_leaves_other_states_alone():
    group = {"lr": 0.01, "momentum": 0.99, "params": [0, 1, 2, 3, 4]}
    state = {"state": {0: {"momentum_buffer": torch.ones(1)}, 4: {"momentum_buffer": torch.zeros(1)}},
             "param_groups": [group]}
    split = split_single_group_state(state, [2, 3])
    assert split["param_groups"] == [{**group, "params": [0, 1]}, {**group, "params": [2, 3, 4]}]
    assert split["state"] is state["state"]
    assert split_single_group_state(state, [2, 2]) is None  # not A's and B's parameters: loaded as it is
    two_groups = {"state": {}, "param_groups": [{**group, "params": [0, 1]}, {**group, "params": [2, 3, 4]}]}
    assert split_single_group_state(two_groups, [2, 3]) is None


# ---------------------------------------------------------------- ramp weights of the steps
@pytest.mark.parametrize("trainer_class, epoch, iteration, unsup_weight, contrast_weight, ramped_up", [
    # 5 epochs x 50 iterations: λ_u ramps over 0.1 * 250 = 25 iterations, λ_c over all 250 to 0.1
    (nnUNetTrainerCCE_5epochs, 0, 0, math.exp(-5), 0.1 * math.exp(-5), False),
    (nnUNetTrainerCCE_5epochs, 0, 10, math.exp(-5 * 0.6 ** 2), 0.1 * math.exp(-5 * 0.96 ** 2), False),
    (nnUNetTrainerCCE_5epochs, 1, 0, 1.0, 0.1 * math.exp(-5 * 0.8 ** 2), True),
    (nnUNetTrainerCCE_5epochs, 4, 49, 1.0, 0.1 * math.exp(-5 * (1 / 250) ** 2), True),
    (nnUNetTrainerCPS_5epochs, 0, 10, math.exp(-5 * 0.6 ** 2), 0.0, False),  # CPS: no contrast term
])
def test_ramp_weights_of_the_current_iteration(nnunet_folders, trainer_class, epoch, iteration, unsup_weight,
                                               contrast_weight, ramped_up):
    trainer = trainer_class(plans={**copy.deepcopy(PLANS), "continue_training": False}, configuration="2d", fold=0,
                            dataset_json=DATASET_JSON, device=torch.device("cpu"))
    trainer.current_epoch, trainer._iteration_in_epoch = epoch, iteration
    assert trainer._ramp_weights() == pytest.approx((unsup_weight, contrast_weight), rel=1e-12)
    assert trainer._ramp_up_finished_before_epoch() is ramped_up


@pytest.mark.parametrize("compiles, is_ddp, expected", [(True, False, True), (True, True, False), (False, False, False)])
def test_objective_compiled_where_nnunet_compiles_but_not_under_ddp(compiles, is_ddp, expected, monkeypatch):
    """Under DDP the objective's collectives stay eager: a rank that fell back from a failed graph would
    leave the others waiting in a collective it never reaches."""
    from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork

    trainer = types.SimpleNamespace(is_ddp=is_ddp, _do_i_compile=lambda: compiles)
    assert nnUNetTrainerDualNetwork._compile_objective(trainer) is expected


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSupervised_5epochs", "nnUNetTrainerCPS_5epochs"])
def test_a_checkpoint_left_half_written_by_a_killed_run_is_removed_at_the_start(trainer_name, nnunet_folders):
    import subprocess
    import sys

    import nnunet_ccesemi.trainers as trainers

    trainer = initialized(getattr(trainers, trainer_name))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    torn = os.path.join(trainer.output_folder, f"tmp{int(finished.stdout)}-0a1b2c3d_checkpoint_latest.pth")
    with open(torn, "w") as f:
        f.write("torn")
    trainer.remove_interrupted_writes()
    assert not os.path.exists(torn)
    with open(trainer.log_file) as log:
        assert f"removed {torn}, a temporary file of an interrupted earlier run" in log.read()
