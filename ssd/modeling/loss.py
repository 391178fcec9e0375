"""The SSD training objective (SSD paper sec. 2.2, "Training objective" and "Hard negative mining").

    L = (L_conf + alpha * L_loc) / N_pos,  alpha = 1

L_loc is the smooth L1 loss between predicted and target offsets over positive priors; L_conf is the
softmax cross-entropy over the positives and the hardest negatives, at most neg_pos_ratio (3) negatives
per positive in each image. Both terms are returned separately so they can be logged; the training loop
adds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hard_negative_mining(background_loss: Tensor, labels: Tensor, neg_pos_ratio: int) -> Tensor:
    """Select the priors that enter the classification loss: all positives and the hardest negatives.

    Most priors are background; training on all of them would drown the positives. Per image, the
    negatives are ranked by how wrong the background prediction is (-log p(background), highest first)
    and the top neg_pos_ratio * num_positives are kept (sec. 2.2). An image without positives keeps no
    negatives (as in lufficc/SSD and torchvision). When an image has fewer negatives than requested, all
    its negatives are kept.

    Args:
        background_loss: (N, P) -log p(background) per prior; no gradient is needed.
        labels: (N, P) int64 target labels, 0 = background.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        mask: (N, P) bool, positives | selected negatives.
    """
    positive = labels > 0  # (N, P)
    num_pos = positive.sum(dim=1, keepdim=True)  # (N, 1)
    num_available = (~positive).sum(dim=1, keepdim=True)  # (N, 1)
    num_neg = torch.minimum(num_pos * neg_pos_ratio, num_available)  # (N, 1)

    # Positives go to the end of the ranking so they never take a negative's place.
    ranking_loss = background_loss.masked_fill(positive, float("-inf"))  # (N, P), a new tensor
    # rank[n, p] = position of prior p when image n's priors are sorted by loss, highest first.
    order = ranking_loss.sort(dim=1, descending=True, stable=True).indices  # (N, P)
    rank = order.argsort(dim=1)  # (N, P)
    negative = rank < num_neg  # (N, P)
    return positive | negative


class MultiBoxLoss(nn.Module):
    """Smooth L1 localisation loss plus hard-negative-mined cross-entropy, both divided by N_pos.

    Deviation from lufficc/SSD: the divisor is max(1, N_pos), so a batch without any positive prior gives
    two zero losses (that still backpropagate) instead of NaN.
    """

    def __init__(self, neg_pos_ratio: int = 3):
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"MultiBoxLoss: neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio

    def forward(
        self, cls_logits: Tensor, pred_offsets: Tensor, target_labels: Tensor, target_offsets: Tensor
    ) -> dict[str, Tensor]:
        """Compute the two loss terms.

        Args:
            cls_logits: (N, P, C) class scores before softmax.
            pred_offsets: (N, P, 4) predicted offsets (encoded as in box_coder.encode).
            target_labels: (N, P) int64, 0 = background.
            target_offsets: (N, P, 4) encoded matched boxes; only positive rows are read.

        Returns:
            {"reg_loss": scalar, "cls_loss": scalar}, each summed over its priors and divided by
            max(1, number of positive priors in the batch).
        """
        with torch.no_grad():
            background_loss = -F.log_softmax(cls_logits, dim=2)[..., 0]  # (N, P)
            mask = hard_negative_mining(background_loss, target_labels, self.neg_pos_ratio)  # (N, P)

        positive = target_labels > 0  # (N, P)
        divisor = positive.sum().clamp(min=1).to(cls_logits.dtype)  # guarded: no positives -> 1

        # Boolean indexing flattens the selected priors: (M, C) and (M,) for M selected priors.
        cls_loss = F.cross_entropy(cls_logits[mask], target_labels[mask], reduction="sum")
        # (N_pos, 4) each; beta = 1 is the paper's smooth L1 (from Fast R-CNN).
        reg_loss = F.smooth_l1_loss(
            pred_offsets[positive], target_offsets[positive], reduction="sum", beta=1.0
        )
        return {"reg_loss": reg_loss / divisor, "cls_loss": cls_loss / divisor}
