"""The objective under torch.compile (as on a GPU with nnU-Net's default nnUNet_compile), and the way back."""
from __future__ import annotations

import pytest
import torch

from nnunet_ccesemi.config import CCE_CONFIG
from nnunet_ccesemi.losses import DualNetworkObjective
from nnunet_ccesemi.training.compiled import CompiledWithEagerFallback


def _failing(error: Exception):
    def compiled(*args, **kwargs):
        raise error
    return compiled


def test_a_compiler_failure_is_logged_once_and_eager_execution_takes_over():
    messages, calls = [], []
    eager = lambda x: calls.append(x) or 2 * x  # noqa: E731
    step = CompiledWithEagerFallback(eager, messages.append, compiled=_failing(RuntimeError("triton: no kernel")))
    assert step(3) == 6 and step(4) == 8
    assert calls == [3, 4] and not step.is_compiled
    assert len(messages) == 1 and "RuntimeError: triton: no kernel" in messages[0] and "eagerly" in messages[0]


def test_out_of_memory_and_errors_eager_also_raises_pass_through():
    messages = []
    step = CompiledWithEagerFallback(lambda x: x, messages.append, compiled=_failing(torch.OutOfMemoryError("oom")))
    with pytest.raises(torch.OutOfMemoryError):
        step(1)
    assert step.is_compiled  # the trainer's low-memory switch decides, not this wrapper

    def bad_input(x):
        raise ValueError("logits must be (N, C, ...)")
    step = CompiledWithEagerFallback(bad_input, messages.append, compiled=_failing(ValueError("logits must be")))
    with pytest.raises(ValueError, match="logits must be"):
        step(1)
    assert step.is_compiled and messages == []


@pytest.mark.integration
def test_compiled_objective_equals_eager_and_compiles_once_for_changing_ramps():
    """Every term but the contrastive one (its voxel sample comes from the compiled random stream)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    generator = torch.Generator().manual_seed(0)
    shape = (4, 2, 8, 8, 8)
    logits = [torch.randn(shape, generator=generator, requires_grad=True) for _ in range(2)]
    features = [torch.randn(4, 4, *shape[2:], generator=generator, requires_grad=True) for _ in range(2)]
    target = torch.randint(0, 2, (2, 1, *shape[2:]), generator=generator)
    eager = DualNetworkObjective(CCE_CONFIG, 2)
    messages = []
    compiled = CompiledWithEagerFallback(DualNetworkObjective(CCE_CONFIG, 2), messages.append)
    for step in range(4):
        weights = dict(unsup_weight=0.1 + 0.2 * step, contrast_weight=0.01 + 0.02 * step)
        results = [objective(*logits, 2, target, *features, **weights) for objective in (compiled, eager)]
        (loss_c, stats_c), (loss_e, stats_e) = results
        assert stats_c.keys() == stats_e.keys()
        for key in stats_e:
            if not key.startswith(("contrast", "total")):
                torch.testing.assert_close(stats_c[key], stats_e[key], rtol=1e-5, atol=1e-6, msg=key)
        without_contrast = [loss - weights["contrast_weight"] * (stats["contrast_a"] + stats["contrast_b"])
                            for loss, stats in results]
        torch.testing.assert_close(*without_contrast, rtol=1e-5, atol=1e-6)
    assert compiled.is_compiled and messages == []
    # the first call, then one recompile that makes the ramp weights dynamic; none after
    assert counters["stats"]["unique_graphs"] <= 2


@pytest.mark.parametrize("trainer", ["nnUNetTrainerCPS", "nnUNetTrainerCCE", "nnUNetTrainerCCE_noEntropyFilter",
                                     "nnUNetTrainerCCE_noKLWeight", "nnUNetTrainerCCE_noContrast",
                                     "nnUNetTrainerCCE_releasedCode", "nnUNetTrainerCCE_classBalanced"])
@pytest.mark.parametrize("students", [("a", "b"), ("a",), ("b",)])
def test_objective_never_waits_for_the_host(trainer, students):
    """On fake tensors (no values) any .item(), nonzero or boolean-mask selection would raise: on a GPU each
    is a synchronisation that stalls the queue of kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import nnunet_ccesemi.trainers as trainers

    config = getattr(trainers, trainer).method_config
    with FakeTensorMode():
        shape = (4, 3, 6, 7, 8)
        logits = [torch.randn(shape, requires_grad=(net in students)) for net in "ab"]
        features = [torch.randn(4, 5, *shape[2:], requires_grad=True) if net in students else None for net in "ab"]
        target = torch.randint(0, 3, (2, 1, *shape[2:]))
        objective = DualNetworkObjective(config, 3)
        loss, stats = objective(*logits, 2, target, *features, unsup_weight=0.5, contrast_weight=0.05,
                                students=students)
        loss.backward()
    assert loss.shape == () and all(value.shape == () for value in stats.values())
