"""Loss terms and uncertainty maths of CCE (arXiv 2509.13084): torch only, 2D and 3D, any C >= 2."""
from .consistency import cosine_consistency
from .cross_pseudo import (
    cross_pseudo_supervision,
    kl_divergence_map,
    kl_weighted_cross_pseudo_supervision,
    masked_cross_entropy,
)
from .disagreement import confident_disagreement_loss
from .entropy import (
    batch_quantile,
    class_balanced_reliable,
    class_quantiles,
    normalized_entropy,
    normalized_entropy_from_logits,
    reliable_mask,
)
from .features import DecoderFeatureHook, l2_normalize_voxels, last_decoder_stage
from .objective import DualNetworkObjective, merge_sequential_stats
from .prototypes import (
    IGNORE_LABEL,
    PrototypeBank,
    class_prototypes,
    gather_voxels,
    prototype_infonce_loss,
    prototype_l2_loss,
    sample_uncertain_voxel_indices,
    sample_uncertain_voxels,
)
from .pseudo_labels import joint_pseudo_labels
from .ramps import contrast_rampup, sigmoid_rampup, unsupervised_rampup

__all__ = [
    "IGNORE_LABEL",
    "DecoderFeatureHook",
    "DualNetworkObjective",
    "PrototypeBank",
    "batch_quantile",
    "class_balanced_reliable",
    "class_quantiles",
    "class_prototypes",
    "confident_disagreement_loss",
    "contrast_rampup",
    "cosine_consistency",
    "cross_pseudo_supervision",
    "gather_voxels",
    "joint_pseudo_labels",
    "kl_divergence_map",
    "kl_weighted_cross_pseudo_supervision",
    "l2_normalize_voxels",
    "last_decoder_stage",
    "masked_cross_entropy",
    "merge_sequential_stats",
    "normalized_entropy",
    "normalized_entropy_from_logits",
    "prototype_infonce_loss",
    "prototype_l2_loss",
    "reliable_mask",
    "sample_uncertain_voxel_indices",
    "sample_uncertain_voxels",
    "sigmoid_rampup",
    "unsupervised_rampup",
]
