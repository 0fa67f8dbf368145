"""``torch.compile`` for the semi-supervised objective, with a way back to eager execution.

On a GPU the objective is dozens of small elementwise and reduction kernels over the full-resolution
logits (softmax, entropies, quantile, KL, cross-entropies, prototypes), which cost as much launch time
as arithmetic; compiled, they fuse. The whole objective traces as one graph (no graph break in a
single process, tested), so it compiles where nnU-Net compiles its networks (``nnUNet_compile``, CUDA).
The contrastive term's voxel sample then draws from the compiled code's random stream: the same
distribution as eager execution, not the same voxels.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


class CompiledWithEagerFallback:
    """Calls ``torch.compile(function)``; if compiling fails, says so once and runs ``function`` eagerly.

    Out-of-memory errors pass through untouched (the trainer's low-memory switch handles them), and
    so does any error that the eager function raises as well: only a failure of the compiled call
    that eager execution does not share switches compilation off.

    Args:
        function: the eager callable (an ``nn.Module``: its buffers stay where they are).
        log: receives the one-line message when compilation is given up.
        compiled: the compiled callable; default ``torch.compile(function)``.
    """

    def __init__(self, function: Callable, log: Callable[[str], None], compiled: Optional[Callable] = None):
        self.eager = function
        self.compiled = compiled if compiled is not None else torch.compile(function)
        self._log = log

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # compiler errors have many types (dynamo, inductor, triton)
            result = self.eager(*args, **kwargs)  # an error eager execution shares propagates from here
            self.compiled = None
            self._log(f"torch.compile of the semi-supervised objective failed ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); it runs eagerly from now on (same maths, "
                      f"slower on a GPU). Set nnUNet_compile=f to compile nothing.")
            return result
