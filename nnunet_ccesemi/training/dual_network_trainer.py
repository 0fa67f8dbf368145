"""The dual-network trainer base: nnU-Net's trainer with a second network and an unlabelled stream.

Everything nnU-Net does for one network (planning, augmentation, deep supervision, SGD with the poly
schedule, AMP, ``torch.compile``, DDP, checkpoints) it does here for two; validation (the pseudo Dice,
``checkpoint_best``, the final validation) stays on network A, the network nnU-Net's tools load:

* network A is the network nnU-Net plans (``build_network_architecture``), the one the stock
  predictor loads from ``network_weights``; network B comes from the same plans
  (:mod:`nnunet_ccesemi.training.networks`);
* each iteration takes nnU-Net's labelled batch and an unlabelled batch of the same size, runs each
  network once on both (concatenated: one forward per network), and adds the semi-supervised
  objective of :mod:`nnunet_ccesemi.losses` to both networks' Dice+CE;
* one optimiser over both networks (the one ``configure_optimizers`` builds for A, nnU-Net's SGD or a
  mixed-in variant's, with B as a second parameter group on the same schedule), one backward pass,
  each network clipped at norm 12;
* or, with ``sequential_step`` (the ``_lowMem`` variants, and automatically after an out-of-memory
  error in the first epoch), one network's activations at a time, with the same gradients.

Subclasses choose the method by setting ``method_config`` (a frozen :class:`MethodConfig`): plain
cross pseudo supervision, CCE, or an ablation.
"""
from __future__ import annotations

import copy
import os
import warnings
from os.path import isdir, join
from time import perf_counter
from typing import List

import matplotlib
import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LRScheduler

from nnunet_ccesemi import __version__
from nnunet_ccesemi.atomic import atomic_path
from nnunet_ccesemi.config import CPS_CONFIG, MethodConfig
from nnunet_ccesemi.data.layout import (check_preprocessed_unlabeled, find_unlabeled_cases,
                                        preprocessed_unlabeled_folder, preprocessing_fingerprint, raw_unlabeled_folder)
from nnunet_ccesemi.data.stream import make_unlabeled_stream
from nnunet_ccesemi.losses import (DecoderFeatureHook, DualNetworkObjective, last_decoder_stage,
                                   merge_sequential_stats)
from nnunet_ccesemi.losses.regions import RegionLayout
from nnunet_ccesemi.losses.ramps import ramp_weights, unsupervised_rampup_length
from nnunet_ccesemi.training.checkpoint import (PEER_WEIGHTS_KEY, check_dual_network_checkpoint,
                                                check_peer_network_matches)
from nnunet_ccesemi.training.compiled import CompiledWithEagerFallback
from nnunet_ccesemi.training.diagnostics import dead_term_warnings
from nnunet_ccesemi.training.networks import batch_norm_statistics_kept, build_peer_network, unwrap
from nnunet_ccesemi.training.seeding import SeededFromEnvironment, stream_seed, worker_seeds

GRADIENT_CLIP_NORM = 12.0  # nnU-Net's value for its one network, applied to each network
STAT_PREFIX = "ccesemi_"  # logger keys of the method's per-epoch statistics
UNSUPERVISED_TERMS = ("disagreement", "entropy_filter", "cps", "cosine", "contrast", "total")
FRACTION_STATS = ("reliable_fraction", "agreement", "mean_kl_weight")
PER_CLASS_FRACTIONS = ("reliable_fraction_c", "prototype_present_c", "reliable_fraction_r", "prototype_present_r")
UNLABELED_STREAM = 1  # worker_seeds' stream number of the unlabelled loader
# A scheduler's lists with one entry per parameter group (LRScheduler's base_lrs, LambdaLR's lr_lambdas)
PER_GROUP_SCHEDULER_LISTS = ("base_lrs", "lr_lambdas")


def labeled_part(output, n_labeled: int):
    """The first ``n_labeled`` samples of a network output (a tensor or a deep-supervision list)."""
    if isinstance(output, (list, tuple)):
        return [o[:n_labeled] for o in output]
    return output[:n_labeled]


def full_resolution(output) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output


def add_peer_parameter_group(optimizer, lr_scheduler, network_b: torch.nn.Module, num_epochs: int,
                             trainer: str) -> None:
    """Adds network B's parameters, as a second group, to the optimiser and schedule built for network A.

    The pair is whatever the trainer's ``configure_optimizers`` returned for A (nnU-Net's SGD with the
    poly schedule, or a mixed-in variant's: AdamW, cosine annealing, ...); it is extended in place, not
    rebuilt, so B gets A's optimiser type and hyperparameters. B's group copies every setting of A's
    group (lr, ``initial_lr``, momentum, betas, weight decay, ...). A scheduler either sets every group's
    lr (nnU-Net's ``PolyLRScheduler``) or keeps one entry per group captured at construction
    (``base_lrs``, LambdaLR's ``lr_lambdas``); those lists get A's entry for B, so B is scheduled as A.
    A dry run of the whole schedule checks that, and anything that cannot be extended is refused.

    Args:
        optimizer, lr_scheduler: the pair of ``configure_optimizers``, one parameter group (A's).
        network_b: the plain module (not DDP- or compile-wrapped; the parameters are the same).
        num_epochs: the schedule's length, for the dry run.
        trainer: names the trainer and the class whose ``configure_optimizers`` built the pair, in errors.

    Raises:
        TypeError: the pair is not a ``torch.optim.Optimizer`` and an ``LRScheduler`` of it.
        ValueError: A has several groups (B, another architecture, has no counterpart of each), or the
            scheduler does not give both groups the same lr at every epoch.
    """
    _check_extensible(optimizer, lr_scheduler, trainer)
    optimizer.add_param_group(_group_like(optimizer.param_groups[0], network_b))
    for name in PER_GROUP_SCHEDULER_LISTS:
        entries = getattr(lr_scheduler, name, None)
        if isinstance(entries, list) and len(entries) == 1:
            entries.append(entries[0])
    _check_same_schedule(lr_scheduler, num_epochs, trainer)


def _check_extensible(optimizer, lr_scheduler, trainer: str) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{trainer} returned a {type(optimizer).__name__} as optimiser, not a torch.optim.Optimizer: "
                        f"network B cannot be added to it as a parameter group.")
    if not isinstance(lr_scheduler, LRScheduler) or lr_scheduler.optimizer is not optimizer:
        raise TypeError(f"{trainer} returned a {type(lr_scheduler).__name__} as learning-rate scheduler, not a "
                        f"torch LRScheduler of its optimiser: network B's parameter group cannot be scheduled "
                        f"with network A's.")
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"{trainer} builds {len(optimizer.param_groups)} parameter groups for network A; network "
                         f"B (its own architecture) has no counterpart of each. Use one group.")


def _group_like(group_a: dict, network_b: torch.nn.Module) -> dict:
    """A parameter group of B's parameters with every setting of A's group (names too, if A's has them)."""
    settings = {key: copy.deepcopy(value) for key, value in group_a.items() if key not in ("params", "param_names")}
    if "param_names" in group_a:
        return {**settings, "params": [("network_b." + n, p) for n, p in network_b.named_parameters()]}
    return {**settings, "params": list(network_b.parameters())}


def _check_same_schedule(lr_scheduler, num_epochs: int, trainer: str) -> None:
    """Steps a copy of the scheduler as nnU-Net does (``step(epoch)`` at each epoch's start) and requires
    every group's lr to equal A's throughout. The copy shares the parameter tensors (the deep copy's
    memo maps each to itself), so it costs the group dictionaries, not a copy of the networks."""
    parameters = {id(p): p for group in lr_scheduler.optimizer.param_groups for p in group["params"]}
    probe = copy.deepcopy(lr_scheduler, memo=parameters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on the epoch argument and on step() before optimizer.step()
        for epoch in range(num_epochs):
            try:
                probe.step(epoch)
            except (ValueError, IndexError) as error:
                raise ValueError(f"{trainer}: its {type(lr_scheduler).__name__} cannot step with network B's "
                                 f"parameter group added ({error}).") from error
            lrs = [group["lr"] for group in probe.optimizer.param_groups]
            if any(bool(lr != lrs[0]) for lr in lrs[1:]):
                raise ValueError(f"{trainer}: its {type(lr_scheduler).__name__} gives network B's parameter group "
                                 f"lr {lrs[1]} but network A's {lrs[0]} at epoch {epoch}: it does not schedule an "
                                 f"added group as the first one.")


def split_single_group_state(state_dict: dict, group_sizes: list[int]) -> dict | None:
    """An optimiser state of one group over A's parameters followed by B's (nnunet_ccesemi <= 0.2 built
    that SGD itself), as the two groups A and B have now; None for any other state (loaded as it is).

    The per-parameter state keeps its keys: a state dict numbers parameters across groups in order.
    """
    groups = state_dict["param_groups"]
    if len(groups) != 1 or len(group_sizes) != 2 or len(groups[0]["params"]) != sum(group_sizes):
        return None
    (group,) = groups
    params_a, params_b = group["params"][:group_sizes[0]], group["params"][group_sizes[0]:]
    return {**state_dict, "param_groups": [{**group, "params": params_a}, {**group, "params": params_b}]}


class nnUNetTrainerDualNetwork(SeededFromEnvironment, nnUNetTrainer):
    """Two networks, labelled + unlabelled batches, the objective chosen by ``method_config``."""

    method_config: MethodConfig = CPS_CONFIG
    # The low-memory sequential step (``_lowMem`` variants); the joint step switches to it by itself
    # when it runs out of memory during the first epoch of a run.
    sequential_step: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.network_b = None
        self.objective = None
        self.objective_step = None  # the objective, or its compiled form (same state: self.objective's)
        self.dataloader_unlabeled = None
        self._feature_hooks: list[DecoderFeatureHook] = []
        self._iteration_in_epoch = 0
        self._steps_this_run = 0
        self.unlabeled_folder = preprocessed_unlabeled_folder(self.preprocessed_dataset_folder_base,
                                                              self.configuration_manager.data_identifier)

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if self.is_cascaded:
            raise ValueError(f"{self.__class__.__name__} does not support cascade configurations "
                             f"({self.configuration_name}): unlabelled cases have no previous-stage prediction.")
        super().initialize()  # seeds first (SeededFromEnvironment), then nnU-Net builds network A
        config = self.method_config
        network_b = build_peer_network(self.configuration_manager, self.num_input_channels,
                                       self.label_manager.num_segmentation_heads, self.enable_deep_supervision,
                                       config.peer_architecture, config.peer_blocks_per_stage,
                                       config.peer_decoder_convs_per_stage).to(self.device)
        if config.contrast_weight > 0:
            # hooks go on the plain modules, before compile/DDP wrap them
            self._feature_hooks = [DecoderFeatureHook(last_decoder_stage(unwrap(net)))
                                   for net in (self.network, network_b)]
        if self._do_i_compile():
            network_b = torch.compile(network_b)
        if self.is_ddp:
            network_b = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(network_b), device_ids=[self.local_rank])
        self.network_b = network_b
        self._add_network_b_to_optimizer()
        self.objective = DualNetworkObjective(config, self.label_manager.num_segmentation_heads,
                                              ignore_index=self.label_manager.ignore_label,
                                              regions=RegionLayout.from_label_manager(self.label_manager)
                                              ).to(self.device)
        self.objective_step = (CompiledWithEagerFallback(self.objective, self.print_to_log_file)
                               if self._compile_objective() else self.objective)
        n_params = [sum(p.numel() for p in unwrap(n).parameters()) for n in (self.network, self.network_b)]
        self.print_to_log_file(
            f"nnunet_ccesemi {__version__}: network A {unwrap(self.network).__class__.__name__} "
            f"({n_params[0] / 1e6:.2f} M parameters), network B {unwrap(self.network_b).__class__.__name__} "
            f"({n_params[1] / 1e6:.2f} M parameters)\nmethod configuration: {config.describe()}")

    def _compile_objective(self) -> bool:
        """Compile the objective where nnU-Net compiles the networks (CUDA, ``nnUNet_compile`` not off), but
        not under DDP: its thresholds and prototypes are collectives, and a rank falling back to eager after
        its compiled graph failed part-way would leave the ranks' collectives out of step (a hang)."""
        return self._do_i_compile() and not self.is_ddp

    def _add_network_b_to_optimizer(self) -> None:
        """B joins the optimiser and schedule that nnU-Net's ``initialize`` got from ``configure_optimizers``
        for A. Extending that pair here, rather than overriding ``configure_optimizers``, works in either
        order of a mixed-in variant (``class T(nnUNetTrainerAdam, nnUNetTrainerCCE)`` resolves to Adam's
        method, which does not call ``super()``)."""
        owner = next(c.__name__ for c in type(self).__mro__ if "configure_optimizers" in vars(c))
        add_peer_parameter_group(self.optimizer, self.lr_scheduler, unwrap(self.network_b), self.num_epochs,
                                 f"{type(self).__name__} (configure_optimizers of {owner})")

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        if self.network_b is not None:
            unwrap(self.network_b).decoder.deep_supervision = enabled

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        # check the unlabelled cases before nnU-Net starts its workers: a missing folder is the common mistake
        identifiers = self._unlabeled_identifiers()
        dataloader_train, dataloader_val = super().get_dataloaders()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader(identifiers)
        return dataloader_train, dataloader_val

    def _unlabeled_identifiers(self) -> list[str]:
        fingerprint = preprocessing_fingerprint(self.plans_manager.plans, self.configuration_manager.configuration)
        raw_cases, labeled_identifiers = self._raw_unlabeled_cases()
        return check_preprocessed_unlabeled(self.unlabeled_folder, fingerprint, self.plans_manager.dataset_name,
                                            self.configuration_name, self.plans_manager.plans_name,
                                            raw_cases, labeled_identifiers)

    def _raw_unlabeled_cases(self) -> tuple[dict[str, list[str]] | None, list[str]]:
        """The raw unlabelled cases to check the preprocessed ones against, or None (said in the log)
        where the raw dataset is not here, as for a user who was given preprocessed data only."""
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        raw_folder = join(os.fspath(nnUNet_raw), self.plans_manager.dataset_name) if nnUNet_raw else None
        if raw_folder is None or not isdir(raw_unlabeled_folder(raw_folder)):
            where = "nnUNet_raw is not set" if raw_folder is None else f"{raw_unlabeled_folder(raw_folder)} is absent"
            self.print_to_log_file(f"Skipped the check that the preprocessed unlabelled cases mirror imagesUnlabeled "
                                   f"({where}); training on the cases in {self.unlabeled_folder} as they are.")
            return None, []
        labeled = get_filenames_of_train_images_and_targets(raw_folder, self.dataset_json)
        return find_unlabeled_cases(raw_folder, self.dataset_json, list(labeled)), list(labeled)

    def get_unlabeled_dataloader(self, identifiers: list[str]):
        """nnU-Net's loader and training transforms over the unlabelled cases (no deep-supervision targets)."""
        rotation_for_da, do_dummy_2d_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation_for_da, None, mirror_axes, do_dummy_2d_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None,
            ignore_label=self.label_manager.ignore_label)
        dataset = infer_dataset_class(self.unlabeled_folder)(self.unlabeled_folder, identifiers)
        num_processes = get_allowed_n_proc_DA()
        # seeded workers: left unseeded, each would repeat the torch-driven augmentation decisions of the
        # labelled loader's worker of the same index, forked from the same state
        seeds = worker_seeds(stream_seed(self.seed, self.local_rank, self.current_epoch), UNLABELED_STREAM,
                             num_processes)
        stream = make_unlabeled_stream(dataset, self.batch_size, initial_patch_size,
                                       self.configuration_manager.patch_size, self.label_manager, transforms,
                                       num_processes, pin_memory=self.device.type == "cuda", seeds=seeds)
        next(stream)  # start the workers now, not inside the first timed iteration
        return stream

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.network_b.train()
        self._iteration_in_epoch = 0

    def _ramp_weights(self) -> tuple[float, float]:
        """λ_u(t) and λ_c(t) of METHOD.md §2.7 at the current iteration t of num_epochs x iterations."""
        step = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        config = self.method_config
        return ramp_weights(step, self.num_epochs * self.num_iterations_per_epoch,
                            config.unsupervised_rampup_fraction, config.contrast_weight)

    def train_step(self, batch: dict) -> dict:
        wait_started = perf_counter()
        unlabeled = next(self.dataloader_unlabeled)
        unlabeled_wait_s = perf_counter() - wait_started
        n_labeled = batch["data"].shape[0]
        # Both halves come pinned from their loaders: copy each asynchronously and join them on the device
        # (a host-side cat makes an unpinned tensor, whose copy blocks the host until it is done).
        data = torch.cat([half.to(self.device, non_blocking=True) for half in (batch["data"], unlabeled["data"])])
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        ramps = self._ramp_weights()

        self.optimizer.zero_grad(set_to_none=True)
        out_of_memory = False
        if not self.sequential_step:
            try:
                stats = self._joint_step(data, target, n_labeled, *ramps)
            except torch.cuda.OutOfMemoryError:
                if self.is_ddp:
                    # the ranks would leave each other's collectives: switching needs every rank's consent
                    self.print_to_log_file("The joint step ran out of memory. Under DDP the switch to the low-"
                                           "memory step is not automatic: train a _lowMem variant (e.g. "
                                           "nnUNetTrainerCCE_lowMem) or a subclass with sequential_step = True.")
                    raise
                if self._steps_this_run >= self.num_iterations_per_epoch:
                    raise
                out_of_memory = True  # recover outside the handler: its traceback holds the step's tensors
        if out_of_memory:
            self._switch_to_sequential_step()
        if self.sequential_step:
            stats = self._sequential_step(data, target, n_labeled, *ramps)
        self._clip_and_step()
        self._iteration_in_epoch += 1
        self._steps_this_run += 1

        loss = stats["supervised_a"] + stats["supervised_b"] + stats["total"]
        # one device->host copy for all figures (nnU-Net pays one per step for its loss anyway)
        values = torch.stack([loss.float()] + [v.detach().float() for v in stats.values()]).cpu().numpy()
        return {"loss": values[0], STAT_PREFIX + "unlabeled_wait_s": unlabeled_wait_s,
                **{STAT_PREFIX + k: v for k, v in zip(stats, values[1:])}}

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _joint_step(self, data, target, n_labeled: int, unsup_weight: float, contrast_weight: float) -> dict:
        """Both networks forward on the whole batch, one backward pass (the fastest step)."""
        loss, stats = self._joint_loss(data, target, n_labeled, unsup_weight, contrast_weight)
        # Only the graph holds the forward pass's tensors now, so autograd frees each once its backward
        # has run: a Python reference to the decoders' full-resolution features would keep them to the
        # end of the pass, through its memory peak (0.56 GiB per network at Left Atrium's 0.625 mm plans).
        self._backward(loss)
        return stats

    def _joint_loss(self, data, target, n_labeled: int, unsup_weight: float, contrast_weight: float):
        with self._autocast():
            output_a = self.network(data)
            output_b = self.network_b(data)
            features_a, features_b = self._take_features()
            supervised_a = self.loss(labeled_part(output_a, n_labeled), target)
            supervised_b = self.loss(labeled_part(output_b, n_labeled), target)
            unsupervised, stats = self.objective_step(
                full_resolution(output_a), full_resolution(output_b), n_labeled=n_labeled,
                target_labeled=full_resolution(target), features_a=features_a, features_b=features_b,
                unsup_weight=unsup_weight, contrast_weight=contrast_weight)
            loss = supervised_a + supervised_b + unsupervised
        return loss, {"supervised_a": supervised_a.detach(), "supervised_b": supervised_b.detach(), **stats}

    def _sequential_step(self, data, target, n_labeled: int, unsup_weight: float, contrast_weight: float) -> dict:
        """METHOD.md's low-memory step: B without grad, then A forward+backward, then B forward+backward.

        Each network's terms use the other's outputs only as constants, so each backward pass gives
        exactly that network's gradient of the joint loss, while only one network's activations are
        alive at a time. Costs one extra forward pass of B.
        """
        target_full = full_resolution(target)
        # As in the joint step, each backward pass starts with the graph as the only holder of its
        # network's forward tensors (the helpers' locals are gone), features included.
        loss_a, logits_a, supervised_a, stats_a = self._sequential_loss_a(
            data, target, target_full, n_labeled, unsup_weight, contrast_weight)
        self._backward(loss_a)
        loss_b, supervised_b, stats_b = self._sequential_loss_b(
            data, target, target_full, logits_a, n_labeled, unsup_weight, contrast_weight)
        self._backward(loss_b)
        return {"supervised_a": supervised_a, "supervised_b": supervised_b, **merge_sequential_stats(stats_a, stats_b)}

    def _sequential_loss_a(self, data, target, target_full, n_labeled: int, unsup_weight: float,
                           contrast_weight: float):
        """A's loss against B's gradient-free pseudo-labels, and A's full-resolution logits, detached."""
        with self._autocast():
            # B's second pass below is the one that counts for BatchNorm, as its one pass in the joint step
            with torch.no_grad(), batch_norm_statistics_kept(self.network_b):
                logits_b = full_resolution(self.network_b(data))
            self._take_features()  # B's features are not needed by A's terms: free them now
            output_a = self.network(data)
            features_a, _ = self._take_features()
            supervised_a = self.loss(labeled_part(output_a, n_labeled), target)
            unsupervised_a, stats_a = self.objective_step(
                full_resolution(output_a), logits_b, n_labeled=n_labeled, target_labeled=target_full,
                features_a=features_a, unsup_weight=unsup_weight, contrast_weight=contrast_weight, students=("a",))
        return supervised_a + unsupervised_a, full_resolution(output_a).detach(), supervised_a.detach(), stats_a

    def _sequential_loss_b(self, data, target, target_full, logits_a, n_labeled: int, unsup_weight: float,
                           contrast_weight: float):
        """B's loss against A's detached logits."""
        with self._autocast():
            output_b = self.network_b(data)
            _, features_b = self._take_features()
            supervised_b = self.loss(labeled_part(output_b, n_labeled), target)
            unsupervised_b, stats_b = self.objective_step(
                logits_a, full_resolution(output_b), n_labeled=n_labeled, target_labeled=target_full,
                features_b=features_b, unsup_weight=unsup_weight, contrast_weight=contrast_weight, students=("b",))
        return supervised_b + unsupervised_b, supervised_b.detach(), stats_b

    def _switch_to_sequential_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._take_features()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.sequential_step = True
        self.print_to_log_file("The joint step of both networks ran out of memory: switching to the low-memory "
                               "sequential step (same gradients, one extra forward pass of network B per "
                               "iteration). Train with the _lowMem trainer variant to start in this mode.")

    def _take_features(self):
        if not self._feature_hooks:
            return None, None
        features = tuple(hook.features for hook in self._feature_hooks)
        for hook in self._feature_hooks:
            hook.clear()
        return features

    def _backward(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def _clip_and_step(self) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self._clip_gradients()
            self.optimizer.step()

    def _clip_gradients(self) -> None:
        for network in (self.network, self.network_b):
            torch.nn.utils.clip_grad_norm_(network.parameters(), GRADIENT_CLIP_NORM)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        summary, epoch_stats = [], {}
        for key in sorted(k for k in outputs if k.startswith(STAT_PREFIX)):
            values = self._values_over_ranks(outputs[key])
            value = float(np.nanmean(values))
            self._ensure_logger_key(key)
            self.logger.log(key, value, self.current_epoch)
            summary.append(f"{key[len(STAT_PREFIX):]} {value:.4g}")
            epoch_stats[key[len(STAT_PREFIX):]] = values
        logging = self.logger.local_logger.my_fantastic_logging
        for key in [k for k in logging if k.startswith(STAT_PREFIX) and len(logging[k]) == self.current_epoch]:
            # a statistic of the checkpoint's configuration that this one no longer computes: nnU-Net's
            # progress.png plots up to its shortest list, so a list left short would freeze it
            self.logger.log(key, float("nan"), self.current_epoch)
        self.print_to_log_file("semi-supervised: " + ", ".join(summary))
        if self._ramp_up_finished_before_epoch():
            # every rank's iterations: a term dead on rank 0 may still train on the others
            for warning in dead_term_warnings(epoch_stats):
                self.print_to_log_file(warning)

    def _ramp_up_finished_before_epoch(self) -> bool:
        """Whether the unlabelled terms were at full weight for the whole of the current epoch."""
        ramp_iterations = unsupervised_rampup_length(self.num_epochs * self.num_iterations_per_epoch,
                                                     self.method_config.unsupervised_rampup_fraction)
        return self.current_epoch * self.num_iterations_per_epoch >= ramp_iterations

    def _values_over_ranks(self, values) -> list:
        """This epoch's per-iteration values of one statistic from every rank (this rank's alone without DDP)."""
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, list(values))
            return [v for rank_values in gathered for v in rank_values]
        return list(values)

    def _ensure_logger_key(self, key: str) -> None:
        """nnU-Net's logger only accepts known keys, one value per epoch; pad for resumed older runs."""
        logging = self.logger.local_logger.my_fantastic_logging
        if key not in logging:
            logging[key] = [float("nan")] * self.current_epoch

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.network_b.eval()

    def on_epoch_end(self):
        for hook in self._feature_hooks:  # validation's last forward pass: do not hold it on the device
            hook.clear()
        super().on_epoch_end()  # increments current_epoch
        if self.local_rank == 0:
            self.plot_method_progress()

    def plot_method_progress(self) -> None:
        """``progress_ssl.png`` beside nnU-Net's ``progress.png``: every method statistic per epoch."""
        matplotlib.use("agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        logging = self.logger.local_logger.my_fantastic_logging
        names = sorted(k[len(STAT_PREFIX):] for k in logging if k.startswith(STAT_PREFIX))
        if not names:
            return
        panels = (
            ("supervised Dice+CE", [n for n in names if n.startswith("supervised")], "linear"),
            ("unsupervised terms", [n for n in names if n.startswith(UNSUPERVISED_TERMS)], "linear"),
            ("fractions of voxels and iterations",
             [n for n in names if n in FRACTION_STATS or n.startswith(PER_CLASS_FRACTIONS)], "linear"),
            ("entropy thresholds (per network; and class under the class-balanced rule)",
             [n for n in names if n.startswith("entropy_threshold")], "log"),
            ("counts and seconds", [n for n in names if n in ("num_prototypes", "unlabeled_wait_s")], "linear"),
        )
        with plt.rc_context({"font.size": 11}):
            fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), sharex=True)
            for ax, (title, group, scale) in zip(axes, panels):
                if scale == "log" and any(np.nanmax(logging[STAT_PREFIX + n] + [0.0]) > 0 for n in group):
                    ax.set_yscale("log")  # thresholds of saturated voxels span many decades
                for name in group:
                    style = "--" if name.endswith("_b") or "_b_" in name else "-"
                    ax.plot(range(len(logging[STAT_PREFIX + name])), logging[STAT_PREFIX + name], style,
                            label=name, linewidth=1.8)
                ax.set_title(title, loc="left")
                if group:
                    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
            axes[-1].set_xlabel("epoch")
            axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
            fig.tight_layout()
            with atomic_path(join(self.output_folder, "progress_ssl.png")) as tmp:
                fig.savefig(tmp)
            plt.close(fig)

    def on_train_end(self):
        super().on_train_end()
        self._remove_feature_hooks()  # the final validation's sliding window needs no features
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnUNetv2_train --val validates without training: each sliding-window forward would keep its
        # full-resolution decoder features alive
        self._remove_feature_hooks()
        super().perform_actual_validation(save_probabilities)

    def _remove_feature_hooks(self) -> None:
        for hook in self._feature_hooks:
            hook.remove()
        self._feature_hooks = []

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_contents(self) -> dict:
        return {
            **super().checkpoint_contents(),
            PEER_WEIGHTS_KEY: unwrap(self.network_b).state_dict(),
            "objective_state": self.objective.state_dict(),
            "method_config": self.method_config.as_dict(),
        }

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError(f"{self.__class__.__name__}.load_checkpoint expects a file name (nnU-Net's loader "
                            f"cannot take a checkpoint dict), got {type(filename_or_checkpoint).__name__}")
        # on the CPU: nnU-Net's loader puts its own copy on the device; ours only feeds B and the banks
        checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        check_dual_network_checkpoint(checkpoint, filename_or_checkpoint, self.__class__.__name__)
        self.resume_seed(checkpoint.get("seed"))
        if not self.was_initialized:
            self.initialize()
        check_peer_network_matches(checkpoint, filename_or_checkpoint, self.method_config, self.__class__.__name__,
                                   self.configuration_manager)
        # nnunet_ccesemi <= 0.2 saved one parameter group over both networks: split it as A's and B's
        group_sizes = [len(group["params"]) for group in self.optimizer.param_groups]
        handle = self.optimizer.register_load_state_dict_pre_hook(
            lambda optimizer, state: split_single_group_state(state, group_sizes))
        try:
            super().load_checkpoint(filename_or_checkpoint)  # network A, optimiser, scaler, logger, epoch
        finally:
            handle.remove()
        unwrap(self.network_b).load_state_dict(
            {k[7:] if k.startswith("module.") else k: v for k, v in checkpoint[PEER_WEIGHTS_KEY].items()})
        if checkpoint.get("objective_state") is not None:
            self.objective.load_state_dict(checkpoint["objective_state"])
        saved_config = checkpoint.get("method_config")
        if saved_config is not None and saved_config != self.method_config.as_dict():
            self.print_to_log_file(f"WARNING: the checkpoint was trained with another method configuration: "
                                   f"{saved_config}")
