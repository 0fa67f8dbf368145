"""Per-epoch diagnostics of the method's terms: a term that trains nothing is named in the log.

A term can be switched on in the configuration and still pass no gradient for a whole epoch: the
released code's global entropy quantile on a background-dominated task keeps saturated background
only, so the entropy-filtered CE is ~0 and only one class prototype exists, which makes the
contrastive term exactly 0 (``METHOD.md`` §2.3). That is a failure to see in the log, not a result,
so after the ramp-up every such term is reported with the statistic that explains it.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

# Logged term name prefix -> what it needs to be non-zero, and the statistics that show whether it had it.
_TERMS = {
    "entropy_filter": ("no unlabelled voxel was reliable, or every reliable one already sat at its "
                       "pseudo-label (saturated, zero cross-entropy)", ("reliable_fraction",)),
    "contrast": ("it needs uncertain (unreliable) voxels to pull and, for InfoNCE, the prototypes of two "
                 "classes", ("num_prototypes", "reliable_fraction")),
    "cps": ("the peer's pseudo-labels gave no loss", ("agreement",)),
    "cosine": ("the two networks' probabilities are identical", ("agreement",)),
    "disagreement": ("the networks never disagreed confidently on a labelled voxel", ()),
}


def _term_of(key: str) -> tuple[str | None, str]:
    """``("contrast", "a")`` for ``contrast_a``, ``("cosine", "")`` for the shared term, else ``(None, "")``."""
    if key == "cosine":
        return "cosine", ""
    prefix, _, network = key.rpartition("_")
    return (prefix, network) if prefix in _TERMS and network in ("a", "b") else (None, "")


# the objective's group names: class c ("c1"), or region r's inside or outside ("r0_in", "r0_out")
_GROUP = re.compile(r"c(\d+)|r(\d+)_(in|out)")


def _per_class(stats: Mapping[str, Sequence[float]], prefix: str) -> str:
    described = []
    for key in sorted(stats):
        match = _GROUP.fullmatch(key[len(prefix) + 1:]) if key.startswith(prefix + "_") else None
        if match is None:
            continue
        name = f"class {match[1]}" if match[1] is not None else f"region {match[2]} {match[3]}side"
        described.append(f"{name} {_mean(stats[key]):.4g}")
    return ", ".join(described)


def _mean(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def dead_term_warnings(stats: Mapping[str, Sequence[float]]) -> list[str]:
    """Warnings for each term whose per-iteration values were all exactly 0 during an epoch.

    Args:
        stats: per-iteration values of one epoch, keyed as the objective's statistics
            (``entropy_filter_a``, ``contrast_b``, ``reliable_fraction``, ``num_prototypes``,
            ``reliable_fraction_c1``, ...). Only terms present in ``stats`` (the computed ones) are
            checked; a term that was 0 only in some iterations is alive.

    Returns:
        One sentence per dead term: its name, what it needs, and the epoch's mean of the
        statistics that say why (per class where the objective logs them).
    """
    warnings = []
    for key in sorted(stats):
        prefix, network = _term_of(key)
        if prefix is None:
            continue
        values = np.asarray(stats[key], dtype=np.float64)
        if values.size == 0 or np.any(values != 0):
            continue
        need, evidence_keys = _TERMS[prefix]
        evidence = [f"{name} {_mean(stats[name]):.4g}" for name in evidence_keys if name in stats]
        per_class = _per_class(stats, "reliable_fraction") if prefix in ("entropy_filter", "contrast") else ""
        if per_class:
            evidence.append(f"reliable fraction per pseudo-class: {per_class}")
        if prefix == "contrast":
            present = _per_class(stats, "prototype_present")
            if present:
                evidence.append(f"share of iterations with a prototype: {present}")
        term = f"{prefix} (network {network.upper()})" if network else prefix
        warnings.append(f"WARNING: the {term} term was 0 in every iteration of this epoch, so it trained "
                        f"nothing: {need}" + (f" ({'; '.join(evidence)})" if evidence else "") + ".")
    return warnings
