"""ssd/modeling/box_coder.py: encode/decode golden values and round trip, matching rules, batch targets."""

import math

import pytest
import torch

from ssd.modeling.box_coder import MAX_LOG_SIZE_RATIO, decode, encode, match, match_and_encode_batch
from ssd.structures.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

CV, SV = 0.1, 0.2


def test_encode_golden():
    box = torch.tensor([0.5, 0.5, 0.2, 0.4])
    prior = torch.tensor([0.4, 0.5, 0.1, 0.2])
    # t_cx = (0.5 - 0.4) / 0.1 / 0.1 = 10, t_cy = 0, t_w = t_h = log(2) / 0.2.
    expected = torch.tensor([10.0, 0.0, math.log(2) / 0.2, math.log(2) / 0.2])
    torch.testing.assert_close(encode(box, prior, CV, SV), expected)
    torch.testing.assert_close(decode(expected, prior, CV, SV), box)


def test_round_trip_random():
    gen = torch.Generator().manual_seed(0)
    boxes_cxcywh = torch.rand(3, 50, 4, generator=gen) * 0.8 + 0.05
    priors_cxcywh = torch.rand(50, 4, generator=gen) * 0.8 + 0.05
    offsets = encode(boxes_cxcywh, priors_cxcywh, CV, SV)
    assert offsets.shape == (3, 50, 4)
    torch.testing.assert_close(decode(offsets, priors_cxcywh, CV, SV), boxes_cxcywh)
    # A box equal to its prior is encoded as zeros.
    assert torch.allclose(encode(priors_cxcywh, priors_cxcywh, CV, SV), torch.zeros(50, 4))


def test_decode_clamps_the_exponent():
    prior = torch.tensor([0.5, 0.5, 0.1, 0.2])
    wild = torch.tensor([0.0, 0.0, 1e4, 1e4])
    boxes = decode(wild, prior, CV, SV)
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[2:], prior[2:] * 1000 / 16)
    # Right at the bound nothing is clamped.
    at_bound = torch.tensor([0.0, 0.0, MAX_LOG_SIZE_RATIO / SV, 0.0])
    torch.testing.assert_close(decode(at_bound, prior, CV, SV)[2], torch.tensor(0.1 * 62.5))


def test_inputs_are_not_modified():
    boxes = torch.rand(10, 4) + 0.1
    priors = torch.rand(10, 4) + 0.1
    offsets = torch.randn(10, 4)
    copies = [t.clone() for t in (boxes, priors, offsets)]
    encode(boxes, priors, CV, SV)
    decode(offsets, priors, CV, SV)
    match(cxcywh_to_xyxy(boxes[:3]), torch.tensor([1, 2, 3]), cxcywh_to_xyxy(priors), 0.5)
    for tensor, copy in zip((boxes, priors, offsets), copies, strict=True):
        assert torch.equal(tensor, copy)


# Priors of the matching tests, xyxy. IoUs with the boxes below are written next to each test.
PRIORS_XYXY = torch.tensor(
    [
        [0.0, 0.0, 0.5, 0.5],  # 0
        [0.5, 0.0, 1.0, 0.5],  # 1
        [0.0, 0.5, 0.5, 1.0],  # 2
        [0.5, 0.5, 1.0, 1.0],  # 3
        [0.0, 0.0, 1.0, 1.0],  # 4
    ]
)


def test_match_threshold_and_forced_match():
    # GT 0 = [0, 0, 0.5, 0.5]: IoU 1 with prior 0, 0.25 with prior 4.
    # GT 1 = [0.6, 0.6, 0.9, 0.9]: IoU 0.36 with prior 3, below 0.5, but forced (its best prior).
    gt_boxes_norm = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    gt_labels = torch.tensor([7, 3])
    boxes, labels = match(gt_boxes_norm, gt_labels, PRIORS_XYXY, 0.5)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [7, 0, 0, 3, 0]
    assert torch.equal(boxes[0], gt_boxes_norm[0])
    assert torch.equal(boxes[3], gt_boxes_norm[1])
    assert torch.equal(boxes[[1, 2, 4]], torch.zeros(3, 4))


def test_match_threshold_boundary_is_inclusive():
    # GT = the left half of the image: IoU exactly 1.0 with prior 1 and exactly 0.5 with prior 0.
    priors_xyxy = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0]])
    gt_boxes_norm = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    _, labels = match(gt_boxes_norm, torch.tensor([2]), priors_xyxy, 0.5)
    assert labels.tolist() == [2, 2]
    _, labels = match(gt_boxes_norm, torch.tensor([2]), priors_xyxy, 0.5001)
    assert labels.tolist() == [0, 2]


def test_match_tie_rule_larger_index_wins():
    # Both GTs have prior 4 as their best prior (IoUs 0.81 and 0.64), so the later GT (index 1) takes it.
    # GT 0 then has no prior at all (its IoU with prior 4 is the only one above 0.5).
    gt_boxes_norm = torch.tensor([[0.05, 0.05, 0.95, 0.95], [0.1, 0.1, 0.9, 0.9]])
    _, labels = match(gt_boxes_norm, torch.tensor([5, 6]), PRIORS_XYXY, 0.5)
    assert labels.tolist() == [0, 0, 0, 0, 6]
    # Swapping the order swaps the winner: the rule is about the index, not the IoU.
    _, labels = match(gt_boxes_norm.flip(0), torch.tensor([6, 5]), PRIORS_XYXY, 0.5)
    assert labels.tolist() == [0, 0, 0, 0, 5]


def test_forced_match_overrides_threshold_match():
    # Prior 0 is the whole image, prior 1 the top-left 0.8 x 0.8 square.
    # GT 1 = prior 1: best prior 1 (IoU 1), and IoU 0.64 with prior 0, a threshold match.
    # GT 0 = a small corner box: IoU 0.0225 with prior 0 and 0 with prior 1, so prior 0 is its forced match,
    # which wins over GT 1's higher IoU even though GT 0 has the smaller index.
    priors_xyxy = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.8, 0.8]])
    gt_boxes_norm = torch.tensor([[0.85, 0.85, 1.0, 1.0], [0.0, 0.0, 0.8, 0.8]])
    boxes, labels = match(gt_boxes_norm, torch.tensor([1, 2]), priors_xyxy, 0.5)
    assert labels.tolist() == [1, 2]
    assert torch.equal(boxes, gt_boxes_norm)


def test_match_zero_gt_is_all_background():
    boxes, labels = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), PRIORS_XYXY, 0.5)
    assert boxes.shape == (5, 4) and labels.shape == (5,)
    assert labels.dtype == torch.int64
    assert not labels.any() and not boxes.any()


def test_zero_area_gt_gets_no_prior():
    gt_boxes_norm = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.5, 0.5]])
    boxes, labels = match(gt_boxes_norm, torch.tensor([4, 9]), PRIORS_XYXY, 0.5)
    assert labels.tolist() == [9, 0, 0, 0, 0]


def test_match_and_encode_batch():
    priors_cxcywh = xyxy_to_cxcywh(PRIORS_XYXY)
    targets = [
        {
            "boxes_norm": torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]),
            "labels": torch.tensor([7, 3]),
        },
        {"boxes_norm": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    target_offsets, target_labels = match_and_encode_batch(targets, priors_cxcywh, 0.5, CV, SV)
    assert target_offsets.shape == (2, 5, 4) and target_labels.shape == (2, 5)
    assert target_labels.dtype == torch.int64
    assert target_labels.tolist() == [[7, 0, 0, 3, 0], [0] * 5]
    assert torch.isfinite(target_offsets).all()
    assert not target_offsets[target_labels == 0].any()
    # Positive offsets decode back to their ground-truth boxes.
    decoded_xyxy = cxcywh_to_xyxy(decode(target_offsets[0], priors_cxcywh, CV, SV))
    torch.testing.assert_close(decoded_xyxy[[0, 3]], targets[0]["boxes_norm"])
    # Prior 0 is the GT itself: zero offsets.
    torch.testing.assert_close(target_offsets[0, 0], torch.zeros(4))


def test_match_and_encode_batch_rejects_empty_batch():
    with pytest.raises(ValueError, match="targets is empty"):
        match_and_encode_batch([], xyxy_to_cxcywh(PRIORS_XYXY), 0.5, CV, SV)
