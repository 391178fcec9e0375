"""ssd/modeling/loss.py: hard negative mining against a brute-force loop, a hand-computed loss, edge cases."""

import math

import pytest
import torch

from ssd.modeling.loss import MultiBoxLoss, hard_negative_mining


def brute_force_mining(background_loss: torch.Tensor, labels: torch.Tensor, ratio: int) -> torch.Tensor:
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for n in range(labels.shape[0]):
        positives = [p for p in range(labels.shape[1]) if labels[n, p] > 0]
        negatives = [p for p in range(labels.shape[1]) if labels[n, p] == 0]
        negatives.sort(key=lambda p: -background_loss[n, p].item())
        for p in positives + negatives[: ratio * len(positives)]:
            mask[n, p] = True
    return mask


@pytest.mark.parametrize("ratio", [0, 1, 3])
def test_mining_matches_brute_force(ratio):
    gen = torch.Generator().manual_seed(ratio)
    num_images, num_priors = 6, 40
    background_loss = torch.rand(num_images, num_priors, generator=gen) * 5
    labels = torch.randint(1, 4, (num_images, num_priors), generator=gen)
    keep_fg = torch.rand(num_images, num_priors, generator=gen) < torch.tensor(
        [[0.0], [0.05], [0.1], [0.3], [0.6], [1.0]]
    )
    labels = labels * keep_fg  # image 0: no positives ... image 5: all positive
    before = background_loss.clone()
    mask = hard_negative_mining(background_loss, labels, ratio)
    assert mask.dtype == torch.bool and mask.shape == (num_images, num_priors)
    assert torch.equal(mask, brute_force_mining(background_loss, labels, ratio))
    assert torch.equal(background_loss, before)
    assert not mask[0].any()  # no positives -> no negatives either


def test_mining_clamps_to_available_negatives():
    background_loss = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([[1, 2, 0, 0]])  # 2 positives want 6 negatives, only 2 exist
    assert hard_negative_mining(background_loss, labels, 3).tolist() == [[True, True, True, True]]
    labels = torch.tensor([[1, 0, 0, 0]])  # 1 positive, ratio 2: the two hardest of priors 1..3
    assert hard_negative_mining(background_loss, labels, 2).tolist() == [[True, False, True, True]]


def tiny_case():
    cls_logits = torch.tensor([[[0.0, 2.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # (1, 4, 2)
    target_labels = torch.tensor([[1, 0, 0, 0]])
    pred_offsets = torch.tensor([[[0.5, -2.0, 0.0, 0.1], [9.0, 9.0, 9.0, 9.0], [5, 5, 5, 5], [7, 7, 7, 7]]])
    target_offsets = torch.zeros(1, 4, 4)
    target_offsets[0, 1:] = float("-inf")  # background rows must never be read
    return cls_logits, pred_offsets, target_labels, target_offsets


def test_loss_hand_computed():
    cls_logits, pred_offsets, target_labels, target_offsets = tiny_case()
    # Background losses -log p(bg): prior 1 log 2, prior 2 log(1 + e), prior 3 log(1 + 1/e).
    # Ratio 1 with one positive keeps prior 2 (the hardest negative).
    losses = MultiBoxLoss(neg_pos_ratio=1)(cls_logits, pred_offsets, target_labels, target_offsets)
    expected_cls = math.log(1 + math.exp(-2)) + math.log(1 + math.e)
    # Smooth L1 (beta 1): 0.5 * 0.5^2 + (2 - 0.5) + 0 + 0.5 * 0.1^2.
    expected_reg = 0.125 + 1.5 + 0.0 + 0.005
    assert losses["cls_loss"].item() == pytest.approx(expected_cls, rel=1e-6)
    assert losses["reg_loss"].item() == pytest.approx(expected_reg, rel=1e-6)

    # Ratio 3 keeps all three negatives.
    losses = MultiBoxLoss(neg_pos_ratio=3)(cls_logits, pred_offsets, target_labels, target_offsets)
    expected_cls_all = expected_cls + math.log(2) + math.log(1 + math.exp(-1))
    assert losses["cls_loss"].item() == pytest.approx(expected_cls_all, rel=1e-6)


def test_loss_divides_by_positives_of_the_whole_batch():
    cls_logits, pred_offsets, target_labels, target_offsets = tiny_case()
    # Image 2 = image 1 with two positives (priors 0 and 3, both with the same regression error).
    labels2 = torch.tensor([[1, 0, 0, 1]])
    pred2 = pred_offsets.clone()
    pred2[0, 3] = pred2[0, 0]
    targets2 = torch.zeros(1, 4, 4)
    batch = (
        torch.cat((cls_logits, cls_logits)),
        torch.cat((pred_offsets, pred2)),
        torch.cat((target_labels, labels2)),
        torch.cat((target_offsets, targets2)),
    )
    losses = MultiBoxLoss(neg_pos_ratio=1)(*batch)
    reg_one = 0.125 + 1.5 + 0.005
    assert losses["reg_loss"].item() == pytest.approx(3 * reg_one / 3, rel=1e-6)
    # Image 2: positives 0 (label 1, logit 2) and 3 (label 1, logits [1, 0]); 2 negatives: priors 2 and 1.
    cls_image1 = math.log(1 + math.exp(-2)) + math.log(1 + math.e)
    cls_image2 = math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(1 + math.e) + math.log(2)
    assert losses["cls_loss"].item() == pytest.approx((cls_image1 + cls_image2) / 3, rel=1e-6)


def test_loss_with_zero_positives_is_zero_finite_and_differentiable():
    gen = torch.Generator().manual_seed(0)
    cls_logits = torch.randn(2, 30, 5, generator=gen, requires_grad=True)
    pred_offsets = torch.randn(2, 30, 4, generator=gen, requires_grad=True)
    target_labels = torch.zeros(2, 30, dtype=torch.int64)
    target_offsets = torch.zeros(2, 30, 4)
    losses = MultiBoxLoss()(cls_logits, pred_offsets, target_labels, target_offsets)
    assert losses["reg_loss"].item() == 0.0 and losses["cls_loss"].item() == 0.0
    (losses["reg_loss"] + losses["cls_loss"]).backward()
    assert torch.equal(cls_logits.grad, torch.zeros_like(cls_logits))
    assert torch.equal(pred_offsets.grad, torch.zeros_like(pred_offsets))


def test_gradients_flow_to_selected_priors_only():
    cls_logits, pred_offsets, target_labels, target_offsets = tiny_case()
    cls_logits.requires_grad_(True)
    pred_offsets.requires_grad_(True)
    losses = MultiBoxLoss(neg_pos_ratio=1)(cls_logits, pred_offsets, target_labels, target_offsets)
    (losses["reg_loss"] + losses["cls_loss"]).backward()
    assert torch.isfinite(cls_logits.grad).all() and torch.isfinite(pred_offsets.grad).all()
    cls_grad_rows = cls_logits.grad[0].abs().sum(dim=1) > 0
    assert cls_grad_rows.tolist() == [True, False, True, False]  # the positive and the mined negative
    reg_grad_rows = pred_offsets.grad[0].abs().sum(dim=1) > 0
    assert reg_grad_rows.tolist() == [True, False, False, False]


def test_negative_ratio_is_validated():
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        MultiBoxLoss(neg_pos_ratio=-1)
