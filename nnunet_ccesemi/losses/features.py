"""Voxel features from a decoder stage, without forking the architecture (term 6 of ``METHOD.md``).

In dynamic_network_architectures' U-Nets, ``decoder.stages[-1]`` feeds the 1x1 segmentation head,
so its output is a full-resolution (B, F, *spatial) feature map; a forward hook captures it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def l2_normalize_voxels(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``f_v / max(||f_v||_2, eps)`` over the channel axis (dim 1), in float32.

    Args:
        features: (B, F, *spatial), any float dtype (float16 under autocast: the norm of a
            float16 vector of many channels can overflow, hence the float32 result).

    Returns:
        float32 tensor of the same shape, differentiable; an all-zero voxel stays zero.
    """
    if features.ndim < 3:
        raise ValueError(f"features must be (B, F, *spatial), got {tuple(features.shape)}")
    return F.normalize(features.float(), p=2.0, dim=1, eps=eps)


def inverse_l2_norm(values: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """``1 / max(||v||_2, eps)`` along ``dim`` (reduced), the factor ``F.normalize`` divides by.

    Written as ``rsqrt(max(sum v^2, eps^2))``: ``linalg.vector_norm`` over a non-innermost axis takes a
    slow strided path on the CPU (2.5x slower than this for a (2, 32, 48, 80, 96) feature map).
    """
    return torch.rsqrt((values * values).sum(dim).clamp_min(eps * eps))


def last_decoder_stage(network: nn.Module) -> nn.Module:
    """``network.decoder.stages[-1]``, the stage whose output the segmentation head reads.

    Raises:
        ValueError: naming the network's class when it has no such stage (a transformer such as
            Primus, or a custom architecture): the contrastive term has no voxel features to read there.
    """
    stages = getattr(getattr(network, "decoder", None), "stages", None)
    if not isinstance(stages, (nn.ModuleList, nn.Sequential)) or len(stages) == 0:
        raise ValueError(
            f"the voxel-prototype contrastive term reads the features of network.decoder.stages[-1], which "
            f"{type(network).__name__} does not have (dynamic_network_architectures' U-Nets do). Train with "
            f"contrast_weight=0 (e.g. -tr nnUNetTrainerCCE_noContrast) or a U-Net configuration.")
    return stages[-1]


class DecoderFeatureHook:
    """Captures the output of ``module`` on every forward call into :attr:`features`.

    The captured tensor keeps its graph (gradients flow into the network through it). Pass the
    unwrapped module: under DDP ``ddp.module.decoder.stages[-1]``, under ``torch.compile``
    ``compiled._orig_mod.decoder.stages[-1]`` (the caller unwraps; this class does not guess).
    A module returning a tuple or list contributes its first element.

    Usage::

        with DecoderFeatureHook(last_decoder_stage(network)) as hook:
            logits = network(x)
            features = hook.features
    """

    def __init__(self, module: nn.Module):
        self.features: Optional[torch.Tensor] = None
        self._handle = module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs, output) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        self.features = output

    def clear(self) -> None:
        """Drops the captured tensor (and with it the graph it holds alive)."""
        self.features = None

    def remove(self) -> None:
        """Unregisters the hook and drops the captured tensor; idempotent."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.clear()

    def __enter__(self) -> "DecoderFeatureHook":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()
