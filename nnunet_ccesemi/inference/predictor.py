"""Prediction with both networks of a dual-network checkpoint, through nnU-Net's own predictor.

:class:`DualNetworkPredictor` is nnU-Net's ``nnUNetPredictor`` (preprocessing, sliding window with
Gaussian weighting, mirroring, fold handling, resampling and export all unchanged) that runs the
sliding window once with network A and once with network B and averages their softmax outputs, the
paper's inference. With ``networks="a"`` it is the stock predictor; ``"b"`` uses B alone. For a
region dataset (nnU-Net's sigmoid outputs) it averages the two networks' sigmoid probabilities.

nnU-Net's export expects logits and applies its nonlinearity itself, so the averaged probabilities p̄
are handed over as ``log p̄`` (the softmax of ``log p̄`` is p̄ again), or for regions as
``log p̄ - log(1 - p̄)`` (whose sigmoid is p̄), both computed in log space from the networks' logits
(:func:`~nnunet_ccesemi.inference.uncertainty.logits_of_mean_probability`), and nnU-Net's region
export writes the label map.

Optionally it writes, per case, uncertainty maps in the input image's geometry into a separate
folder (so that nothing but segmentations sits in the prediction folder, where evaluation tools
look): ``<case>_entropy`` (normalised predictive entropy of p̄) and, with both networks,
``<case>_disagreement`` (symmetric KL between A and B); for regions, the mean binary entropy over
the regions and the symmetric Bernoulli KL summed over them (one map each).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from os.path import basename, join
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch._dynamo import OptimizedModule

from nnunet_ccesemi.atomic import atomic_path
from nnunet_ccesemi.config import MethodConfig
from nnunet_ccesemi.image_files import ImageFileError, check_image_file
from nnunet_ccesemi.inference.map_export import write_float_map
from nnunet_ccesemi.inference.uncertainty import (logits_of_mean_probability, predictive_entropy, symmetric_kl,
                                                  uncertainty_maps)
from nnunet_ccesemi.training.checkpoint import PEER_WEIGHTS_KEY, CheckpointError
from nnunet_ccesemi.training.checkpoint import saved_method_config
from nnunet_ccesemi.training.networks import build_peer_network

NETWORK_CHOICES = ("both", "a", "b")
# maps are written in the dataset's format, as one file: a detached header (.mhd, .nhdr) would name
# the data file its temporary name gave it, and atomic_path renames the header alone
MAP_ENDINGS = {".nii.gz": ".nii.gz", ".nii": ".nii", ".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha",
               ".mhd": ".mha"}


class DualNetworkPredictor(nnUNetPredictor):
    """nnU-Net's predictor over network A, network B, or the mean of both networks' softmax.

    Args:
        networks: ``"both"`` (mean softmax of A and B), ``"a"`` or ``"b"``.
        uncertainty_folder: where to write the per-case uncertainty maps; ``None`` writes none. They are
            written by ``predict_from_files`` and ``predict_from_data_iterator``; nnU-Net's single-array
            entry points (``predict_single_npy_array``) return the prediction without maps.
        **kwargs: nnUNetPredictor's arguments (tile_step_size, use_gaussian, use_mirroring, device, ...).
    """

    def __init__(self, networks: str = "both", uncertainty_folder: Optional[str] = None, **kwargs):
        if networks not in NETWORK_CHOICES:
            raise ValueError(f"networks must be one of {NETWORK_CHOICES}, got {networks!r}")
        super().__init__(**kwargs)
        self.networks = networks
        self.uncertainty_folder = uncertainty_folder
        self.network_b = None
        self.parameters_b: list[dict] = []
        self.method_config: Optional[MethodConfig] = None
        self._current_case: Optional[dict] = None

    # ------------------------------------------------------------------ loading
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Optional[Sequence] = None,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        if isinstance(use_folds, str):
            use_folds = [use_folds]
        checkpoints = [join(model_training_output_dir, f"fold_{fold}", checkpoint_name) for fold in use_folds]
        missing = [path for path in checkpoints if not os.path.isfile(path)]
        if missing:
            trained = sorted(name[len("fold_"):] for name in (os.listdir(model_training_output_dir)
                                                              if os.path.isdir(model_training_output_dir) else [])
                             if name.startswith("fold_")
                             and os.path.isfile(join(model_training_output_dir, name, checkpoint_name)))
            raise FileNotFoundError(
                f"no checkpoint at {missing[0]}" + (f" ({len(missing)} of the {len(checkpoints)} folds asked for "
                                                    f"lack {checkpoint_name})" if len(missing) > 1 else "")
                + f"; folds with {checkpoint_name}: {', '.join(trained) if trained else 'none'} (pick them with "
                f"-f, e.g. -f all after nnUNetv2_train ... all, another checkpoint with -chk, or train the fold "
                f"first)")
        peers = [self._peer_weights(path) for path in checkpoints]  # refuse single-network checkpoints first
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self.parameters_b = [weights for weights, _ in peers]
        self.method_config = peers[0][1]
        network_b = build_peer_network(
            self.configuration_manager,
            determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json),
            self.label_manager.num_segmentation_heads, False, self.method_config.peer_architecture,
            self.method_config.peer_blocks_per_stage, self.method_config.peer_decoder_convs_per_stage)
        network_b.load_state_dict(self.parameters_b[0])
        if isinstance(self.network, OptimizedModule):  # nnU-Net compiled A: do the same for B
            network_b = torch.compile(network_b)
        self.network_b = network_b

    @staticmethod
    def _peer_weights(checkpoint_path: str) -> tuple[dict, MethodConfig]:
        """Network B's weights and the method configuration of an existing checkpoint (missing ones are
        named, with the folds that exist, by :meth:`initialize_from_trained_model_folder`)."""
        try:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"cannot read the checkpoint {checkpoint_path} (damaged or truncated: copy it "
                                  f"again): {e}") from e
        if PEER_WEIGHTS_KEY not in checkpoint:
            raise CheckpointError(
                f"{checkpoint_path} holds no network B ('{PEER_WEIGHTS_KEY}'): it was written by "
                f"{checkpoint.get('trainer_name', 'an unknown trainer')}, a single-network trainer. Predict it "
                f"with nnUNetv2_predict, or pass a dual-network trainer's results (e.g. -tr nnUNetTrainerCCE).")
        return checkpoint[PEER_WEIGHTS_KEY], saved_method_config(checkpoint)

    # ------------------------------------------------------------------ prediction
    @contextlib.contextmanager
    def _using(self, network: torch.nn.Module, parameters: list[dict]):
        """nnU-Net's sliding window reads ``self.network`` and ``self.list_of_parameters``: swap them."""
        saved = self.network, self.list_of_parameters
        self.network, self.list_of_parameters = network, parameters
        try:
            yield
        finally:
            self.network, self.list_of_parameters = saved

    def _logits(self, data: torch.Tensor, network: str) -> torch.Tensor:
        """One network's logits, averaged over the folds as nnU-Net does."""
        if network == "a":
            logits = super().predict_logits_from_preprocessed_data(data)
        else:
            with self._using(self.network_b, self.parameters_b):
                logits = super().predict_logits_from_preprocessed_data(data)
        return logits.float()

    def _probabilities(self, data: torch.Tensor, network: str) -> torch.Tensor:
        """One network's probabilities (softmax, or sigmoid for regions)."""
        return self.label_manager.apply_inference_nonlin(self._logits(data, network))

    @torch.inference_mode()
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        if self.network_b is None:  # initialised by nnU-Net's manual_initialization: A only
            self._check_network_b_loaded()
            return super().predict_logits_from_preprocessed_data(data)
        members = ("a", "b") if self.networks == "both" else (self.networks,)
        regions = self.label_manager.has_regions
        writes_maps = self.uncertainty_folder is not None and self._current_case is not None \
            and self._current_case.get("ofile") is not None
        if not writes_maps:
            # one member's logits at a time besides the running log-sums
            return logits_of_mean_probability((self._logits(data, network) for network in members), regions)
        logits = [self._logits(data, network) for network in members]
        self._write_uncertainty_maps(uncertainty_maps(logits, regions), self._current_case)
        # handed over one by one, so that each member's logits are freed once they are in the log-sums
        return logits_of_mean_probability((logits.pop(0) for _ in members), regions)

    def _check_network_b_loaded(self) -> None:
        """Refuse what needs network B when only A is there (nnU-Net's manual_initialization takes one network)."""
        if self.network_b is None and (self.networks != "a" or self.uncertainty_folder is not None):
            raise RuntimeError(
                f"network B is not loaded (the predictor was set up with manual_initialization, which takes "
                f"one network), so networks={self.networks!r}"
                + (" and uncertainty maps" if self.uncertainty_folder is not None else "")
                + " cannot be predicted: use initialize_from_trained_model_folder, or networks='a' without "
                "uncertainty_folder")

    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        self._check_network_b_loaded()  # before nnU-Net writes its argument files and starts its workers
        return super().predict_from_files(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
            overwrite, num_processes_preprocessing, num_processes_segmentation_export,
            folder_with_segs_from_prev_stage, num_parts, part_id)

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str = None):
        if self.uncertainty_folder is not None:
            # nnU-Net's sequential loop hands the sliding window the image alone: no case name, no geometry
            raise ValueError("uncertainty maps are written by predict_from_files (and predict_from_data_iterator), "
                             "not by nnU-Net's sequential mode: use predict_from_files, or set "
                             "uncertainty_folder=None")
        self._check_network_b_loaded()
        return super().predict_from_files_sequential(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
            overwrite, folder_with_segs_from_prev_stage)

    def predict_from_data_iterator(self, data_iterator: Iterable, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        self._check_network_b_loaded()
        if self.uncertainty_folder is None:
            return super().predict_from_data_iterator(data_iterator, save_probabilities,
                                                      num_processes_segmentation_export)
        os.makedirs(self.uncertainty_folder, exist_ok=True)

        def remembering_the_case(items):
            # nnU-Net's loop takes one case and then predicts it: the maps need its file name and geometry
            for item in items:
                self._current_case = item
                yield item

        try:
            return super().predict_from_data_iterator(remembering_the_case(data_iterator), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            self._current_case = None
            if isinstance(data_iterator, MultiThreadedAugmenter):
                data_iterator._finish()

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       folder_with_segs_from_prev_stage=None, overwrite: bool = True, part_id: int = 0,
                                       num_parts: int = 1, save_probabilities: bool = False):
        """nnU-Net's list of cases to predict. With ``--continue_prediction`` a case counts as done only when
        its outputs are complete: nnU-Net checks that the files exist, but its export writes them in place,
        so a run stopped mid-export leaves a truncated segmentation (or ``.npz``) that it would keep; a case
        whose uncertainty maps are missing is predicted again too."""
        if overwrite:
            return super()._manage_input_and_output_lists(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                folder_with_segs_from_prev_stage, overwrite, part_id, num_parts, save_probabilities)
        inputs, outputs, previous = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, True, part_id, num_parts, save_probabilities)
        if outputs is None:
            return inputs, outputs, previous
        todo = [i for i, output in enumerate(outputs) if not self._case_is_done(output, save_probabilities)]
        missing = ", probabilities" if save_probabilities else ""
        missing += " or uncertainty maps" if self.uncertainty_folder is not None else ""
        print(f"--continue_prediction: {len(todo)} of {len(outputs)} cases lack a complete segmentation{missing}")
        return [inputs[i] for i in todo], [outputs[i] for i in todo], [previous[i] for i in todo]

    def _case_is_done(self, output_truncated: str, save_probabilities: bool) -> bool:
        if self.uncertainty_folder is not None:  # written atomically: present means complete
            ending = self._map_ending()
            if not all(os.path.isfile(join(self.uncertainty_folder, f"{basename(output_truncated)}_{name}{ending}"))
                       for name in self._map_names()):
                return False
        try:
            check_image_file(output_truncated + self.dataset_json["file_ending"], "segmentation")
            if save_probabilities:
                # the zip's directory is written last: a cut .npz has none (no need to decompress it)
                zipfile.ZipFile(output_truncated + ".npz").close()
        except (ImageFileError, OSError, zipfile.BadZipFile):
            return False
        return True

    def _map_names(self) -> tuple[str, ...]:
        return ("entropy", "disagreement") if self.networks == "both" else ("entropy",)

    def _map_ending(self) -> str:
        return MAP_ENDINGS.get(self.dataset_json.get("file_ending", ".nii.gz"), ".nii.gz")

    def probabilities_per_case(self, input_files: list[list[str]], case_ids: list[str],
                               num_processes_preprocessing: int = 1
                               ) -> Iterator[tuple[str, dict, torch.Tensor, torch.Tensor]]:
        """(case ID, properties, probabilities of A, of B (softmax, or sigmoid for regions)) per case on the network grid, each case
        preprocessed once (in background workers) and slid once per network as nnU-Net predicts;
        nothing is exported."""
        iterator = self._internal_get_data_iterator_from_lists_of_filenames(
            input_files, [None] * len(input_files), list(case_ids), num_processes_preprocessing)
        try:
            for item in iterator:
                data = item["data"]
                if isinstance(data, str):  # nnU-Net hands large cases over as a temporary .npy file
                    path, data = data, torch.from_numpy(np.load(data))
                    os.remove(path)
                with torch.inference_mode():
                    probs_a, probs_b = self._probabilities(data, "a"), self._probabilities(data, "b")
                yield basename(item["ofile"]), item["data_properties"], probs_a, probs_b
        finally:
            if isinstance(iterator, MultiThreadedAugmenter):
                iterator._finish()

    def write_uncertainty_maps(self, case_id: str, properties: dict, probs_a: torch.Tensor,
                               probs_b: torch.Tensor) -> None:
        """``<case>_entropy`` and ``<case>_disagreement`` into ``uncertainty_folder``, in the input's geometry."""
        os.makedirs(self.uncertainty_folder, exist_ok=True)
        regions = self.label_manager.has_regions
        maps = {"entropy": predictive_entropy((probs_a + probs_b) / 2, regions=regions),
                "disagreement": symmetric_kl(probs_a, probs_b, regions=regions)}
        self._write_uncertainty_maps(maps, {"data_properties": properties, "ofile": case_id})

    # ------------------------------------------------------------------ uncertainty export
    def _write_uncertainty_maps(self, maps: dict[str, torch.Tensor], case: dict) -> None:
        properties = case["data_properties"]
        stacked = torch.stack(list(maps.values())).cpu()
        in_input_geometry = self._to_input_geometry(stacked, properties)
        ending = self._map_ending()
        case_name = basename(case["ofile"])
        for name, volume in zip(maps, in_input_geometry):
            with atomic_path(join(self.uncertainty_folder, f"{case_name}_{name}{ending}")) as tmp:
                write_float_map(volume, properties, tmp)

    def _to_input_geometry(self, maps: torch.Tensor, properties: dict) -> np.ndarray:
        """The geometry steps of nnU-Net's export (resample, revert crop, revert transpose), for float maps."""
        plans, configuration = self.plans_manager, self.configuration_manager
        spacing_transposed = [properties["spacing"][i] for i in plans.transpose_forward]
        shape_before_resampling = properties["shape_after_cropping_and_before_resampling"]
        current_spacing = configuration.spacing if len(configuration.spacing) == len(shape_before_resampling) \
            else [spacing_transposed[0], *configuration.spacing]
        resampled = configuration.resampling_fn_probabilities(maps, shape_before_resampling, current_spacing,
                                                              spacing_transposed)
        resampled = np.asarray(resampled.cpu() if isinstance(resampled, torch.Tensor) else resampled, np.float32)
        # outside nnU-Net's crop (the zero border) the model made no decision: uncertainty 0
        full = np.zeros((resampled.shape[0], *properties["shape_before_cropping"]), np.float32)
        for channel in range(resampled.shape[0]):
            full[channel] = insert_crop_into_image(full[channel], resampled[channel],
                                                   properties["bbox_used_for_cropping"])
        return full.transpose([0] + [i + 1 for i in plans.transpose_backward])
