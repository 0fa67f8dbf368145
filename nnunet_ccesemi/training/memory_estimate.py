"""Peak memory of one training step, estimated without the accelerator and without allocating it.

A user with a 16 GB card wants to know before a multi-day run whether ``nnUNetTrainerCCE`` fits the
plans nnU-Net made, or whether the ``_lowMem`` variant is needed. This module answers on any CPU:

* the trainer is built from the plans and takes two real training steps (``train_step``: its
  networks, nnU-Net's deep-supervision Dice+CE, the semi-supervised objective, clipping and SGD) on
  **fake tensors** (:class:`torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes and
  strides, no data and no arithmetic, so a step of two 3D U-Nets at full resolution takes seconds);
* AMP is modelled by CPU autocast in bfloat16, whose casting rules give the same 2-byte activations
  as CUDA's float16 autocast for the operators of nnU-Net's networks (convolutions, instance norms,
  nonlinearities) and the same float32 casts in the losses (softmax, log-softmax, norms), except
  average pooling, which runs here in the input's precision as on CUDA; parameters, gradients and
  SGD momentum stay float32, as under AMP;
* :class:`LiveTensorMemory`, a dispatch mode, adds up the bytes of every live tensor storage after
  each operator, forwards and backwards; the maximum of the step after the first completed SGD step
  is the estimate (that step creates the momentum buffers, which every later step carries).

What it leaves out: cuDNN convolution workspaces, the CUDA caching allocator's rounding and
fragmentation (``max_memory_allocated`` counts neither fragmentation nor the CUDA context), the
grad scaler's few scalars, and data-loader pinned memory. What it adds: under a dispatch mode autograd
takes the out-of-place variant of the updates it otherwise makes in place (adding a second gradient
into a tensor used twice, such as decoder features that feed both the segmentation head and the
contrastive term; the backward of ``gather``, ``index`` and ``index_select``), so each such update
counts one extra copy of its tensor for the length of one operator. ``benchmarks/memory_estimate.py``
compares the estimate with peaks measured on a GPU.

A step that asks the host for a tensor's value (``.item()``, a boolean mask's size) cannot run on
fake tensors: the estimate then fails with the operator's name, which also exposes the host
synchronisation itself.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, Iterable, Optional
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 2 ** 30

# CPU autocast runs average pooling in float32, CUDA's in the input's precision; the residual encoder's
# downsampling skips use it, and a float32 copy of a full-resolution map would count gigabytes CUDA
# never allocates. Under the estimate these run with autocast off, so they keep bfloat16 as on CUDA.
_CPU_ONLY_FLOAT32_OPS = ("avg_pool2d", "avg_pool3d")


def _in_input_precision(function):
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return function(*args, **kwargs)
    return wrapper


class LiveTensorMemory(TorchDispatchMode):
    """Bytes held by live tensor storages, and their maximum, as operators run (a dispatch mode).

    Every tensor an operator returns is counted once per storage (views share their base's storage)
    from the moment it is created until its storage is freed. This is what a caching allocator's
    "allocated" counter sees, without its block rounding. Tensors made before the mode was entered
    (parameters, say) are counted once passed to :meth:`track`.

    Usage::

        with LiveTensorMemory() as memory:
            memory.track(model.parameters())
            loss = model(x).sum(); loss.backward()
        memory.peak_bytes
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._add(tensor)
        self._update_peak()

    def reset_peak(self) -> None:
        """Sets the maximum to what is alive now (``torch.cuda.reset_peak_memory_stats``)."""
        self._release_freed()
        self.peak_bytes = self.current_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        # Free first, then add: an operator's inputs that died with it no longer count, its output does.
        self._release_freed()
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        self._update_peak()
        return output

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        reference = StorageWeakRef(storage)
        if reference.cdata not in self._live:
            size = storage.nbytes()
            self._live[reference.cdata] = (reference, size)
            self.current_bytes += size

    def _release_freed(self) -> None:
        freed = [key for key, (reference, _) in self._live.items() if reference.expired()]
        for key in freed:
            self.current_bytes -= self._live.pop(key)[1]

    def _update_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)


@dataclass(frozen=True)
class StepMemory:
    """The estimate for one trainer, in bytes."""

    trainer: str
    peak_bytes: int
    """Maximum over a training step after the first: what ``torch.cuda.max_memory_allocated`` would report."""
    resident_bytes: int
    """Held between steps: parameters, SGD momentum (and the prototype banks)."""
    parameters: int
    """Number of trainable parameters (both networks for a dual-network trainer)."""

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def resident_gib(self) -> float:
        return self.resident_bytes / GIB


class HostSynchronisationError(RuntimeError):
    """The step failed on fake tensors before its optimiser step.

    Usually it asked the host for a value computed on the device (``.item()``, the size of a boolean
    mask's selection), which fake tensors do not have; rarely an operator has no fake-tensor kernel.
    The message carries the original error.
    """


def estimate_step_memory(
    trainer_class: type,
    plans: dict,
    configuration: str,
    dataset_json: dict,
    *,
    autocast_dtype: Optional[torch.dtype] = torch.bfloat16,
    batch_size: Optional[int] = None,
    step: Optional[Callable[[object, dict], object]] = None,
    name: Optional[str] = None,
    fake: bool = True,
    device: str = "cpu",
) -> StepMemory:
    """Peak memory of a ``trainer_class.train_step`` on the plans' patch and batch size, once SGD has stepped.

    Args:
        trainer_class: ``nnUNetTrainer`` or a subclass (dual-network trainers included).
        plans, configuration, dataset_json: as nnU-Net's trainers take them.
        autocast_dtype: the 2-byte dtype standing in for AMP's float16; ``None`` for float32 (nnU-Net
            on the CPU, or on a GPU without AMP).
        batch_size: overrides the plans' batch size (the labelled batch; the unlabelled one matches).
        step: ``step(trainer, batch)`` runs one step instead of ``trainer.train_step(batch)`` (the
            benchmarks' bare two-network floors); it must end with the optimiser's step.
        name: the row's name (default: the trainer class's).
        fake: ``False`` runs on real CPU tensors instead (slow at real sizes; it checks the estimate).
        device: ``"cuda"`` measures instead of estimating: real tensors on the GPU, the trainer's own
            AMP (float16, grad scaler), and the peak of ``torch.cuda.max_memory_allocated``
            (``autocast_dtype`` and ``fake`` are then ignored). This is how the estimate is checked.

    Raises:
        HostSynchronisationError: the step reads a device value on the host before the optimiser
            step (e.g. ``.item()`` in a loss), naming the operator.
    """
    plans = {**plans, "continue_training": False}
    on_gpu = torch.device(device).type == "cuda"
    fake = fake and not on_gpu
    with ExitStack() as stack:
        output_folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ccesemi_memory_"))
        if fake:
            stack.enter_context(FakeTensorMode())
        for op_name in () if on_gpu else _CPU_ONLY_FLOAT32_OPS:
            stack.enter_context(mock.patch.object(torch.nn.functional, op_name,
                                                  _in_input_precision(getattr(torch.nn.functional, op_name))))
        # No data exists: the estimate must not need the preprocessed cases.
        stack.enter_context(mock.patch("nnunetv2.training.nnUNetTrainer.nnUNetTrainer.infer_dataset_class",
                                       return_value=None))
        # The trainer creates its output folder and log when built: keep them out of the user's nnUNet_results.
        stack.enter_context(mock.patch.dict(os.environ, {"nnUNet_results": output_folder}))
        trainer = trainer_class(plans=plans, configuration=configuration, fold="all", dataset_json=dataset_json,
                                device=torch.device(device))
        # Module.to always swaps fake parameters, which their weak references forbid; everything is on
        # the CPU already, so moving is a no-op anyway.
        with mock.patch.object(torch.nn.Module, "to", lambda module, *args, **kwargs: module) if fake else ExitStack():
            trainer.initialize()
        if batch_size is not None:
            trainer.batch_size = batch_size
        # Mid-training, so every ramped term (the contrastive one starts at 0) is computed.
        trainer.current_epoch = trainer.num_epochs // 2
        batch = _synthetic_batch(trainer)
        inputs = [batch["data"], *tree_leaves(batch["target"])]
        if hasattr(trainer, "dataloader_unlabeled"):
            unlabeled = {"data": torch.randn_like(batch["data"])}
            trainer.dataloader_unlabeled = itertools.repeat(unlabeled)
            inputs.append(unlabeled["data"])  # on a GPU its device copy is live through the step, as the labelled one
        step_finished = []
        trainer.optimizer.register_step_post_hook(lambda *_: step_finished.append(True))
        networks = [trainer.network] + ([trainer.network_b] if getattr(trainer, "network_b", None) else [])
        memory = stack.enter_context(LiveTensorMemory())
        memory.track(inputs)
        for network in networks:
            memory.track(itertools.chain(network.parameters(), network.buffers()))
        if getattr(trainer, "objective", None) is not None:
            memory.track(trainer.objective.buffers())
        step_dtype = torch.float16 if on_gpu else autocast_dtype
        # Warm up until SGD has stepped once (its momentum buffers exist from then on): on a GPU the
        # grad scaler skips the steps whose gradients overflowed, typically the first ones.
        for _ in range(5):
            _run_train_step(trainer, batch, step_dtype, step_finished, step, fake)
            if step_finished:
                break
        memory.reset_peak()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        _run_train_step(trainer, batch, step_dtype, step_finished, step, fake)
        resident = _resident_bytes(trainer, networks)
        parameters = sum(p.numel() for network in networks for p in network.parameters())
        peak = torch.cuda.max_memory_allocated(trainer.device) if on_gpu else memory.peak_bytes
    return StepMemory(name or trainer_class.__name__, peak, resident, parameters)


def _synthetic_batch(trainer) -> dict:
    patch_size = list(trainer.configuration_manager.patch_size)
    data = torch.randn(trainer.batch_size, trainer.num_input_channels, *patch_size)
    # nnU-Net's loader yields int16 segmentations, downsampled per deep-supervision output; for regions
    # one bool channel per region (plus the ignore label's, which nnU-Net appends as a last region)
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else [[1.0] * len(patch_size)]
    label_manager = trainer.label_manager
    if label_manager.has_regions:
        channels = len(label_manager.foreground_regions) + int(label_manager.has_ignore_label)
        dtype = torch.bool
    else:
        channels, dtype = 1, torch.int16
    target = [torch.zeros(trainer.batch_size, channels, *[round(s * f) for s, f in zip(patch_size, scale)],
                          dtype=dtype) for scale in scales]
    return {"data": data, "target": target if trainer.enable_deep_supervision else target[0]}


def _run_train_step(trainer, batch: dict, autocast_dtype, step_finished: list, step, fake: bool) -> None:
    # nnU-Net enables autocast only on CUDA; an outer CPU autocast models it (the inner no-op context
    # does not switch it off), forwards and losses included, as nnU-Net's train_step has them. On a GPU
    # the trainer's own autocast is on; the outer one covers the benchmarks' floor steps.
    device_type = trainer.device.type
    steps_before = len(step_finished)
    autocast = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else torch.autocast(
        device_type, enabled=False)
    try:
        with autocast:
            trainer.train_step(batch) if step is None else step(trainer, batch)
    except Exception as error:
        if not fake:
            raise
        # A train_step's last line copies the loss to the host, which fake tensors cannot: fine once SGD ran.
        if len(step_finished) == steps_before:
            raise HostSynchronisationError(
                f"{trainer.__class__.__name__}.train_step failed on fake tensors before its optimiser step "
                f"({type(error).__name__}: {error}): it reads a device value on the host (.item(), a boolean mask's "
                f"size), or an operator lacks a fake-tensor kernel; its memory cannot be estimated this way") from error


def _resident_bytes(trainer, networks) -> int:
    tensors = [t for network in networks for t in itertools.chain(network.parameters(), network.buffers())]
    tensors += [t for state in trainer.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    if getattr(trainer, "objective", None) is not None:
        tensors += list(trainer.objective.buffers())
    storages = {StorageWeakRef(t.untyped_storage()).cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def describe(estimates: list[StepMemory], reference: Optional[StepMemory] = None) -> str:
    """A Markdown table of the estimates (and their ratio to ``reference``)."""
    lines = ["| trainer | parameters (M) | resident GiB | peak GiB |" + (" / reference |" if reference else ""),
             "|---|---|---|---|" + ("---|" if reference else "")]
    for estimate in estimates:
        row = (f"| {estimate.trainer} | {estimate.parameters / 1e6:.1f} | {estimate.resident_gib:.2f} | "
               f"{estimate.peak_gib:.2f} |")
        if reference:
            row += f" {estimate.peak_bytes / reference.peak_bytes:.2f} |"
        lines.append(row)
    return "\n".join(lines)


