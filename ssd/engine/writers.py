"""Where training numbers go: a console line, a tqdm bar, metrics.json, TensorBoard and wandb.

The loop in `ssd/engine/train_loop.py` keeps recent values in a `MetricWindows` and calls every writer at two
named points:

    for each iteration:
        ... forward, backward, step ...
        windows.put(total_loss=..., reg_loss=..., cls_loss=..., lr=..., time=..., data_time=...)
        if iteration % LOG_PERIOD == 0:
            for w in writers: w.write_train(iteration, windows.summary(iteration, max_iter))
        if iteration % EVAL_PERIOD == 0:
            for w in writers: w.write_val(iteration, {"val/loss": ..., "bbox/AP50": ...})
    for w in writers: w.close()

Train summaries hold medians over the last `window` iterations (Detectron2's smoothing), the latest LR,
`eta_seconds`, and `max_mem` (MiB, CUDA only). Nothing keeps an unbounded history: every window is a
fixed-length deque, so memory stays flat over 100k iterations.

Writers are built on the main process only (`build_writers` returns [] elsewhere): other ranks never write.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import statistics
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Keys that are not losses: printed after the losses, never smoothed into "loss" groups.
TIMING_KEYS = ("time", "data_time")


class MetricWindows:
    """The last `window` values of each training scalar (a bounded deque each), plus a running time average."""

    def __init__(self, window: int = 20):
        self.window = window
        self._values: dict[str, deque[float]] = {}
        self._time_total = 0.0
        self._time_count = 0

    def put(self, **scalars: float) -> None:
        for name, value in scalars.items():
            self._values.setdefault(name, deque(maxlen=self.window)).append(float(value))
        if "time" in scalars:
            self._time_total += float(scalars["time"])
            self._time_count += 1

    def median(self, name: str) -> float:
        return statistics.median(self._values[name])

    def latest(self, name: str) -> float:
        return self._values[name][-1]

    def summary(self, iteration: int, max_iter: int) -> dict[str, float]:
        """Medians of every scalar except "lr" (the latest), and the ETA from the median iteration time."""
        out = {
            name: (values[-1] if name == "lr" else statistics.median(values))
            for name, values in self._values.items()
        }
        if "time" in out:
            out["eta_seconds"] = out["time"] * max(0, max_iter - iteration)
        return out


class Writer:
    """A writer does nothing by default; subclasses override what they need."""

    def write_train(self, iteration: int, scalars: Mapping[str, float]) -> None:
        pass

    def write_val(self, iteration: int, scalars: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class ConsolePrinter(Writer):
    """Logs one line in the format of Detectron2's CommonMetricPrinter (losses are window medians), e.g.

    ` eta: 0:04:10  iter: 40  total_loss: 9.012  reg_loss: 2.31  cls_loss: 6.702  time: 0.2101  data_time: 0.0040
    lr: 0.0006667  max_mem: 812M`
    """

    def __init__(self, max_iter: int):
        self.max_iter = max_iter

    def write_train(self, iteration: int, scalars: Mapping[str, float]) -> None:
        eta = str(datetime.timedelta(seconds=int(scalars.get("eta_seconds", 0))))
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in scalars.items() if "loss" in k)
        timing = "  ".join(f"{k}: {scalars[k]:.4f}" for k in TIMING_KEYS if k in scalars)
        line = f" eta: {eta}  iter: {iteration}/{self.max_iter}  {losses}  {timing}  lr: {scalars.get('lr', 0):.5g}"
        if "max_mem" in scalars:
            line += f"  max_mem: {scalars['max_mem']:.0f}M"
        logger.info(line)

    def write_val(self, iteration: int, scalars: Mapping[str, float]) -> None:
        values = "  ".join(f"{k}: {v:.4f}" for k, v in scalars.items())
        logger.info("validation at iter %d:  %s", iteration, values)


class JSONWriter(Writer):
    """Appends one JSON object per line to OUTPUT_DIR/metrics.json (Detectron2's JSONWriter format):

    {"cls_loss": 6.7, "data_time": 0.004, "eta_seconds": 250.1, "iteration": 40, "lr": 0.00067, ...}
    {"bbox/AP": 12.3, "bbox/AP50": 30.1, "iteration": 500, "val/cls_loss": 3.1, "val/loss": 4.2, ...}

    Args:
        path: the file (appended to; created if missing).
        start_iter: lines of an existing file with a later iteration are dropped, so each iteration appears
            once and curves do not fold back: on resume, those the interrupted run wrote after its last
            checkpoint; on a fresh start (0) in a used OUTPUT_DIR, all of them.
    """

    def __init__(self, path: str | Path, start_iter: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            self._truncate_after(start_iter)
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run, closed in close()

    def _truncate_after(self, start_iter: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= start_iter:
                    kept.append(line)
            except json.JSONDecodeError:  # a half-written last line of a killed run
                continue
        self.path.write_text("".join(line + "\n" for line in kept))

    def _write(self, iteration: int, scalars: Mapping[str, float]) -> None:
        record = {"iteration": iteration, **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    write_train = _write
    write_val = _write

    def close(self) -> None:
        self._file.close()


def _grouped(scalars: Mapping[str, float], group: str) -> dict[str, float]:
    """Prefix names with "train/" or "val/" unless they already start with it ("val/loss" stays as is)."""
    return {(k if k.startswith(group + "/") else f"{group}/{k}"): float(v) for k, v in scalars.items()}


class TensorBoardWriter(Writer):
    """Scalars to OUTPUT_DIR/tf_logs as "train/<name>" and "val/<name>" (torch.utils.tensorboard)."""

    def __init__(self, log_dir: str | Path, start_iter: int = 0):
        try:
            from torch.utils.tensorboard import (
                SummaryWriter,
            )  # imported here: tensorboard is an optional extra
        except ImportError as err:
            raise ImportError(
                "LOGGING.TENSORBOARD is True but the `tensorboard` package is missing: "
                "pip install tensorboard, or run with LOGGING.TENSORBOARD False"
            ) from err
        # purge_step drops events after start_iter left by an interrupted run, as JSONWriter does.
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_iter + 1 if start_iter else None)

    def write_train(self, iteration: int, scalars: Mapping[str, float]) -> None:
        for name, value in _grouped(scalars, "train").items():
            self._writer.add_scalar(name, value, iteration)

    def write_val(self, iteration: int, scalars: Mapping[str, float]) -> None:
        for name, value in _grouped(scalars, "val").items():
            self._writer.add_scalar(name, value, iteration)

    def close(self) -> None:
        self._writer.close()


class WandbWriter(Writer):
    """Weights & Biases run with "train/..." and "val/..." charts. `WANDB_MODE=offline` needs no account.

    Args:
        project: LOGGING.WANDB_PROJECT.
        output_dir: wandb writes its files under output_dir/wandb.
        config: the run's config as a plain dict (shown in the wandb UI).
    """

    def __init__(self, project: str, output_dir: str | Path, config: dict[str, Any] | None = None):
        try:
            import wandb  # optional extra: pip install -e .[wandb]
        except ImportError as err:
            raise ImportError(
                "LOGGING.WANDB is True but the `wandb` package is missing: pip install -e .[wandb], "
                "or run with LOGGING.WANDB False"
            ) from err
        self._wandb = wandb
        self._run = wandb.init(project=project, dir=str(output_dir), config=config or {})

    def write_train(self, iteration: int, scalars: Mapping[str, float]) -> None:
        self._run.log(_grouped(scalars, "train"), step=iteration)

    def write_val(self, iteration: int, scalars: Mapping[str, float]) -> None:
        self._run.log(_grouped(scalars, "val"), step=iteration)

    def close(self) -> None:
        self._run.finish()


class ProgressBar(Writer):
    """A tqdm bar over the iterations with the smoothed losses and LR as its postfix.

    Log lines go through `ssd.utils.logging.TqdmHandler` (tqdm.write), which moves the bar below them.
    """

    def __init__(self, max_iter: int, start_iter: int = 0, file=None):
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (a log file, CI), where its redraws would be noise.
        self._bar = tqdm(
            total=max_iter, initial=start_iter, desc="train", unit="it", dynamic_ncols=True, file=file,
            disable=None if file is None else False,
        )  # fmt: skip
        self._position = start_iter

    def write_train(self, iteration: int, scalars: Mapping[str, float]) -> None:
        postfix = {k: f"{v:.3f}" for k, v in scalars.items() if "loss" in k}
        postfix["lr"] = f"{scalars.get('lr', 0):.2e}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(iteration - self._position)
        self._position = iteration

    def close(self) -> None:
        self._bar.close()


def build_writers(cfg, max_iter: int, start_iter: int = 0) -> list[Writer]:
    """LOGGING.* -> the writers of the main process (an empty list on other ranks: only rank 0 writes).

    Always: the console line and OUTPUT_DIR/metrics.json. Optional: the tqdm bar, TensorBoard, wandb.
    """
    from ssd.utils.dist import is_main_process

    if not is_main_process():
        return []
    output_dir = Path(cfg.OUTPUT_DIR)
    writers: list[Writer] = [ConsolePrinter(max_iter), JSONWriter(output_dir / "metrics.json", start_iter)]
    if cfg.LOGGING.PROGRESS_BAR:
        writers.append(ProgressBar(max_iter, start_iter))
    if cfg.LOGGING.TENSORBOARD:
        writers.append(TensorBoardWriter(output_dir / "tf_logs", start_iter))
    if cfg.LOGGING.WANDB:
        config = json.loads(json.dumps(cfg, default=list))  # CfgNode -> plain nested dicts for the wandb UI
        writers.append(WandbWriter(cfg.LOGGING.WANDB_PROJECT, output_dir, config))
    return writers
