"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3 on Inception features, averaged over random subsets."""
import numpy as np

from . import features
from .fid import INCEPTION_FEATURES


def kernel_inception_distance(real, fake, num_subsets=100, max_subset_size=1000, seed=0):
    """Mean over subsets of the unbiased MMD^2 estimate (Binkowski et al. 2018, Eq. 4)."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    dim = real.shape[1]
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise ValueError(f'KID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}')
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        # Off-diagonal means of k_xx and k_yy (the diagonal would bias the estimate), minus twice k_xy's mean.
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        total += within - 2 * k_xy.mean()
    return float(total / num_subsets)


def compute_kid(opts, max_real, num_gen, num_subsets=100, max_subset_size=1000):
    real = features.real_features(opts, 'inception', INCEPTION_FEATURES, max_items=max_real)
    fake = features.generated_features(opts, 'inception', INCEPTION_FEATURES, num_gen)
    if opts.rank != 0:
        return float('nan')
    return kernel_inception_distance(real, fake, num_subsets, max_subset_size, seed=opts.seed)
