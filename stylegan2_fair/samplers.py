"""Infinite, resumable, rank-aware samplers of dataset indices.

Every sampler here defines ONE global stream of indices that depends only on its seed (never on
the number of processes); rank r of W takes stream positions r, r+W, r+2W, ... So a run on W
processes draws the same multiset of images as a run on one, and a resumed run continues from a
stream position instead of starting over (the official code restarts its shuffle on resume).
"""
import numpy as np
import torch


class StreamSampler(torch.utils.data.Sampler):
    """Base: subclasses implement `_block(block_idx) -> int64 array` (one deterministic block)."""

    def __init__(self, num_items, rank=0, num_replicas=1, seed=0, start=0):
        if num_items <= 0:
            raise ValueError('cannot sample from an empty dataset')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} is outside 0..{num_replicas - 1}')
        self.num_items = num_items
        self.rank = rank
        self.num_replicas = num_replicas
        self.seed = seed
        self.start = start

    def block_size(self):
        return self.num_items

    def _block(self, block_idx):
        raise NotImplementedError

    def global_indices(self, position, count):
        """Indices at global stream positions [position, position + count)."""
        out = []
        size = self.block_size()
        while count > 0:
            block, offset = divmod(position, size)
            take = min(count, size - offset)
            out.append(self._block(block)[offset:offset + take])
            position += take
            count -= take
        return np.concatenate(out) if out else np.zeros([0], dtype=np.int64)

    def __iter__(self):
        position = self.start + self.rank
        chunk = self.block_size() * self.num_replicas
        while True:
            indices = self.global_indices(position, chunk)[::self.num_replicas]
            yield from (int(i) for i in indices)
            position += chunk


class InfiniteSampler(StreamSampler):
    """Uniform: a fresh seeded permutation of the dataset per epoch (or in order if not shuffled)."""

    def __init__(self, num_items, rank=0, num_replicas=1, seed=0, start=0, shuffle=True):
        super().__init__(num_items, rank, num_replicas, seed, start)
        self.shuffle = shuffle

    def _block(self, block_idx):
        if not self.shuffle:
            return np.arange(self.num_items, dtype=np.int64)
        return np.random.default_rng([self.seed, block_idx]).permutation(self.num_items).astype(np.int64)


class WeightedInfiniteSampler(StreamSampler):
    """Draws with replacement, P(i) proportional to weights[i]; the same stream on every rank."""

    def __init__(self, weights, rank=0, num_replicas=1, seed=0, start=0):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError('sampling weights must be a 1-D array of finite, non-negative numbers with a positive sum')
        super().__init__(len(weights), rank, num_replicas, seed, start)
        self.probs = weights / weights.sum()
        self._cdf = np.cumsum(self.probs)
        self._cdf[-1] = 1.0

    def _block(self, block_idx):
        u = np.random.default_rng([self.seed, 1, block_idx]).random(self.num_items)
        return np.searchsorted(self._cdf, u, side='right').astype(np.int64)
