"""The dual-network trainer in-process on the tiny planned dataset: steps, optimiser, checkpoints."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_ccesemi.training.checkpoint import CheckpointError
from nnunet_ccesemi.training.networks import unwrap
from tests.test_trainer_units import assert_same_optimizer_state

pytestmark = pytest.mark.integration


def build_trainer(name: str, planned: dict, monkeypatch: pytest.MonkeyPatch | None = None,
                  configuration: str = "3d_cpu"):
    """A trainer as nnUNetv2_train builds it (device cpu), for the given planned dataset.

    nnU-Net reads its folders from the environment, some of them lazily (``nnUNet_raw`` when the loaders
    start): they are set through ``monkeypatch``, so they end with the test. A caller without one (the
    subprocess test of tests/test_cli_integration.py) sets them for the rest of the session.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if monkeypatch is None:
            os.environ[variable] = planned["env"][variable]
        else:
            monkeypatch.setenv(variable, planned["env"][variable])
    plans = json.loads((planned["preprocessed"] / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((planned["preprocessed"] / "dataset.json").read_text())
    trainer_class = recursive_find_trainer_class_by_name(name)
    return trainer_class(plans=plans, configuration=configuration, fold="all", dataset_json=dataset_json,
                         device=torch.device("cpu"))


@pytest.fixture
def started_trainer(planned_dataset, request, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # in-process loaders: deterministic and light
    monkeypatch.setenv("nnUNet_ccesemi_seed", "1")  # the steps' values, asserted below, are then fixed
    trainer = build_trainer(request.param, planned_dataset, monkeypatch)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCPS_5epochs", "nnUNetTrainerCCE_5epochs"], indirect=True)
def test_train_step_updates_both_networks_and_reports_finite_terms(started_trainer):
    trainer = started_trainer
    before = [{k: v.clone() for k, v in unwrap(n).state_dict().items()} for n in (trainer.network, trainer.network_b)]
    output = trainer.train_step(next(trainer.dataloader_train))
    assert np.isfinite(output["loss"])
    # per-class statistics (``..._c1``) are NaN in a batch without that class; everything else is finite
    assert all(np.isfinite(v) for k, v in output.items() if not k.rpartition("_c")[2].isdigit())
    assert {"ccesemi_supervised_a", "ccesemi_supervised_b", "ccesemi_cps_a", "ccesemi_cps_b",
            "ccesemi_agreement"} <= set(output)
    for network, old in zip((trainer.network, trainer.network_b), before):
        new = unwrap(network).state_dict()
        assert any(not torch.equal(new[k], old[k]) for k in old if old[k].is_floating_point())


def switched_on_statistics(config) -> list[str]:
    """The statistics of the terms that ``config`` switches on (a weight of 0 skips a term)."""
    names = ["supervised_a", "supervised_b", "total", "agreement"]
    if config.disagreement_weight > 0:
        names += ["disagreement_a", "disagreement_b"]
    if config.entropy_filter_weight > 0:
        names += ["entropy_filter_a", "entropy_filter_b", "reliable_fraction"]
    if config.cps_weight > 0:
        names += ["cps_b"] if config.kl_direction == "a_to_b" else ["cps_a", "cps_b"]
        names += ["mean_kl_weight"] if config.kl_weighting else []
    if config.cosine_weight > 0:
        names += ["cosine"]
    if config.contrast_weight > 0:
        names += ["contrast_a", "contrast_b", "num_prototypes"]
    return names


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCCE_5epochs", "nnUNetTrainerCCE_classBalanced_5epochs"],
                         indirect=True)
def test_cce_step_computes_every_term(started_trainer):
    """Every term CCE switches on is alive: finite and non-zero in each of a few steps on the tiny dataset,
    whose labelled and unlabelled patches hold both classes (the foreground is oversampled)."""
    trainer = started_trainer
    trainer.current_epoch = 4  # ramps near their maximum, the contrast term well above 0
    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(3)]
    names = switched_on_statistics(trainer.method_config)
    assert {"disagreement_a", "entropy_filter_b", "cps_a", "mean_kl_weight", "cosine", "contrast_b"} <= set(names)
    for step, output in enumerate(outputs):
        for name in names:
            value = output["ccesemi_" + name]
            assert np.isfinite(value) and value != 0, f"{name} = {value} at step {step}"
        # thresholds per class under the class-balanced rule, one per network under the global one
        per_class = trainer.method_config.reliability_rule == "class_balanced"
        threshold = "entropy_threshold_a" + ("_c1" if per_class else "")
        for name in (threshold, "reliable_fraction_c1", "prototype_present_c1"):
            assert "ccesemi_" + name in output, name


def test_objective_is_compiled_where_nnunet_compiles_and_both_steps_use_it(planned_dataset, monkeypatch):
    from nnunet_ccesemi.training.compiled import CompiledWithEagerFallback
    from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork

    calls = []
    # nnU-Net compiles on CUDA only; here the decision is forced and torch.compile made a recording no-op
    monkeypatch.setattr(nnUNetTrainerDualNetwork, "_compile_objective", lambda self: True)
    monkeypatch.setattr(torch, "compile", lambda function: (lambda *a, **k: calls.append(1) or function(*a, **k)))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = build_trainer("nnUNetTrainerCCE_5epochs", planned_dataset, monkeypatch)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    assert isinstance(trainer.objective_step, CompiledWithEagerFallback) and trainer.objective_step.eager is trainer.objective
    trainer.train_step(next(trainer.dataloader_train))
    trainer.sequential_step = True
    trainer.train_step(next(trainer.dataloader_train))
    assert len(calls) == 3  # one joint call, two sequential ones
    hooks = trainer._feature_hooks
    trainer.on_train_end()
    # the final validation's sliding window runs without the contrastive term's feature capture
    assert len(hooks) == 2 and trainer._feature_hooks == [] and all(h.features is None for h in hooks)
    trainer.network(torch.zeros(1, 1, *trainer.configuration_manager.patch_size))
    assert all(h.features is None for h in hooks)


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCPS_5epochs"], indirect=True)
def test_one_optimiser_over_both_networks(started_trainer):
    """nnU-Net's SGD over A, with B as a second group (variants mixed in: tests/test_trainer_units.py)."""
    trainer = started_trainer
    assert type(trainer.optimizer) is torch.optim.SGD
    group_a, group_b = trainer.optimizer.param_groups
    assert group_a["params"] == list(trainer.network.parameters())
    assert group_b["params"] == list(trainer.network_b.parameters())
    assert group_b["lr"] == group_a["lr"] == trainer.initial_lr
    assert type(unwrap(trainer.network_b)).__name__ == "ResidualEncoderUNet"


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCPS_5epochs"], indirect=True)
def test_deep_supervision_switch_reaches_network_b(started_trainer):
    trainer = started_trainer
    trainer.set_deep_supervision_enabled(False)
    assert unwrap(trainer.network_b).decoder.deep_supervision is False
    trainer.set_deep_supervision_enabled(True)
    assert unwrap(trainer.network_b).decoder.deep_supervision is True


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCPS_5epochs"], indirect=True)
def test_checkpoint_round_trip_and_refusal_of_single_network_checkpoint(started_trainer, planned_dataset, tmp_path,
                                                                        monkeypatch):
    trainer = started_trainer
    trainer.train_step(next(trainer.dataloader_train))
    trainer._ensure_logger_key("ccesemi_cps_a")
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)

    restored = build_trainer("nnUNetTrainerCPS_5epochs", planned_dataset, monkeypatch)
    restored.load_checkpoint(path)
    for original, copy in ((trainer.network, restored.network), (trainer.network_b, restored.network_b)):
        for key, value in unwrap(original).state_dict().items():
            assert torch.equal(value, unwrap(copy).state_dict()[key]), key
    assert_same_optimizer_state(trainer.optimizer.state_dict(), restored.optimizer.state_dict())

    single = torch.load(path, weights_only=False)
    del single["network_b_weights"]
    single["trainer_name"] = "nnUNetTrainer"
    torch.save(single, tmp_path / "single.pth")
    with pytest.raises(CheckpointError, match="written by nnUNetTrainer, not by a dual-network trainer"):
        build_trainer("nnUNetTrainerCPS_5epochs", planned_dataset, monkeypatch).load_checkpoint(
            str(tmp_path / "single.pth"))


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCPS_5epochs"], indirect=True)
def test_checkpoint_of_another_network_b_is_refused_by_name(started_trainer, planned_dataset, tmp_path, monkeypatch):
    # nnunet_ccesemi 0.1 built B's decoder with A's two convolutions per stage and saved no such field
    trainer = started_trainer
    trainer.train_step(next(trainer.dataloader_train))
    path = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(path))
    legacy = torch.load(path, weights_only=False)
    del legacy["method_config"]["peer_decoder_convs_per_stage"]
    legacy["ccesemi_version"] = "0.1.0"
    torch.save(legacy, tmp_path / "legacy.pth")
    with pytest.raises(CheckpointError, match=r"legacy.pth was trained with network B .*'decoder_convs_per_stage': "
                                              r"None.*builds .*'decoder_convs_per_stage': 1.*0.1.0 wrote it"):
        build_trainer("nnUNetTrainerCPS_5epochs", planned_dataset, monkeypatch).load_checkpoint(
            str(tmp_path / "legacy.pth"))


def _step_gradients(trainer, step, data, target, seed: int) -> list[torch.Tensor]:
    trainer.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the contrast term samples voxels from the global generator
    stats = step(data, target, 2, 1.0, 0.1)
    gradients = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                 for network in (trainer.network, trainer.network_b) for p in network.parameters()]
    return gradients, stats


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCCE_5epochs"], indirect=True)
def test_sequential_step_gives_the_joint_gradients(started_trainer):
    trainer = started_trainer
    batch = next(trainer.dataloader_train)
    unlabeled = next(trainer.dataloader_unlabeled)
    data = torch.cat((batch["data"], unlabeled["data"]))
    joint, joint_stats = _step_gradients(trainer, trainer._joint_step, data, batch["target"], seed=3)
    sequential, sequential_stats = _step_gradients(trainer, trainer._sequential_step, data, batch["target"], seed=3)
    assert any(g.abs().sum() > 0 for g in joint)
    for index, (expected, actual) in enumerate(zip(joint, sequential)):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=f"parameter {index}")
    assert set(sequential_stats) == set(joint_stats)
    for key, value in joint_stats.items():
        torch.testing.assert_close(sequential_stats[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCCE_5epochs"], indirect=True)
@pytest.mark.parametrize("step_name", ["_joint_step", "_sequential_step"])
def test_backward_frees_the_decoder_features_before_it_reaches_the_encoder(started_trainer, step_name):
    """The features the contrastive term reads are the full-resolution output of each decoder's last
    stage. Held by a Python reference through the backward pass, they stay alive where memory peaks (a
    lent H200 traced 0.56 GiB per network at Left Atrium's 0.625 mm plans); held by the graph alone, they
    go once the backward pass has left the decoder."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from nnunet_ccesemi.losses import last_decoder_stage

    trainer = started_trainer
    features, alive_at_encoder, handles = {}, {}, []
    for name, network in (("a", unwrap(trainer.network)), ("b", unwrap(trainer.network_b))):
        def keep_storage(module, inputs, output, name=name):
            features[name] = StorageWeakRef(output.untyped_storage())

        def at_first_encoder_weight(grad, name=name):
            # the first encoder parameter's gradient comes at the end of its network's backward pass
            alive_at_encoder[name] = not features[name].expired()

        handles.append(last_decoder_stage(network).register_forward_hook(keep_storage))
        handles.append(next(network.encoder.parameters()).register_hook(at_first_encoder_weight))
    batch = next(trainer.dataloader_train)
    data = torch.cat((batch["data"], next(trainer.dataloader_unlabeled)["data"]))
    try:
        _, stats = _step_gradients(trainer, getattr(trainer, step_name), data, batch["target"], seed=3)
    finally:
        for handle in handles:
            handle.remove()
    assert stats["contrast_a"] > 0 and stats["contrast_b"] > 0  # the features did train both networks
    assert alive_at_encoder == {"a": False, "b": False}


def _with_batch_norm(network: torch.nn.Module) -> list[torch.nn.BatchNorm3d]:
    """Swaps every instance norm of ``network`` for a BatchNorm3d (nnU-Net's plans can name either); a norm
    registered under two names (``norm`` and ``all_modules[i]`` in dynamic_network_architectures) gets one."""
    swapped = {}
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d):
                setattr(parent, name, swapped.setdefault(id(child), torch.nn.BatchNorm3d(child.num_features)))
    return list(swapped.values())


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCCE_5epochs"], indirect=True)
def test_sequential_step_moves_batch_norm_statistics_once_as_the_joint_step(started_trainer):
    """The sequential step runs B twice (without gradients for A's pseudo-labels, then to train B): only
    the second pass may count for BatchNorm's running statistics, as B's one pass in the joint step."""
    trainer = started_trainer
    norms = _with_batch_norm(unwrap(trainer.network_b))
    assert norms
    batch = next(trainer.dataloader_train)
    data = torch.cat((batch["data"], next(trainer.dataloader_unlabeled)["data"]))
    start = copy.deepcopy(unwrap(trainer.network_b).state_dict())

    def statistics_after(step):
        unwrap(trainer.network_b).load_state_dict(start)
        _step_gradients(trainer, step, data, batch["target"], seed=3)
        return [torch.cat((norm.running_mean, norm.running_var, norm.num_batches_tracked[None].float()))
                for norm in norms]

    joint, sequential = statistics_after(trainer._joint_step), statistics_after(trainer._sequential_step)
    assert [int(norm.num_batches_tracked) for norm in norms] == [1] * len(norms)
    for index, (expected, actual) in enumerate(zip(joint, sequential)):
        torch.testing.assert_close(actual, expected, msg=f"norm {index}")


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCCE_5epochs"], indirect=True)
def test_out_of_memory_in_the_first_epoch_switches_to_the_sequential_step(started_trainer, monkeypatch):
    trainer = started_trainer
    joint_calls = []

    def out_of_memory(*args):
        joint_calls.append(args)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(trainer, "_joint_step", out_of_memory)
    messages = []
    monkeypatch.setattr(trainer, "print_to_log_file", lambda *args, **kwargs: messages.append(" ".join(args)))
    before = [p.clone() for p in trainer.network_b.parameters()]
    output = trainer.train_step(next(trainer.dataloader_train))
    assert trainer.sequential_step and np.isfinite(output["loss"])
    assert any(not torch.equal(p, old) for p, old in zip(trainer.network_b.parameters(), before))
    assert len(messages) == 1 and "switching to the low-memory sequential step" in messages[0]
    trainer.train_step(next(trainer.dataloader_train))
    assert len(joint_calls) == 1 and len(messages) == 1  # said once, and no more joint attempts


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCCE_5epochs"], indirect=True)
def test_out_of_memory_after_the_first_epoch_is_raised(started_trainer, monkeypatch):
    trainer = started_trainer
    trainer._steps_this_run = trainer.num_iterations_per_epoch

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(trainer, "_joint_step", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        trainer.train_step(next(trainer.dataloader_train))
    assert not trainer.sequential_step


def test_same_seed_same_first_losses_on_the_cpu(planned_dataset, monkeypatch):
    """Determinism: nnUNet_ccesemi_seed fixes initialisation, patches, augmentation and voxel sampling."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_ccesemi_seed", "1234")
    runs = []
    for _ in range(2):
        trainer = build_trainer("nnUNetTrainerCCE_5epochs", planned_dataset, monkeypatch)
        trainer.on_train_start()
        trainer.on_train_epoch_start()
        trainer.current_epoch = 3  # every term active, including the prototype contrast
        runs.append([trainer.train_step(next(trainer.dataloader_train)) for _ in range(2)])
        assert trainer.seed == 1234
    for first, second in zip(*runs):
        assert first.keys() == second.keys()
        for key in first:
            if key != "ccesemi_unlabeled_wait_s":  # NaN (a class absent from the batch) equals NaN here
                np.testing.assert_equal(first[key], second[key], err_msg=key)
    text = max(Path(trainer.output_folder).glob("training_log_*.txt")).read_text()
    assert "seed 1234" in text and "method configuration:" in text and "nnunet_ccesemi 0." in text
