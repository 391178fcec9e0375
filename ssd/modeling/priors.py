"""Prior boxes ("default boxes", SSD paper sec. 2.2 "Choosing scales and aspect ratios for default boxes").

Each level k of the feature pyramid has an f_k x f_k grid of cells. Every cell gets A_k priors centred on it:

    0: a square of side min_size_k                       (the paper's s_k)
    1: a square of side sqrt(min_size_k * max_size_k)    (the paper's s'_k = sqrt(s_k * s_{k+1}))
    then for each aspect ratio r of the level, in the listed order:
       (w * sqrt(r), h / sqrt(r))  a wide prior, and
       (w / sqrt(r), h * sqrt(r))  a tall prior, with w = h = min_size_k.

So A_k = 2 + 2 * len(aspect_ratios[k]). The order of the flattened (P, 4) tensor is
level -> row (y) -> column (x) -> anchor, the same order in which the box predictor flattens its
(N, A*C, H, W) outputs, so prior p and prediction p describe the same box. This order is also the one of
Caffe SSD, lufficc/SSD and torchvision, so their weights line up with these priors.

Centres follow the stride, not the feature size: cx = (j + 0.5) * stride / image_size. For SSD300 the
3x3 level has stride 100, so its centres are 1/6, 1/2, 5/6 of the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def priors_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """A_k for each level: two squares plus a wide and a tall prior per aspect ratio."""
    return [2 + 2 * len(ratios) for ratios in aspect_ratios]


def level_sizes(min_size: float, max_size: float, ratios: Sequence[float]) -> list[tuple[float, float]]:
    """(A, 2) list of (w, h) in input pixels for one level, in anchor order."""
    sizes = [(min_size, min_size)]
    big = math.sqrt(min_size * max_size)
    sizes.append((big, big))
    for r in ratios:
        root = math.sqrt(r)
        sizes.append((min_size * root, min_size / root))  # wide, r:1
        sizes.append((min_size / root, min_size * root))  # tall, 1:r
    return sizes


def make_priors(
    image_size: int,
    feature_maps: Sequence[int],
    strides: Sequence[float],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    clip: bool = True,
) -> Tensor:
    """All priors of a square input, in centre form relative to the image.

    Args:
        image_size: S, side of the square network input, in pixels.
        feature_maps: f_k per level, side of the feature map in cells (length L).
        strides: distance between neighbouring prior centres per level, in input pixels (length L).
        min_sizes: side of the small square prior per level, in input pixels (length L).
        max_sizes: per level, the big square prior has side sqrt(min_size * max_size) (length L).
        aspect_ratios: per level, the ratios r that each add an r:1 and a 1:r prior (length L).
        clip: clamp all four centre-form values (cx, cy, w, h) to [0, 1]. This is what lufficc/SSD and
            Caffe SSD do; note that it clips the width and height, not the corner box, so a prior wider than
            the image becomes exactly as wide as the image while staying centred where it was.

    Returns:
        priors_cxcywh: (P, 4) float32, (cx, cy, w, h) in 0..1 (when clipped), P = sum_k f_k^2 * A_k,
        ordered level -> row (y) -> column (x) -> anchor.
    """
    num_levels = len(feature_maps)
    for name, values in (
        ("strides", strides),
        ("min_sizes", min_sizes),
        ("max_sizes", max_sizes),
        ("aspect_ratios", aspect_ratios),
    ):
        if len(values) != num_levels:
            raise ValueError(
                f"make_priors: {name} has {len(values)} entries but feature_maps has {num_levels}; "
                "every per-level list needs one entry per feature map"
            )
    if image_size <= 0:
        raise ValueError(f"make_priors: image_size must be positive, got {image_size}")

    levels = []
    for size, stride, min_size, max_size, ratios in zip(
        feature_maps, strides, min_sizes, max_sizes, aspect_ratios, strict=True
    ):
        # Computed in float64 so the float32 result is the correctly rounded value.
        steps = (torch.arange(size, dtype=torch.float64) + 0.5) * stride / image_size  # (f,)
        cy, cx = torch.meshgrid(steps, steps, indexing="ij")  # (f, f) each; rows outer, columns inner
        centres = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # (f*f, 1, 2)
        wh = torch.tensor(level_sizes(min_size, max_size, ratios), dtype=torch.float64) / image_size
        wh = wh.unsqueeze(0)  # (1, A, 2)
        num_anchors = wh.shape[1]
        level = torch.cat(
            (centres.expand(-1, num_anchors, -1), wh.expand(centres.shape[0], -1, -1)), dim=-1
        )  # (f*f, A, 4)
        levels.append(level.reshape(-1, 4))  # (f*f*A, 4)

    priors_cxcywh = torch.cat(levels, dim=0)  # (P, 4)
    if clip:
        priors_cxcywh = priors_cxcywh.clamp(0.0, 1.0)
    return priors_cxcywh.to(torch.float32)
