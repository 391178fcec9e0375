"""The evaluator interface (Detectron2's `DatasetEvaluator`) and the pieces every evaluator shares.

An evaluator sees the dataset once per image, in any order and possibly split across processes:

    evaluator.reset()
    for batch in loader:
        outputs = model(images, image_sizes=...)
        evaluator.process([{"index": i} for i in batch_indices], outputs)
    results = evaluator.evaluate()   # {"bbox": {"AP": ...}} on the main process, {} on the others

`inputs[i]["index"]` is the dataset index; `outputs[i]` is the model's per-image dict (docs/contracts.md):
`boxes` (K, 4) xyxy pixels of the original image, `labels` (K,) 1..C-1, `scores` (K,).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ssd.utils import dist as dist_utils

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class: accumulate predictions in `process`, compute metrics in `evaluate`."""

    def reset(self) -> None:
        """Forget everything processed so far (called before each evaluation run)."""

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        """Record one batch: `inputs[i] = {"index": int}`, `outputs[i]` = the model's dict for that image."""

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Metrics `{task: {name: value}}` on the main process; `{}` on the other processes."""
        return {}


class NumpyPredictionsEvaluator(DatasetEvaluator):
    """An evaluator that keeps every image's prediction as NumPy arrays, by dataset index, until `evaluate`.

    `self._predictions[index]` = `prediction_to_numpy(output)`; the VOC metric and the error analysis use it.
    """

    def reset(self) -> None:
        self._predictions: dict[int, dict[str, np.ndarray]] = {}

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            self._predictions[int(inp["index"])] = prediction_to_numpy(out)


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run as one; their result dicts are merged (a task name may appear only once)."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]):
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        for evaluator in self.evaluators:
            for task, metrics in evaluator.evaluate().items():
                if task in results:
                    raise KeyError(f"two evaluators both report the task {task!r}")
                results[task] = metrics
        return results


def prediction_to_numpy(output: Mapping) -> dict[str, np.ndarray]:
    """The model's per-image dict -> NumPy arrays on the CPU.

    Returns:
        {"boxes_xyxy": (K, 4) float64 pixels, "labels": (K,) int64, "scores": (K,) float64}.
    """

    def as_numpy(x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    boxes = as_numpy(output["boxes"]).astype(np.float64).reshape(-1, 4)  # (K, 4)
    labels = as_numpy(output["labels"]).astype(np.int64).reshape(-1)  # (K,)
    scores = as_numpy(output["scores"]).astype(np.float64).reshape(-1)  # (K,)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"prediction has {len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores; "
            "they must have the same length"
        )
    return {"boxes_xyxy": boxes, "labels": labels, "scores": scores}


def gather_predictions(predictions: dict[int, dict]) -> dict[int, dict] | None:
    """Merge the `{dataset index: prediction}` dicts of every process onto the main process.

    Returns the merged dict on the main process and None elsewhere. A distributed sampler may hand an
    image to two processes (it pads the last round); keying by index keeps one copy.
    """
    gathered = dist_utils.all_gather_object(predictions)  # [predictions] in a single process
    if not dist_utils.is_main_process():
        return None
    merged: dict[int, dict] = {}
    for part in gathered:
        merged.update(part)
    return merged


def load_ground_truth(dataset, index: int) -> dict:
    """`dataset.get_annotation(index)` with the array types checked (the edge where bad data is caught)."""
    ann = dataset.get_annotation(index)
    boxes = np.asarray(ann["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)  # (G, 4)
    labels = np.asarray(ann["labels"], dtype=np.int64).reshape(-1)  # (G,)
    difficult = np.asarray(ann.get("difficult", np.zeros(len(labels), bool)), dtype=bool).reshape(-1)  # (G,)
    if not len(boxes) == len(labels) == len(difficult):
        raise ValueError(
            f"annotation of index {index} ({ann.get('file_name')}): {len(boxes)} boxes, {len(labels)} labels, "
            f"{len(difficult)} difficult flags"
        )
    return {**ann, "boxes_xyxy": boxes, "labels": labels, "difficult": difficult}


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (reference counting still frees memory).

    A COCO-sized evaluation makes 500,000 result dicts (5,000 images x 100 detections). While they are being
    made, the collector runs again and again and each full run walks every dict made so far, although none of
    them is part of a reference cycle: on the scale benchmark (benchmarks/scale.py) making them took about 3x
    as long with it running.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
