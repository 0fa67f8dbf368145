"""The GPU-memory estimate on fake tensors: exact accounting, equal to real tensors, host syncs named."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import CONFIG, DATASET_ID, run_cli
from nnunet_ccesemi.training.memory_estimate import HostSynchronisationError, LiveTensorMemory, estimate_step_memory


def test_live_memory_counts_each_storage_once_until_it_is_freed():
    with LiveTensorMemory() as memory:
        a = torch.empty(1000)  # 4000 bytes
        view = a.view(10, 100)  # the same storage
        half = torch.empty(500, dtype=torch.float16)  # 1000 bytes
        assert memory.current_bytes == 5000
        del a, view
        small = torch.empty(10)  # the next operator notices the freed storage
        assert memory.current_bytes == 1040
        assert memory.peak_bytes == 5000
        memory.reset_peak()
        assert memory.peak_bytes == 1040
    del half, small


def test_tensors_made_before_the_mode_count_once_tracked():
    parameters = [torch.nn.Parameter(torch.zeros(256)) for _ in range(3)]
    with LiveTensorMemory() as memory:
        memory.track(parameters)
        memory.track(parameters[:1])
        assert memory.current_bytes == 3 * 256 * 4


def _plans(planned: dict) -> tuple[dict, dict]:
    from nnunet_ccesemi.cli.plans import load_plans

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = planned["env"][variable]
    return load_plans(str(DATASET_ID))[:2]


def _trainer_class(name: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


@pytest.mark.integration
@pytest.mark.parametrize("trainer", ["nnUNetTrainer", "nnUNetTrainerCCE_5epochs", "nnUNetTrainerCCE_lowMem_5epochs"])
def test_fake_estimate_equals_the_same_step_on_real_tensors(planned_dataset, trainer):
    """Fake tensors allocate what real ones would through the real train_step (to 1 %: fake tensors go
    through meta kernels and decompositions, whose small temporaries differ from the CPU kernels')."""
    plans, dataset_json = _plans(planned_dataset)
    # float32: the CPU has no bfloat16 kernel for the residual encoder's average pooling
    fake = estimate_step_memory(_trainer_class(trainer), plans, CONFIG, dataset_json, autocast_dtype=None)
    real = estimate_step_memory(_trainer_class(trainer), plans, CONFIG, dataset_json, autocast_dtype=None,
                                fake=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)
    assert fake.resident_bytes == real.resident_bytes
    assert fake.peak_bytes > fake.resident_bytes > 0


@pytest.mark.integration
def test_both_input_batches_count_from_the_start(planned_dataset, monkeypatch):
    """The labelled and the unlabelled patches exist before the step, as the loaders' batches on a GPU:
    both are tracked, not only the labelled one."""
    plans, dataset_json = _plans(planned_dataset)
    tracked = []
    track = LiveTensorMemory.track

    def recording(self, tensors):
        tensors = list(tensors)
        tracked.extend(tensors)
        return track(self, tensors)
    monkeypatch.setattr(LiveTensorMemory, "track", recording)
    estimate_step_memory(_trainer_class("nnUNetTrainerCCE_5epochs"), plans, CONFIG, dataset_json)
    patch = tuple(plans["configurations"][CONFIG]["patch_size"])
    inputs = [t for t in tracked if t.ndim == 2 + len(patch) and tuple(t.shape[2:]) == patch and t.shape[1] == 1
              and t.is_floating_point()]
    assert len(inputs) == 2


@pytest.mark.integration
def test_a_step_that_reads_a_device_value_before_sgd_is_named(planned_dataset):
    plans, dataset_json = _plans(planned_dataset)

    def step_with_item(trainer, batch):
        loss = trainer.network(batch["data"])[0].float().mean()
        if loss.item() > 0:  # the host synchronisation fake tensors cannot answer
            loss = 2 * loss
        loss.backward()
        trainer.optimizer.step()

    with pytest.raises(HostSynchronisationError, match="before its optimiser step.*DataDependentOutputException"):
        estimate_step_memory(_trainer_class("nnUNetTrainer"), plans, CONFIG, dataset_json, step=step_with_item)


@pytest.mark.integration
def test_amp_halves_the_activations_not_the_parameters(planned_dataset):
    plans, dataset_json = _plans(planned_dataset)
    amp = estimate_step_memory(_trainer_class("nnUNetTrainer"), plans, CONFIG, dataset_json)
    fp32 = estimate_step_memory(_trainer_class("nnUNetTrainer"), plans, CONFIG, dataset_json, autocast_dtype=None)
    assert amp.resident_bytes == fp32.resident_bytes
    assert amp.peak_bytes < fp32.peak_bytes


@pytest.mark.integration
def test_cli_prints_a_row_per_trainer_and_leaves_results_alone(planned_dataset):
    env = planned_dataset["env"]
    before = sorted(p.name for p in planned_dataset["results"].parent.rglob("*"))
    result = run_cli(["nnUNetv2_ccesemi_estimate_memory", "-d", str(DATASET_ID), "-c", CONFIG, "-tr", "nnUNetTrainer",
                      "nnUNetTrainerCPS_5epochs"], env)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| nnUNetTrainer")]
    assert [row.split("|")[1].strip() for row in rows] == ["nnUNetTrainer", "nnUNetTrainerCPS_5epochs"]
    assert rows[0].rstrip().endswith("| 1.00 |")
    assert "Please cite" not in result.stdout  # nnU-Net's banner stays out of the table
    assert sorted(p.name for p in planned_dataset["results"].parent.rglob("*")) == before


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["-c", "3d_nonexistent"], "configuration '3d_nonexistent' is not in .*nnUNetPlans.json; it has .*3d_cpu"),
    (["-p", "nnUNetResEncPlans"], "no plans file .*nnUNetResEncPlans.json: run nnUNetv2_plan_and_preprocess"),
    (["-tr", "nnUNetTrainerCCEE"], "ERROR: Could not find requested nnunet trainer nnUNetTrainerCCEE"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_cli_bad_input_is_named(planned_dataset, args, message):
    import re

    result = run_cli(["nnUNetv2_ccesemi_estimate_memory", "-d", str(DATASET_ID), *args], planned_dataset["env"],
                     check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-2000:]


def test_cli_without_nnunet_preprocessed_says_so(tmp_path):
    from conftest import clean_env

    env = clean_env(tmp_path)
    del env["nnUNet_preprocessed"]
    result = run_cli(["nnUNetv2_ccesemi_estimate_memory", "-d", str(DATASET_ID)], env, check=False)
    assert result.returncode != 0 and "nnUNet_preprocessed is not set" in result.stderr


def test_average_pooling_keeps_the_16_bit_dtype_as_cuda_autocast_does():
    """CPU autocast runs avg_pool3d in float32 (CUDA in the input's precision): the estimate undoes that,
    or every residual-encoder skip would count a float32 copy of its feature map."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nnunet_ccesemi.training.memory_estimate import _CPU_ONLY_FLOAT32_OPS, _in_input_precision

    assert "avg_pool3d" in _CPU_ONLY_FLOAT32_OPS
    with FakeTensorMode(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(1, 4, 8, 8, 8, dtype=torch.bfloat16)
        assert torch.nn.functional.avg_pool3d(x, 2).dtype == torch.float32
        assert _in_input_precision(torch.nn.functional.avg_pool3d)(x, 2).dtype == torch.bfloat16
