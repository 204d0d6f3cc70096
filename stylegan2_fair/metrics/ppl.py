"""Perceptual path length (Karras et al. 2019, Sec. 4.2): LPIPS distance between images a small step
`epsilon` apart on a latent interpolation path, divided by epsilon^2, averaged after dropping the
1% lowest and highest values."""
import numpy as np
import torch

from . import features

VGG16_LPIPS = dict(resize_images=False, return_lpips=True)


def slerp(a, b, t):
    """Spherical interpolation between latents a and b (on the unit sphere) at fractions t [N]."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    angle = t[:, None] * torch.acos(cos)
    ortho = b - cos * a
    ortho = ortho / ortho.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = a * torch.cos(angle) + ortho * torch.sin(angle)
    return out / out.norm(dim=-1, keepdim=True)


def path_length_batch(opts, vgg, items, epsilon, space, sampling, crop):
    G = opts.G
    gens = [features.item_generator(opts, i, stream=2) for i in items]
    z0 = torch.stack([torch.randn([G.z_dim], generator=g) for g in gens])
    z1 = torch.stack([torch.randn([G.z_dim], generator=g) for g in gens])
    t = torch.stack([torch.rand([], generator=g) for g in gens]).to(opts.device) * (1 if sampling == 'full' else 0)
    z = torch.cat([z0, z1]).to(opts.device)
    c = features.item_labels(opts, items)
    mapping_kwargs = {k: v for k, v in opts.G_kwargs.items() if k in ('truncation_psi', 'truncation_cutoff')}
    if space == 'w':
        w0, w1 = G.mapping(z, torch.cat([c, c]), **mapping_kwargs).chunk(2)
        t_ = t[:, None, None]
        ws = torch.cat([w0.lerp(w1, t_), w0.lerp(w1, t_ + epsilon)])
    else:
        z0, z1 = z.chunk(2)
        zs = torch.cat([slerp(z0, z1, t), slerp(z0, z1, t + epsilon)])
        ws = G.mapping(zs, torch.cat([c, c]), **mapping_kwargs)
    # The same (constant) noise in both images of a pair, so only the latent step changes them.
    img = G.synthesis(ws, noise_mode='const')
    if crop:   # the legacy face crop of the StyleGAN paper (central region of FFHQ faces)
        s = img.shape[2] // 8
        img = img[:, :, s * 3:s * 7, s * 2:s * 6]
    factor = img.shape[2] // 256
    if factor > 1:
        img = torch.nn.functional.avg_pool2d(img, factor)
    if img.shape[2] < 16:   # VGG16's four pools before relu5_3 need at least 16x16
        img = torch.nn.functional.interpolate(img, size=(16, 16), mode='nearest')
    img = features.as_rgb((img + 1) * (255 / 2))
    lp0, lp1 = vgg(img, **VGG16_LPIPS).chunk(2)
    return (lp0 - lp1).square().sum(dim=1) / epsilon ** 2


def filtered_mean(distances, low=1, high=99):
    """Mean of the distances between their `low` and `high` percentiles (outliers from singular points)."""
    d = np.asarray(distances, dtype=np.float64)
    lo = np.percentile(d, low, method='lower')
    hi = np.percentile(d, high, method='higher')
    return float(d[(d >= lo) & (d <= hi)].mean())


def compute_ppl(opts, num_samples, epsilon=1e-4, space='w', sampling='end', crop=False, batch_size=8):
    if space not in ('z', 'w') or sampling not in ('full', 'end'):
        raise ValueError(f'PPL needs space z|w and sampling full|end, got {space!r} and {sampling!r}')
    vgg = opts.detector('vgg16')

    def compute(items):
        with torch.no_grad():
            return path_length_batch(opts, vgg, items, epsilon, space, sampling, crop)
    dist = features.run_in_chunks(opts, num_samples, compute, desc='path lengths', batch_size=batch_size).numpy()
    return filtered_mean(dist) if opts.rank == 0 else float('nan')
