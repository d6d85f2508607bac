"""Pre-training and fine-tuning objectives of R2D2, one module each.

Every loss is an `nn.Module` whose `forward` returns a dict of named terms (the loss
under its own name, plus by-products the trainer needs), so the trainer can weigh,
switch off and log each term by name.

Gradient convention across ranks (see `r2d2.losses.gather`): every loss returns the mean
over this rank's local rows; contrastive columns are gathered with gradient, and
DistributedDataParallel's gradient averaging then yields exactly the gradient of the
global-batch loss.
"""

from r2d2.losses.distill import FeatureQueue, FgDLoss, TgDLoss, ema_update, soft_targets
from r2d2.losses.fgr import FGRLoss, fgr_labels, sample_hard_negatives
from r2d2.losses.gather import all_gather_no_grad, all_gather_with_grad, gather_sizes, rank_scale, world_info
from r2d2.losses.gcpr import GCPRLoss, multi_positive_targets, soft_cross_entropy
from r2d2.losses.mlm import IGNORE_INDEX, MLMLoss, mask_tokens

__all__ = [
    "IGNORE_INDEX",
    "FGRLoss",
    "FeatureQueue",
    "FgDLoss",
    "GCPRLoss",
    "MLMLoss",
    "TgDLoss",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "ema_update",
    "fgr_labels",
    "gather_sizes",
    "mask_tokens",
    "multi_positive_targets",
    "rank_scale",
    "sample_hard_negatives",
    "soft_cross_entropy",
    "soft_targets",
    "world_info",
]
