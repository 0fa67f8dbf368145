"""Network B: a second network from the same plans, of the other encoder family.

The paper pairs a V-Net with a ResNet-34-encoder V-Net for diversity. In nnU-Net terms: when the
plans build a ``PlainConvUNet`` for A, B is a ``ResidualEncoderUNet`` with the same stages, widths,
kernels and strides (residual blocks per stage, and one convolution per decoder stage, as in nnU-Net's
ResEnc presets), and vice versa: a ``ResidualEncoderUNet`` A (nnU-Net's ResEnc plans) gets a
``PlainConvUNet`` B with two convolutions per encoder stage and A's decoder (one convolution per stage
in those presets; kept so that B's checkpoints stay loadable).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _per_stage(values: Sequence[int], n_stages: int) -> list[int]:
    """Stretch a per-stage list to ``n_stages`` entries by repeating its last value."""
    values = list(values)
    return (values + [values[-1]] * n_stages)[:n_stages]


def peer_architecture(configuration_manager: ConfigurationManager, kind: str,
                      blocks_per_stage: Sequence[int],
                      decoder_convs_per_stage: Optional[int] = None) -> tuple[str, dict, tuple]:
    """Class name, kwargs and import-requiring kwarg names of network B.

    Args:
        configuration_manager: the configuration network A is planned from.
        kind: ``"same"`` (A's architecture, own initialisation) or ``"residual"`` (the other family).
        blocks_per_stage: residual blocks per encoder stage when B is a residual-encoder U-Net.
        decoder_convs_per_stage: convolutions per decoder stage when B is a residual-encoder U-Net
            (``None``: A's).

    Raises:
        ValueError: for ``"residual"`` when A is neither a plain nor a residual-encoder U-Net.
    """
    class_name = configuration_manager.network_arch_class_name
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    requires_import = tuple(configuration_manager.network_arch_init_kwargs_req_import)
    if kind == "same":
        return class_name, kwargs, requires_import
    short_name = class_name.split(".")[-1]
    n_stages = kwargs["n_stages"]
    if short_name == "PlainConvUNet":
        kwargs.pop("n_conv_per_stage")
        kwargs["n_blocks_per_stage"] = _per_stage(blocks_per_stage, n_stages)
        if decoder_convs_per_stage is not None:
            kwargs["n_conv_per_stage_decoder"] = [decoder_convs_per_stage] * (n_stages - 1)
        return RESENC_UNET, kwargs, requires_import
    if short_name == "ResidualEncoderUNet":
        for key in ("n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"):
            kwargs.pop(key, None)
        kwargs["n_conv_per_stage"] = [2] * n_stages
        return PLAIN_UNET, kwargs, requires_import
    raise ValueError(
        f"network B 'residual' needs network A to be a PlainConvUNet or ResidualEncoderUNet, but the plans "
        f"build {class_name}. Set peer_architecture='same' in the trainer's method_config.")


def build_peer_network(configuration_manager: ConfigurationManager, num_input_channels: int,
                       num_output_channels: int, enable_deep_supervision: bool, kind: str,
                       blocks_per_stage: Sequence[int], decoder_convs_per_stage: Optional[int] = None
                       ) -> torch.nn.Module:
    class_name, kwargs, requires_import = peer_architecture(configuration_manager, kind, blocks_per_stage,
                                                            decoder_convs_per_stage)
    return get_network_from_plans(class_name, kwargs, requires_import, num_input_channels, num_output_channels,
                                  allow_init=True, deep_supervision=enable_deep_supervision)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (for state dicts and hooks)."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


@contextlib.contextmanager
def batch_norm_statistics_kept(network: torch.nn.Module) -> Iterator[None]:
    """A forward pass in training mode that BatchNorm does not count: its running statistics (and batch
    counters) are put back afterwards.

    The low-memory step runs network B twice per iteration (once without gradients for A's
    pseudo-labels, once to train B); without this, a BatchNorm network B would move its running
    statistics twice per iteration, twice as fast as in the joint step. The pass's outputs are those
    of training mode (batch statistics) either way. Instance normalisation, nnU-Net's default, keeps no
    running statistics, so for it this changes nothing.
    """
    buffers = [buffer for module in network.modules()
               if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
               for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
               if buffer is not None]
    kept = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, kept):
                buffer.copy_(value)
