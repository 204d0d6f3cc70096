"""Improved precision and recall (Kynkaanniemi et al. 2019): k-NN manifolds in VGG16 feature space.

A manifold is a set of feature vectors, each with a ball whose radius is the distance to its k-th
nearest neighbour in the set; a probe is covered when it lies in at least one ball. Precision is the
share of generated images covered by the real manifold, recall the share of real images covered by
the generated manifold.
"""
import torch

from . import features

VGG16_FEATURES = dict(return_features=True)


def _pairwise(a, b):
    return torch.cdist(a.double(), b.double()).float()


def knn_radii(opts, manifold, k, col_batch=10000):
    """Distance from each manifold point to its k-th nearest other point (rows split across ranks)."""
    manifold = torch.as_tensor(manifold, device=opts.device)

    def compute(items):
        rows = manifold[torch.as_tensor(items, device=opts.device)]
        dists = torch.cat([_pairwise(rows, cols) for cols in manifold.split(col_batch)], dim=1)
        return dists.kthvalue(k + 1, dim=1).values   # +1: the point itself is at distance 0
    return features.run_in_chunks(opts, len(manifold), compute, desc='k-NN radii', batch_size=1000)


def covered(opts, manifold, radii, probes, col_batch=10000):
    """bool [len(probes)]: whether each probe lies within some manifold ball."""
    manifold = torch.as_tensor(manifold, device=opts.device)
    radii = torch.as_tensor(radii, device=opts.device)
    probes = torch.as_tensor(probes, device=opts.device)

    def compute(items):
        rows = probes[torch.as_tensor(items, device=opts.device)]
        inside = torch.zeros(len(rows), dtype=torch.bool, device=opts.device)
        for cols, col_radii in zip(manifold.split(col_batch), radii.split(col_batch)):
            inside |= (_pairwise(rows, cols) <= col_radii[None, :]).any(dim=1)
        return inside
    return features.run_in_chunks(opts, len(probes), compute, desc='manifold tests', batch_size=1000).numpy()


def manifold_coverage(opts, manifold, probes, nhood_size=3):
    """Share of `probes` inside the k-NN manifold of `manifold` (per-probe bools also returned)."""
    if len(manifold) <= nhood_size:
        raise ValueError(f'a k-NN manifold with k={nhood_size} needs more than {nhood_size} points, got '
                         f'{len(manifold)}; use more samples.')
    radii = knn_radii(opts, manifold, nhood_size)
    inside = covered(opts, manifold, radii, probes)
    return float(inside.mean()), inside


def precision_recall(opts, real, fake, nhood_size=3):
    precision, _ = manifold_coverage(opts, real, fake, nhood_size)
    recall, _ = manifold_coverage(opts, fake, real, nhood_size)
    return precision, recall


def compute_pr(opts, max_real, num_gen, nhood_size=3):
    real = features.real_features(opts, 'vgg16', VGG16_FEATURES, max_items=max_real)
    fake = features.generated_features(opts, 'vgg16', VGG16_FEATURES, num_gen)
    return precision_recall(opts, real, fake, nhood_size)

