"""ssd/modeling/postprocess.py: parity with a per-class NMS loop, limits, pixel boxes, empty results."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from ssd.modeling import postprocess
from ssd.modeling.box_coder import decode
from ssd.modeling.postprocess import PostProcessor
from ssd.modeling.priors import make_priors
from ssd.structures.boxes import cxcywh_to_xyxy

CV, SV = 0.1, 0.2


def reference(
    cls_logits, offsets, priors_cxcywh, height, width, threshold, nms_threshold, max_per_class, max_per_image
):
    """The obvious implementation for one image: a Python loop over classes with torchvision.ops.nms."""
    scores = F.softmax(cls_logits, dim=1)  # (P, C)
    boxes = cxcywh_to_xyxy(decode(offsets, priors_cxcywh, CV, SV)).clamp(0, 1)
    boxes = boxes * torch.tensor([width, height, width, height])
    all_boxes, all_scores, all_labels = [], [], []
    for c in range(1, scores.shape[1]):
        class_scores = scores[:, c]
        order = class_scores.argsort(descending=True)
        if max_per_class > 0:
            order = order[:max_per_class]
        order = order[class_scores[order] > threshold]
        keep = order[nms(boxes[order], class_scores[order], nms_threshold)]
        all_boxes.append(boxes[keep])
        all_scores.append(class_scores[keep])
        all_labels.append(torch.full((len(keep),), c))
    scores_cat = torch.cat(all_scores)
    order = scores_cat.argsort(descending=True)
    if max_per_image > 0:
        order = order[:max_per_image]
    return torch.cat(all_boxes)[order], torch.cat(all_labels)[order], scores_cat[order]


def small_priors():
    return make_priors(120, [6, 3, 1], [20, 40, 120], [20, 50, 90], [50, 90, 120], [[2], [2, 3], [2]])


def assert_same(result, expected):
    boxes, labels, scores = expected
    torch.testing.assert_close(result["scores"], scores)
    assert torch.equal(result["labels"], labels)
    torch.testing.assert_close(result["boxes"], boxes)


@pytest.mark.parametrize(
    ("max_per_class", "max_per_image"), [(-1, 100), (-1, -1), (10, 100), (50, 20), (-1, 5)]
)
def test_parity_with_per_class_nms_loop(max_per_class, max_per_image):
    priors_cxcywh = small_priors()
    gen = torch.Generator().manual_seed(0)
    cls_logits = torch.randn(2, priors_cxcywh.shape[0], 6, generator=gen) * 2
    offsets = torch.randn(2, priors_cxcywh.shape[0], 4, generator=gen)
    image_sizes = [(120, 120), (90, 200)]
    post = PostProcessor(CV, SV, 0.01, 0.45, max_per_class=max_per_class, max_per_image=max_per_image)
    results = post(cls_logits, offsets, priors_cxcywh, image_sizes)
    assert len(results) == 2
    for i, (height, width) in enumerate(image_sizes):
        expected = reference(
            cls_logits[i], offsets[i], priors_cxcywh, height, width, 0.01, 0.45, max_per_class, max_per_image
        )
        assert_same(results[i], expected)
        assert (results[i]["scores"][:-1] >= results[i]["scores"][1:]).all()
        if max_per_image > 0:
            assert len(results[i]["scores"]) <= max_per_image
        if max_per_class > 0:
            assert torch.bincount(results[i]["labels"]).max() <= max_per_class


def test_growing_candidate_count_stays_exact(monkeypatch):
    # 400 nearly identical priors: NMS suppresses almost everything, so the first round (the 2 *
    # max_per_image best candidates) keeps fewer than max_per_image boxes and the candidate count has to grow.
    gen = torch.Generator().manual_seed(1)
    num_priors = 400
    priors_cxcywh = torch.tensor([0.5, 0.5, 0.3, 0.3]) + 0.002 * torch.randn(num_priors, 4, generator=gen)
    priors_cxcywh[::40] = torch.rand(10, 4, generator=gen) * 0.5 + 0.2  # a few distinct boxes
    cls_logits = torch.randn(1, num_priors, 3, generator=gen)
    offsets = torch.zeros(1, num_priors, 4)
    post = PostProcessor(CV, SV, 0.01, 0.45, max_per_class=-1, max_per_image=8)
    rounds = []
    one_round = postprocess.class_aware_nms

    def recording_nms(boxes, scores, labels, iou_threshold):
        rounds.append(len(scores))
        return one_round(boxes, scores, labels, iou_threshold)

    monkeypatch.setattr(postprocess, "class_aware_nms", recording_nms)
    result = post(cls_logits, offsets, priors_cxcywh, [(100, 100)])[0]
    num_candidates = int((F.softmax(cls_logits[0], dim=1)[:, 1:] > 0.01).sum())  # 800: every pair passes
    assert rounds == [16, 64, 256, num_candidates]
    assert_same(result, reference(cls_logits[0], offsets[0], priors_cxcywh, 100, 100, 0.01, 0.45, -1, 8))


def test_rank_within_class():
    scores = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1, 0.8])
    classes = torch.tensor([0, 1, 0, 1, 2, 0])
    # class 0: 0.9, 0.8, 0.5; class 1: 0.7, 0.2; class 2: 0.1
    by_score = scores.argsort(descending=True)
    assert postprocess.rank_within_class(by_score, classes, 4).tolist() == [0, 1, 2, 0, 0, 1]


def test_class_aware_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    assert postprocess.class_aware_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    assert postprocess.class_aware_nms(boxes[:0], scores[:0], labels[:0], 0.5).tolist() == []


def test_ssd300_random_weights_is_fast_and_exact():
    priors_cxcywh = make_priors(
        300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300], [30, 60, 111, 162, 213, 264],
        [60, 111, 162, 213, 264, 315], [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    )  # fmt: skip
    gen = torch.Generator().manual_seed(2)
    cls_logits = torch.randn(1, 8732, 4, generator=gen)
    offsets = torch.randn(1, 8732, 4, generator=gen)
    post = PostProcessor(CV, SV)
    result = post(cls_logits, offsets, priors_cxcywh, [(375, 500)])[0]
    assert len(result["scores"]) == 100
    assert_same(result, reference(cls_logits[0], offsets[0], priors_cxcywh, 375, 500, 0.01, 0.45, -1, 100))


def test_boxes_in_original_pixels_for_non_square_image():
    priors_cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.9, 0.1, 0.4, 0.4]])
    cls_logits = torch.tensor(
        [[[0.0, 10.0, 0.0], [0.0, 0.0, 10.0]]]
    )  # prior 0 -> class 1, prior 1 -> class 2
    offsets = torch.zeros(1, 2, 4)
    result = PostProcessor(CV, SV)(cls_logits, offsets, priors_cxcywh, [(200, 400)])[0]
    # Prior 0 is xyxy (0.4, 0.3, 0.6, 0.7): x times the width 400, y times the height 200.
    # Prior 1 is (0.7, -0.1, 1.1, 0.3), clipped to (0.7, 0, 1, 0.3) before scaling.
    assert sorted(result["labels"].tolist()) == [1, 2]  # equal scores, so either order
    by_label = {label.item(): box for label, box in zip(result["labels"], result["boxes"], strict=True)}
    torch.testing.assert_close(by_label[1], torch.tensor([160.0, 60.0, 240.0, 140.0]))
    torch.testing.assert_close(by_label[2], torch.tensor([280.0, 0.0, 400.0, 60.0]))
    assert result["boxes"].dtype == torch.float32 and result["scores"].dtype == torch.float32
    assert result["labels"].dtype == torch.int64


def test_class_aware_nms_and_threshold():
    # Two identical boxes: same class -> one survives; different classes -> both survive.
    priors_cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    offsets = torch.zeros(1, 2, 4)
    same_class = torch.tensor([[[0.0, 5.0, -9.0], [0.0, 4.0, -9.0]]])
    result = PostProcessor(CV, SV, score_threshold=0.5)(same_class, offsets, priors_cxcywh, [(10, 10)])[0]
    assert result["labels"].tolist() == [1]
    other_class = torch.tensor([[[0.0, 5.0, -9.0], [0.0, -9.0, 4.0]]])
    result = PostProcessor(CV, SV, score_threshold=0.5)(other_class, offsets, priors_cxcywh, [(10, 10)])[0]
    assert result["labels"].tolist() == [1, 2]


def test_empty_results_have_correct_shapes():
    priors_cxcywh = small_priors()
    cls_logits = torch.zeros(2, priors_cxcywh.shape[0], 4)
    cls_logits[..., 0] = 20.0  # everything is confidently background
    results = PostProcessor(CV, SV)(
        cls_logits, torch.zeros(2, priors_cxcywh.shape[0], 4), priors_cxcywh, [(5, 7)] * 2
    )
    for result in results:
        assert result["boxes"].shape == (0, 4) and result["boxes"].dtype == torch.float32
        assert result["labels"].shape == (0,) and result["labels"].dtype == torch.int64
        assert result["scores"].shape == (0,) and result["scores"].dtype == torch.float32


def test_half_precision_inputs_and_size_mismatch():
    priors_cxcywh = small_priors()
    gen = torch.Generator().manual_seed(3)
    cls_logits = torch.randn(1, priors_cxcywh.shape[0], 4, generator=gen)
    offsets = torch.randn(1, priors_cxcywh.shape[0], 4, generator=gen)
    post = PostProcessor(CV, SV)
    result = post(cls_logits.half(), offsets.half(), priors_cxcywh, [(50, 50)])[0]
    assert result["boxes"].dtype == torch.float32 and len(result["scores"]) > 0
    with pytest.raises(ValueError, match="2 image sizes for a batch of 1"):
        post(cls_logits, offsets, priors_cxcywh, [(50, 50), (60, 60)])
