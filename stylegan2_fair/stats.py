"""Statistics reported by name from anywhere, collected once per tick.

Code that computes a number calls `report('Loss/G/loss', value)` and does not care where it
ends up; the training loop calls `collect()` once per tick and writes the result to
stats.jsonl and TensorBoard. With several processes, `collect(reduce_fn=...)` merges the
per-rank moments so every rank sees the same figures.
"""
import collections
import math

import numpy as np
import torch

_moments = collections.defaultdict(lambda: np.zeros(3, dtype=np.float64))  # name -> [num, sum, sum of squares]


def report(name, value):
    """Record one value or a batch of values under `name`; returns `value` unchanged."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten().to(torch.float64).cpu().numpy()
    else:
        flat = np.asarray(value, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size:
        _moments[name] += [flat.size, flat.sum(), np.square(flat).sum()]
    return value


def report0(name, value, rank=0):
    """Like `report`, but only rank 0's value counts (for figures every rank computes alike)."""
    return report(name, value) if rank == 0 else value


def collect(reduce_fn=None):
    """Return {name: {num, mean, std}} for everything reported since the last call, and reset.

    `reduce_fn(dict name -> ndarray[3]) -> dict` merges moments across processes when given.
    """
    moments = {name: m.copy() for name, m in _moments.items()}
    _moments.clear()
    if reduce_fn is not None:
        moments = reduce_fn(moments)
    stats = {}
    for name in sorted(moments):
        num, total, total_sq = moments[name]
        if num <= 0:
            continue
        mean = total / num
        var = max(total_sq / num - mean * mean, 0.0)
        stats[name] = dict(num=float(num), mean=float(mean), std=float(math.sqrt(var)))
    return stats


def format_time(seconds):
    """'1h 02m 03s'-style durations for status lines and metric records."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'
