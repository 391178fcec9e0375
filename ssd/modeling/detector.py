"""The SSD detector: backbone -> box predictor -> (training) loss or (inference) detections.

SSD paper sec. 2 and Fig. 2: a base network plus extra layers give feature maps of decreasing size; a small
conv on each predicts, for every prior of every cell, class scores and offsets from the prior.

    images (N, 3, S, S)
      -> backbone                -> L feature maps
      -> predictor               -> cls_logits (N, P, C), offsets (N, P, 4)       (`predict_raw`)
      -> targets given:  match_and_encode_batch + MultiBoxLoss -> {"reg_loss", "cls_loss"}
         no targets:     PostProcessor -> per image {"boxes" (K, 4) xyxy pixels, "labels", "scores"}
         validation:     both from the same network outputs              (`losses_and_detections`)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ssd.modeling.box_coder import match_and_encode_batch
from ssd.modeling.loss import MultiBoxLoss


class SSDDetector(nn.Module):
    """Single Shot MultiBox Detector.

    Args:
        backbone: images (N, 3, S, S) -> list of L feature maps.
        predictor: L feature maps -> (cls_logits (N, P, C), offsets (N, P, 4)).
        priors_cxcywh: (P, 4) priors in 0..1, in the predictor's output order (see `priors.make_priors`).
        num_classes: C, background included.
        iou_threshold: a prior whose IoU with a ground-truth box reaches this is a positive (paper: 0.5).
        center_variance, size_variance: box encoding variances (0.1, 0.2).
        neg_pos_ratio: hard negatives kept per positive in the loss (paper: 3).
        postprocessor: (cls_logits, offsets, priors_cxcywh, image_sizes) -> detections; see `postprocess.py`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        predictor: nn.Module,
        priors_cxcywh: Tensor,
        num_classes: int,
        iou_threshold: float,
        center_variance: float,
        size_variance: float,
        neg_pos_ratio: int,
        postprocessor: Callable[..., list[dict[str, Tensor]]],
    ):
        super().__init__()
        self.backbone = backbone
        self.predictor = predictor
        # Not persistent: priors follow from the config, so checkpoints hold weights only, and `.to(device)`
        # still moves them.
        self.register_buffer("priors_cxcywh", priors_cxcywh, persistent=False)
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.center_variance = center_variance
        self.size_variance = size_variance
        self.loss = MultiBoxLoss(neg_pos_ratio)
        self.postprocessor = postprocessor

    def predict_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The network alone (what is exported): images (N, 3, S, S) -> cls_logits (N, P, C), offsets (N, P, 4)."""
        cls_logits, offsets = self.predictor(self.backbone(images))
        if cls_logits.shape[1] != self.priors_cxcywh.shape[0]:
            raise ValueError(
                f"the network predicts {cls_logits.shape[1]} boxes for a {tuple(images.shape[-2:])} input but "
                f"there are {self.priors_cxcywh.shape[0]} priors; is the input size INPUT.IMAGE_SIZE?"
            )
        return cls_logits, offsets

    def forward(
        self,
        images: Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses when `targets` are given (in train or eval mode), detections otherwise.

        Args:
            images: (N, 3, S, S) float32, RGB 0..255 minus the pixel mean.
            targets: N dicts with "boxes_norm" (G_i, 4) xyxy in 0..1 and "labels" (G_i,) int64 in 1..C-1;
                G_i may be 0: all its priors are background, and with no positives it adds no mined
                negatives either (see `loss.hard_negative_mining`), so it contributes nothing to the loss.
            image_sizes: N pairs (height, width) of the original images; detections are returned in their
                pixels. Default: the network input size.

        Returns:
            With targets: {"reg_loss": scalar, "cls_loss": scalar}.
            Without: N dicts with "boxes" (K, 4) xyxy pixels, "labels" (K,) int64, "scores" (K,) float32,
            sorted by descending score.
        """
        cls_logits, offsets = self.predict_raw(images)
        if targets is not None:
            return self._losses(cls_logits, offsets, targets)
        return self._detections(cls_logits, offsets, images, image_sizes)

    def losses_and_detections(
        self,
        images: Tensor,
        targets: Sequence[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Both results of `forward` from one pass of the network (validation: the loss and the metrics
        without running the images through the network twice). Arguments and results as in `forward`."""
        cls_logits, offsets = self.predict_raw(images)
        losses = self._losses(cls_logits, offsets, targets)
        return losses, self._detections(cls_logits, offsets, images, image_sizes)

    def _losses(
        self, cls_logits: Tensor, offsets: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """cls_logits (N, P, C), offsets (N, P, 4), N targets -> {"reg_loss", "cls_loss"}."""
        if len(targets) != cls_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {cls_logits.shape[0]} images")
        # Matching happens here, next to the priors, so that every prior has one owner (STYLE rule 4).
        target_offsets, target_labels = match_and_encode_batch(
            list(targets),
            self.priors_cxcywh,
            self.iou_threshold,
            self.center_variance,
            self.size_variance,
        )
        return self.loss(cls_logits, offsets, target_labels, target_offsets)

    def _detections(
        self,
        cls_logits: Tensor,
        offsets: Tensor,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None,
    ) -> list[dict[str, Tensor]]:
        """cls_logits (N, P, C), offsets (N, P, 4) -> N dicts of detections in original-image pixels."""
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return self.postprocessor(cls_logits, offsets, self.priors_cxcywh, list(image_sizes))
