"""The endless stream of augmented unlabelled patches.

Built from nnU-Net's own pieces so that the unlabelled patches see exactly the labelled ones'
pipeline: its dataset class (memory-mapped ``.b2nd``), its ``nnUNetDataLoader`` (random crops, no
foreground oversampling: there is no foreground), its training transforms, and its background
augmenter processes.
"""
from __future__ import annotations

from typing import Sequence

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


def make_unlabeled_stream(dataset, batch_size: int, initial_patch_size, patch_size, label_manager, transforms,
                          num_processes: int, pin_memory: bool, seeds: Sequence[int] | None = None):
    """An iterator of ``{'data': (B, C, *patch) float32, 'keys': [...]}`` batches, forever.

    Args:
        dataset: an nnU-Net dataset over the preprocessed unlabelled folder.
        initial_patch_size: the enlarged crop the spatial transform rotates/scales down to ``patch_size``.
        transforms: nnU-Net's training transforms, built without deep supervision (no targets needed).
        num_processes: background augmentation workers; 0 = in the main process (deterministic).
        seeds: one per worker (NumPy's and torch's generators); ``None`` leaves the workers with the torch
            generator of this process, the same in each worker (batchgenerators' default).
    """
    loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size, patch_size, label_manager,
                              oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                              transforms=transforms, probabilistic_oversampling=False)
    # With an ignore label nnU-Net crops around annotated voxels; unlabelled cases have no annotation
    # (no class locations at all), so their crops stay uniformly random.
    loader.has_ignore = False
    if num_processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=num_processes,
                                        num_cached=max(6, num_processes // 2), seeds=seeds, pin_memory=pin_memory,
                                        wait_time=0.002)
