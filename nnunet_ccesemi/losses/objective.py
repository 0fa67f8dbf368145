"""The dual-network objective of CCE beyond the supervised loss (terms 2-6 of ``METHOD.md``).

arXiv 2509.13084 ("CCE"), as specified in ``METHOD.md``:

``L = Σ_k w_mis L_mis^k + λ_u(t) [Σ_k (w_ef L_ef^k + w_kl L_kl^k) + w_cos L_cos] + λ_c(t) Σ_k L_con^k``

for the networks k ∈ {A, B}. nnU-Net's Dice+CE (term 1) is added by the trainer. The module holds
no parameters, only the per-network prototype banks (buffers, checkpointed with the trainer).
"""
from __future__ import annotations

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
from .prototypes import (
    PrototypeBank,
    class_prototypes,
    prototype_infonce_loss,
    prototype_l2_loss,
    sample_uncertain_voxels,
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

    Under ``torch.distributed`` (nnU-Net's DDP) each rank passes its own rows; the thresholds ``τ^k``
    and the prototypes are global (those of the concatenated batch of all ranks), the other terms and
    the per-voxel statistics (``reliable_fraction``, ``agreement``, ``mean_kl_weight``) are per-rank
    means, averaged over ranks by the trainer's epoch-end logging. Every rank must call ``forward``
    the same number of times with the same ``students``: the unlabelled terms are collectives. A rank
    without unlabelled rows still takes part (its per-voxel means are NaN, its terms 3 and 6 zero).

    Args:
        config: the method configuration.
        num_classes: C, the number of output channels (including background).
        ignore_index: nnU-Net's ignore label in the labelled targets, if the dataset has one.
        generator: random generator (on the logits' device) for the voxel sampling of term 6.
    """

    def __init__(
        self,
        config: MethodConfig,
        num_classes: int,
        ignore_index: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.generator = generator
        self.prototype_banks = nn.ModuleDict(
            {net: PrototypeBank(num_classes, config.prototype_momentum, memory=config.prototype_memory)
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
            probs = {net: torch.softmax(logits[net], dim=1) for net in NETWORKS}
            stats: dict[str, torch.Tensor] = {}
            # Accumulated on the graph of the logits, so an all-skipped objective is a connected 0.
            total = (logits["a"].sum() + logits["b"].sum()) * 0.0
            # The shared cosine term enters every call's loss but counts once when two calls are merged.
            not_counted = total.detach()

            if config.disagreement_weight > 0 and target_labeled is not None and n_labeled > 0:
                total = total + self._disagreement_term(probs, n_labeled, target_labeled, students, stats)
            targets = None
            if has_unlabeled:
                needs_targets = config.entropy_filter_weight > 0 or self._contrast_active(contrast_weight)
                targets = self._unlabeled_targets(logits, n_labeled, needs_targets, stats)
            if config.entropy_filter_weight > 0 and targets is not None:
                total = total + unsup_weight * self._entropy_filter_term(logits, n_labeled, targets, students, stats)
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
        total = 0.0
        for net in students:
            term = confident_disagreement_loss(
                probs[net][:n_labeled], probs_a_labeled, probs_b_labeled, target_labeled,
                self.config.disagreement_confidence, ignore_index=self.ignore_index,
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
            if config.kl_weighting:
                term, mean_weight = kl_weighted_cross_pseudo_supervision(
                    logits[student], logits[teacher], detach_weight=config.detach_kl_weight
                )
                kl_weights.append(mean_weight)
            else:
                term = cross_pseudo_supervision(logits[student], logits[teacher])
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
            # all rows, or only the unlabelled ones
            features_unlabeled = features[net][n_labeled:] if features[net].shape[0] == n_rows else features[net]
            term, present = self._contrast_term(net, features_unlabeled, targets, update_prototype_banks)
            present_per_net.append(present.float())
            stats[f"contrast_{net}"] = term.detach()
            total = total + term
        present = torch.stack(present_per_net).mean(0)
        stats["num_prototypes"] = present.sum()
        for c in range(self.num_classes):
            stats[f"prototype_present_c{c}"] = present[c]
        return total

    # ------------------------------------------------------------------ unlabelled targets
    @torch.no_grad()
    def _unlabeled_targets(self, logits, n_labeled, needs_targets: bool, stats) -> Optional["UnlabeledTargets"]:
        """Each net's own labels on the unlabelled rows, and (if a term needs them) the reliable voxels
        and the joint pseudo-labels of term 3; records agreement, thresholds and reliable fractions."""
        config = self.config
        logits_unlabeled = {net: logits[net][n_labeled:].detach() for net in NETWORKS}
        own_labels = {net: class_argmax(logits_unlabeled[net]) for net in NETWORKS}
        stats["agreement"] = (own_labels["a"] == own_labels["b"]).float().mean()
        if not needs_targets:
            return None
        entropy = {net: normalized_entropy_from_logits(logits_unlabeled[net]) for net in NETWORKS}
        if not config.filter_entropy:
            reliable = torch.ones_like(entropy["a"], dtype=torch.bool)
        elif config.reliability_rule == "global":
            threshold = {net: batch_quantile(entropy[net], config.entropy_quantile) for net in NETWORKS}
            reliable = reliable_mask(entropy["a"], entropy["b"], threshold["a"], threshold["b"])
            for net in NETWORKS:
                stats[f"entropy_threshold_{net}"] = threshold[net]
        else:
            reliable_per_net = []
            for net in NETWORKS:
                thresholds, _ = class_quantiles(entropy[net], own_labels[net], self.num_classes,
                                                config.entropy_quantile)
                reliable_per_net.append(class_balanced_reliable(entropy[net], own_labels[net], thresholds))
                for c in range(self.num_classes):
                    stats[f"entropy_threshold_{net}_c{c}"] = thresholds[c]
            reliable = reliable_per_net[0] | reliable_per_net[1]
        pseudo_labels = joint_pseudo_labels(
            logits_unlabeled["a"], logits_unlabeled["b"], entropy["a"], entropy["b"], config.pseudo_label_rule
        )
        stats["reliable_fraction"] = reliable.float().mean()
        # Per pseudo-class: the share of its voxels that supervise (NaN for a class absent from the batch).
        counts = torch.zeros(self.num_classes, device=reliable.device).scatter_add_(
            0, pseudo_labels.reshape(-1), torch.ones_like(reliable.reshape(-1), dtype=torch.float32))
        kept = torch.zeros(self.num_classes, device=reliable.device).scatter_add_(
            0, pseudo_labels.reshape(-1), reliable.reshape(-1).float())
        reliable_fraction = kept / counts  # 0/0 = NaN: class absent
        for c in range(self.num_classes):
            stats[f"reliable_fraction_c{c}"] = reliable_fraction[c]
        return UnlabeledTargets(own_labels=own_labels, reliable=reliable, pseudo_labels=pseudo_labels)

    def _contrast_term(
        self,
        net: str,
        features_unlabeled: torch.Tensor,
        targets: "UnlabeledTargets",
        update_prototype_bank: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        # Prototypes are constants: the normalised map enters them without autograd (and without a
        # normalised copy of it), only the sampled voxels are normalised on the graph (normalising the
        # map there kept an (m, F, *spatial) float32 copy alive through the backward pass, for
        # gradients that are zero but at the samples).
        with torch.no_grad():
            prototypes, present = class_prototypes(
                features_unlabeled.detach(), targets.pseudo_labels, targets.reliable, self.num_classes,
                eps=NORMALIZE_EPS, normalize_voxels=True,
            )
        bank = self.prototype_banks[net]
        if update_prototype_bank:
            prototypes, present = bank.update(prototypes, present)
        elif bank.prototypes.numel() and bank.memory:
            prototypes, present = bank.prototypes, bank.present
        sampled_features, sampled_labels = sample_uncertain_voxels(
            features_unlabeled,
            targets.own_labels[net],
            ~targets.reliable,
            config.contrast_sample_fraction,
            config.contrast_max_samples_per_class,
            generator=self.generator,
            num_classes=self.num_classes,
        )
        sampled_features = F.normalize(sampled_features.float(), p=2.0, dim=1, eps=NORMALIZE_EPS)
        if config.contrast_loss == "infonce":
            term = prototype_infonce_loss(
                sampled_features, sampled_labels, prototypes, present, config.contrast_temperature
            )
        else:
            term = prototype_l2_loss(sampled_features, sampled_labels, prototypes, present)
        return term, present

    def _check_inputs(
        self, logits_a, logits_b, n_labeled, target_labeled, features_a, features_b, contrast_weight, students
    ) -> None:
        if logits_a.shape != logits_b.shape:
            raise ValueError(
                f"logits_a and logits_b differ in shape: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}"
            )
        if logits_a.ndim not in (4, 5) or logits_a.shape[1] != self.num_classes:
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


def merge_sequential_stats(stats_a: dict[str, torch.Tensor], stats_b: dict[str, torch.Tensor]) -> dict:
    """The statistics of the joint call from those of the ``students=("a",)`` and ``("b",)`` calls.

    Per-network terms come from their own call, shared statistics (agreement, thresholds, the cosine
    term) are equal in both, ``total`` adds up, and the means over students are averaged over the calls
    that have them.
    """
    merged = {**stats_b, **stats_a}
    merged["total"] = stats_a["total"] + stats_b["total"]
    for key in _MEAN_OVER_STUDENTS:
        values = [s[key] for s in (stats_a, stats_b) if key in s]
        if values:
            merged[key] = torch.stack(values).mean()
    return merged
