"""Frechet Inception Distance (Heusel et al. 2017): Gaussians fitted to Inception pool3 features."""
import numpy as np

from . import features

INCEPTION_FEATURES = dict(return_features=True)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))  (Heusel et al. 2017, Eq. 6).

    Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which are those of
    the symmetric PSD matrix S1^(1/2) S2 S1^(1/2): two symmetric eigendecompositions give it exactly,
    ~50x faster than scipy.linalg.sqrtm of the 2048x2048 product (minutes on a small CPU).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    evals, evecs = np.linalg.eigh(sigma1)
    root1 = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_root = np.sqrt(np.clip(inner, 0, None)).sum()   # round-off can leave tiny negative eigenvalues
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def fid_from_features(real, fake):
    """FID of two feature sets [N, D]. With fewer samples than dimensions the covariances have rank
    < N, and Tr((S1 S2)^(1/2)) is the nuclear norm of A B^T / sqrt((n1-1)(n2-1)) for the centred
    feature matrices A, B (the nonzero eigenvalues of S1 S2 = A^T A B^T B / .. are the squared
    singular values of A B^T / ..): exact, and cheap for small test sets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) >= real.shape[1]:
        return frechet_distance(*features.mean_cov(fake), *features.mean_cov(real))
    a, b = real - real.mean(0), fake - fake.mean(0)
    norm = np.sqrt((len(a) - 1) * (len(b) - 1))
    trace_root = np.linalg.svd(a @ b.T / norm, compute_uv=False).sum()
    traces = np.square(a).sum() / (len(a) - 1) + np.square(b).sum() / (len(b) - 1)
    return float(np.square(real.mean(0) - fake.mean(0)).sum() + traces - 2 * trace_root)


def compute_fid(opts, max_real, num_gen):
    """FID between the first `max_real` reals (all when None) and `num_gen` generated images."""
    real = features.real_features(opts, 'inception', INCEPTION_FEATURES, max_items=max_real)
    fake = features.generated_features(opts, 'inception', INCEPTION_FEATURES, num_gen)
    if opts.rank != 0:
        return float('nan')
    return fid_from_features(real, fake)
