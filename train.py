"""Train an SSD: `python train.py --config-file CFG [--resume] [--ckpt PATH] [KEY VALUE ...]`.

With no arguments it trains the small default (configs/shapes_mobilenet_v2_ssdlite.yaml: MobileNetV2 x0.5
SSDLite on synthetic shapes) on whatever device is there, then evaluates it. Several processes:

    torchrun --nproc_per_node 2 train.py --config-file CFG      # DDP; gloo on CPU, NCCL on GPUs

This file builds everything from the config, in lufficc/SSD's order (model -> device -> DDP -> optimizer ->
scheduler -> checkpointer -> resume -> data loader), then hands it to the one training loop,
`ssd.engine.train_loop.train`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from ssd.config import ConfigError, load_config
from ssd.data.datasets.image_files import DatasetError
from ssd.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    NonFiniteWeightsError,
    restore_rng_state,
    unwrap,
)
from ssd.engine.train_loop import BestMetricTracker, NonFiniteLossError, TrainOptions, train
from ssd.engine.writers import build_writers
from ssd.modeling.model_zoo import load_weights
from ssd.modeling.weights import WeightsError, load_model_weights
from ssd.solver import (
    apply_solver_config,
    build_lr_scheduler,
    build_optimizer,
    changed_solver_keys,
)
from ssd.utils import dist as dist_utils
from ssd.utils.device import select_device
from ssd.utils.logging import setup_logger

logger = logging.getLogger("ssd.train")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "shapes_mobilenet_v2_ssdlite.yaml"
EXIT_NON_FINITE = 3  # exit status when the loss or the weights became NaN/inf (1 is any other error)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), metavar="FILE", help="YAML config")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument(
        "--ckpt", default="", help="initialise the model from these weights (sets MODEL.WEIGHTS)"
    )
    parser.add_argument("--skip-test", action="store_true", help="no evaluation on DATASETS.TEST at the end")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    lufficc = parser.add_argument_group("lufficc/SSD options (kept so its commands run unchanged)")
    lufficc.add_argument("--log_step", type=int, help="= SOLVER.LOG_PERIOD")
    lufficc.add_argument("--save_step", type=int, help="= SOLVER.CHECKPOINT_PERIOD")
    lufficc.add_argument("--eval_step", type=int, help="= SOLVER.EVAL_PERIOD")
    lufficc.add_argument(
        "--use_tensorboard", type=lambda v: v.lower() in ("true", "1"), help="= LOGGING.TENSORBOARD"
    )
    lufficc.add_argument("--local_rank", "--local-rank", type=int, help="ignored: torchrun sets LOCAL_RANK")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    """The KEY VALUE list: lufficc-style flags and --ckpt first, so explicit KEY VALUE pairs win."""
    flags = {
        "SOLVER.LOG_PERIOD": args.log_step,
        "SOLVER.CHECKPOINT_PERIOD": args.save_step,
        "SOLVER.EVAL_PERIOD": args.eval_step,
        "LOGGING.TENSORBOARD": args.use_tensorboard,
        "MODEL.WEIGHTS": args.ckpt or None,
    }
    return [item for key, value in flags.items() if value is not None for item in (key, str(value))] + list(
        args.opts
    )


def limit_cpu_threads(num_workers: int) -> None:
    """On the CPU, leave one core to the data-loader workers and split the rest among the processes.

    PyTorch starts one OpenMP thread per core. When the loader workers (or another job) also want a core,
    those threads wait for each other at every layer: on a busy 2-core machine we measured 3.5 s per
    iteration with two threads against 1.2 s with one. An explicit OMP_NUM_THREADS wins over this rule.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = os.cpu_count() or 1
    threads = max(1, cores // dist_utils.get_world_size() - (1 if num_workers > 0 else 0))
    torch.set_num_threads(threads)
    logger.info("CPU training: %d intra-op thread(s) per process (set OMP_NUM_THREADS to choose)", threads)


def seed_everything(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch. Model initialisation uses `seed` on every rank (DDP also broadcasts
    rank 0's weights); data order and augmentation are seeded by the data loader from SEED on its own."""
    if seed < 0:
        seed = random.SystemRandom().randrange(2**31)
        logger.info("SEED is -1: using %d", seed)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)


def build_validator(cfg: CfgNode, device: torch.device, dataset):
    """The validation images -> `validate(model) -> {"val/loss", "val/reg_loss", ..., "bbox/AP50", ...}`.

    `dataset` comes from `build_train_val_datasets` (DATASETS.VAL, or the images held out of DATASETS.TRAIN);
    None gives None (no validation). Every process runs its shard of the validation set (the loaders shard,
    the evaluators gather); the main process's results are broadcast so every process takes the same
    best/early-stop decisions.
    """
    from ssd.data.build import build_test_loader
    from ssd.engine.inference import compute_validation_loss, validate_on_dataset
    from ssd.evaluation import build_evaluator, flatten_results

    if dataset is None:
        return None
    loader = build_test_loader(cfg, dataset)
    dataset_name = getattr(dataset, "name", "validation")
    evaluator = build_evaluator(cfg, dataset, output_dir=None, dataset_name=dataset_name, analysis=False)

    def validate(model: nn.Module) -> dict[str, float]:
        bare = unwrap(model)  # DDP's forward would expect a backward; evaluation does not need it
        dist_utils.broadcast_buffers(bare)  # every process evaluates rank 0's BatchNorm statistics
        if cfg.TEST.EVALUATORS:  # one pass over the images gives the loss and the detections
            losses, metrics = validate_on_dataset(bare, loader, evaluator, device)
        else:
            losses, metrics = compute_validation_loss(bare, loader, device), {}
        results = {f"val/{name}": value for name, value in losses.items()}
        results.update(flatten_results(metrics))
        return dist_utils.broadcast_object(results)

    return validate


def initialise_weights(model: nn.Module, weights: str) -> None:
    """MODEL.WEIGHTS / --ckpt: start from a checkpoint (fine-tuning); heads of another shape are skipped."""
    logger.info("Initialising the model from %s", weights)
    load_weights(model, weights)  # a file, a URL, a model-zoo name or a bundled model's name


def resume_with_config(cfg: CfgNode, checkpoint: dict, optimizer, scheduler) -> set[str]:
    """After --resume: apply this config's SOLVER values over the restored ones; returns the changed keys.

    Loading restores the old learning rate, momentum, weight decay and schedule with the optimizer and
    scheduler state; a changed value (`--resume ... SOLVER.LR 1e-4` after a divergence) would be ignored
    otherwise. Each change is logged. (A changed SOLVER.OPTIMIZER was refused by `Checkpointer.load`: the
    saved optimizer state belongs to the other optimizer.)
    """
    changed = changed_solver_keys(checkpoint.get("config", ""), cfg)
    apply_solver_config(cfg, optimizer, scheduler)
    for key, (old, new) in changed.items():
        logger.info("Resume: %s changed from %s (checkpoint) to %s: the new value applies", key, old, new)
    return set(changed)


def run(args: argparse.Namespace) -> int:
    opts = overrides(args)
    cfg = load_config(args.config_file, opts)
    if args.print_config:
        print(cfg.dump())
        return 0

    from ssd.data.build import build_train_loader  # heavy imports after --print-config
    from ssd.engine.inference import evaluate_on_test_datasets
    from ssd.engine.recipe import prepare_run
    from ssd.modeling import build_detection_model

    device = select_device(cfg.MODEL.DEVICE)
    distributed = dist_utils.init_distributed(device.type)  # under torchrun: join the process group
    rank = dist_utils.get_rank()
    output_dir = Path(cfg.OUTPUT_DIR)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"OUTPUT_DIR {output_dir} is a file, not a folder: choose another OUTPUT_DIR")
    try:
        setup_logger(output_dir, rank)
    except OSError as err:  # a parent that is a file, no permission, ...
        raise ConfigError(f"OUTPUT_DIR {output_dir}: cannot create it or its log.txt ({err})") from None
    logger.info("Config file %s, overrides %s; %d process(es) on %s", args.config_file, opts,
                dist_utils.get_world_size(), device)  # fmt: skip

    # The recipe step (ssd/engine/recipe.py): DATASETS.TRAIN parsed once, every automatic value decided
    # (MODEL.PRIORS.AUTO, INPUT.AUGMENTATION "auto", SOLVER.EPOCHS, the warmup) and logged. From here on
    # `cfg` is concrete: it is what config.yaml and every checkpoint store.
    recipe = prepare_run(cfg, dist_utils.get_world_size())
    cfg, train_dataset, val_dataset = recipe.cfg, recipe.train_dataset, recipe.val_dataset
    if dist_utils.is_main_process():
        (output_dir / "config.yaml").write_text(cfg.dump())
    logger.info("Running with config:\n%s", cfg.dump())
    seed_everything(cfg.SEED, rank)
    if device.type == "cpu":
        limit_cpu_threads(cfg.DATA_LOADER.NUM_WORKERS)

    # Model, optimizer, schedule, checkpointer.
    model = build_detection_model(cfg).to(device)
    if cfg.SOLVER.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)  # NHWC weights; the loop converts the images
    if cfg.MODEL.WEIGHTS and not (args.resume and Checkpointer(model, output_dir).last_checkpoint()):
        initialise_weights(model, cfg.MODEL.WEIGHTS)
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.SOLVER.AMP and device.type == "cuda")
    checkpointer = Checkpointer(
        model,
        output_dir,
        optimizer,
        scheduler,
        scaler,
        config_yaml=cfg.dump(),
        max_to_keep=cfg.SOLVER.MAX_TO_KEEP,
    )
    tracker = None
    if cfg.SOLVER.BEST_METRIC:
        tracker = BestMetricTracker(
            cfg.SOLVER.BEST_METRIC, cfg.SOLVER.BEST_MODE, cfg.SOLVER.EARLY_STOP_PATIENCE
        )

    # Resume: weights, optimizer, schedule, scaler, best metric; then the data loader continues at start_iter.
    checkpoint: dict = {}
    changed: set[str] = set()
    if args.resume:
        checkpoint = checkpointer.resume()
        if checkpoint:
            changed = resume_with_config(cfg, checkpoint, optimizer, scheduler)
    elif checkpointer.last_checkpoint() is not None:
        logger.warning(
            "%s already holds a run; starting from scratch replaces its checkpoints and metrics.json "
            "(use --resume to continue it)",
            output_dir,
        )
    start_iter = int(checkpoint.get("iteration", 0))
    if tracker is not None and "best" in checkpoint:
        if changed & {"SOLVER.BEST_METRIC", "SOLVER.BEST_MODE"}:  # the saved best is of another metric
            logger.info("Resume: the best-metric record restarts (SOLVER.BEST_METRIC or BEST_MODE changed)")
        else:
            tracker.load_state_dict(checkpoint["best"])
    train_loader = build_train_loader(cfg, start_iter=start_iter, dataset=train_dataset)
    validate = build_validator(cfg, device, val_dataset)
    writers = build_writers(cfg, cfg.SOLVER.MAX_ITER, start_iter)
    if checkpoint:
        restore_rng_state(checkpoint.get("rng"))  # last, so nothing built above consumes the restored streams

    options = TrainOptions(
        max_iter=cfg.SOLVER.MAX_ITER,
        log_period=cfg.SOLVER.LOG_PERIOD,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        eval_period=cfg.SOLVER.EVAL_PERIOD,
        amp=cfg.SOLVER.AMP,
        clip_grad_norm=cfg.SOLVER.CLIP_GRAD_NORM,
        channels_last=cfg.SOLVER.CHANNELS_LAST,
        device=device,
    )
    try:
        train(
            model, optimizer, scheduler, train_loader, checkpointer, options,
            start_iter=start_iter, scaler=scaler, writers=writers, validate=validate, tracker=tracker,
        )  # fmt: skip
    finally:
        for writer in writers:
            writer.close()

    if not args.skip_test and cfg.DATASETS.TEST:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        best_file = output_dir / "model_best.pth"
        if (
            cfg.TEST.EVALUATE_BEST
            and tracker is not None
            and tracker.best is not None
            and best_file.is_file()
        ):
            dist_utils.synchronize()  # rank 0 wrote the file
            logger.info(
                "TEST.EVALUATE_BEST: evaluating %s (iteration %d, %s %.4g on the validation images), "
                "not the final weights", best_file, tracker.best_iteration, tracker.metric, tracker.best,
            )  # fmt: skip
            load_model_weights(unwrap(model), best_file, strict=True)
        dist_utils.broadcast_buffers(unwrap(model))  # the model rank 0 saved, on every process
        evaluate_on_test_datasets(cfg, unwrap(model), device, output_dir)
    return 0


def worker_message(err: Exception) -> str:
    """The message of an error as raised, also when a DataLoader worker raised it: the loader re-raises it
    in this process with its worker traceback as the message; the error's own line is the last one."""
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        return text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (NonFiniteLossError, NonFiniteWeightsError) as err:
        logger.error("%s", err)
        return EXIT_NON_FINITE
    except (ConfigError, CheckpointError, WeightsError, DatasetError) as err:
        logger.error("%s", worker_message(err))  # before setup_logger, Python's last-resort handler prints it
        return 1
    finally:
        dist_utils.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
