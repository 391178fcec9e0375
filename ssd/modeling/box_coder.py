"""Matching ground truth to priors, and encoding boxes as offsets from priors (SSD paper sec. 2.2).

Training targets are built in two steps:

1. `match`: every prior is assigned a ground-truth box or background ("Matching strategy", sec. 2.2):
   each ground-truth box takes the prior it overlaps best, and every other prior whose IoU with some
   ground-truth box is at least the threshold (0.5 in the paper) takes that box.
2. `encode`: a matched box is written as offsets from its prior (sec. 2.2 eq. 2, with the Caffe SSD
   "variances" that scale the offsets to roughly unit variance):

       t_cx = (g_cx - p_cx) / p_w / center_variance      t_w = log(g_w / p_w) / size_variance
       t_cy = (g_cy - p_cy) / p_h / center_variance      t_h = log(g_h / p_h) / size_variance

`decode` inverts `encode`: decode(encode(b, p), p) == b.

Unlike lufficc/SSD, which matches in the data loader, matching here runs inside the model's forward
(`match_and_encode_batch`), so the priors have one owner and images without boxes are handled in one place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssd.structures.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh

# Largest value of size_offset * size_variance that `decode` exponentiates: a box at most 1000/16 = 62.5
# times its prior. torchvision's BoxCoder uses the same bound (bbox_xform_clip).
MAX_LOG_SIZE_RATIO = math.log(1000.0 / 16)


def encode(
    boxes_cxcywh: Tensor, priors_cxcywh: Tensor, center_variance: float, size_variance: float
) -> Tensor:
    """Boxes -> offsets from their priors.

    Args:
        boxes_cxcywh: (..., 4) boxes with positive width and height (a zero size gives log(0) = -inf).
        priors_cxcywh: (..., 4), broadcastable against boxes_cxcywh, same unit.
        center_variance: divides the centre offsets (0.1 in SSD).
        size_variance: divides the log size ratios (0.2 in SSD).

    Returns:
        offsets: (..., 4) (t_cx, t_cy, t_w, t_h).
    """
    centre = (boxes_cxcywh[..., :2] - priors_cxcywh[..., :2]) / priors_cxcywh[..., 2:] / center_variance
    size = torch.log(boxes_cxcywh[..., 2:] / priors_cxcywh[..., 2:]) / size_variance
    return torch.cat((centre, size), dim=-1)


def decode(offsets: Tensor, priors_cxcywh: Tensor, center_variance: float, size_variance: float) -> Tensor:
    """Offsets -> boxes; the inverse of `encode`.

    Deviation from lufficc/SSD: the exponent of the size is clamped at log(1000/16), so a wild prediction
    (e.g. from random weights) gives a large but finite box instead of inf, which would turn into NaN
    in NMS. Offsets produced by `encode` of boxes at most 62.5 times their prior are unaffected.

    Args:
        offsets: (..., 4) (t_cx, t_cy, t_w, t_h).
        priors_cxcywh: (..., 4), broadcastable against offsets.
        center_variance, size_variance: as in `encode`.

    Returns:
        boxes_cxcywh: (..., 4) in the unit of the priors.
    """
    centre = offsets[..., :2] * center_variance * priors_cxcywh[..., 2:] + priors_cxcywh[..., :2]
    log_ratio = (offsets[..., 2:] * size_variance).clamp(max=MAX_LOG_SIZE_RATIO)
    size = torch.exp(log_ratio) * priors_cxcywh[..., 2:]
    return torch.cat((centre, size), dim=-1)


def match(
    gt_boxes_norm: Tensor, gt_labels: Tensor, priors_xyxy: Tensor, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """Assign each prior a ground-truth box or background (SSD paper sec. 2.2, "Matching strategy").

    A prior is positive when
      * it is the best prior of some ground-truth box (the forced match, so every box is learnt even when
        no prior reaches the threshold), or
      * its IoU with its best ground-truth box is >= iou_threshold; it then takes that box.
    A forced match overrides the IoU rule for its prior.

    Tie rule: when two ground-truth boxes have the same best prior, the box with the larger index wins that
    prior (as in lufficc/SSD, where the later write wins); the other box keeps only the priors it reaches
    through the threshold. Here this rule is enforced with a deterministic max over indices rather than
    relying on the order of an indexed write, which PyTorch does not guarantee for repeated indices.

    A ground-truth box that overlaps no prior at all (e.g. a zero-area box) gets no forced match: its
    offsets could not be encoded (log of a zero size), so it is left unlearnt rather than poisoning the loss.
    lufficc/SSD would force-match such a box to prior 0.

    Args:
        gt_boxes_norm: (G, 4) xyxy in 0..1. G may be 0 (lufficc/SSD crashes there, its issue #178).
        gt_labels: (G,) class labels in 1..C-1.
        priors_xyxy: (P, 4) xyxy in 0..1.
        iou_threshold: IoU from which a prior counts as positive (0.5 in the paper).

    Returns:
        matched_boxes_norm: (P, 4) xyxy, the box of each positive prior; zeros for background priors.
        matched_labels: (P,) int64, the label of each positive prior; 0 for background.
    """
    num_priors = priors_xyxy.shape[0]
    num_gt = gt_boxes_norm.shape[0]
    device = priors_xyxy.device
    if num_gt == 0:
        return (
            priors_xyxy.new_zeros((num_priors, 4)),
            torch.zeros(num_priors, dtype=torch.int64, device=device),
        )

    iou = box_iou(gt_boxes_norm, priors_xyxy)  # (G, P)
    best_iou_per_prior, best_gt_per_prior = iou.max(dim=0)  # (P,), (P,)
    best_iou_per_gt, best_prior_per_gt = iou.max(dim=1)  # (G,), (G,)

    # Forced matches: forced_gt[p] = index of the ground-truth box that claims prior p, or -1.
    gt_index = torch.arange(num_gt, device=device)  # (G,)
    claims = best_iou_per_gt > 0  # (G,) a box overlapping nothing claims nothing
    forced_gt = torch.full((num_priors,), -1, dtype=torch.int64, device=device)
    forced_gt = forced_gt.scatter_reduce(
        0, best_prior_per_gt[claims], gt_index[claims], reduce="amax"
    )  # (P,) tie rule: the larger index wins
    is_forced = forced_gt >= 0  # (P,)

    matched_gt = torch.where(is_forced, forced_gt, best_gt_per_prior)  # (P,)
    positive = is_forced | (best_iou_per_prior >= iou_threshold)  # (P,)

    matched_labels = torch.where(positive, gt_labels.to(torch.int64)[matched_gt], 0)  # (P,)
    matched_boxes_norm = torch.where(positive[:, None], gt_boxes_norm[matched_gt], 0.0)  # (P, 4)
    return matched_boxes_norm, matched_labels


def match_and_encode_batch(
    targets: list[dict],
    priors_cxcywh: Tensor,
    iou_threshold: float,
    center_variance: float,
    size_variance: float,
) -> tuple[Tensor, Tensor]:
    """Training targets of a batch: `match` per image, then `encode` the whole batch at once.

    Matching loops over the N images because each has its own number of boxes G_i; inside an image
    everything is vectorised over priors and boxes.

    Args:
        targets: N dicts with "boxes_norm" (G_i, 4) xyxy in 0..1 and "labels" (G_i,) in 1..C-1.
        priors_cxcywh: (P, 4) centre-form priors in 0..1.
        iou_threshold, center_variance, size_variance: as in `match` and `encode`.

    Returns:
        target_offsets: (N, P, 4) encoded boxes of positive priors; 0 for background priors (the loss
            never reads them, and 0 keeps the tensor finite).
        target_labels: (N, P) int64, 0 = background.
    """
    if not targets:
        raise ValueError("match_and_encode_batch: targets is empty; a batch needs at least one image")
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)  # (P, 4)
    device = priors_cxcywh.device
    boxes, labels = [], []
    for target in targets:
        matched_boxes_norm, matched_labels = match(
            target["boxes_norm"].to(device=device, dtype=priors_cxcywh.dtype),
            target["labels"].to(device),
            priors_xyxy,
            iou_threshold,
        )
        boxes.append(matched_boxes_norm)
        labels.append(matched_labels)
    matched_boxes_norm = torch.stack(boxes)  # (N, P, 4)
    target_labels = torch.stack(labels)  # (N, P)

    offsets = encode(xyxy_to_cxcywh(matched_boxes_norm), priors_cxcywh, center_variance, size_variance)
    target_offsets = torch.where(target_labels[..., None] > 0, offsets, 0.0)  # (N, P, 4)
    return target_offsets, target_labels
