"""The plugin's trainers, found by nnU-Net's ``-tr`` through ``nnUNet_extTrainer``.

Thin classes only: each names a method configuration or a budget; the logic lives in
:mod:`nnunet_ccesemi.training`.
"""
from nnunet_ccesemi.trainers.cce import (nnUNetTrainerCCE, nnUNetTrainerCCE_1epoch, nnUNetTrainerCCE_5epochs,
                                         nnUNetTrainerCCE_10epochs, nnUNetTrainerCCE_20epochs, nnUNetTrainerCCE_globalRule,
                                         nnUNetTrainerCCE_globalRule_20epochs, nnUNetTrainerCCE_lowMem,
                                         nnUNetTrainerCCE_lowMem_5epochs, nnUNetTrainerCCE_noContrast,
                                         nnUNetTrainerCCE_noContrast_5epochs, nnUNetTrainerCCE_noContrast_20epochs,
                                         nnUNetTrainerCCE_noEntropyFilter, nnUNetTrainerCCE_noEntropyFilter_5epochs,
                                         nnUNetTrainerCCE_noEntropyFilter_20epochs, nnUNetTrainerCCE_noKLWeight,
                                         nnUNetTrainerCCE_noKLWeight_5epochs, nnUNetTrainerCCE_noKLWeight_10epochs,
                                         nnUNetTrainerCCE_noKLWeight_20epochs, nnUNetTrainerCCE_releasedCode,
                                         nnUNetTrainerCCE_releasedCode_5epochs,
                                         nnUNetTrainerCCE_releasedCode_20epochs)
from nnunet_ccesemi.trainers.cps import (nnUNetTrainerCPS, nnUNetTrainerCPS_5epochs, nnUNetTrainerCPS_10epochs,
                                         nnUNetTrainerCPS_20epochs, nnUNetTrainerCPS_lowMem,
                                         nnUNetTrainerCPS_sameArch)
from nnunet_ccesemi.trainers.supervised import (nnUNetTrainerSupervised_5epochs, nnUNetTrainerSupervised_10epochs,
                                                nnUNetTrainerSupervised_20epochs)

__all__ = [name for name in dir() if name.startswith("nnUNetTrainer")]
