"""From raw network outputs to final detections (SSD paper sec. 3.7 "Inference time": a confidence
threshold of 0.01, NMS with IoU 0.45 per class, then the top detections per image; the paper keeps 200,
lufficc/SSD and our default keep 100).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms

from ssd.modeling.box_coder import decode
from ssd.structures.boxes import cxcywh_to_xyxy, scale_boxes


class PostProcessor:
    """softmax -> decode -> clip -> pixels -> per-class score threshold -> (top-k) -> class-aware NMS -> top-K.

    Args:
        center_variance, size_variance: the box encoding variances (see box_coder.encode).
        score_threshold: a (prior, class) candidate needs a probability strictly above this.
        nms_threshold: IoU above which NMS suppresses a lower-scoring box of the same class.
        max_per_class: keep at most this many candidates per class (highest scores) before NMS; -1 = no
            limit, as in lufficc/SSD. torchvision's SSD uses 400.
        max_per_image: keep at most this many detections per image after NMS; -1 = no limit.
    """

    def __init__(
        self,
        center_variance: float,
        size_variance: float,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        max_per_class: int = -1,
        max_per_image: int = 100,
    ):
        self.center_variance = center_variance
        self.size_variance = size_variance
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_per_class = max_per_class
        self.max_per_image = max_per_image

    def __call__(
        self,
        cls_logits: Tensor,
        offsets: Tensor,
        priors_cxcywh: Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of each image of a batch.

        Args:
            cls_logits: (N, P, C) class scores before softmax, class 0 = background.
            offsets: (N, P, 4) predicted offsets from the priors.
            priors_cxcywh: (P, 4) priors in 0..1.
            image_sizes: N pairs (height, width) of the original images, in pixels; boxes are returned in
                these pixels (the network saw an S x S resize, and boxes are relative, so this is a scale).

        Returns:
            N dicts with "boxes" (K, 4) float32 xyxy pixels, "labels" (K,) int64 in 1..C-1 and
            "scores" (K,) float32, sorted by descending score. K may be 0.
        """
        if len(image_sizes) != cls_logits.shape[0]:
            raise ValueError(
                f"PostProcessor: {len(image_sizes)} image sizes for a batch of {cls_logits.shape[0]} images"
            )
        # float32 so that half-precision (AMP) outputs give the same scores and boxes.
        scores = F.softmax(cls_logits.float(), dim=2)  # (N, P, C)
        boxes_cxcywh = decode(
            offsets.float(), priors_cxcywh.float(), self.center_variance, self.size_variance
        )
        boxes_norm = cxcywh_to_xyxy(boxes_cxcywh).clamp(0.0, 1.0)  # (N, P, 4) xyxy in 0..1
        return [
            self._one_image(scores[i], boxes_norm[i], height, width)
            for i, (height, width) in enumerate(image_sizes)
        ]

    def _one_image(self, scores: Tensor, boxes_norm: Tensor, height: int, width: int) -> dict[str, Tensor]:
        """scores (P, C), boxes_norm (P, 4) xyxy -> the detections dict of one image."""
        boxes = scale_boxes(boxes_norm, height, width)  # (P, 4) xyxy pixels
        num_fg = scores.shape[1] - 1

        # Each prior is a candidate for every foreground class: P * (C-1) (prior, class) pairs. The score
        # threshold comes first: a trained model leaves a few hundred to a few thousand of them (out of
        # 3234 x 80 = 258,720 for SSDLite320 on COCO), so everything after it works on short lists.
        fg_scores = scores[:, 1:]  # (P, C-1), background dropped
        cand_priors, cand_classes = (fg_scores > self.score_threshold).nonzero(as_tuple=True)  # (M,) each
        cand_scores = fg_scores[cand_priors, cand_classes]  # (M,)
        cand_labels = cand_classes + 1  # (M,) in 1..C-1
        by_score = cand_scores.argsort(descending=True)  # (M,) candidate indices, best first
        if self.max_per_class > 0:
            # Keep the k best candidates of each class (a user setting that changes the result, as
            # torchvision's 400 per class); -1 = no limit, as in lufficc/SSD.
            rank = rank_within_class(by_score, cand_classes, num_fg)  # (M,)
            by_score = by_score[rank[by_score] < self.max_per_class]

        # Only the max_per_image best detections are returned, so NMS need not see every candidate. Greedy
        # NMS decides on a candidate from the higher-scoring candidates of its class alone; so NMS over the
        # t best candidates (all classes together) makes the same decisions on them as NMS over all. Once it
        # keeps max_per_image of them, the rest (all scored lower) cannot enter the top max_per_image: the
        # result is exact. Start with t = 2 * max_per_image and grow t until that holds; a trained model needs
        # one round. Untrained weights pass nearly every pair (softmax over 21 classes is ~0.05 each), and
        # NMS over all of them would cost seconds per image (NMS is O(n^2) in the candidates of a class).
        t = len(by_score) if self.max_per_image <= 0 else min(len(by_score), 2 * self.max_per_image)
        while True:
            top = by_score[:t]  # (t,)
            keep = top[
                class_aware_nms(
                    boxes[cand_priors[top]], cand_scores[top], cand_labels[top], self.nms_threshold
                )
            ]
            if t == len(by_score) or len(keep) >= self.max_per_image:
                break
            t = min(len(by_score), 4 * t)
        if self.max_per_image > 0:
            keep = keep[: self.max_per_image]
        return {
            "boxes": boxes[cand_priors[keep]].float(),
            "labels": cand_labels[keep].to(torch.int64),
            "scores": cand_scores[keep].float(),
        }


def rank_within_class(by_score: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """Rank of each candidate among the candidates of its class, by descending score (0 = the best).

    Args:
        by_score: (M,) candidate indices sorted by descending score.
        classes: (M,) int64 class of each candidate, in 0..num_classes-1.

    Returns:
        (M,) int64 rank of each candidate.
    """
    order = by_score[classes[by_score].argsort(stable=True)]  # (M,) grouped by class, descending inside
    per_class = torch.bincount(classes, minlength=num_classes)  # (num_classes,)
    first = per_class.cumsum(0) - per_class  # (num_classes,) position of each class's first candidate
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - first[classes[order]]
    return rank


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS in which boxes of different classes never suppress each other.

    Each class's boxes are shifted by label * (largest coordinate + 1) along both axes, so that boxes of
    different classes cannot overlap, and one NMS call handles all classes. torchvision's `batched_nms`
    does the same for small inputs but loops over the classes on the CPU above 1000 boxes, which costs
    ~0.1 ms per class even when a class has a single box.

    Args:
        boxes: (M, 4) xyxy; scores: (M,); labels: (M,) int64.

    Returns:
        (K,) int64 indices of the kept boxes, by descending score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    shift = labels.to(boxes.dtype) * (boxes.max() + 1)  # (M,)
    return nms(boxes + shift[:, None], scores, iou_threshold)
