"""Learning-rate schedule: lufficc/SSD's measured values, cosine shape, optimizers, state round trip."""

import math

import pytest
import torch

from ssd.config import load_config
from ssd.solver import WarmupSchedule, build_lr_scheduler, build_optimizer


def lr_after(cfg, iterations: list[int]) -> dict[int, float]:
    """The LR read after `i` scheduler steps (what lufficc/SSD logs at iteration i)."""
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    optimizer.step()  # no gradients: a no-op that keeps torch from warning about the call order
    out = {}
    for i in sorted(iterations):
        # Jump straight to step i - 1 and take one real step: the same value as i real steps, without 100k of them.
        scheduler.last_epoch = i - 1
        scheduler.step()
        out[i] = optimizer.param_groups[0]["lr"]
    return out


def test_lufficc_measured_learning_rates():
    cfg = load_config(opts=[])  # VOC defaults: LR 1e-3, WF 1/3, WI 500, steps 80k/100k
    lrs = lr_after(cfg, [1, 250, 500, 79999, 80000, 100000])
    assert lrs[1] == pytest.approx(3.3467e-4, rel=1e-4)
    assert lrs[250] == pytest.approx(6.6667e-4, rel=1e-4)
    assert lrs[500] == pytest.approx(1e-3)
    assert lrs[79999] == pytest.approx(1e-3)
    assert lrs[80000] == pytest.approx(1e-4)
    assert lrs[100000] == pytest.approx(1e-5)


def test_first_update_uses_warmup_factor_and_steps_match_iteration_by_iteration():
    cfg = load_config(opts=["SOLVER.WARMUP_ITERS", "4", "SOLVER.LR_STEPS", "[6]", "SOLVER.MAX_ITER", "8"])
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])  # the LR this update uses
        optimizer.step()
        scheduler.step()
    wf = 1 / 3
    expected = [1e-3 * (wf * (1 - e / 4) + e / 4) for e in range(4)] + [1e-3, 1e-3, 1e-4, 1e-4]
    assert seen == pytest.approx(expected)


def test_cosine_decays_to_zero_after_warmup():
    factor = WarmupSchedule("cosine", max_iter=100, warmup_factor=0.5, warmup_iters=10)
    assert factor(0) == pytest.approx(0.5)
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    assert factor(200) == pytest.approx(0.0, abs=1e-12)  # clamped past MAX_ITER
    assert factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_adamw_and_bad_names():
    cfg = load_config(opts=["SOLVER.OPTIMIZER", "AdamW", "SOLVER.WEIGHT_DECAY", "0.05"])
    optimizer = build_optimizer(cfg, torch.nn.Linear(2, 1))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="LR_SCHEDULER"):
        WarmupSchedule("linear", max_iter=10, warmup_factor=0.5, warmup_iters=1)
    with pytest.raises(ValueError, match="LR_STEPS"):
        WarmupSchedule("multistep", max_iter=10, warmup_factor=0.5, warmup_iters=1, milestones=[5, 2])


def test_scheduler_state_round_trips():
    cfg = load_config(opts=["SOLVER.LR_SCHEDULER", "cosine", "SOLVER.MAX_ITER", "50"])
    opt_a = build_optimizer(cfg, torch.nn.Linear(2, 1))
    sched_a = build_lr_scheduler(cfg, opt_a)
    for _ in range(7):
        opt_a.step()
        sched_a.step()
    opt_b = build_optimizer(cfg, torch.nn.Linear(2, 1))
    sched_b = build_lr_scheduler(cfg, opt_b)
    sched_b.load_state_dict(sched_a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    assert sched_b.last_epoch == 7
    assert opt_b.param_groups[0]["lr"] == pytest.approx(opt_a.param_groups[0]["lr"])
