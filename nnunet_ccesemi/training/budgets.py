"""Training budgets for the short trainer variants (``_5epochs``), as a mixin.

nnU-Net's own ``nnUNetTrainer_5epochs`` keeps 250 iterations per epoch; for CPU demos, tests and
benchmarks we want a few minutes in all, so a short variant runs 5 epochs of 50 iterations with 10
validation iterations, and writes ``checkpoint_latest.pth`` every epoch so that ``--c`` resumes
exactly where it stopped (nnU-Net writes it every 50 epochs, i.e. never in a 5-epoch run).
"""
import torch


class ShortBudget:
    """Mix in before a trainer class: ``class T_5epochs(ShortBudget, T): pass``."""

    budget_epochs = 5
    budget_iterations_per_epoch = 50
    budget_val_iterations_per_epoch = 10

    # nnU-Net derives its saved init kwargs from this exact signature: keep it unchanged
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.budget_val_iterations_per_epoch
        self.save_every = 1
