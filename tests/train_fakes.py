"""Shared fakes for the training tests: the real detector with its losses spoiled at a chosen training call."""

from __future__ import annotations

import torch


class SpoiledLosses(torch.nn.Module):
    """The real detector; from its `at`-th training call on, `spoil(losses, call)` may change the loss dict.

    Evaluation calls (no targets, or eval mode) are passed through untouched and not counted.
    """

    def __init__(self, model, at: int):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def spoil(self, losses: dict[str, torch.Tensor], call: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, images, targets=None, **kwargs):
        losses = self.model(images, targets, **kwargs)
        if targets is not None and self.model.training:
            self.calls += 1
            if self.calls >= self.at:
                losses = self.spoil(losses, self.calls)
        return losses


class NaNAfter(SpoiledLosses):
    """cls_loss turns NaN from the `at`-th training call on."""

    def spoil(self, losses, call):
        return {**losses, "cls_loss": losses["cls_loss"] + float("nan")}


class NaNGradientAt(SpoiledLosses):
    """At the `at`-th training call only, the gradients turn NaN while the losses stay finite: sqrt(0 * s) is 0
    going forward, and its derivative inf * 0 = NaN going back. So the last update of a run can leave NaN
    weights without any loss term showing it."""

    def spoil(self, losses, call):
        if call != self.at:
            return losses
        total = sum(p.sum() for p in self.model.parameters())
        return {**losses, "reg_loss": losses["reg_loss"] + torch.sqrt(total * 0)}
