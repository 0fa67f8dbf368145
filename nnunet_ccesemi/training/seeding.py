"""Seeded nnU-Net runs: nnU-Net never seeds, so two runs of one command differ. The plugin's trainers
seed Python, NumPy and torch from ``nnUNet_ccesemi_seed`` (a fresh seed when unset) and log it, so that
every run can be repeated and the methods compared at equal seeds."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import distributed as dist

from nnunet_ccesemi import __version__
from nnunet_ccesemi.atomic import remove_stale_temporaries
from nnunet_ccesemi.losses.distributed import distributed_active
from nnunet_ccesemi.training.checkpoint import atomic_torch_save
from nnunet_ccesemi.training.networks import unwrap

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


def worker_seeds(seed: int, stream: int, num_workers: int) -> list[int]:
    """One seed per background augmentation worker of one data stream (``stream``: a number per loader).

    batchgenerators' workers left unseeded keep the torch generator of the process they were forked from,
    so every worker, of every loader forked from the same state, draws the same torch numbers: the
    same decisions of batchgeneratorsv2's torch-driven transforms (whether to apply each one, the mirror
    axes) in each worker. Seeds drawn from ``seed`` and ``stream`` give each worker its own.
    """
    # SeedSequence takes non-negative entropy; nnUNet_ccesemi_seed may be negative
    return [int(value) for value in np.random.SeedSequence([seed % 2**64, stream]).generate_state(num_workers)]


def saved_seed(checkpoint_file: str) -> int | None:
    """The seed a checkpoint's run used (None for nnU-Net's own checkpoints); the tensors are only mapped,
    not read, where the file is in torch's zip format."""
    try:
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # torch's legacy format cannot be mapped; nnU-Net's loader reads it whole too
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    return checkpoint.get("seed")


class SeededFromEnvironment:
    """Mix in before an nnU-Net trainer class: the run is seeded from ``nnUNet_ccesemi_seed`` before the
    networks are built, the seed is written to the training log and to every checkpoint (written atomically,
    so a kill mid-save leaves the previous one), and ``--c`` goes on with the checkpoint's seed."""

    # nnU-Net derives its saved init kwargs from this exact signature: keep it unchanged
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.seed = seed_from_environment()
        self._checkpoint_seed: int | None = None  # the seed of the checkpoint resumed from, once handled

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
        self.remove_interrupted_writes()

    def remove_interrupted_writes(self) -> None:
        """Deletes the temporary files a killed run left in the output folder (a checkpoint being written)."""
        if self.local_rank == 0:
            for path in remove_stale_temporaries(self.output_folder):
                self.print_to_log_file(f"removed {path}, a temporary file of an interrupted earlier run")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_contents(self) -> dict:
        """What a checkpoint holds: nnU-Net's keys (its predictor and ``--c`` read them), the seed and the
        plugin's version."""
        return {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "seed": self.seed,
            "ccesemi_version": __version__,
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        atomic_torch_save(self.checkpoint_contents(), filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str):
            self.resume_seed(saved_seed(filename_or_checkpoint))
        super().load_checkpoint(filename_or_checkpoint)

    def resume_seed(self, saved: int | None) -> None:
        """A resumed run goes on with the seed of the run it continues (the one its log names), unless
        ``nnUNet_ccesemi_seed`` asks for another. Called before :meth:`initialize` where possible, so that
        the log's seed line names the seed the run goes on with."""
        if saved is None or saved == self.seed or saved == self._checkpoint_seed:
            return
        self._checkpoint_seed = saved
        if SEED_VARIABLE in os.environ:
            self.print_to_log_file(f"the checkpoint's run used seed {saved}; continuing with "
                                   f"{SEED_VARIABLE}={self.seed}")
        else:
            self.seed = saved
            self.print_to_log_file(f"continuing with the checkpoint's seed {saved}")
