"""The plugin's trainers, found by nnU-Net's ``-tr`` through ``nnUNet_extTrainer``.

Thin classes only: each names a method configuration or a budget; the logic lives in
:mod:`nnunet_ccesemi.training`.
"""
# Each module lists its trainers in __all__; the shim nnU-Net imports re-exports these.
from nnunet_ccesemi.trainers.cce import *  # noqa: F401,F403
from nnunet_ccesemi.trainers.cps import *  # noqa: F401,F403
from nnunet_ccesemi.trainers.supervised import *  # noqa: F401,F403

__all__ = [name for name in dir() if name.startswith("nnUNetTrainer")]
