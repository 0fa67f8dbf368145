"""Whether a loss term reduces over the ranks of ``torch.distributed``."""
from __future__ import annotations

from typing import Optional

import torch.distributed as dist


def distributed_active(distributed: Optional[bool] = None) -> bool:
    """``distributed`` when given, else whether a process group of more than one rank is initialised.

    The terms that all-reduce or all-gather (class prototypes, per-class entropy quantiles) take
    ``distributed=None`` to mean the latter; every rank must then call them, also a rank with no rows.
    """
    if distributed is None:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return distributed
