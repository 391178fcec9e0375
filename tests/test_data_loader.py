"""Loaders: batch layout, determinism across worker counts, exact resume, sharding, concatenation."""

from __future__ import annotations

import pytest
import torch

from ssd.config import get_cfg
from ssd.data import build_dataset, build_test_loader, build_train_loader, collate_batch
from ssd.data.samplers import IterationBatchSampler, ShardedSequentialSampler


def _cfg(workers: int = 0, seed: int = 0, max_iter: int = 6):
    cfg = get_cfg()
    cfg.DATASETS.REGISTER = ("syn_loader_a:synthetic:10:4:64", "syn_loader_b:synthetic:7:5:64")
    cfg.DATASETS.TRAIN = ("syn_loader_a", "syn_loader_b")
    cfg.INPUT.IMAGE_SIZE = 48
    cfg.SOLVER.BATCH_SIZE = 4
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.DATA_LOADER.NUM_WORKERS = workers
    cfg.SEED = seed
    return cfg


def _run(loader) -> list:
    return list(loader)


def _assert_same(batches_a, batches_b) -> None:
    assert len(batches_a) == len(batches_b)
    for (images_a, targets_a, idx_a), (images_b, targets_b, idx_b) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(idx_a, idx_b) and torch.equal(images_a, images_b)
        for ta, tb in zip(targets_a, targets_b, strict=True):
            assert torch.equal(ta["boxes_norm"], tb["boxes_norm"]) and torch.equal(ta["labels"], tb["labels"])


def test_train_loader_batches_determinism_and_resume():
    loader = build_train_loader(_cfg(workers=0))
    assert loader.dataset.class_names == ("__background__", "circle", "square", "triangle")
    reference = _run(loader)
    images, targets, indices = reference[0]
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32
    assert indices.dtype == torch.int64 and len(targets) == 4
    assert all(t["boxes_norm"].shape == (len(t["labels"]), 4) for t in targets)
    # 6 batches of 4 = 24 samples over 17 images: every image is seen once before any is seen twice.
    order = torch.cat([b[2] for b in reference]).tolist()
    assert sorted(order[:17]) == list(range(17))

    _assert_same(reference, _run(build_train_loader(_cfg(workers=2))))  # same batches with 2 workers
    _assert_same(reference[4:], _run(build_train_loader(_cfg(workers=0), start_iter=4)))  # exact resume
    other = _run(build_train_loader(_cfg(workers=0, seed=1)))
    assert not torch.equal(torch.cat([b[2] for b in other]), torch.cat([b[2] for b in reference]))
    # The same image at two stream positions gets different augmentations (the seed includes the position).
    images_flat = torch.cat([b[0] for b in reference])
    repeated = order[17]
    assert not torch.equal(images_flat[17], images_flat[order.index(repeated)])
    assert len(build_train_loader(_cfg(), start_iter=2)) == 4


def test_iteration_sampler_shards_and_crosses_epochs():
    full = IterationBatchSampler(5, 2, seed=3, max_iter=6)
    stream = [index for batch in full for index, _ in batch]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    positions = [position for batch in full for _, position in batch]
    assert positions == list(range(12))
    # Two processes of batch 1 see, between them, the same stream as one process of batch 2.
    shards = [IterationBatchSampler(5, 1, seed=3, max_iter=6, rank=r, world_size=2) for r in (0, 1)]
    interleaved = [index for batches in zip(*shards, strict=True) for batch in batches for index, _ in batch]
    assert interleaved == stream
    with pytest.raises(ValueError, match="empty"):
        IterationBatchSampler(0, 2, seed=0, max_iter=1)


def test_test_loader_sequential_sharding_and_zero_box_collate():
    cfg = _cfg()
    cfg.DATASETS.TEST = ("syn_loader_b",)
    loader = build_test_loader(cfg, "syn_loader_b", batch_size=3)
    indices = torch.cat([batch[2] for batch in loader]).tolist()
    assert indices == list(range(7)) and len(loader) == 3
    assert list(ShardedSequentialSampler(7, rank=1, world_size=3)) == [1, 4]
    sample = (
        torch.zeros(3, 8, 8),
        {"boxes_norm": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        5,
    )
    images, targets, idx = collate_batch([sample, sample])
    assert (
        images.shape == (2, 3, 8, 8) and targets[1]["boxes_norm"].shape == (0, 4) and idx.tolist() == [5, 5]
    )


def test_concatenation_keeps_class_names_and_refuses_different_classes(bccd_root):
    cfg = _cfg()
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    assert len(dataset) == 17 and dataset.class_names[1:] == ("circle", "square", "triangle")
    assert dataset.get_annotation(12)["image_id"] == 2  # second dataset, local index 2
    cfg.DATASETS.REGISTER = (f"bccd_loader_test:voc:{bccd_root}:test",)
    cfg.DATASETS.CLASS_NAMES = ("RBC", "WBC", "Platelets")
    with pytest.raises(ValueError, match="different classes"):
        build_dataset(cfg, ("syn_loader_a", "bccd_loader_test"), is_train=True)


def test_workers_start_after_the_main_process_used_opencv(tmp_path):
    """A worker forked after a parallel OpenCV call in the main process must not hang (OpenCV's thread pool is
    not fork-safe; ssd.data.build keeps OpenCV single-threaded). Run in a fresh interpreter without
    OMP_NUM_THREADS, as CI and users run it, with a time limit."""
    import os
    import subprocess
    import sys

    script = (
        "import cv2, numpy as np\n"
        "from ssd.config import load_config\n"
        "from ssd.data.build import build_train_loader\n"
        "cv2.resize(np.zeros((3000, 3000, 3), np.uint8), (1500, 1500))\n"  # a parallel call, if allowed
        "cfg = load_config(opts=['DATASETS.REGISTER', \"('fork_t:synthetic:8:1:96',)\", 'DATASETS.TRAIN',\n"
        "    \"('fork_t',)\", 'INPUT.IMAGE_SIZE', '96', 'SOLVER.BATCH_SIZE', '4', 'SOLVER.MAX_ITER', '4',\n"
        "    'DATA_LOADER.NUM_WORKERS', '2', 'DATASETS.VAL_FRACTION', '0.0'])\n"
        "for images, targets, indices in build_train_loader(cfg):\n"
        "    cv2.resize(np.zeros((3000, 3000, 3), np.uint8), (1500, 1500))\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=40, env=env, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
