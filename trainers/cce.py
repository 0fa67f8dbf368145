"""CCE (arXiv 2509.13084) and its ablations: METHOD.md §3, one configuration each."""
from nnunet_ccesemi.config import CCE_CLASS_BALANCED_CONFIG, CCE_CONFIG, CCE_RELEASED_CODE_CONFIG
from nnunet_ccesemi.training.budgets import ShortBudget
from nnunet_ccesemi.training.dual_network_trainer import nnUNetTrainerDualNetwork


class nnUNetTrainerCCE(nnUNetTrainerDualNetwork):
    method_config = CCE_CONFIG


class nnUNetTrainerCCE_noEntropyFilter(nnUNetTrainerCCE):
    """Every unlabelled voxel reliable (METHOD.md §3). Nothing is then uncertain, so the contrastive term
    is 0 by definition: it is switched off instead of computed (no feature hooks, no prototypes, no
    per-epoch dead-term warning)."""
    method_config = CCE_CONFIG.replace(filter_entropy=False, contrast_weight=0.0)


class nnUNetTrainerCCE_noKLWeight(nnUNetTrainerCCE):
    method_config = CCE_CONFIG.replace(kl_weighting=False)


class nnUNetTrainerCCE_noContrast(nnUNetTrainerCCE):
    method_config = CCE_CONFIG.replace(contrast_weight=0.0)


class nnUNetTrainerCCE_classBalanced(nnUNetTrainerCCE):
    """CCE with the entropy quantile taken within each pseudo-class (issue 14): every class's most
    confident voxels supervise the filtered term and renew its prototype. The default until the Left
    Atrium validation cases favoured the global rule."""
    method_config = CCE_CLASS_BALANCED_CONFIG


class nnUNetTrainerCCE_globalRule(nnUNetTrainerCCE):
    """The released code's global entropy quantile: the same configuration as nnUNetTrainerCCE since the
    default changed to it, kept under this name so that the benchmark rows trained with it stay
    reproducible."""
    method_config = CCE_CONFIG


class nnUNetTrainerCCE_releasedCode(nnUNetTrainerCCE):
    method_config = CCE_RELEASED_CODE_CONFIG


class nnUNetTrainerCCE_lowMem(nnUNetTrainerCCE):
    """CCE with the sequential step: one network's activations at a time, same gradients."""
    sequential_step = True


# Short budgets (training/budgets.py) of every configuration above. 20 epochs x 50 iterations = 1000 iterations
# is the development protocol's budget: every row of the Left Atrium comparison in benchmarks/README.md.
class nnUNetTrainerCCE_5epochs(ShortBudget, nnUNetTrainerCCE):
    pass


class nnUNetTrainerCCE_10epochs(ShortBudget, nnUNetTrainerCCE):
    budget_epochs = 10


class nnUNetTrainerCCE_20epochs(ShortBudget, nnUNetTrainerCCE):
    budget_epochs = 20


class nnUNetTrainerCCE_classBalanced_5epochs(ShortBudget, nnUNetTrainerCCE_classBalanced):
    pass


class nnUNetTrainerCCE_classBalanced_10epochs(ShortBudget, nnUNetTrainerCCE_classBalanced):
    budget_epochs = 10


class nnUNetTrainerCCE_classBalanced_20epochs(ShortBudget, nnUNetTrainerCCE_classBalanced):
    budget_epochs = 20


class nnUNetTrainerCCE_noEntropyFilter_5epochs(ShortBudget, nnUNetTrainerCCE_noEntropyFilter):
    pass


class nnUNetTrainerCCE_noEntropyFilter_10epochs(ShortBudget, nnUNetTrainerCCE_noEntropyFilter):
    budget_epochs = 10


class nnUNetTrainerCCE_noEntropyFilter_20epochs(ShortBudget, nnUNetTrainerCCE_noEntropyFilter):
    budget_epochs = 20


class nnUNetTrainerCCE_noKLWeight_5epochs(ShortBudget, nnUNetTrainerCCE_noKLWeight):
    pass


class nnUNetTrainerCCE_noKLWeight_10epochs(ShortBudget, nnUNetTrainerCCE_noKLWeight):
    budget_epochs = 10


class nnUNetTrainerCCE_noKLWeight_20epochs(ShortBudget, nnUNetTrainerCCE_noKLWeight):
    budget_epochs = 20


class nnUNetTrainerCCE_noContrast_5epochs(ShortBudget, nnUNetTrainerCCE_noContrast):
    pass


class nnUNetTrainerCCE_noContrast_10epochs(ShortBudget, nnUNetTrainerCCE_noContrast):
    budget_epochs = 10


class nnUNetTrainerCCE_noContrast_20epochs(ShortBudget, nnUNetTrainerCCE_noContrast):
    budget_epochs = 20


class nnUNetTrainerCCE_globalRule_5epochs(ShortBudget, nnUNetTrainerCCE_globalRule):
    pass


class nnUNetTrainerCCE_globalRule_10epochs(ShortBudget, nnUNetTrainerCCE_globalRule):
    budget_epochs = 10


class nnUNetTrainerCCE_globalRule_20epochs(ShortBudget, nnUNetTrainerCCE_globalRule):
    budget_epochs = 20


class nnUNetTrainerCCE_releasedCode_5epochs(ShortBudget, nnUNetTrainerCCE_releasedCode):
    pass


class nnUNetTrainerCCE_releasedCode_10epochs(ShortBudget, nnUNetTrainerCCE_releasedCode):
    budget_epochs = 10


class nnUNetTrainerCCE_releasedCode_20epochs(ShortBudget, nnUNetTrainerCCE_releasedCode):
    budget_epochs = 20


class nnUNetTrainerCCE_lowMem_5epochs(ShortBudget, nnUNetTrainerCCE_lowMem):
    pass


class nnUNetTrainerCCE_lowMem_10epochs(ShortBudget, nnUNetTrainerCCE_lowMem):
    budget_epochs = 10


class nnUNetTrainerCCE_lowMem_20epochs(ShortBudget, nnUNetTrainerCCE_lowMem):
    budget_epochs = 20


# nnU-Net's nnUNetTrainer_1epoch counterpart: one epoch of 50 iterations, to check a set-up end to end
# (plans, unlabelled data, both predictors) in a minute on a CPU.
class nnUNetTrainerCCE_1epoch(ShortBudget, nnUNetTrainerCCE):
    budget_epochs = 1


__all__ = [name for name in dir() if name.startswith("nnUNetTrainerCCE")]
