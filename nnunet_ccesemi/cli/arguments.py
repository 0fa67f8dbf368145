"""Arguments the model commands share with ``nnUNetv2_predict``: defaults from nnU-Net's environment
variables, and checks of the sliding-window step and the device before anything is loaded. Import-light (torch only when checking)."""
from __future__ import annotations

import os


def env_int(name: str, default: int) -> int:
    """nnUNetv2_predict's defaults for -npp/-nps: the environment variable where it holds an integer."""
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def check_step_size(step_size: float) -> None:
    """nnU-Net's sliding-window step, a fraction of the patch: refused here rather than by its assert."""
    if not 0 < step_size <= 1:
        raise ValueError(f"-step_size must be in (0, 1], got {step_size}")


def check_device(device: str) -> None:
    """Refuse a -device that torch cannot use here, before anything is loaded or written."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("-device cuda (the default), but torch finds no CUDA GPU on this machine; "
                         "pass -device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("-device mps, but torch's MPS backend is not available on this machine; "
                         "pass -device cpu")
