"""ssd/structures/boxes.py: conversions (round trips), areas, IoU golden values and degenerate boxes."""

import numpy as np
import pytest
import torch

from ssd.structures.boxes import (
    box_area,
    box_iou,
    clip_boxes_xyxy,
    cxcywh_to_xyxy,
    np_box_area,
    np_box_iou,
    scale_boxes,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def random_boxes_xyxy(num: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    top_left = torch.rand(num, 2, generator=gen)
    size = torch.rand(num, 2, generator=gen) * 0.5 + 0.01
    return torch.cat((top_left, top_left + size), dim=1)  # (num, 4)


def test_conversion_golden_values():
    boxes_xyxy = torch.tensor([[0.0, 0.0, 2.0, 4.0], [1.0, 2.0, 4.0, 3.0]])
    assert torch.equal(xyxy_to_cxcywh(boxes_xyxy), torch.tensor([[1.0, 2.0, 2.0, 4.0], [2.5, 2.5, 3.0, 1.0]]))
    assert torch.equal(xyxy_to_xywh(boxes_xyxy), torch.tensor([[0.0, 0.0, 2.0, 4.0], [1.0, 2.0, 3.0, 1.0]]))
    assert torch.equal(cxcywh_to_xyxy(torch.tensor([1.0, 2.0, 2.0, 4.0])), torch.tensor([0.0, 0.0, 2.0, 4.0]))


def test_round_trips():
    boxes_xyxy = random_boxes_xyxy(100)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes_xyxy)), boxes_xyxy)
    boxes_cxcywh = xyxy_to_cxcywh(boxes_xyxy)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(boxes_cxcywh)), boxes_cxcywh)


def test_conversions_keep_leading_dims_and_do_not_mutate():
    boxes_xyxy = random_boxes_xyxy(6).reshape(2, 3, 4)
    before = boxes_xyxy.clone()
    assert xyxy_to_cxcywh(boxes_xyxy).shape == (2, 3, 4)
    assert cxcywh_to_xyxy(boxes_xyxy).shape == (2, 3, 4)
    assert torch.equal(boxes_xyxy, before)


def test_box_area_inverted_and_zero_area():
    boxes_xyxy = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 1.0, 1.0]])
    assert torch.equal(box_area(boxes_xyxy), torch.tensor([6.0, 0.0, 0.0]))


def test_iou_golden_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor(
        [
            [1.0, 1.0, 3.0, 3.0],  # overlap 1, union 7
            [0.0, 0.0, 2.0, 2.0],  # identical
            [2.0, 0.0, 4.0, 2.0],  # touching edge
            [5.0, 5.0, 6.0, 6.0],  # disjoint
            [0.5, 0.5, 1.0, 1.0],  # inside: 0.25 / 4
            [0.0, 0.0, 1.0, 2.0],  # half: 2 / 4
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (1, 6)
    torch.testing.assert_close(iou[0], torch.tensor([1 / 7, 1.0, 0.0, 0.0, 1 / 16, 0.5]))
    torch.testing.assert_close(box_iou(b, a), iou.t())


def test_iou_zero_area_boxes_are_zero_not_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    line = torch.tensor([[0.0, 1.0, 2.0, 1.0]])
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert box_iou(point, point).item() == 0.0
    assert box_iou(point, box).item() == 0.0
    assert box_iou(line, box).item() == 0.0
    assert box_iou(line, line).item() == 0.0


def test_iou_empty_inputs_have_empty_shapes():
    assert box_iou(torch.zeros(0, 4), random_boxes_xyxy(3)).shape == (0, 3)
    assert box_iou(random_boxes_xyxy(3), torch.zeros(0, 4)).shape == (3, 0)


def test_numpy_twins_agree_with_torch():
    boxes1 = random_boxes_xyxy(7, seed=1)
    boxes2 = random_boxes_xyxy(5, seed=2)
    np.testing.assert_allclose(
        np_box_iou(boxes1.numpy(), boxes2.numpy()), box_iou(boxes1, boxes2).numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(np_box_area(boxes1.numpy()), box_area(boxes1).numpy(), rtol=1e-6)
    point = np.array([[1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    assert np_box_iou(point, point)[0, 0] == 0.0


def test_clip_and_scale():
    boxes = torch.tensor([[-5.0, -1.0, 50.0, 30.0]])
    assert torch.equal(clip_boxes_xyxy(boxes, height=20, width=40), torch.tensor([[0.0, 0.0, 40.0, 20.0]]))
    boxes_norm = torch.tensor([[0.25, 0.5, 0.5, 1.0]])
    assert torch.equal(
        scale_boxes(boxes_norm, height=200, width=400), torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    )
    assert boxes_norm.tolist() == [[0.25, 0.5, 0.5, 1.0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_iou_other_dtypes(dtype):
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=dtype)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=dtype)
    assert box_iou(a, b).dtype == dtype
    assert box_iou(a, b).item() == pytest.approx(1 / 7, rel=1e-3)
