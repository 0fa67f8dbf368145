"""Atomic checkpoint files.

``torch.save`` straight onto the final path (nnU-Net's way) leaves a truncated file when the process
dies mid-write, and ``--c`` then fails on the only checkpoint there is. We write next to it and
rename: the old checkpoint stays valid until the new one is complete.
"""
from __future__ import annotations

import torch

from nnunet_ccesemi.atomic import atomic_path

PEER_WEIGHTS_KEY = "network_b_weights"


def atomic_torch_save(obj, filename: str) -> None:
    with atomic_path(filename) as tmp:
        torch.save(obj, tmp)


class CheckpointError(RuntimeError):
    """A checkpoint that this trainer cannot resume from."""


def check_dual_network_checkpoint(checkpoint: dict, filename: str, trainer_name: str) -> None:
    if PEER_WEIGHTS_KEY not in checkpoint:
        raise CheckpointError(
            f"{filename} holds no network B ('{PEER_WEIGHTS_KEY}'): it was written by "
            f"{checkpoint.get('trainer_name', 'an unknown trainer')}, not by a dual-network trainer like "
            f"{trainer_name}. Resume with the trainer that wrote it, or start without --c.")
