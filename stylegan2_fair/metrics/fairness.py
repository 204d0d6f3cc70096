"""Fairness discrepancy of a generator (arXiv 2308.08638 Eq. 9, after Choi et al. 2020):

    f = || 1/|D| - E_z[p(d | G(z))] ||_2

over ALL |D| classes of an auxiliary classifier, estimated on `num_sets` independent sets of
`set_size` generated images and reported as mean +- std over the sets (the paper: 5 x 10,000).
E_z[p(d|z)] is the share of images classified as d (argmax, as the paper's indicator zeta_d, Eq. 1);
the same figure from the mean probabilities (soft) is reported beside it. Two bugs of the authors'
script are avoided: classes that received no image count with share 0 (they are not dropped from
the sum), and the images of every process are gathered before counting.
The std is the population std over the sets (numpy's default, ddof=0).
"""
import math
import os

import numpy as np
import torch

from .. import distributed
from . import register_metric


def fairness_discrepancy(shares):
    """|| 1/|D| - shares ||_2 for a class distribution [|D|] (every class included)."""
    shares = np.asarray(shares, dtype=np.float64)
    return float(np.linalg.norm(1.0 / shares.size - shares))


def _latent_generator(seed, rank):
    # A stream per (seed, rank): processes draw different latents, and a rerun draws the same.
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def uniform_labels(c_dim, generator):
    """label_fn for a conditional G: n -> uniformly drawn one-hot labels [n, c_dim]."""
    def labels(n):
        c = torch.zeros([n, c_dim])
        if c_dim:
            c[torch.arange(n), torch.randint(c_dim, [n], generator=generator)] = 1
        return c
    return labels


@torch.no_grad()
def fairness_metric(G, classifier, num_sets=5, set_size=10000, batch=64, truncation_psi=1, device=None,
                    sampler=None, seed=0, label_fn=None, noise_mode='const', rank=None, world_size=None,
                    plot_path=None):
    """Fairness of G's class distribution under `classifier` (a Classifier or a spec such as 'labels:clf.pt').

    sampler: optional callable n -> images [n, C, H, W] in [-1, 1] on `device`, used instead of
        G(z, c) (e.g. a fair sampling scheme); G may then be None.
    label_fn: for conditional G, callable n -> labels [n, c_dim] (default: uniform one-hot classes).
    Each process draws ceil(set_size / world_size) images per set; every rank must call this.
    Returns dict(fairness_mean, fairness_std, fairness_per_set, fairness_soft_mean, fairness_soft_std,
    histogram (images per class over all sets), class_shares, class_shares_soft, class_names,
    num_sets, set_size, plot_path).
    """
    from ..classifiers import create_classifier
    if num_sets < 1 or set_size < 1:
        raise ValueError(f'num_sets={num_sets} and set_size={set_size} must both be >= 1')
    if G is None and sampler is None:
        raise ValueError('fairness_metric needs a generator G or a sampler')
    if device is None:
        params = list(G.parameters()) if G is not None else []
        device = params[0].device if params else 'cpu'
    device = torch.device(device)
    rank = distributed.rank() if rank is None else rank
    world_size = distributed.world_size() if world_size is None else world_size
    classifier = create_classifier(classifier, device=device,
                                   img_resolution=getattr(G, 'img_resolution', None))
    num_classes = classifier.num_classes
    generator = _latent_generator(seed, rank)
    if sampler is None and label_fn is None:
        label_fn = uniform_labels(getattr(G, 'c_dim', 0), generator)

    def sample(n):
        if sampler is not None:
            return sampler(n)
        z = torch.randn([n, G.z_dim], generator=generator).to(device)
        c = label_fn(n).to(device)
        return G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode)

    per_rank = math.ceil(set_size / world_size)
    hard_shares, soft_shares = [], []
    for _ in range(num_sets):
        probs = []
        for start in range(0, per_rank, batch):
            images = sample(min(batch, per_rank - start)).to(device).to(torch.float32)
            probs.append(classifier(images).to(torch.float32))
        probs = torch.cat(probs)
        probs = (distributed.all_gather_cat(probs) if world_size > 1 else probs)[:set_size].cpu().double()
        hard_shares.append(torch.bincount(probs.argmax(1), minlength=num_classes).numpy() / len(probs))
        soft_shares.append(probs.mean(0).numpy())

    per_set = [fairness_discrepancy(s) for s in hard_shares]
    per_set_soft = [fairness_discrepancy(s) for s in soft_shares]
    histogram = np.rint(np.sum(hard_shares, axis=0) * set_size).astype(np.int64)
    result = dict(fairness_mean=float(np.mean(per_set)), fairness_std=float(np.std(per_set)),
                  fairness_per_set=per_set,
                  fairness_soft_mean=float(np.mean(per_set_soft)), fairness_soft_std=float(np.std(per_set_soft)),
                  histogram=histogram.tolist(), class_shares=(histogram / histogram.sum()).tolist(),
                  class_shares_soft=np.mean(soft_shares, axis=0).tolist(), class_names=list(classifier.class_names),
                  num_sets=int(num_sets), set_size=int(set_size), plot_path=None)
    if plot_path is not None and rank == 0:
        plot_class_distribution(plot_path, classifier.class_names, {'generated': result['class_shares']},
                                title=f'fairness {result["fairness_mean"]:.4f} +- {result["fairness_std"]:.4f}')
        result['plot_path'] = str(plot_path)
    return result


def plot_class_distribution(path, class_names, series, title=None):
    """Bar chart PNG of class shares, one bar group per class for each entry of `series`
    ({label: shares}), with the uniform share 1/|D| as a dashed line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    num_classes = len(class_names)
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * num_classes * max(len(series), 1) ** 0.5 + 2), 3.5))
    for i, (label, shares) in enumerate(series.items()):
        ax.bar(np.arange(num_classes) - 0.4 + width * (i + 0.5), shares, width=width, label=label)
    ax.axhline(1 / num_classes, color='black', linestyle='--', linewidth=1, label='uniform 1/|D|')
    ax.set_xticks(np.arange(num_classes))
    ax.set_xticklabels(class_names, rotation=30 if max(len(n) for n in class_names) > 3 else 0, ha='right'
                       if max(len(n) for n in class_names) > 3 else 'center')
    ax.set_ylabel('share of images')
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from ..fileio import atomic_write
    fmt = os.path.splitext(str(path))[1].lstrip('.').lower() or 'png'
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=100), suffix=f'.{fmt}')
    plt.close(fig)
    return path


@register_metric('fairness')
def fairness_from_options(opts, fairness_num_sets=5, fairness_set_size=10000, fairness_plot=None, balance=False,
                          balance_target=None, balance_calib=1000, balance_min_acceptance=0.0, trunc_mode='global',
                          centroid_samples=10000, network_pkl=None):
    """calc_metrics entry: opts.G under opts.classifier; results flattened for metric-fairness.jsonl.
    balance / trunc_mode='class': score the fair samplers of fair_generation.py instead of plain G(z, c)."""
    if opts.classifier is None:
        raise ValueError('the fairness metric needs --classifier (e.g. labels:clf.pt or deepface:race)')
    label_fn = None
    if opts.G.c_dim and opts.dataset_kwargs:
        from .features import random_labels
        rng = np.random.default_rng([opts.seed, opts.rank])
        label_fn = lambda n: random_labels(opts, n, rng)  # noqa: E731  (the dataset's label distribution)
    from ..fair_generation import sampler_from_options
    sampler = sampler_from_options(opts, label_fn, balance, balance_target, balance_calib, balance_min_acceptance,
                                   trunc_mode, centroid_samples, network_pkl)
    G_kwargs = dict(opts.G_kwargs)
    result = fairness_metric(opts.G, opts.classifier, num_sets=fairness_num_sets, set_size=fairness_set_size,
                             batch=opts.batch_size, truncation_psi=G_kwargs.pop('truncation_psi', 1),
                             device=opts.device, seed=opts.seed, label_fn=label_fn,
                             noise_mode=G_kwargs.pop('noise_mode', 'const'), rank=opts.rank,
                             world_size=opts.num_gpus, plot_path=fairness_plot, sampler=sampler)
    flat = dict(fairness=result['fairness_mean'], fairness_std=result['fairness_std'],
                fairness_soft=result['fairness_soft_mean'], fairness_soft_std=result['fairness_soft_std'])
    if balance:
        flat['fairness_acceptance_rate'] = sampler.acceptance_rate
    for name, count in zip(result['class_names'], result['histogram']):
        flat[f'fairness_count/{name}'] = count
    return flat
