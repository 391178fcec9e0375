"""Checkpoints: atomic saves, the `last_checkpoint` pointer, exact resume, and random-number-generator state.

A checkpoint is one `torch.save`d dict (docs/contracts.md):

    {"model": state_dict, "optimizer": ..., "optimizer_class": e.g. "SGD", "scheduler": ..., "scaler": GradScaler
     state, "iteration": int, "config": the run's config as a YAML string, "rng": [per-rank RNG states],
     ...extra (e.g. "best")}

Files in OUTPUT_DIR: `model_{iteration:07d}.pth` (periodic), `model_best.pth`, `model_final.pth`, and the text file
`last_checkpoint` holding the file name of the newest one; `--resume` continues from it.

Why atomic: a run killed while writing (SIGKILL, out-of-memory, pre-emption) must not leave a truncated file
behind a name that resume trusts. Each file is written to a temporary name in the same folder, flushed and
fsync'ed, then `os.replace`d over the final name (an atomic rename on POSIX and Windows); the pointer file is
written the same way, after the checkpoint it names. So `last_checkpoint` always names a complete file.

A killed save can still leave its temporary file (`.model_0001000.pth.<pid>.tmp`, up to a checkpoint in
size); the next run's first save or resume deletes those of processes that no longer run. Periodic
checkpoints beyond the newest `max_to_keep` (SOLVER.MAX_TO_KEEP) are deleted after each save.

Only finite weights are saved or resumed from: a diverged model (NaN/inf in any floating-point tensor of the
state dict) is refused with `NonFiniteWeightsError`, so `model_final.pth` is never a diverged model and
`last_saved`, which error messages offer as the point to resume from, always names a finite checkpoint.

Loading uses `torch.load(weights_only=True)`: a checkpoint holds only tensors and plain Python values, so it
cannot run code when opened. Deviation from lufficc/SSD: it saved neither RNG states nor the config, and its
pointer file (`last_checkpoint.txt`) was written in place.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssd.utils import dist as dist_utils

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
PERIODIC_CHECKPOINT = re.compile(r"model_\d{7}\.pth")  # model_{iteration:07d}.pth, pruned to max_to_keep
_TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")  # .{name}.{pid}.tmp, see atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or not a checkpoint; the message names the file."""


class NonFiniteWeightsError(CheckpointError):
    """Weights holding NaN or inf, refused for saving or resuming; the message names the tensors."""


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of `state_dict` that hold a NaN or an inf."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def _describe(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _process_alive(pid: int) -> bool:
    """Whether process `pid` runs (POSIX); elsewhere (Windows, where os.kill would end it) assume not."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporary_files(folder: str | Path) -> list[Path]:
    """Delete `.{name}.{pid}.tmp` files of `atomic_write_bytes` whose process no longer runs; returns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info(
            "Removed %d temporary files left by killed saves: %s",
            len(removed),
            _describe([p.name for p in removed]),
        )
    return removed


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (its state dict has no "module." prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # only when writing failed; a killed process can leave one, which nothing reads
            tmp.unlink()
    _fsync_dir(path.parent)


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Atomically `torch.save` a checkpoint dict to `path`."""
    atomic_write_bytes(Path(path), lambda f: torch.save(checkpoint, f))


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dict on the CPU with `torch.load(weights_only=True)`.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or not a dict; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as err:  # torch raises RuntimeError, UnpicklingError, EOFError... depending on the damage
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {err}); the file is truncated, corrupt, "
            "or holds more than tensors and plain Python values"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def get_rng_state() -> dict[str, Any]:
    """States of every generator training draws from: Python `random`, NumPy's global one, torch CPU and CUDA.

    Stored as tensors and plain lists so that `torch.load(weights_only=True)` can read them back.
    """
    _, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_key.astype(np.int64).tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    key, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng_state(rng_per_rank: list[dict[str, Any]] | None) -> None:
    """Set this process's generators from a checkpoint's "rng" list (one entry per rank that saved it)."""
    if not rng_per_rank:
        logger.warning("checkpoint has no RNG state; random augmentation will not repeat the original run")
        return
    rank = dist_utils.get_rank()
    if rank >= len(rng_per_rank):
        logger.warning(
            "checkpoint has RNG states for %d processes; rank %d uses rank 0's", len(rng_per_rank), rank
        )
        rank = 0
    set_rng_state(rng_per_rank[rank])


def _optimizer_class_of(checkpoint: dict[str, Any]) -> str | None:
    """The optimizer of a checkpoint written before "optimizer_class" was stored, recognised from the settings
    of its parameter groups (SGD has `momentum`, Adam/AdamW `betas`; Adam has `decoupled_weight_decay` False
    in recent torch). None when unknown."""
    groups = (checkpoint.get("optimizer") or {}).get("param_groups") or [{}]
    if "momentum" in groups[0] and "betas" not in groups[0]:
        return "SGD"
    if "betas" in groups[0]:
        return "AdamW" if groups[0].get("decoupled_weight_decay", True) else "Adam"
    return None


class Checkpointer:
    """Saves and restores the training state; only the main process writes files.

    `save` must be called on every process (it gathers each rank's RNG state); `load`/`resume` on every process.

    Args:
        model: the network (a DDP wrapper is unwrapped).
        optimizer, scheduler, scaler: restored by `load` when given and present in the file.
        output_dir: folder for checkpoints and `last_checkpoint`.
        config_yaml: the run's config (`cfg.dump()`), stored so a checkpoint documents how it was made.
        max_to_keep: keep the newest this many periodic checkpoints (`model_{iteration:07d}.pth`), deleting
            older ones after each save; 0 = keep all. Other names (model_best, model_final) are never deleted.
    """

    def __init__(
        self,
        model: nn.Module,
        output_dir: str | Path,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: torch.amp.GradScaler | None = None,
        config_yaml: str = "",
        max_to_keep: int = 0,
    ):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.output_dir = Path(output_dir)
        self.config_yaml = config_yaml
        self.max_to_keep = max_to_keep
        self.save_to_disk = dist_utils.is_main_process()
        # Newest checkpoint saved or loaded by this run, always one with finite weights (for error messages).
        self.last_saved: Path | None = None
        self._cleaned = False

    def save(self, name: str, iteration: int, **extra: Any) -> Path:
        """Write OUTPUT_DIR/{name}.pth atomically and point `last_checkpoint` at it. Returns the path.

        Raises:
            NonFiniteWeightsError: the model holds NaN/inf; nothing is written (on every process alike).
        """
        rng = dist_utils.all_gather_object(get_rng_state())  # collective: every rank must call save
        path = self.output_dir / f"{name}.pth"
        # contiguous: a model trained channels-last (SOLVER.CHANNELS_LAST) saves the usual NCHW layout,
        # so the file reads the same wherever it is loaded (values are unchanged either way).
        model_state = {key: value.contiguous() for key, value in unwrap(self.model).state_dict().items()}
        bad = non_finite_tensors(model_state)  # DDP ranks hold the same weights: all raise or none
        if bad:
            last = f"{self.last_saved} (resume with --resume)" if self.last_saved else "none saved yet"
            raise NonFiniteWeightsError(
                f"Not saving {path} at iteration {iteration}: the model diverged, NaN/inf in {_describe(bad)}. "
                f"Last checkpoint with finite weights: {last}. Lower SOLVER.LR, lengthen SOLVER.WARMUP_ITERS or "
                "set SOLVER.CLIP_GRAD_NORM, then resume or start again."
            )
        previous, self.last_saved = self.last_saved, path
        if not self.save_to_disk:
            return path
        if not self._cleaned:
            remove_stale_temporary_files(self.output_dir)
            self._cleaned = True
        checkpoint: dict[str, Any] = {
            "model": model_state,
            "iteration": int(iteration),
            "config": self.config_yaml,
            "rng": rng,
        }
        if self.optimizer is not None:
            checkpoint["optimizer"] = self.optimizer.state_dict()
            checkpoint["optimizer_class"] = type(self.optimizer).__name__  # its state fits no other class
        if self.scheduler is not None:
            checkpoint["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            checkpoint["scaler"] = self.scaler.state_dict()
        checkpoint.update(extra)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint_file(checkpoint, path)
            atomic_write_bytes(self.output_dir / LAST_CHECKPOINT, lambda f: f.write(path.name.encode()))
        except OSError as err:  # disk full (ENOSPC), quota, permissions: the temporary file is gone already
            self.last_saved = previous
            kept = (
                f"the previous checkpoint {previous} is intact (files are written to a temporary name and "
                "renamed only when complete), so free space and resume with --resume"
                if previous
                else "no earlier checkpoint of this run exists"
            )
            raise CheckpointError(
                f"cannot write {path} at iteration {iteration}: {err.strerror or err}; {kept}"
            ) from err
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        """Delete periodic checkpoints older than the newest `max_to_keep` (never `keep`, just saved)."""
        if self.max_to_keep <= 0:
            return
        # Zero-padded iteration numbers: sorting the names sorts the iterations.
        periodic = sorted(p for p in self.output_dir.iterdir() if PERIODIC_CHECKPOINT.fullmatch(p.name))
        for old in periodic[: -self.max_to_keep]:
            if old != keep:
                old.unlink(missing_ok=True)
                logger.info("Deleted %s (SOLVER.MAX_TO_KEEP %d)", old.name, self.max_to_keep)

    def last_checkpoint(self) -> Path | None:
        """The checkpoint `last_checkpoint` names, or None when there is none yet."""
        pointer = self.output_dir / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        path = self.output_dir / name
        if not name or not path.is_file():
            raise CheckpointError(f"{pointer} names {name!r}, which does not exist in {self.output_dir}")
        return path

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore model, optimizer, scheduler and scaler from `path` (strict); return the whole checkpoint dict.

        RNG states are not restored here: the caller does that last, right before training starts
        (`restore_rng_state(checkpoint["rng"])`), so building the data loader cannot consume them.
        """
        checkpoint = load_checkpoint_file(path)
        if "model" not in checkpoint:
            raise CheckpointError(f"{path} has no 'model' entry (keys: {sorted(checkpoint)})")
        bad = non_finite_tensors(checkpoint["model"])
        if bad:
            raise NonFiniteWeightsError(
                f"{path} holds a diverged model (NaN/inf in {_describe(bad)}); resume from an earlier "
                f"checkpoint (write its file name into {self.output_dir / LAST_CHECKPOINT}) or start again"
            )
        try:
            unwrap(self.model).load_state_dict(checkpoint["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} does not fit this model (to start from weights of another class count or backbone, "
                f"use MODEL.WEIGHTS or --ckpt, which skip mismatched heads):\n{err}"
            ) from err
        saved_class = checkpoint.get("optimizer_class") or _optimizer_class_of(checkpoint)
        if self.optimizer is not None and saved_class and saved_class != type(self.optimizer).__name__:
            # SGD's state loaded into AdamW crashes at the first step; AdamW's into SGD is silently dropped.
            raise CheckpointError(
                f"{path} holds the state of a {saved_class} optimizer, but this run uses "
                f"{type(self.optimizer).__name__} (SOLVER.OPTIMIZER): resume with SOLVER.OPTIMIZER "
                f"{saved_class}, or start a new run from its weights (MODEL.WEIGHTS {path}, without --resume)"
            )
        for key, target in (
            ("optimizer", self.optimizer),
            ("scheduler", self.scheduler),
            ("scaler", self.scaler),
        ):
            if target is not None and key in checkpoint:
                target.load_state_dict(checkpoint[key])
        self.last_saved = Path(path)
        logger.info("Loaded checkpoint %s (iteration %d)", path, checkpoint.get("iteration", 0))
        return checkpoint

    def resume(self) -> dict[str, Any]:
        """Load the checkpoint `last_checkpoint` names; an empty dict (start from scratch) when there is none."""
        if self.save_to_disk:
            remove_stale_temporary_files(self.output_dir)
            self._cleaned = True
        path = self.last_checkpoint()
        if path is None:
            logger.info("No checkpoint in %s: training from scratch", self.output_dir)
            return {}
        return self.load(path)
