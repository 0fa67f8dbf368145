"""The dual-network objective of CCE beyond the supervised loss (terms 2-6 of ``METHOD.md``).

arXiv 2509.13084 ("CCE"), as specified in ``METHOD.md``:

``L = Σ_k w_mis L_mis^k + λ_u(t) [Σ_k (w_ef L_ef^k + w_kl L_kl^k) + w_cos L_cos] + λ_c(t) Σ_k L_con^k``

for the networks k ∈ {A, B}. nnU-Net's Dice+CE (term 1) is added by the trainer. The module holds
no parameters, only the per-network prototype banks (buffers, checkpointed with the trainer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig
from .consistency import cosine_consistency
from .cross_pseudo import cross_pseudo_supervision, kl_weighted_cross_pseudo_supervision, masked_cross_entropy
from .disagreement import confident_disagreement_loss
from .distributed import distributed_active
from .entropy import (
    batch_quantile,
    class_balanced_reliable,
    class_quantiles,
    normalized_entropy_from_logits,
    reliable_mask,
)
from .pseudo_labels import class_argmax, joint_pseudo_labels
from .regions import RegionLayout, binary_logits, fold_labels, fold_region_target, unfold
from .prototypes import (
    PrototypeBank,
    class_prototypes,
    gather_voxels,
    prototype_infonce_loss,
    prototype_l2_loss,
    sample_uncertain_voxel_indices,
)

NETWORKS = ("a", "b")


@dataclass(frozen=True)
class UnlabeledTargets:
    """What the unlabelled terms 3 and 6 learn from, all detached, (m, *spatial) each.

    Attributes:
        own_labels: each network's own argmax (``{"a": ..., "b": ...}``; term 6 labels a network's
            uncertain voxels with its own prediction).
        reliable: bool, the voxels that supervise term 3 and build the prototypes of term 6.
        pseudo_labels: int64, the joint pseudo-labels of term 3.
    """

    own_labels: dict
    reliable: torch.Tensor
    pseudo_labels: torch.Tensor


NORMALIZE_EPS = 1e-12  # that of l2_normalize_voxels: a sampled voxel is normalised as the prototypes' voxels
REGION_IGNORE_INDEX = -1  # ignored voxels of a folded region target (values are 0 and 1 otherwise)


class DualNetworkObjective(nn.Module):
    """Terms 2-6 of CCE for networks A and B, from one :class:`~nnunet_ccesemi.config.MethodConfig`.

    Inputs (``forward``): the full-resolution logits of both networks for the concatenated batch
    ``[labelled (n) ; unlabelled (m)]``, shape (n + m, C, *spatial), 2D or 3D.

    * term 2, labelled rows: ``w_mis Σ_k L_mis^k`` (:func:`confident_disagreement_loss`);
    * term 3, unlabelled rows: normalised entropies ``H^k`` (from log-probabilities), thresholds
      ``τ^k_c`` = the ``entropy_quantile`` of ``H^k`` within each class c of network k's own prediction
      (``reliability_rule='class_balanced'``; ``'global'``: one ``τ^k`` over all voxels, the released
      code), all global under DDP; reliable voxels ``H^A <= τ^A_{ŷ^A} or H^B <= τ^B_{ŷ^B}`` (all voxels
      if ``filter_entropy`` is off), joint pseudo-labels (``pseudo_label_rule``), and
      ``L_ef^k`` = CE over the reliable voxels;
    * term 4, all rows: ``L_kl^k`` = KL-weighted CPS of student k by the other net (plain CPS if
      ``kl_weighting`` is off); ``kl_direction='a_to_b'`` trains only B on A's labels (released code);
    * term 5, all rows: cosine consistency;
    * term 6, unlabelled rows, each net on its own L2-normalised decoder features: prototypes of the
      pseudo-classes over reliable voxels (through a :class:`PrototypeBank` with
      ``prototype_momentum`` and ``prototype_memory``), a sample of the uncertain voxels labelled by the net's own argmax, and
      InfoNCE (or the ``l2`` variant) against the prototypes. With ``filter_entropy`` off no voxel is
      uncertain, so this term is 0.

    A term whose configured weight is 0 is not computed. Everything runs in float32 with autocast
    disabled, whatever the precision of the inputs.

    **Regions** (``regions`` given: nnU-Net's sigmoid outputs of a region dataset, C = R channels).
    Each region r is a binary problem and every term is the softmax one with C = 2 on the logits
    ``(0, z_r)`` (:mod:`~nnunet_ccesemi.losses.regions`): pseudo-labels ``σ(z_r) > 0.5`` nested as
    nnU-Net's label manager nests them (so the peer's labels are its exported segmentation); the
    binary entropy per region; reliability per region and per side of it (class-balanced: the
    quantile within the voxels each network puts inside region r, and within those outside;
    global: one quantile per region); the entropy-filtered term as BCE over the reliable
    (voxel, region) pairs; each region's pseudo-label weighted by its own Bernoulli KL
    ``exp(-KL(p^t_r ‖ p^s_r))``, the regulariser the KL averaged over voxels and regions (our
    choice: the regions are independent outputs, so a disagreement on one region does not discount
    another's label); the cosine of the Bernoulli vectors ``(1 - p_r, p_r)`` averaged over regions;
    two prototypes per region (inside and its complement, both from the reliable voxels of that
    region), each uncertain voxel sampled per region and contrasted against that region's pair, the
    loss averaged over the regions that have both prototypes. Statistics are per region and side:
    ``reliable_fraction_r{r}_in``, ``entropy_threshold_a_r{r}_out``, ``prototype_present_r{r}_in``
    (r = the output channel).

    Under ``torch.distributed`` (nnU-Net's DDP) each rank passes its own rows; the thresholds ``τ^k``
    and the prototypes are global (those of the concatenated batch of all ranks), the other terms and
    the per-voxel statistics (``reliable_fraction``, ``agreement``, ``mean_kl_weight``) are per-rank
    means, averaged over ranks by the trainer's epoch-end logging. Every rank must call ``forward``
    the same number of times with the same ``students``: the unlabelled terms are collectives. A rank
    without unlabelled rows still takes part (its per-voxel means are NaN, its terms 3 and 6 zero).

    Args:
        config: the method configuration.
        num_classes: C, the number of output channels (including background; R for regions).
        ignore_index: nnU-Net's ignore label in the labelled targets, if the dataset has one.
        generator: random generator (on the logits' device) for the voxel sampling of term 6.
        regions: the dataset's regions (:meth:`RegionLayout.from_label_manager`); ``None`` for
            mutually exclusive classes (softmax outputs).
    """

    def __init__(
        self,
        config: MethodConfig,
        num_classes: int,
        ignore_index: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        regions: Optional[RegionLayout] = None,
    ):
        super().__init__()
        if regions is not None and regions.num_regions != num_classes:
            raise ValueError(f"num_classes={num_classes} output channels but {regions.num_regions} regions")
        if regions is None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.generator = generator
        self.regions = regions
        # The binary classes whose thresholds and prototypes are kept apart: the C classes, or the
        # inside and outside of each region.
        self.group_names = regions.group_names if regions is not None else [f"c{c}" for c in range(num_classes)]
        self.prototype_banks = nn.ModuleDict(
            {net: PrototypeBank(len(self.group_names), config.prototype_momentum, memory=config.prototype_memory)
             for net in NETWORKS}
        )

    def forward(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        n_labeled: int,
        target_labeled: Optional[torch.Tensor] = None,
        features_a: Optional[torch.Tensor] = None,
        features_b: Optional[torch.Tensor] = None,
        unsup_weight: float = 1.0,
        contrast_weight: float = 0.0,
        *,
        update_prototype_banks: bool = True,
        students: tuple[str, ...] = NETWORKS,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Computes the weighted sum of terms 2-6.

        Args:
            logits_a, logits_b: (n + m, C, *spatial) full-resolution logits, labelled rows first.
            n_labeled: n, the number of labelled rows (host int).
            target_labeled: (n, 1, *spatial) or (n, *spatial) integer labels of the labelled rows;
                needed for term 2 (skipped if ``None``).
            features_a, features_b: (n + m, F, *spatial) decoder features (not yet normalised), or
                only their m unlabelled rows; needed when ``config.contrast_weight > 0`` and ``contrast_weight != 0``.
            unsup_weight: λ_u(t), the ramped weight of terms 3-5.
            contrast_weight: λ_c(t), the ramped weight of term 6 (already including
                ``config.contrast_weight`` as its maximum, see :func:`contrast_rampup`).
            update_prototype_banks: fold this step's prototypes into the banks.
            students: the networks whose own terms (2, 3, 4 and 6 of network k) are computed. Every
                such term only trains its network k (the peer's outputs are constants in it), so the
                low-memory sequential step evaluates ``students=("a",)`` with B's logits detached and
                then ``students=("b",)`` with A's detached, and gets the joint step's gradients
                (:func:`merge_sequential_stats` joins the two calls' statistics). The shared cosine
                term (5) enters the loss of every call, so that it reaches whichever network is not
                detached, but ``stats["total"]`` counts it only in a call that includes A.

        Returns:
            ``(loss, stats)``: the 0-dim float32 loss, and a dict of detached 0-dim float32 tensors
            (each computed term, ``reliable_fraction``, ``agreement``, ``mean_kl_weight``,
            ``num_prototypes``, ``total``, and per class c: ``entropy_threshold_a_c{c}`` / ``_b_c{c}``
            (``entropy_threshold_a/b`` under the global rule), ``reliable_fraction_c{c}`` (the share of
            pseudo-class c's voxels that are reliable) and ``prototype_present_c{c}``; a per-class
            value is NaN in a batch without that class); nothing synchronises with the host in a single
            process (under DDP each threshold first learns the other ranks' voxel counts).
        """
        config = self.config
        if not students or not set(students) <= set(NETWORKS):
            raise ValueError(f"students must be a non-empty subset of {NETWORKS}, got {students}")
        self._check_inputs(logits_a, logits_b, n_labeled, target_labeled, features_a, features_b, contrast_weight,
                           students)
        n_rows = logits_a.shape[0]
        # Under DDP a rank without unlabelled rows must still join the collectives of terms 3 and 6
        # (thresholds, prototypes), or the ranks that have some wait forever.
        has_unlabeled = n_rows > n_labeled or distributed_active()
        with torch.autocast(device_type=logits_a.device.type, enabled=False):
            logits = {"a": logits_a.float(), "b": logits_b.float()}
            labeled_rows = n_labeled  # rows of the (folded) logits that are labelled
            if self.regions is not None:
                logits = {net: binary_logits(value) for net, value in logits.items()}
                labeled_rows = n_labeled * self.regions.num_regions
                if target_labeled is not None:
                    target_labeled = fold_region_target(target_labeled, self.regions.num_regions,
                                                        REGION_IGNORE_INDEX)
            probs = {net: torch.softmax(logits[net], dim=1) for net in NETWORKS}
            stats: dict[str, torch.Tensor] = {}
            # Accumulated on the graph of the logits, so an all-skipped objective is a connected 0.
            total = (logits["a"].sum() + logits["b"].sum()) * 0.0
            # The shared cosine term enters every call's loss but counts once when two calls are merged.
            not_counted = total.detach()

            if config.disagreement_weight > 0 and target_labeled is not None and n_labeled > 0:
                total = total + self._disagreement_term(probs, labeled_rows, target_labeled, students, stats)
            targets = None
            if has_unlabeled:
                needs_targets = config.entropy_filter_weight > 0 or self._contrast_active(contrast_weight)
                targets = self._unlabeled_targets(logits, labeled_rows, needs_targets, stats)
            if config.entropy_filter_weight > 0 and targets is not None:
                total = total + unsup_weight * self._entropy_filter_term(logits, labeled_rows, targets, students,
                                                                         stats)
            if config.cps_weight > 0:
                total = total + unsup_weight * self._cross_pseudo_term(logits, students, stats)
            if config.cosine_weight > 0:
                term = cosine_consistency(probs["a"], probs["b"])
                stats["cosine"] = term.detach()
                weighted = unsup_weight * config.cosine_weight * term
                total = total + weighted
                if "a" not in students:
                    not_counted = not_counted + weighted.detach()
            if self._contrast_active(contrast_weight) and targets is not None:
                features = {"a": features_a, "b": features_b}
                total = total + contrast_weight * self._contrast_terms(
                    features, n_rows, n_labeled, targets, students, update_prototype_banks, stats)

        stats["total"] = total.detach() - not_counted
        return total, stats

    def _contrast_active(self, contrast_weight: float) -> bool:
        return self.config.contrast_weight > 0 and contrast_weight != 0

    # ------------------------------------------------------------------ the terms
    def _disagreement_term(self, probs, n_labeled, target_labeled, students, stats) -> torch.Tensor:
        """Term 2, weighted: ``w_mis Σ_k L_mis^k`` on the labelled rows."""
        probs_a_labeled = probs["a"][:n_labeled].detach()
        probs_b_labeled = probs["b"][:n_labeled].detach()
        ignore_index = REGION_IGNORE_INDEX if self.regions is not None else self.ignore_index
        total = 0.0
        for net in students:
            term = confident_disagreement_loss(
                probs[net][:n_labeled], probs_a_labeled, probs_b_labeled, target_labeled,
                self.config.disagreement_confidence, ignore_index=ignore_index,
            )
            stats[f"disagreement_{net}"] = term.detach()
            total = total + self.config.disagreement_weight * term
        return total

    def _entropy_filter_term(self, logits, n_labeled, targets: "UnlabeledTargets", students, stats) -> torch.Tensor:
        """Term 3, weighted but for λ_u: ``w_ef Σ_k CE(z^k_U, ŷ^U)`` over the reliable voxels."""
        total = 0.0
        for net in students:
            term = masked_cross_entropy(logits[net][n_labeled:], targets.pseudo_labels, targets.reliable)
            stats[f"entropy_filter_{net}"] = term.detach()
            total = total + self.config.entropy_filter_weight * term
        return total

    def _cross_pseudo_term(self, logits, students, stats) -> torch.Tensor:
        """Term 4, weighted but for λ_u: KL-weighted (or plain) CPS of each student by its peer."""
        config = self.config
        total = 0.0
        kl_weights = []
        for student in students:
            if config.kl_direction == "a_to_b" and student != "b":
                continue
            teacher = "b" if student == "a" else "a"
            # softmax: the teacher's argmax (taken inside); regions: its nested labels
            teacher_labels = self._hard_labels(logits[teacher].detach()) if self.regions is not None else None
            if config.kl_weighting:
                term, mean_weight = kl_weighted_cross_pseudo_supervision(
                    logits[student], logits[teacher], detach_weight=config.detach_kl_weight,
                    teacher_labels=teacher_labels,
                )
                kl_weights.append(mean_weight)
            else:
                term = cross_pseudo_supervision(logits[student], logits[teacher], teacher_labels=teacher_labels)
            stats[f"cps_{student}"] = term.detach()
            total = total + config.cps_weight * term
        if kl_weights:
            stats["mean_kl_weight"] = torch.stack(kl_weights).mean()
        return total

    def _contrast_terms(self, features, n_rows, n_labeled, targets, students, update_prototype_banks,
                        stats) -> torch.Tensor:
        """Term 6 without λ_c: ``Σ_k L_con^k``, each net on its own decoder features."""
        total = 0.0
        present_per_net = []
        for net in students:
            # all rows (the unlabelled ones follow the labelled), or only the unlabelled ones
            first_unlabeled_row = n_labeled if features[net].shape[0] == n_rows else 0
            term, present = self._contrast_term(net, features[net], first_unlabeled_row, targets,
                                                update_prototype_banks)
            present_per_net.append(present.float())
            stats[f"contrast_{net}"] = term.detach()
            total = total + term
        present = torch.stack(present_per_net).mean(0)
        stats["num_prototypes"] = present.sum()
        for index, name in enumerate(self.group_names):
            stats[f"prototype_present_{name}"] = present[index]
        return total

    # ------------------------------------------------------------------ unlabelled targets
    @torch.no_grad()
    def _unlabeled_targets(self, logits, n_labeled, needs_targets: bool, stats) -> Optional["UnlabeledTargets"]:
        """Each net's own labels on the unlabelled rows, and (if a term needs them) the reliable voxels
        and the joint pseudo-labels of term 3; records agreement, thresholds and reliable fractions."""
        config = self.config
        logits_unlabeled = {net: logits[net][n_labeled:].detach() for net in NETWORKS}
        decided = {net: class_argmax(logits_unlabeled[net]) for net in NETWORKS}  # per channel, before nesting
        own_labels = {net: decided[net] if self.regions is None else self._nested(decided[net]) for net in NETWORKS}
        stats["agreement"] = (own_labels["a"] == own_labels["b"]).float().mean()
        if not needs_targets:
            return None
        entropy = {net: normalized_entropy_from_logits(logits_unlabeled[net]) for net in NETWORKS}
        overruled = {net: None for net in NETWORKS}
        if self.regions is not None and config.filter_entropy:
            # Nesting can overrule a channel's own decision (enhancing tumour inside, core confidently
            # outside: the exported label puts the voxel in the core). A low entropy then vouches for the
            # opposite of the label, so such a pair counts as least confident for that network: it loses
            # the joint label to the other network and is never reliable for this one.
            for net in NETWORKS:
                overruled[net] = own_labels[net] != decided[net]
                entropy[net] = entropy[net].masked_fill(overruled[net], float("inf"))
        if not config.filter_entropy:
            reliable = torch.ones_like(entropy["a"], dtype=torch.bool)
        elif config.reliability_rule == "global" and self.regions is None:
            threshold = {net: batch_quantile(entropy[net], config.entropy_quantile) for net in NETWORKS}
            reliable = reliable_mask(entropy["a"], entropy["b"], threshold["a"], threshold["b"])
            for net in NETWORKS:
                stats[f"entropy_threshold_{net}"] = threshold[net]
        elif config.reliability_rule == "global":  # one quantile per region (the lower order statistic)
            region = self.regions.region_index(entropy["a"].shape[0], entropy["a"].device)
            region = region.view(-1, *([1] * (entropy["a"].ndim - 1))).expand_as(entropy["a"])
            reliable = torch.zeros_like(entropy["a"], dtype=torch.bool)
            for net in NETWORKS:
                kept, thresholds = self._most_confident_per_group(entropy[net], region, self.num_classes,
                                                                  overruled[net])
                reliable |= kept
                for r in range(self.num_classes):
                    stats[f"entropy_threshold_{net}_r{r}"] = thresholds[r]
        else:
            reliable = torch.zeros_like(entropy["a"], dtype=torch.bool)
            for net in NETWORKS:
                kept, thresholds = self._most_confident_per_group(entropy[net], self._groups(own_labels[net]),
                                                                  len(self.group_names), overruled[net])
                reliable |= kept
                for index, name in enumerate(self.group_names):
                    stats[f"entropy_threshold_{net}_{name}"] = thresholds[index]
        pseudo_labels = joint_pseudo_labels(
            logits_unlabeled["a"], logits_unlabeled["b"], entropy["a"], entropy["b"], config.pseudo_label_rule
        )
        if self.regions is not None:
            nested = self._nested(pseudo_labels)
            if config.filter_entropy:
                reliable = reliable & (nested == pseudo_labels)  # the joint label's nesting overruled it too
            pseudo_labels = nested
        stats["reliable_fraction"] = reliable.float().mean()
        # Per pseudo-class: the share of its voxels that supervise (NaN for a class absent from the batch).
        groups = self._groups(pseudo_labels).reshape(-1)
        num_groups = len(self.group_names)
        counts = torch.zeros(num_groups, device=reliable.device).scatter_add_(
            0, groups, torch.ones_like(reliable.reshape(-1), dtype=torch.float32))
        kept = torch.zeros(num_groups, device=reliable.device).scatter_add_(0, groups, reliable.reshape(-1).float())
        reliable_fraction = kept / counts  # 0/0 = NaN: class absent
        for index, name in enumerate(self.group_names):
            stats[f"reliable_fraction_{name}"] = reliable_fraction[index]
        return UnlabeledTargets(own_labels=own_labels, reliable=reliable, pseudo_labels=pseudo_labels)

    def _most_confident_per_group(self, entropy: torch.Tensor, groups: torch.Tensor, num_groups: int,
                                  overruled: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One network's reliable voxels ``H <= τ_g`` (τ_g = the ``entropy_quantile`` of its group g) and the
        (num_groups,) thresholds. Overruled region pairs form a group of their own with no threshold: they
        neither raise a group's quantile (their entropy is +inf) nor pass it (inf <= inf)."""
        if overruled is not None:
            groups = groups.masked_fill(overruled, num_groups)
        thresholds, _ = class_quantiles(entropy, groups, num_groups + 1, self.config.entropy_quantile)
        thresholds[num_groups] = math.nan  # never reliable
        return class_balanced_reliable(entropy, groups, thresholds), thresholds[:num_groups]

    def _hard_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """A network's own hard labels: the argmax, or for regions the nested ``σ(z) > 0.5`` (folded)."""
        labels = class_argmax(logits)
        return labels if self.regions is None else self._nested(labels)

    def _nested(self, folded_labels: torch.Tensor) -> torch.Tensor:
        regions = self.regions
        return fold_labels(regions.nest(unfold(folded_labels, regions.num_regions).bool()))

    def _groups(self, labels: torch.Tensor) -> torch.Tensor:
        """The index of each voxel's group in :attr:`group_names`: its class, or its region and side."""
        return labels if self.regions is None else self.regions.group_index(labels)

    def _contrast_sets(self, targets: "UnlabeledTargets", net: str) -> list[tuple]:
        """``(pseudo_labels, reliable, own_labels, groups)`` per set of classes contrasted together, on the
        unlabelled rows: all C classes at once, or per region its inside against its complement."""
        if self.regions is None:
            return [(targets.pseudo_labels, targets.reliable, targets.own_labels[net],
                     slice(0, self.num_classes))]
        num_regions = self.regions.num_regions
        pseudo, reliable, own = (unfold(t, num_regions) for t in
                                 (targets.pseudo_labels, targets.reliable, targets.own_labels[net]))
        return [(pseudo[:, r], reliable[:, r], own[:, r], slice(2 * r, 2 * r + 2)) for r in range(num_regions)]

    def _contrast_term(
        self,
        net: str,
        features: torch.Tensor,
        first_unlabeled_row: int,
        targets: "UnlabeledTargets",
        update_prototype_bank: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        sets = self._contrast_sets(targets, net)
        features_unlabeled = features[first_unlabeled_row:].detach()
        # Prototypes are constants: the normalised map enters them without autograd (and without a
        # normalised copy of it), only the sampled voxels are normalised on the graph (normalising the
        # map there kept an (m, F, *spatial) float32 copy alive through the backward pass, for
        # gradients that are zero but at the samples).
        with torch.no_grad():
            per_set = [class_prototypes(features_unlabeled, pseudo_labels, reliable,
                                        groups.stop - groups.start, eps=NORMALIZE_EPS, normalize_voxels=True)
                       for pseudo_labels, reliable, _, groups in sets]
            prototypes = torch.cat([p for p, _ in per_set])
            present = torch.cat([p for _, p in per_set])
        bank = self.prototype_banks[net]
        if update_prototype_bank:
            prototypes, present = bank.update(prototypes, present)
        elif bank.prototypes.numel() and bank.memory:
            prototypes, present = bank.prototypes, bank.present
        samples = [sample_uncertain_voxel_indices(own_labels, ~reliable, config.contrast_sample_fraction,
                                                  config.contrast_max_samples_per_class, generator=self.generator,
                                                  num_classes=groups.stop - groups.start)
                   for _, reliable, own_labels, groups in sets]
        # One gather from the map as the network made it, every set's samples at once: the gather's
        # backward writes a dense gradient of the whole map, and a gather from an unlabelled-rows slice,
        # or one per set, would write more of them (each the size of the map) into the peak of the step.
        rows, voxels, labels_per_set = zip(*samples)
        all_sampled = gather_voxels(features, torch.cat(rows) + first_unlabeled_row, torch.cat(voxels))
        all_sampled = F.normalize(all_sampled.float(), p=2.0, dim=1, eps=NORMALIZE_EPS)
        terms, contrasted = [], []
        for (_, _, _, groups), sampled_labels, sampled_features in zip(
                sets, labels_per_set, all_sampled.split([len(labels) for labels in labels_per_set])):
            if config.contrast_loss == "infonce":
                terms.append(prototype_infonce_loss(sampled_features, sampled_labels, prototypes[groups],
                                                    present[groups], config.contrast_temperature))
            else:
                terms.append(prototype_l2_loss(sampled_features, sampled_labels, prototypes[groups], present[groups]))
            contrasted.append(present[groups].sum() >= 2)
        # the mean over the sets that have two prototypes (a set without is exactly 0)
        term = torch.stack(terms).sum() / torch.stack(contrasted).sum().clamp_min(1)
        return term, present

    def _check_inputs(
        self, logits_a, logits_b, n_labeled, target_labeled, features_a, features_b, contrast_weight, students
    ) -> None:
        if logits_a.shape != logits_b.shape:
            raise ValueError(
                f"logits_a and logits_b differ in shape: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}"
            )
        if logits_a.ndim not in (4, 5) or logits_a.shape[1] != self.num_classes:  # R channels for regions
            raise ValueError(
                f"logits must be (N, C={self.num_classes}, *spatial) with 2 or 3 spatial axes, "
                f"got {tuple(logits_a.shape)}"
            )
        if not 0 <= n_labeled <= logits_a.shape[0]:
            raise ValueError(
                f"n_labeled={n_labeled} outside [0, {logits_a.shape[0]}] for logits {tuple(logits_a.shape)}"
            )
        if target_labeled is not None and target_labeled.shape[0] != n_labeled:
            raise ValueError(f"target_labeled has {target_labeled.shape[0]} rows, n_labeled is {n_labeled}")
        if self._contrast_active(contrast_weight) and (logits_a.shape[0] > n_labeled or distributed_active()):
            needed = {f"features_{net}": features for net, features in (("a", features_a), ("b", features_b))
                      if net in students}
            missing = [name for name, features in needed.items() if features is None]
            if missing:
                raise ValueError(
                    f"contrast_weight={contrast_weight} with config.contrast_weight={self.config.contrast_weight} "
                    f"needs {' and '.join(missing)} (decoder features of the networks in students={students})"
                )
            n_rows, n_unlabeled = logits_a.shape[0], logits_a.shape[0] - n_labeled
            for name, features in needed.items():
                if features.shape[0] not in (n_rows, n_unlabeled) or features.shape[2:] != logits_a.shape[2:]:
                    raise ValueError(
                        f"{name} must be (N={n_rows} or {n_unlabeled}, F, {tuple(logits_a.shape[2:])}) at full "
                        f"resolution, got {tuple(features.shape)}"
                    )


# Statistics that are a mean over the networks trained in a call (the others are per network or shared).
_MEAN_OVER_STUDENTS = ("mean_kl_weight", "num_prototypes")
_MEAN_OVER_STUDENTS_PREFIXES = ("prototype_present_",)


def merge_sequential_stats(stats_a: dict[str, torch.Tensor], stats_b: dict[str, torch.Tensor]) -> dict:
    """The statistics of the joint call from those of the ``students=("a",)`` and ``("b",)`` calls.

    Per-network terms come from their own call, shared statistics (agreement, thresholds, the cosine
    term) are equal in both, ``total`` adds up, and the means over students are averaged over the calls
    that have them.
    """
    merged = {**stats_b, **stats_a}
    merged["total"] = stats_a["total"] + stats_b["total"]
    averaged = set(_MEAN_OVER_STUDENTS) | {key for key in merged if key.startswith(_MEAN_OVER_STUDENTS_PREFIXES)}
    for key in averaged:
        values = [s[key] for s in (stats_a, stats_b) if key in s]
        if values:
            merged[key] = torch.stack(values).mean()
    return merged
