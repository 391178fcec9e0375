"""ssd/modeling/priors.py: counts of the published configurations, golden priors, order and clipping."""

import math

import pytest
import torch

from ssd.config import get_cfg
from ssd.modeling.priors import make_priors, priors_per_location

SSD512 = dict(
    image_size=512,
    feature_maps=[64, 32, 16, 8, 4, 2, 1],
    strides=[8, 16, 32, 64, 128, 256, 512],
    min_sizes=[35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
    max_sizes=[76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.65],
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
)
MOBILENET320 = dict(
    image_size=320,
    feature_maps=[20, 10, 5, 3, 2, 1],
    strides=[16, 32, 64, 107, 160, 320],
    min_sizes=[60, 105, 150, 195, 240, 285],
    max_sizes=[105, 150, 195, 240, 285, 330],
    aspect_ratios=[[2, 3]] * 6,
)


def ssd300_args() -> dict:
    cfg = get_cfg()
    priors = cfg.MODEL.PRIORS
    return dict(
        image_size=cfg.INPUT.IMAGE_SIZE,
        feature_maps=priors.FEATURE_MAPS,
        strides=priors.STRIDES,
        min_sizes=priors.MIN_SIZES,
        max_sizes=priors.MAX_SIZES,
        aspect_ratios=priors.ASPECT_RATIOS,
        clip=priors.CLIP,
    )


@pytest.mark.parametrize(
    ("args", "expected_count", "expected_per_location"),
    [
        (None, 8732, [4, 6, 6, 6, 4, 4]),
        (SSD512, 24564, [4, 6, 6, 6, 6, 4, 4]),
        (MOBILENET320, 3234, [6] * 6),
    ],
    ids=["ssd300", "ssd512", "mobilenet320"],
)
def test_prior_counts(args, expected_count, expected_per_location):
    args = args or ssd300_args()
    assert priors_per_location(args["aspect_ratios"]) == expected_per_location
    priors_cxcywh = make_priors(**args)
    assert priors_cxcywh.shape == (expected_count, 4)
    assert priors_cxcywh.dtype == torch.float32
    assert priors_cxcywh.min() >= 0 and priors_cxcywh.max() <= 1


def test_ssd300_first_priors_golden():
    priors_cxcywh = make_priors(**ssd300_args())
    expected = torch.tensor(
        [
            [0.013333, 0.013333, 0.1, 0.1],
            [0.013333, 0.013333, 0.141421, 0.141421],  # sqrt(30 * 60) / 300
            [0.013333, 0.013333, 0.141421, 0.070711],  # 2:1 wide
            [0.013333, 0.013333, 0.070711, 0.141421],  # 1:2 tall
            [0.04, 0.013333, 0.1, 0.1],  # next column: cx moves by stride 8 / 300
        ]
    )
    torch.testing.assert_close(priors_cxcywh[:5], expected, atol=1e-5, rtol=0)


def test_ssd300_last_priors_golden_and_clipped():
    priors_cxcywh = make_priors(**ssd300_args())
    expected = torch.tensor(
        [
            [0.5, 0.5, 0.88, 0.88],  # 264 / 300
            [0.5, 0.5, 0.961249, 0.961249],  # sqrt(264 * 315) / 300
            [0.5, 0.5, 1.0, 0.622254],  # 2:1 wide: w = 0.88 * sqrt 2 = 1.2445 clipped to 1
            [0.5, 0.5, 0.622254, 1.0],
        ]
    )
    torch.testing.assert_close(priors_cxcywh[-4:], expected, atol=1e-5, rtol=0)
    unclipped = make_priors(**{**ssd300_args(), "clip": False})
    assert unclipped[-2, 2].item() == pytest.approx(0.88 * math.sqrt(2), abs=1e-5)
    assert unclipped[0, 0].item() == pytest.approx(4 / 300, abs=1e-7)


def test_order_is_level_row_column_anchor():
    priors_cxcywh = make_priors(**ssd300_args())
    # Level 0: 38 x 38 cells, 4 anchors, stride 8.
    row, col, anchor = 5, 17, 3
    index = (row * 38 + col) * 4 + anchor
    torch.testing.assert_close(
        priors_cxcywh[index],
        torch.tensor(
            [(col + 0.5) * 8 / 300, (row + 0.5) * 8 / 300, 30 / 300 / math.sqrt(2), 30 / 300 * math.sqrt(2)]
        ),
    )
    # Level 3 (5 x 5, 6 anchors, stride 64) starts after 5776 + 2166 + 600 priors; its anchor 4 is 3:1 wide.
    start = 5776 + 2166 + 600
    row, col, anchor = 1, 4, 4
    prior = priors_cxcywh[start + (row * 5 + col) * 6 + anchor]
    expected = [
        (col + 0.5) * 64 / 300,
        (row + 0.5) * 64 / 300,
        162 / 300 * math.sqrt(3),
        162 / 300 / math.sqrt(3),
    ]
    torch.testing.assert_close(prior, torch.tensor(expected).clamp(0, 1))


def test_centres_follow_the_stride_not_the_feature_size():
    # One level, 3 x 3 cells with stride 100 on a 300 input: centres at 1/6, 1/2, 5/6.
    priors_cxcywh = make_priors(300, [3], [100], [60], [120], [[]])
    assert priors_cxcywh.shape == (18, 4)
    torch.testing.assert_close(priors_cxcywh[0:6:2, 0], torch.tensor([1 / 6, 1 / 2, 5 / 6]))
    torch.testing.assert_close(priors_cxcywh[0:18:6, 1], torch.tensor([1 / 6, 1 / 2, 5 / 6]))


def test_mismatched_lengths_raise():
    args = ssd300_args()
    args["strides"] = args["strides"][:-1]
    with pytest.raises(ValueError, match="strides has 5 entries"):
        make_priors(**args)
