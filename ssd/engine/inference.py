"""Running a model over a dataset: predictions fed to an evaluator, with timing; and the validation loss.

`inference_on_dataset` is Detectron2's loop for our data contract: batches are `(images (N,3,S,S), targets,
indices (N,))`; the model gets the original image sizes so it returns boxes in original-image pixels, and the
evaluator gets `inputs = [{"index": i}, ...]` with the model's per-image dicts. Its last log lines keep
Detectron2's format, which scripts grep:

    Total inference time: 0:00:12.345678 (0.016725 s / iter per device, on 1 devices)
    Total inference pure compute time: 0:00:10 (0.014000 s / iter per device, on 1 devices)

Timing skips the first min(5, iterations - 1) batches (warm-up: cuDNN autotuning, allocator growth).
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ssd.evaluation.evaluator import DatasetEvaluator
from ssd.utils import dist as dist_utils

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 5.0


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock times measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loader_length(data_loader: Iterable) -> int | None:
    try:
        return len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        return None


@torch.no_grad()
def inference_on_dataset(
    model: nn.Module, data_loader: Iterable, evaluator: DatasetEvaluator, device: torch.device | str
) -> dict[str, dict[str, float]]:
    """Run `model` on every batch of `data_loader`, feed `evaluator`, return `evaluator.evaluate()`.

    Args:
        model: detector; `model(images (N,3,S,S), image_sizes=[(h, w), ...])` -> per-image dicts.
        data_loader: yields `(images, targets, indices)`; `data_loader.dataset.get_annotation(i)` gives the
            original height and width of dataset index i.
        evaluator: receives every image once (per process); reset here before the first batch.
        device: where the model runs.

    Returns:
        The evaluator's results on the main process ({} on the others). The model's train/eval mode is
        restored afterwards.
    """
    return _inference_loop(model, data_loader, evaluator, device, with_losses=False)[0]


@torch.no_grad()
def validate_on_dataset(
    model: nn.Module, data_loader: Iterable, evaluator: DatasetEvaluator, device: torch.device | str
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """`compute_validation_loss` and `inference_on_dataset` in one pass over the data.

    Each batch goes through the network once: `model.losses_and_detections(images, targets, image_sizes)`
    gives the loss terms and the detections from the same outputs, so a validation costs one forward per
    image instead of two (on COCO-sized validation sets the difference is most of its time).

    Returns:
        (the image-weighted mean loss terms and "loss", as `compute_validation_loss`;
         the evaluator's results, as `inference_on_dataset`).
    """
    results, loss_sums = _inference_loop(model, data_loader, evaluator, device, with_losses=True)
    return loss_sums.means(), results


def _inference_loop(
    model: nn.Module,
    data_loader: Iterable,
    evaluator: DatasetEvaluator,
    device: torch.device | str,
    with_losses: bool,
) -> tuple[dict[str, dict[str, float]], _LossSums]:
    """The loop of `inference_on_dataset`: (evaluator results, the loss sums, empty unless `with_losses`)."""
    device = torch.device(device)
    dataset = data_loader.dataset  # type: ignore[attr-defined]
    total = _loader_length(data_loader)
    num_devices = dist_utils.get_world_size()
    num_warmup = min(5, total - 1) if total else 5
    logger.info(f"Start inference on {total} batches of {len(dataset)} images")
    evaluator.reset()
    was_training = model.training
    model.eval()
    loss_sums = _LossSums(device)

    start = time.perf_counter()
    data_time = compute_time = eval_time = 0.0
    timed_images = 0
    last_log = start
    data_start = start
    iterations = 0
    try:
        for idx, (images, targets, indices) in enumerate(data_loader):
            if idx == num_warmup:  # restart the clocks once warm
                start = time.perf_counter()
                data_time = compute_time = eval_time = 0.0
                timed_images = 0
            batch_indices = [int(i) for i in indices]
            image_sizes = []
            for i in batch_indices:
                ann = dataset.get_annotation(i)
                image_sizes.append((int(ann["height"]), int(ann["width"])))
            data_time += time.perf_counter() - data_start

            compute_start = time.perf_counter()
            images = images.to(device, non_blocking=True)
            if with_losses:
                loss_dict, outputs = model.losses_and_detections(
                    images, _to_device(targets, device), image_sizes=image_sizes
                )
                loss_sums.add(loss_dict, images.shape[0])
            else:
                outputs = model(images, image_sizes=image_sizes)
            _synchronize(device)
            compute_time += time.perf_counter() - compute_start

            eval_start = time.perf_counter()
            evaluator.process([{"index": i} for i in batch_indices], outputs)
            eval_time += time.perf_counter() - eval_start
            timed_images += len(batch_indices)
            iterations = idx + 1

            now = time.perf_counter()
            if now - last_log > LOG_EVERY_SECONDS and total:
                done = max(1, iterations - num_warmup) if iterations > num_warmup else iterations
                per_iter = (now - start) / done
                eta = datetime.timedelta(seconds=int(per_iter * (total - iterations)))
                logger.info(
                    f"Inference done {iterations}/{total}. Dataloading: {data_time / done:.4f} s/iter. "
                    f"Inference: {compute_time / done:.4f} s/iter. Eval: {eval_time / done:.4f} s/iter. "
                    f"Total: {per_iter:.4f} s/iter. ETA={eta}"
                )
                last_log = now
            data_start = time.perf_counter()
    finally:
        model.train(was_training)

    total_time = time.perf_counter() - start
    timed_iters = max(1, iterations - num_warmup) if iterations > num_warmup else max(1, iterations)
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=total_time)} "
        f"({total_time / timed_iters:.6f} s / iter per device, on {num_devices} devices)"
    )
    logger.info(
        f"Total inference pure compute time: {datetime.timedelta(seconds=int(compute_time))} "
        f"({compute_time / timed_iters:.6f} s / iter per device, on {num_devices} devices)"
    )
    if timed_images and compute_time > 0:
        logger.info(
            f"Inference speed (model forward only): {compute_time / timed_images:.6f} s / image, "
            f"{timed_images / compute_time:.1f} FPS per device"
        )
    return evaluator.evaluate(), loss_sums


def _to_device(
    targets: list[Mapping[str, torch.Tensor]], device: torch.device
) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


class _LossSums:
    """Image-weighted sums of the loss terms over batches; `means()` adds them over processes first."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.num_images = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss_dict: Mapping[str, torch.Tensor], n: int) -> None:
        """One batch of `n` images whose losses are means over its images."""
        for name, value in loss_dict.items():
            zero = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[name] = self.sums.get(name, zero) + value.double() * n
        self.num_images += n

    def means(self) -> dict[str, float]:
        """{term: mean over all images, "loss": their sum}; zeros for no images (a guarded division)."""
        sums, num_images = self.sums, self.num_images
        if dist_utils.is_dist():
            names = sorted(sums)
            packed = torch.stack([sums[k] for k in names] + [num_images])  # (terms + 1,)
            torch.distributed.all_reduce(packed)
            sums, num_images = dict(zip(names, packed[:-1], strict=True)), packed[-1]
        count = max(1.0, float(num_images))
        means = {name: float(total) / count for name, total in sums.items()}
        means["loss"] = sum(means.values())
        return means


@torch.no_grad()
def compute_validation_loss(
    model: nn.Module, data_loader: Iterable, device: torch.device | str
) -> dict[str, float]:
    """Mean of each loss term over all images of `data_loader`, with the model in eval mode.

    Eval mode keeps BatchNorm statistics frozen, so validation does not change the model. Each batch's loss
    (a mean over its images) is weighted by its number of images. In distributed runs the sums are added over
    processes, so every process returns the same numbers.

    Returns:
        {"reg_loss": ..., "cls_loss": ..., "loss": their sum} (whatever terms the model's loss dict has).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = _LossSums(device)
    try:
        for images, targets, _indices in data_loader:
            sums.add(
                model(images.to(device, non_blocking=True), _to_device(targets, device)), images.shape[0]
            )
    finally:
        model.train(was_training)
    return sums.means()


def evaluate_on_test_datasets(
    cfg, model: nn.Module, device: torch.device | str, output_dir: str | Path
) -> dict:
    """Evaluate `model` on every dataset of DATASETS.TEST with the evaluators of TEST.EVALUATORS.

    Writes, per dataset, under output_dir/inference/<dataset>/: results.json, coco_instances_results.json and
    the error analysis (analysis.json, confusion_matrix.png, pr_curves.png), and the HTML report (report.html,
    errors.json; `ssd.evaluation.report`, when "coco" is evaluated); logs the tables and Detectron2's
    `copypaste:` lines.

    Returns:
        {dataset name: {task: {metric: value}}} on the main process ({} per dataset elsewhere).
    """
    from ssd.data.build import build_dataset, build_test_loader, check_num_classes  # the engine needs no data
    from ssd.evaluation import build_evaluator, copypaste_lines

    all_results = {}
    for name in cfg.DATASETS.TEST:
        folder = Path(output_dir) / "inference" / name
        if dist_utils.is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
        dataset = build_dataset(cfg, [name], is_train=False)
        check_num_classes(cfg.MODEL.NUM_CLASSES, dataset.class_names, name)
        loader = build_test_loader(cfg, dataset)
        evaluator = build_evaluator(cfg, dataset, folder, dataset_name=name)
        logger.info(f"Evaluating {name} ({len(dataset)} images) with {', '.join(cfg.TEST.EVALUATORS)}")
        results = inference_on_dataset(model, loader, evaluator, device)
        all_results[name] = results
        if results:
            for line in copypaste_lines(results):
                logger.info(line)
            with open(folder / "results.json", "w") as f:
                json.dump(results, f, indent=2, allow_nan=True)  # NaN written as NaN (Python's json reads it)
            logger.info(f"Results written to {folder}")
            if "coco" in cfg.TEST.EVALUATORS:  # the report reads the detections the COCO evaluator saved
                from ssd.evaluation import ErrorAnalysisEvaluator
                from ssd.evaluation.report import write_report

                # The detections and the error analysis this run just made, rather than read back and redone.
                shared = next(
                    (e.last_run for e in evaluator.evaluators if isinstance(e, ErrorAnalysisEvaluator)), None
                )
                write_report(
                    folder, dataset, name, cfg.TEST.ANALYSIS_SCORE_THRESHOLD, results, **(shared or {})
                )
            else:
                logger.info(
                    'No report.html: it needs "coco" in TEST.EVALUATORS (for coco_instances_results.json)'
                )
    return all_results
