"""nnU-Net's own supervised trainer at the short variants' budget, for like-for-like comparisons."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ccesemi.training.budgets import ShortBudget


class nnUNetTrainerSupervised_5epochs(ShortBudget, nnUNetTrainer):
    pass


class nnUNetTrainerSupervised_10epochs(ShortBudget, nnUNetTrainer):
    budget_epochs = 10


class nnUNetTrainerSupervised_20epochs(ShortBudget, nnUNetTrainer):
    budget_epochs = 20


__all__ = [name for name in dir() if name.startswith("nnUNetTrainerSupervised")]
