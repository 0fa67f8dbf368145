"""Atomic checkpoint files.

``torch.save`` straight onto the final path (nnU-Net's way) leaves a truncated file when the process
dies mid-write, and ``--c`` then fails on the only checkpoint there is. We write next to it and
rename: the old checkpoint stays valid until the new one is complete.
"""
from __future__ import annotations

import torch

from nnunet_ccesemi.atomic import atomic_path
from nnunet_ccesemi.config import MethodConfig
from nnunet_ccesemi.training.networks import peer_architecture

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


# Fields added after 0.1.0, with the value that reproduces what older checkpoints were trained with.
_LEGACY_DEFAULTS = {"peer_decoder_convs_per_stage": None}


def saved_method_config(checkpoint: dict) -> MethodConfig:
    """The method configuration a dual-network checkpoint was trained with.

    Tuples are restored, unknown keys (a newer version's) dropped, and fields the writing version did
    not have take the value that reproduces its behaviour, so network B is rebuilt as it was trained.
    """
    saved = {**_LEGACY_DEFAULTS, **(checkpoint.get("method_config") or {})}
    if "peer_blocks_per_stage" in saved:
        saved["peer_blocks_per_stage"] = tuple(saved["peer_blocks_per_stage"])
    known = MethodConfig.__dataclass_fields__
    return MethodConfig(**{k: v for k, v in saved.items() if k in known})


def check_peer_network_matches(checkpoint: dict, filename: str, config: MethodConfig, trainer_name: str,
                               configuration_manager) -> None:
    """Refuses to resume a checkpoint whose network B has another architecture than ``config`` builds.

    The architectures are compared as built from the ``configuration_manager`` of network A: fields
    that cannot change B (the residual settings when B is A's architecture) do not count.
    """
    saved = saved_method_config(checkpoint)

    def built(c: MethodConfig):
        return peer_architecture(configuration_manager, c.peer_architecture, c.peer_blocks_per_stage,
                                 c.peer_decoder_convs_per_stage)
    if built(saved) != built(config):
        raise CheckpointError(
            f"{filename} was trained with network B {saved.peer_network}, but {trainer_name} builds "
            f"{config.peer_network} (nnunet_ccesemi {checkpoint.get('ccesemi_version', '0.1.0')} wrote it). Resume it "
            f"with a subclass whose method_config sets these fields as saved, or start without --c. Prediction "
            f"(nnUNetv2_ccesemi_predict) rebuilds B from the checkpoint and needs nothing.")
