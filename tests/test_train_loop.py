"""The training loop on a toy detector: learning, exact resume, NaN guard, early stopping, metrics.json."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ssd.engine.checkpoint import Checkpointer, restore_rng_state
from ssd.engine.train_loop import BestMetricTracker, NonFiniteLossError, TrainOptions, train
from ssd.engine.writers import JSONWriter
from ssd.solver import WarmupSchedule, make_lr_scheduler, make_optimizer


class ToyDetector(nn.Module):
    """Predicts the first box and label of each image from pooled pixels; dropout makes the global RNG matter."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.box = nn.Linear(8, 4)
        self.cls = nn.Linear(8, num_classes)

    def forward(self, images, targets):
        features = self.drop(self.conv(images).relu().mean(dim=(2, 3)))  # (N, 8)
        boxes = torch.stack([t["boxes_norm"][0] for t in targets])  # (N, 4)
        labels = torch.stack([t["labels"][0] for t in targets])  # (N,)
        return {
            "reg_loss": nn.functional.smooth_l1_loss(self.box(features), boxes),
            "cls_loss": nn.functional.cross_entropy(self.cls(features), labels),
        }


def toy_loader(max_iter: int, start_iter: int = 0, batch_size: int = 4, seed: int = 0):
    """Batch i depends only on (seed, i), so a resumed run sees exactly the batches it would have seen."""
    for i in range(start_iter, max_iter):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        labels = torch.randint(1, 3, (batch_size,), generator=g)
        images = (
            torch.rand(batch_size, 3, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float()
        )  # (N, 3, 8, 8)
        boxes = torch.rand(batch_size, 1, 4, generator=g) * 0.1 + labels.view(-1, 1, 1).float() * 0.3
        targets = [{"boxes_norm": boxes[j], "labels": labels[j : j + 1]} for j in range(batch_size)]
        yield images, targets, torch.arange(batch_size)


def make_run(tmp_path, max_iter: int, lr: float = 0.05, **option_kwargs):
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = make_optimizer(model, "SGD", lr, momentum=0.9, weight_decay=1e-4)
    scheduler = make_lr_scheduler(optimizer, WarmupSchedule("multistep", max_iter, 1 / 3, 5, [max_iter // 2]))
    checkpointer = Checkpointer(model, tmp_path, optimizer=optimizer, scheduler=scheduler)
    options = TrainOptions(max_iter=max_iter, log_period=5, **option_kwargs)
    return model, optimizer, scheduler, checkpointer, options


def test_a_few_iterations_reduce_the_loss(tmp_path):
    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path, max_iter=60)

    def mean_loss() -> float:
        model.eval()
        with torch.no_grad():
            return sum(sum(model(im, t).values()).item() for im, t, _ in toy_loader(5, seed=1)) / 5

    before = mean_loss()
    last = train(model, optimizer, scheduler, toy_loader(60), checkpointer, options)
    assert last == 60
    assert mean_loss() < 0.5 * before
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_resume_gives_identical_weights(tmp_path):
    k = 7
    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path / "once", max_iter=2 * k)
    train(model, optimizer, scheduler, toy_loader(2 * k), checkpointer, options)
    reference = {n: p.clone() for n, p in model.state_dict().items()}

    # First half, stopped after the checkpoint at iteration k (as a killed job would be).
    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path / "split", max_iter=2 * k)
    options.checkpoint_period = k
    train(model, optimizer, scheduler, toy_loader(k), checkpointer, options)  # the loader ends at k
    (tmp_path / "split" / "last_checkpoint").write_text(f"model_{k:07d}.pth")

    # A fresh process: build everything again, resume, restore RNG last, continue.
    torch.manual_seed(123)  # whatever the new process drew before, the checkpoint decides
    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path / "split", max_iter=2 * k)
    checkpoint = checkpointer.resume()
    assert checkpoint["iteration"] == k
    restore_rng_state(checkpoint["rng"])
    train(model, optimizer, scheduler, toy_loader(2 * k, start_iter=k), checkpointer, options, start_iter=k)

    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduler.get_last_lr()[0])
    assert scheduler.last_epoch == 2 * k


class NaNAt(nn.Module):
    """Wraps a model and replaces reg_loss with NaN from iteration `at` (1-based) on."""

    def __init__(self, model: nn.Module, at: int):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, images, targets):
        self.calls += 1
        losses = self.model(images, targets)
        if self.calls >= self.at:
            losses["reg_loss"] = losses["reg_loss"] * float("nan")
        return losses


def test_nan_guard_names_iteration_terms_and_last_checkpoint(tmp_path):
    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path, max_iter=20)
    options.checkpoint_period = 5
    with pytest.raises(NonFiniteLossError) as info:
        train(NaNAt(model, at=8), optimizer, scheduler, toy_loader(20), checkpointer, options)
    message = str(info.value)
    assert "iteration 8" in message
    assert "reg_loss=nan" in message and "cls_loss=" in message
    assert str(tmp_path / "model_0000005.pth") in message
    assert "learning rate" in message and "degenerate" in message
    assert isinstance(info.value, FloatingPointError)
    # the weights were not updated with the NaN gradient
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_on_a_scripted_metric(tmp_path):
    # Validate every 2 iterations; AP rises until iteration 6, then never beats it: with patience 3 the run
    # stops at the third validation without improvement (iteration 12) and model_best holds iteration 6.
    script = iter([10.0, 20.0, 30.0, 29.0, 30.0, 25.0, 99.0])
    calls = []

    def validate(model):
        calls.append(1)
        return {"bbox/AP50": next(script), "val/loss": 1.0}

    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path, max_iter=40, eval_period=2)
    tracker = BestMetricTracker("bbox/AP50", mode="max", patience=3)
    last = train(
        model, optimizer, scheduler, toy_loader(40), checkpointer, options, validate=validate, tracker=tracker
    )
    assert last == 12
    assert len(calls) == 6
    assert tracker.best == 30.0 and tracker.best_iteration == 6
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert best["iteration"] == 6 and best["best"]["best"] == 30.0
    assert final["iteration"] == 12 and final["best"]["bad_validations"] == 3


def test_tracker_min_mode_ignores_nan_and_needs_the_metric():
    tracker = BestMetricTracker("val/loss", mode="min", patience=0)
    assert tracker.update({"val/loss": 3.0}, 1)
    assert not tracker.update({"val/loss": math.nan}, 2)
    assert tracker.update({"val/loss": 2.0}, 3)
    assert not tracker.should_stop  # patience 0 never stops
    with pytest.raises(KeyError, match="BEST_METRIC"):
        tracker.update({"bbox/AP": 1.0}, 4)


def test_metrics_json_holds_train_and_val_lines(tmp_path):
    model, optimizer, scheduler, checkpointer, options = make_run(tmp_path, max_iter=10, eval_period=5)
    writer = JSONWriter(tmp_path / "metrics.json")
    train(
        model, optimizer, scheduler, toy_loader(10), checkpointer, options,
        writers=[writer], validate=lambda m: {"val/loss": 1.5, "val/reg_loss": 0.5, "bbox/AP50": 12.0},
    )  # fmt: skip
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    train_lines = [r for r in lines if "total_loss" in r]
    val_lines = [r for r in lines if "val/loss" in r]
    assert [r["iteration"] for r in train_lines] == [5, 10]
    assert [r["iteration"] for r in val_lines] == [5, 10]
    for key in ("total_loss", "reg_loss", "cls_loss", "lr", "time", "data_time", "eta_seconds"):
        assert key in train_lines[0], key
    assert val_lines[0]["bbox/AP50"] == 12.0 and val_lines[0]["val/reg_loss"] == 0.5
