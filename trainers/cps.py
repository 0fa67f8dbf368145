"""Cross pseudo supervision (Chen et al., CVPR 2021): the dual-network baseline."""
from nnunet_ccesemi.config import CPS_CONFIG
from nnunet_ccesemi.training.budgets import ShortBudget
from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork


class nnUNetTrainerCPS(nnUNetTrainerDualNetwork):
    method_config = CPS_CONFIG


class nnUNetTrainerCPS_sameArch(nnUNetTrainerCPS):
    method_config = CPS_CONFIG.replace(peer_architecture="same")


class nnUNetTrainerCPS_5epochs(ShortBudget, nnUNetTrainerCPS):
    pass


class nnUNetTrainerCPS_10epochs(ShortBudget, nnUNetTrainerCPS):
    budget_epochs = 10


class nnUNetTrainerCPS_20epochs(ShortBudget, nnUNetTrainerCPS):
    budget_epochs = 20


class nnUNetTrainerCPS_lowMem(nnUNetTrainerCPS):
    """CPS with the sequential step: one network's activations at a time, same gradients."""
    sequential_step = True
