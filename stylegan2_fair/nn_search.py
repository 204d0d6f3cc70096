"""Exact nearest-neighbour search by chunked matrix products (IMLE's matching step, Inclusive GAN Eq. 7).

The squared distance is expanded as |q|^2 - 2 q.p + |p|^2, so one block of queries against one
block of the pool is a single matrix product on the device. Only a `chunk` x `pool_chunk` block of
distances exists at any time, never the full N x m matrix: N = 30k queries against m = 300k
256-dimensional candidates needs the features (30k + 300k) x 256 x 4 B = 338 MB plus one
4096 x 65536 x 4 B = 1 GiB block and a centred copy of one pool block (65536 x 256 x 4 B = 64 MB)
by default (lower `pool_chunk` on a small GPU).

The expansion loses precision when distances are tiny next to the norms: both sides are centred
on the pool's mean first (distances do not change), and the winners' distances are recomputed
directly as |q - p|^2 before they are returned.

The search is exact only in full float32: `--allow-tf32` (the training loop's
torch.backends.cuda.matmul.allow_tf32) makes CUDA matmuls round their inputs to TF32's 10-bit
mantissa, enough to pick a wrong neighbour among close candidates, so TF32 is off inside the search.
"""
import contextlib

import torch


@contextlib.contextmanager
def full_precision_matmul():
    """TF32 off for CUDA matmuls inside the block, the caller's setting back afterwards (also on errors)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def nearest_neighbors(queries, pool, chunk=4096, pool_chunk=65536, query_groups=None, pool_groups=None):
    """Index and squared Euclidean distance of each query's nearest row of `pool`.

    queries [N, k], pool [m, k] (float; the work runs on pool's device). With `query_groups` [N]
    and `pool_groups` [m] (int), a query only considers pool rows of its own group (conditional
    models match a real image only to candidates rendered with its label); a query whose group
    has no candidate gets index -1 and distance inf.
    Returns (indices int64 [N], distances float32 [N]), both on pool's device.
    """
    if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(f'queries {list(queries.shape)} and pool {list(pool.shape)} must be [N, k] and [m, k] '
                         f'with the same feature size k')
    if pool.shape[0] == 0:
        raise ValueError('the pool is empty: nothing to match against')
    if (query_groups is None) != (pool_groups is None):
        raise ValueError('give both query_groups and pool_groups, or neither')
    with full_precision_matmul():
        return _search(queries, pool, chunk, pool_chunk, query_groups, pool_groups)


def _search(queries, pool, chunk, pool_chunk, query_groups, pool_groups):
    """nearest_neighbors' work, on checked inputs."""
    device = pool.device
    pool = pool.float()
    centre = pool.mean(0)
    pool_sq = torch.cat([(p - centre).square().sum(1) for p in pool.split(pool_chunk)])
    if pool_groups is not None:
        pool_groups = pool_groups.to(device)
    n = queries.shape[0]
    best_idx = torch.full([n], -1, dtype=torch.int64, device=device)
    best_dist = torch.full([n], float('inf'), dtype=torch.float32, device=device)
    for q0 in range(0, n, chunk):
        q = queries[q0:q0 + chunk].to(device).float()
        q_centred = q - centre
        q_sq = q_centred.square().sum(1, keepdim=True)
        q_groups = None if query_groups is None else query_groups[q0:q0 + chunk].to(device)
        run_dist = torch.full([q.shape[0]], float('inf'), device=device)
        run_idx = torch.full([q.shape[0]], -1, dtype=torch.int64, device=device)
        for p0 in range(0, pool.shape[0], pool_chunk):
            p = pool[p0:p0 + pool_chunk] - centre
            # In place on the norms' sum: one block-sized buffer, not two (2 GiB at the default chunks).
            dist = (q_sq + pool_sq[None, p0:p0 + p.shape[0]]).addmm_(q_centred, p.T, alpha=-2)
            if q_groups is not None:
                dist.masked_fill_(q_groups[:, None] != pool_groups[None, p0:p0 + p.shape[0]], float('inf'))
            block_dist, block_idx = dist.min(1)
            better = block_dist < run_dist
            run_dist = torch.where(better, block_dist, run_dist)
            run_idx = torch.where(better, block_idx + p0, run_idx)
            del dist
        found = run_idx >= 0
        exact = (q[found] - pool[run_idx[found]]).square().sum(1)
        best_idx[q0:q0 + q.shape[0]] = run_idx
        best_dist[q0:q0 + q.shape[0]][found] = exact
    return best_idx, best_dist
