"""From raw network outputs to final detections (SSD paper sec. 3.7 "Inference time": a confidence
threshold of 0.01, NMS with IoU 0.45 per class, then the top detections per image; the paper keeps 200,
lufficc/SSD and our default keep 100).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

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
        num_priors = scores.shape[0]
        boxes = scale_boxes(boxes_norm, height, width)  # (P, 4) xyxy pixels
        class_scores = scores[:, 1:].t()  # (C-1, P), background dropped

        # Each prior is a candidate for every foreground class: P * (C-1) candidates in total. With untrained
        # weights nearly all of them pass the 0.01 threshold (softmax over 21 classes is ~0.05 each), and NMS
        # costs up to O(n^2) in the candidates of a class (seconds per image for SSD300 on a CPU). Keeping
        # only the k best candidates of each class bounds NMS at O((C-1) * k^2) whatever the weights.
        # max_per_class is that k, given by the user (it changes the result, as in torchvision's SSD).
        limit = num_priors if self.max_per_class <= 0 else min(self.max_per_class, num_priors)
        # Without a user limit the result must equal NMS over all candidates, yet it can be computed from a
        # small k. Greedy NMS walks a class's candidates by descending score, so NMS of the k best gives
        # exactly the first detections that NMS of all candidates gives. Only the max_per_image best
        # detections are returned, and at most max_per_image of them come from one class; so once each class
        # has max_per_image detections (or has no more candidates above the threshold) the answer is exact.
        # Start small and grow k until that holds; with random weights one round usually suffices.
        k = limit if self.max_per_image <= 0 else min(limit, 2 * self.max_per_image)
        while True:
            result, kept_per_class, exhausted = self._nms_top_k(class_scores, boxes, k)
            if k == limit or bool(((kept_per_class >= self.max_per_image) | exhausted).all()):
                return result
            k = min(limit, 4 * k)

    def _nms_top_k(
        self, class_scores: Tensor, boxes: Tensor, k: int
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Class-aware NMS over the k best candidates of each class.

        Args:
            class_scores: (C-1, P) foreground probabilities, row c-1 for class c.
            boxes: (P, 4) xyxy pixels.
            k: candidates per class, 1..P.

        Returns:
            The detections dict (top max_per_image), kept_per_class (C-1,) detections of each class after
            NMS, exhausted (C-1,) bool: the class has no candidate above the threshold beyond its k best.
        """
        num_fg, num_priors = class_scores.shape
        device = class_scores.device
        cand_scores, cand_priors = class_scores.topk(k, dim=1)  # (C-1, k) each, descending
        exhausted = (cand_scores[:, -1] <= self.score_threshold) | (k >= num_priors)  # (C-1,)
        cand_labels = torch.arange(1, num_fg + 1, device=device)[:, None].expand_as(cand_scores)  # (C-1, k)

        cand_scores = cand_scores.reshape(-1)  # ((C-1)*k,)
        cand_priors = cand_priors.reshape(-1)  # ((C-1)*k,)
        cand_labels = cand_labels.reshape(-1)  # ((C-1)*k,)
        above = cand_scores > self.score_threshold
        cand_scores, cand_priors, cand_labels = cand_scores[above], cand_priors[above], cand_labels[above]
        cand_boxes = boxes[cand_priors]  # (M, 4)

        # Class-aware NMS (boxes of different classes never suppress each other); the kept indices come
        # back sorted by descending score.
        keep = batched_nms(cand_boxes, cand_scores, cand_labels, self.nms_threshold)
        kept_per_class = torch.bincount(cand_labels[keep] - 1, minlength=num_fg)  # (C-1,)
        if self.max_per_image > 0:
            keep = keep[: self.max_per_image]
        result = {
            "boxes": cand_boxes[keep].float(),
            "labels": cand_labels[keep].to(torch.int64),
            "scores": cand_scores[keep].float(),
        }
        return result, kept_per_class, exhausted
