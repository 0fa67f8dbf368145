"""Cross pseudo supervision (Chen et al., CVPR 2021): the dual-network baseline."""
from nnunet_ccesemi.config import CPS_CONFIG
from nnunet_ccesemi.training.budgets import ShortBudget
from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork


class nnUNetTrainerCPS(nnUNetTrainerDualNetwork):
    method_config = CPS_CONFIG


class nnUNetTrainerCPS_sameArch(nnUNetTrainerCPS):
    method_config = CPS_CONFIG.replace(peer_architecture="same")


class nnUNetTrainerCPS_lowMem(nnUNetTrainerCPS):
    """CPS with the sequential step: one network's activations at a time, same gradients."""
    sequential_step = True


# Short budgets (training/budgets.py) of every configuration above.
class nnUNetTrainerCPS_5epochs(ShortBudget, nnUNetTrainerCPS):
    pass


class nnUNetTrainerCPS_10epochs(ShortBudget, nnUNetTrainerCPS):
    budget_epochs = 10


class nnUNetTrainerCPS_20epochs(ShortBudget, nnUNetTrainerCPS):
    budget_epochs = 20


class nnUNetTrainerCPS_sameArch_5epochs(ShortBudget, nnUNetTrainerCPS_sameArch):
    pass


class nnUNetTrainerCPS_sameArch_10epochs(ShortBudget, nnUNetTrainerCPS_sameArch):
    budget_epochs = 10


class nnUNetTrainerCPS_sameArch_20epochs(ShortBudget, nnUNetTrainerCPS_sameArch):
    budget_epochs = 20


class nnUNetTrainerCPS_lowMem_5epochs(ShortBudget, nnUNetTrainerCPS_lowMem):
    pass


class nnUNetTrainerCPS_lowMem_10epochs(ShortBudget, nnUNetTrainerCPS_lowMem):
    budget_epochs = 10


class nnUNetTrainerCPS_lowMem_20epochs(ShortBudget, nnUNetTrainerCPS_lowMem):
    budget_epochs = 20


# nnU-Net's nnUNetTrainer_1epoch counterpart: a set-up check end to end in a minute on a CPU.
class nnUNetTrainerCPS_1epoch(ShortBudget, nnUNetTrainerCPS):
    budget_epochs = 1


__all__ = [name for name in dir() if name.startswith("nnUNetTrainerCPS")]
