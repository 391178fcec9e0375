"""The training loop: one function, read top to bottom.

    for each batch (iteration = start_iter + 1 .. max_iter):
        data        images (N, 3, S, S), targets [{"boxes_norm": (G_i, 4), "labels": (G_i,)}] -> device
        forward     loss_dict = model(images, targets)            {"reg_loss": scalar, "cls_loss": scalar}
        check       averaged over processes; stop with NonFiniteLossError if any term is NaN/inf
        backward    (scaled when AMP is on), optional gradient-norm clipping
        step        optimizer.step(), scheduler.step()            (the LR schedule is per iteration)
        log         writers.write_train every LOG_PERIOD
        evaluate    every EVAL_PERIOD and at the end: validate(model) -> writers.write_val, model_best.pth,
                    early stopping
        checkpoint  model_{iteration:07d}.pth every CHECKPOINT_PERIOD; model_final.pth at the end; a model
                    whose weights hold NaN/inf is never saved (NonFiniteWeightsError)

Everything the loop uses is built beforehand (train.py `run`) and passed in, so the loop can run on a
toy model in a test as well as on SSD.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssd.engine.checkpoint import Checkpointer
from ssd.engine.writers import MetricWindows, Writer
from ssd.utils import dist as dist_utils

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration, the terms and the last checkpoint."""


@dataclass
class TrainOptions:
    """The loop's schedule and numerics, in iterations (SOLVER.* in the config)."""

    max_iter: int
    log_period: int = 10
    checkpoint_period: int = 2500
    eval_period: int = 0  # 0 = validate only at the end
    amp: bool = False  # autocast + GradScaler; only meaningful on CUDA
    clip_grad_norm: float = 0.0  # 0 = no clipping
    channels_last: bool = False  # images to NHWC; the caller converts the model (model.to(memory_format=...))
    device: torch.device = torch.device("cpu")


class BestMetricTracker:
    """Remembers the best validation value of one metric and counts validations without improvement.

    Args:
        metric: key of the validation dict, e.g. "val/loss" or "bbox/AP50".
        mode: "min" (smaller is better, losses) or "max" (AP).
        patience: stop after this many validations in a row without a strict improvement; 0 = never.
    """

    def __init__(self, metric: str, mode: str = "min", patience: int = 0):
        if mode not in ("min", "max"):
            raise ValueError(f"SOLVER.BEST_MODE must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.patience = patience
        self.best: float | None = None
        self.best_iteration = 0
        self.bad_validations = 0

    def update(self, metrics: Mapping[str, float], iteration: int) -> bool:
        """Record one validation; True when it is a new best (save model_best.pth)."""
        if self.metric not in metrics:
            raise KeyError(
                f"SOLVER.BEST_METRIC {self.metric!r} is not among the validation results {sorted(metrics)}"
            )
        value = float(metrics[self.metric])
        improved = math.isfinite(value) and (
            self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        )
        if improved:
            self.best, self.best_iteration, self.bad_validations = value, iteration, 0
        else:
            self.bad_validations += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_validations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_iteration": self.best_iteration,
            "bad_validations": self.bad_validations,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_iteration = state["best_iteration"]
        self.bad_validations = state["bad_validations"]


def check_finite(loss_dict: Mapping[str, torch.Tensor], iteration: int, last_checkpoint: Any) -> None:
    """Raise NonFiniteLossError when any loss term is NaN or inf (call with the process-averaged terms)."""
    values = {name: float(value) for name, value in loss_dict.items()}
    if all(math.isfinite(v) for v in values.values()):
        return
    terms = ", ".join(f"{name}={value}" for name, value in values.items())
    resume = f"{last_checkpoint} (resume with --resume)" if last_checkpoint else "none saved yet"
    raise NonFiniteLossError(
        f"Loss is not finite at iteration {iteration}: {terms}. Last good checkpoint: {resume}. "
        "Usual causes: the learning rate is too high (lower SOLVER.LR, lengthen SOLVER.WARMUP_ITERS or set "
        "SOLVER.CLIP_GRAD_NORM); degenerate ground-truth boxes (zero or negative width/height, or coordinates "
        "outside the image) in the annotations; with AMP on CUDA, an overflow (try SOLVER.AMP False)."
    )


def extra_state(tracker: BestMetricTracker | None) -> dict[str, Any]:
    """What checkpoints carry besides the training state: the best-metric tracker, so resume keeps patience."""
    return {"best": tracker.state_dict()} if tracker is not None else {}


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: Iterable,
    checkpointer: Checkpointer,
    options: TrainOptions,
    *,
    start_iter: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    writers: Sequence[Writer] = (),
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    tracker: BestMetricTracker | None = None,
) -> int:
    """Train from `start_iter` to `options.max_iter`; returns the last iteration run (earlier if stopped early).

    Args:
        model: in train mode returns {"reg_loss", "cls_loss"} for (images, targets); may be DDP-wrapped.
        train_loader: yields (images (N,3,S,S), targets list[dict], indices (N,)) for the remaining iterations.
        checkpointer: saves model_{iteration:07d}.pth, model_best.pth and model_final.pth.
        scaler: GradScaler (enabled for AMP on CUDA); None = a disabled one.
        writers: called every LOG_PERIOD (train) and at each validation (val); see ssd/engine/writers.py.
        validate: model -> flat validation results ({"val/loss": ..., "bbox/AP50": ...}), the same on every
            process; None = no validation.
        tracker: selects model_best.pth and decides early stopping from the validation results.

    Raises:
        NonFiniteLossError: a loss term became NaN/inf (on any process).
        NonFiniteWeightsError: the weights became NaN/inf while the losses were finite (an update that
            overflowed, e.g. in the last iteration); raised by the checkpointer instead of saving them.
    """
    device = options.device
    use_amp = options.amp and device.type == "cuda"
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    windows = MetricWindows(window=20)
    logger.info("Start training from iteration %d to %d", start_iter, options.max_iter)
    model.train()
    iteration, stop = start_iter, False
    start_time = last_end = time.perf_counter()
    iterations = range(start_iter + 1, options.max_iter + 1)
    layout = torch.channels_last if options.channels_last else torch.preserve_format  # of the images
    for iteration, (images, targets, _) in zip(iterations, train_loader, strict=False):
        # data: (N, 3, S, S) and per-image target dicts, copied to the device.
        data_time = time.perf_counter() - last_end
        images = images.to(device, non_blocking=True, memory_format=layout)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]

        # forward: the model matches priors to targets and returns the loss terms (scalars).
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss_dict = model(images, targets)
        loss = sum(loss_dict.values())

        # check: averaged over processes, so every process sees the same NaN and stops at the same iteration.
        logged = dist_utils.reduce_mean_dict(loss_dict)
        check_finite(logged, iteration, checkpointer.last_saved)

        # backward (+ clip on unscaled gradients) and step; the LR schedule advances once per iteration.
        lr = optimizer.param_groups[0]["lr"]  # the LR this update uses (Detectron2 logs this one)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if options.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_grad_norm)
            windows.put(grad_norm=float(grad_norm))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        # log: smoothed over the last 20 iterations.
        now = time.perf_counter()
        total = sum(float(v) for v in logged.values())
        windows.put(total_loss=total, **{k: float(v) for k, v in logged.items()})
        windows.put(lr=lr, time=now - last_end, data_time=data_time)
        if device.type == "cuda":
            windows.put(max_mem=torch.cuda.max_memory_allocated(device) / 2**20)
        if iteration % options.log_period == 0 or iteration == options.max_iter:
            summary = windows.summary(iteration, options.max_iter)
            for writer in writers:
                writer.write_train(iteration, summary)

        # evaluate: validation loss / AP, best checkpoint, early stopping.
        if validate is not None and (
            iteration == options.max_iter
            or (options.eval_period > 0 and iteration % options.eval_period == 0)
        ):
            results = validate(model)
            model.train()
            for writer in writers:
                writer.write_val(iteration, results)
            if tracker is not None:
                if tracker.update(results, iteration):
                    logger.info("New best %s = %.4f at iteration %d", tracker.metric, tracker.best, iteration)
                    checkpointer.save("model_best", iteration, **extra_state(tracker))
                stop = tracker.should_stop
                if stop:
                    logger.info(
                        "Early stopping at iteration %d: %s has not improved for %d validations (best %.4f at %d)",
                        iteration, tracker.metric, tracker.bad_validations, tracker.best, tracker.best_iteration,
                    )  # fmt: skip

        # checkpoint
        if stop:
            break
        if (
            options.checkpoint_period > 0
            and iteration % options.checkpoint_period == 0
            and iteration < options.max_iter
        ):
            checkpointer.save(f"model_{iteration:07d}", iteration, **extra_state(tracker))
        last_end = time.perf_counter()

    if iteration < options.max_iter and not stop:
        logger.warning("The data loader ended at iteration %d of %d", iteration, options.max_iter)
    checkpointer.save("model_final", iteration, **extra_state(tracker))
    elapsed = time.perf_counter() - start_time
    done = iteration - start_iter
    logger.info(
        "Training took %s for %d iterations (%.4f s/it)",
        datetime.timedelta(seconds=int(elapsed)), done, elapsed / max(1, done),
    )  # fmt: skip
    return iteration
