"""Optimizers and learning-rate schedules, counted in iterations (one batch each).

The schedule is a `torch.optim.lr_scheduler.LambdaLR` whose factor is a small callable object
(`WarmupSchedule`), stepped once per iteration after `optimizer.step()`, as in lufficc/SSD:

    lr(e) = SOLVER.LR * warmup(e) * decay(e)          e = number of scheduler steps taken so far
    warmup(e) = WF * (1 - e / WI) + e / WI   if e < WI, else 1       (linear ramp from WF to 1)
    decay(e)  = GAMMA ** (number of LR_STEPS <= e)                   ("multistep")
              = 0.5 * (1 + cos(pi * min(e, MAX_ITER) / MAX_ITER))    ("cosine", our addition)

So the first update uses LR * WF, and the LR reported after iteration i (after i scheduler steps) is lr(i).
With the lufficc VOC defaults (LR 1e-3, WF 1/3, WI 500, steps 80k/100k): iteration 1 -> 3.3467e-4,
250 -> 6.667e-4, 500 -> 1e-3, 80000 -> 1e-4, 100000 -> 1e-5 (the values measured on lufficc/SSD).

Deviation from lufficc/SSD: the schedule is a LambdaLR factor object rather than an `_LRScheduler` subclass;
the numbers are the same. The factor is a plain object (no lambda) so `LambdaLR.state_dict()` stores its
fields and a checkpoint restores it.

Resuming with changed SOLVER values (`train.py --resume ... SOLVER.LR 1e-4`): loading a checkpoint restores
the old hyperparameters together with the state (they live in the optimizer's param groups and in the
scheduler's `base_lrs` and factor). `apply_solver_config` then puts this config's values back, keeping the
state (momentum buffers, the iteration count), and `changed_solver_keys` names what changed, for the log.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from ssd.config.defaults import _C

logger = logging.getLogger(__name__)

OPTIMIZERS = ("SGD", "AdamW")
SCHEDULES = ("multistep", "cosine")


def make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """One parameter group over every trainable parameter (as lufficc/SSD: decay applies to biases and BN too).

    Args:
        model: the network (or its DDP wrapper).
        name: "SGD" (with momentum, L2 weight decay) or "AdamW" (decoupled weight decay).
        lr: base learning rate; the scheduler multiplies it by the schedule factor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {name!r}")


class WarmupSchedule:
    """LR factor of iteration `e`: linear warmup times a multistep or cosine decay (see the module docstring)."""

    def __init__(
        self,
        schedule: str,
        max_iter: int,
        warmup_factor: float,
        warmup_iters: int,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"SOLVER.LR_SCHEDULER must be one of {SCHEDULES}, got {schedule!r}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"SOLVER.WARMUP_FACTOR must be in (0, 1], got {warmup_factor}")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SOLVER.LR_STEPS must be increasing, got {list(milestones)}")
        self.schedule = schedule
        self.max_iter = int(max_iter)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, e: int) -> float:
        warmup = 1.0
        if e < self.warmup_iters:
            alpha = e / self.warmup_iters
            warmup = self.warmup_factor * (1 - alpha) + alpha
        if self.schedule == "multistep":
            decay = self.gamma ** bisect.bisect_right(self.milestones, e)
        else:
            progress = min(e, self.max_iter) / max(1, self.max_iter)  # guard MAX_ITER 0
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return warmup * decay


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, factor: WarmupSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler: call `.step()` once after every `optimizer.step()`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER / LR / MOMENTUM / WEIGHT_DECAY -> optimizer.

    Unlike lufficc/SSD, LR is not multiplied by the number of processes (see SOLVER.LR in defaults.py).
    """
    s = cfg.SOLVER
    return make_optimizer(model, s.OPTIMIZER, s.LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY)


def build_schedule_factor(cfg: CfgNode) -> WarmupSchedule:
    """SOLVER.LR_SCHEDULER / MAX_ITER / WARMUP_* / LR_STEPS / GAMMA -> the LR factor of each iteration."""
    s = cfg.SOLVER
    return WarmupSchedule(
        s.LR_SCHEDULER,
        max_iter=s.MAX_ITER,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_iters=s.WARMUP_ITERS,
        milestones=s.LR_STEPS,
        gamma=s.GAMMA,
    )


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """SOLVER.LR_SCHEDULER / MAX_ITER / WARMUP_* / LR_STEPS / GAMMA -> per-iteration scheduler."""
    return make_lr_scheduler(optimizer, build_schedule_factor(cfg))


def apply_solver_config(
    cfg: CfgNode, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR
) -> None:
    """After a checkpoint was loaded: use this config's LR, MOMENTUM, WEIGHT_DECAY and schedule from now on.

    The optimizer state (momentum buffers, Adam moments) and the scheduler's iteration count are kept. The
    next LR is recomputed the way LambdaLR computes it, `LR * factor(last_epoch)`, so with an unchanged
    config nothing changes (resume stays bit-exact).
    """
    s = cfg.SOLVER
    factor = build_schedule_factor(cfg)
    scheduler.lr_lambdas = [factor for _ in optimizer.param_groups]
    scheduler.base_lrs = [float(s.LR) for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = float(s.LR)
        group["weight_decay"] = float(s.WEIGHT_DECAY)
        if "momentum" in group:  # SGD; AdamW has betas instead, which the config does not set
            group["momentum"] = float(s.MOMENTUM)
        group["lr"] = float(s.LR) * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def changed_solver_keys(saved_config_yaml: str, cfg: CfgNode) -> dict[str, tuple[Any, Any]]:
    """{"SOLVER.KEY": (value in the checkpoint's config, value now)} for every SOLVER value that differs."""
    if not saved_config_yaml:
        return {}
    saved = CfgNode.load_cfg(saved_config_yaml).get("SOLVER", CfgNode())

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, list | tuple) else value

    return {
        f"SOLVER.{key}": (plain(saved.get(key)), plain(value))
        for key, value in cfg.SOLVER.items()
        if plain(saved.get(key)) != plain(value)
    }


def resolve_epoch_schedule(cfg: CfgNode, num_images: int, world_size: int = 1) -> CfgNode:
    """SOLVER.EPOCHS > 0 -> a copy of `cfg` whose MAX_ITER (and, with EVAL_EPOCHS, EVAL_PERIOD and
    CHECKPOINT_PERIOD) count the iterations of that many passes over `num_images` training images.

    One iteration takes BATCH_SIZE images on each of `world_size` processes. `cfg` is returned unchanged when
    EPOCHS is 0. Example: 128 images, batch 8, EPOCHS 40 -> 16 iterations per epoch, MAX_ITER 640.

    SOLVER.MIN_ITER is a floor: on a small dataset EPOCHS passes are few iterations (70 images, batch 8,
    EPOCHS 40: 350), too few for the fresh heads to learn (docs/custom_dataset.md, "Run length"). The run then
    takes more epochs, and EVAL_PERIOD grows in proportion, so it validates as often as EPOCHS / EVAL_EPOCHS
    says. Example: 70 images, MIN_ITER 640 -> MAX_ITER 640 (73.1 epochs), EVAL_PERIOD 80.
    """
    s = cfg.SOLVER
    if s.EPOCHS <= 0:
        return cfg
    per_epoch = num_images / (s.BATCH_SIZE * world_size)  # iterations per epoch (fractional)
    resolved = cfg.clone()
    resolved.defrost()
    by_epochs = max(1, math.ceil(s.EPOCHS * per_epoch))
    resolved.SOLVER.MAX_ITER = max(by_epochs, s.MIN_ITER)
    lengthened = resolved.SOLVER.MAX_ITER > by_epochs
    if lengthened:
        logger.info(
            "SOLVER.MIN_ITER %d: %d epochs over %d images would be %d iterations; the run takes %d (%.1f epochs), "
            "validating as often as EPOCHS / EVAL_EPOCHS says", s.MIN_ITER, s.EPOCHS, num_images, by_epochs,
            resolved.SOLVER.MAX_ITER, resolved.SOLVER.MAX_ITER / per_epoch,
        )  # fmt: skip
    if s.MAX_ITER not in (resolved.SOLVER.MAX_ITER, _C.SOLVER.MAX_ITER):  # set by the user, not the default
        logger.warning(
            "SOLVER.MAX_ITER %d is replaced: SOLVER.EPOCHS %d sets the length (set SOLVER.EPOCHS 0 to count "
            "iterations instead)", s.MAX_ITER, s.EPOCHS,
        )  # fmt: skip
    if s.EVAL_EPOCHS > 0:
        # EVAL_EPOCHS of EPOCHS, as a share of the run (the lengthened run validates as many times)
        per_eval = (
            s.EVAL_EPOCHS * resolved.SOLVER.MAX_ITER / s.EPOCHS if lengthened else s.EVAL_EPOCHS * per_epoch
        )
        period = max(1, math.ceil(per_eval))
        resolved.SOLVER.EVAL_PERIOD = period
        resolved.SOLVER.CHECKPOINT_PERIOD = period
    logger.info(
        "SOLVER.EPOCHS %d over %d images, %d per iteration: MAX_ITER %d, EVAL_PERIOD %d, CHECKPOINT_PERIOD %d",
        s.EPOCHS, num_images, s.BATCH_SIZE * world_size, resolved.SOLVER.MAX_ITER,
        resolved.SOLVER.EVAL_PERIOD, resolved.SOLVER.CHECKPOINT_PERIOD,
    )  # fmt: skip
    if cfg.is_frozen():
        resolved.freeze()
    return resolved
