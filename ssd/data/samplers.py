"""Samplers: which dataset indices go into which batch, for training (endless, resumable) and testing.

Training order. The sampler sees the data as one endless stream: epoch e is the permutation of all indices
drawn from a generator seeded with (seed, e), and the epochs follow each other. Global iteration t takes the
stream positions [t * B * W, (t + 1) * B * W) (B images per process, W processes); process r takes its own
B of them. Nothing depends on the past, so a run resumed at iteration k (start_iter=k) yields exactly the
batches k, k+1, ... of an uninterrupted run (lufficc/SSD restarts with a fresh permutation instead).
Batches are always full: a batch that crosses the end of an epoch takes the rest from the next one.

Each element is `(index, position)`: the stream position is unique per sample, and the loader seeds the
sample's augmentation with (seed, position, index), so a sample is the same whichever worker loads it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) when torch.distributed is initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class IterationBatchSampler(Sampler):
    """Yields `max_iter - start_iter` batches, each a list of `batch_size` `(index, position)` pairs.

    Args:
        dataset_size: number of images; must be > 0.
        batch_size: images per batch of this process.
        seed: seed of the data order.
        max_iter: total iterations of the run.
        start_iter: first iteration to yield (resume).
        rank, world_size: this process and the number of processes (1 without distributed training).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        max_iter: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("the training dataset is empty")
        if batch_size <= 0 or not 0 <= start_iter <= max_iter or not 0 <= rank < world_size:
            raise ValueError(
                f"invalid sampler arguments: batch_size={batch_size}, start_iter={start_iter}, "
                f"max_iter={max_iter}, rank={rank}, world_size={world_size}"
            )
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.max_iter, self.start_iter = max_iter, start_iter
        self.rank, self.world_size = rank, world_size
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size),
            )
        return self._epoch_cache[1]

    def batch_at(self, iteration: int) -> list[tuple[int, int]]:
        """The batch of this process at global iteration `iteration`: [(index, position)] * batch_size."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        batch = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.dataset_size)
            batch.append((int(self._permutation(epoch)[offset]), position))
        return batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start_iter, self.max_iter):
            yield self.batch_at(iteration)

    def __len__(self) -> int:
        return self.max_iter - self.start_iter


class ShardedSequentialSampler(Sampler):
    """Indices rank, rank + W, rank + 2W, ... in order: every image exactly once over all processes.

    Unlike torch's DistributedSampler it never pads with repeated images, which would count twice in an
    evaluation; processes may get one image more or less than each other.
    """

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.dataset_size, self.rank, self.world_size = dataset_size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_size, self.world_size))
