"""nnU-Net's own supervised trainer, seeded like the dual-network trainers (``nnUNet_ccesemi_seed``) and
at the short variants' budgets, for like-for-like comparisons."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ccesemi.training.budgets import ShortBudget
from nnunet_ccesemi.training.seeding import SeededFromEnvironment


class nnUNetTrainerSupervised(SeededFromEnvironment, nnUNetTrainer):
    pass


class nnUNetTrainerSupervised_5epochs(ShortBudget, nnUNetTrainerSupervised):
    pass


class nnUNetTrainerSupervised_10epochs(ShortBudget, nnUNetTrainerSupervised):
    budget_epochs = 10


class nnUNetTrainerSupervised_20epochs(ShortBudget, nnUNetTrainerSupervised):
    budget_epochs = 20


__all__ = [name for name in dir() if name.startswith("nnUNetTrainerSupervised")]
