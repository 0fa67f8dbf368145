"""Seeded nnU-Net runs: nnU-Net never seeds, so two runs of one command differ. The plugin's trainers
seed Python, NumPy and torch from ``nnUNet_ccesemi_seed`` (a fresh seed when unset) and log it, so that
every run can be repeated and the methods compared at equal seeds."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import distributed as dist

from nnunet_ccesemi.losses.distributed import distributed_active

SEED_VARIABLE = "nnUNet_ccesemi_seed"


def seed_from_environment() -> int:
    """The seed in ``nnUNet_ccesemi_seed``, or a fresh one (nnU-Net itself never seeds: runs differ)."""
    value = os.environ.get(SEED_VARIABLE)
    if value is None:
        return random.SystemRandom().randrange(2**31)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_VARIABLE} must be an integer, got {value!r}") from None


def shared_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank of an initialised process group (``seed`` itself without one).

    Unset ``nnUNet_ccesemi_seed`` makes each rank draw its own seed; the log shows rank 0's, and
    setting it must repeat the run, so every rank derives its streams from that one.
    """
    if not distributed_active():
        return seed
    shared = [seed]
    dist.broadcast_object_list(shared, src=0)
    return int(shared[0])


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (which nnU-Net's loaders and inits use)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, rank: int, start_epoch: int) -> int:
    """The seed of a run's random streams (initialisation, patches, augmentation): ``seed + rank`` for
    a fresh run; a run resumed at ``start_epoch`` > 0 gets a seed of its own, so that it does not replay
    the patches and augmentations of epoch 0."""
    return seed + rank + 10_000 * start_epoch


class SeededFromEnvironment:
    """Mix in before an nnU-Net trainer class: the run is seeded from ``nnUNet_ccesemi_seed`` before the
    networks are built, reseeded when ``--c`` resumes it, and the seed is written to the training log."""

    # nnU-Net derives its saved init kwargs from this exact signature: keep it unchanged
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.seed = seed_from_environment()

    def initialize(self):
        self.seed = shared_seed(self.seed)
        # each DDP rank its own stream of random patches, as nnU-Net's unseeded ranks have
        seed_everything(stream_seed(self.seed, self.local_rank, 0))
        super().initialize()
        self.print_to_log_file(f"seed {self.seed} for Python, NumPy and torch (set {SEED_VARIABLE}={self.seed} to "
                               f"repeat it; runs repeat exactly on the CPU with nnUNet_n_proc_DA=0)")

    def on_train_start(self):
        if self.current_epoch > 0:  # resumed (--c): reseed before nnU-Net starts the loaders
            seed_everything(stream_seed(self.seed, self.local_rank, self.current_epoch))
        super().on_train_start()
