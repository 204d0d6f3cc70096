"""Inference via Optimisation Measure, IvOM (Metz et al. 2017; Srivastava et al. 2017, VEEGAN; used per
attribute by Inclusive GAN, Yu et al. 2020, Sec. 4.1 and Fig. 2).

For each query (real) image x, search the latent space for the closest image G can make:
min_z LPIPS(G(z), x) + mse_weight * MSE(G(z), x), by Adam from `restarts` random starts. IvOM is
the distance left at the optimum: a query the generator cannot reproduce is a part of the data it
does not cover. We report the mean LPIPS distance over queries (`ivom<N>`), its std over queries,
the mean pixel MSE, the mean over the queries that have each attribute (`ivom<N>/<attribute>`, the
bars of Fig. 2) and the std of those per-attribute means (the paper's "IvOM std").
"""
import numpy as np
import torch

from . import features


def lpips_distance(backbone=None, device='cpu'):
    """A distance(images, targets) -> [N] from LPIPS-VGG (stylegan2_fair.lpips_features)."""
    from ..lpips_features import LPIPSFeatures, embedding_distance
    lpips = LPIPSFeatures(backbone=backbone).to(device)

    def distance_to(targets):
        with torch.no_grad():
            target_emb = lpips.layer_embeddings(targets)   # fixed across steps: embed once
        return lambda images: embedding_distance(lpips.layer_embeddings(images), target_emb)
    return distance_to


def mse_distance(images, targets):
    return (images - targets).square().flatten(1).mean(dim=1)


def _initial_latents(G, c, space, generators, device):
    z = torch.stack([torch.randn([G.z_dim], generator=g) for g in generators]).to(device)
    if space == 'z':
        return z
    with torch.no_grad():
        return G.mapping(z, c)[:, 0]   # one w for every layer (W, not W+)


def _images(G, latent, c, space):
    if space == 'z':
        ws = G.mapping(latent, c)
    else:
        ws = latent[:, None, :].repeat(1, G.num_ws, 1)
    return G.synthesis(ws, noise_mode='const')


def invert(G, targets, c=None, distance_to=None, space='z', steps=200, lr=0.05, mse_weight=1.0, restarts=1,
           seeds=None):
    """Optimise latents so that G(latent) matches `targets` (float [-1, 1] NCHW).

    Returns (perceptual [N], mse [N], latents [N, dim]) at the best step of the best restart. Each
    query is optimised independently (Adam is elementwise, so batching queries changes nothing).
    `distance_to(targets)` returns a function images -> [N]; None uses pixel MSE only. `seeds` [N]
    seed each query's random starts (default 0..N-1).
    """
    if space not in ('z', 'w'):
        raise ValueError(f'IvOM optimises in z or w space, got {space!r}')
    n, device = len(targets), targets.device
    c = torch.zeros([n, G.c_dim], device=device) if c is None else c
    perceptual = distance_to(targets) if distance_to is not None else (lambda images: torch.zeros(len(images), device=device))
    seeds = range(n) if seeds is None else seeds
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    best = dict(objective=torch.full([n], float('inf'), device=device))
    for _ in range(restarts):
        latent = _initial_latents(G, c, space, generators, device).clone().requires_grad_(True)
        opt = torch.optim.Adam([latent], lr=lr)
        for step in range(steps + 1):
            with torch.enable_grad():
                images = _images(G, latent, c, space)
                p_dist, m_dist = perceptual(images), mse_distance(images, targets)
                objective = p_dist + mse_weight * m_dist
            better = objective.detach() < best['objective']
            for key, value in dict(objective=objective, perceptual=p_dist, mse=m_dist, latent=latent).items():
                value = value.detach()
                best[key] = torch.where(better.view(-1, *[1] * (value.ndim - 1)), value, best.get(key, value))
            if step == steps:
                break   # the last step only scores the final latents
            opt.zero_grad(set_to_none=True)
            objective.sum().backward()
            opt.step()
    return best['perceptual'], best['mse'], best['latent']


def compute_ivom(opts, num_queries, space='z', steps=200, lr=0.05, mse_weight=1.0, restarts=1, lpips_backbone=None,
                 distance_to=None, batch_size=16, prefix='ivom'):
    """IvOM over the first `num_queries` real images; returns the results dict (see the module doc).
    distance_to: None = LPIPS-VGG (`lpips_backbone`), 'mse' = pixels only, or distance_to(targets)."""
    G = opts.G
    if distance_to is None:
        distance_to = lpips_distance(lpips_backbone, opts.device)
    elif distance_to == 'mse':
        distance_to = None
    n = features.num_real_items(opts, num_queries)
    dataset = opts.dataset

    def compute(items):
        targets = features.real_images(opts, items).float() / 127.5 - 1
        if targets.shape[1] != G.img_channels:
            raise ValueError(f'the data has {targets.shape[1]} channels but G makes {G.img_channels}')
        c = None
        if G.c_dim:
            c = torch.from_numpy(np.stack([dataset.get_label(int(i)) for i in items])).to(opts.device)
        seeds = [opts.seed * 1_000_003 + int(i) for i in items]
        p_dist, m_dist, _ = invert(G, targets, c, distance_to, space, steps, lr, mse_weight, restarts, seeds)
        return torch.stack([p_dist, m_dist], dim=1)
    dist = features.run_in_chunks(opts, n, compute, desc='IvOM queries', batch_size=batch_size).numpy()
    perceptual, mse = dist[:, 0], dist[:, 1]
    results = {prefix: float(perceptual.mean()), f'{prefix}_std': float(perceptual.std()),
               f'{prefix}_mse': float(mse.mean())}
    per_group = features.breakdown(prefix, perceptual, features.subgroups(opts, n))
    if per_group:
        results[f'{prefix}_attr_std'] = float(np.std(list(per_group.values())))
    results.update(per_group)
    return results
