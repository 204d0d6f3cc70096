"""No-reference image quality of generated images: NIQE, BRISQUE, CLIP-IQA.

NIQE (Mittal, Soundararajan & Bovik 2013) is implemented here: natural-scene statistics of MSCN
coefficients (a GGD fit, and AGGD fits of the products of 4 neighbour pairs: 18 numbers per patch
and scale, 2 scales), a multivariate Gaussian fitted to the patches of "pristine" images, and per
image NIQE = sqrt((mu_p - mu_i)^T ((S_p + S_i) / 2)^+ (mu_p - mu_i)) (their Eq. 10). The published
pristine model was fitted on 96x96 patches of photographs; GAN images are often far smaller, so by
default the pristine model is fitted on the real training images (same resolution, patches of
min(96, side / 2)). Pass niqe_model=FILE (.npz with mu and cov, or the authors' .mat with
mu_prisparam and cov_prisparam) to use another.

BRISQUE and CLIP-IQA come from the `piq` package (pip install piq; extra `nriqa`), whose models are
files it downloads on first use: here they must already be on disk, else the error says where.
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import features

BRISQUE_FILE = 'brisque_svm_weights.pt'
BRISQUE_URL = 'https://github.com/photosynthesis-team/piq/releases/download/v0.4.0/brisque_svm_weights.pt'
CLIP_FILES = {'RN50.pt': 'https://openaipublic.azureedge.net/clip/models/'
                         'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt',
              'clipiqa_tokens.pt': 'https://github.com/photosynthesis-team/piq/releases/download/v0.7.1/clipiqa_tokens.pt'}


class MissingWeightsError(FileNotFoundError):
    """A quality model's weights are not on this machine (nothing is downloaded at run time)."""


# ----------------------------------------------------------------------------------------------
# NIQE

def _luminance(images_uint8):
    x = images_uint8.float()
    if x.shape[1] == 3:   # ITU-R BT.601 luma, as MATLAB's rgb2gray
        x = 0.2989 * x[:, 0:1] + 0.5870 * x[:, 1:2] + 0.1140 * x[:, 2:3]
    return x


def _gaussian_window(size=7, sigma=7 / 6, device='cpu'):
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g[:, None] * g[None, :]
    return (g / g.sum())[None, None]


def mscn(gray):
    """Mean-subtracted contrast-normalised coefficients and the local std (the patch 'sharpness')."""
    w = _gaussian_window(device=gray.device)
    pad = lambda t: F.pad(t, [3, 3, 3, 3], mode='replicate')
    mu = F.conv2d(pad(gray), w)
    sigma = (F.conv2d(pad(gray * gray), w) - mu * mu).abs().sqrt()
    return (gray - mu) / (sigma + 1), sigma


_ALPHAS = torch.arange(0.2, 10.0, 0.001, dtype=torch.float64)


def _gamma_ratio(a):
    return torch.exp(2 * torch.lgamma(2 / a) - torch.lgamma(1 / a) - torch.lgamma(3 / a))


def ggd_fit(x):
    """Generalised Gaussian (shape, variance) per row of x [N, M], by moment matching."""
    x = x.double()
    var = x.square().mean(1)
    rho = x.abs().mean(1).square() / var.clamp_min(1e-12)
    table = _gamma_ratio(_ALPHAS)
    alpha = _ALPHAS[(table[None, :] - rho[:, None]).abs().argmin(1)]
    return torch.stack([alpha, var], 1)


def aggd_fit(x):
    """Asymmetric GGD (shape, mean, left variance, right variance) per row of x [N, M]."""
    x = x.double()
    left = torch.where(x < 0, x.square(), torch.zeros_like(x)).sum(1) / (x < 0).sum(1).clamp_min(1)
    right = torch.where(x > 0, x.square(), torch.zeros_like(x)).sum(1) / (x > 0).sum(1).clamp_min(1)
    gamma = (left.sqrt() / right.sqrt().clamp_min(1e-12))
    r_hat = x.abs().mean(1).square() / x.square().mean(1).clamp_min(1e-12)
    big_r = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2
    alpha = _ALPHAS[(_gamma_ratio(_ALPHAS)[None, :] - big_r[:, None]).abs().argmin(1)]
    # eta = (beta_r - beta_l) G(2/a) / G(1/a), with beta = sigma sqrt(G(1/a) / G(3/a)).
    scale = torch.exp(torch.lgamma(2 / alpha) - 0.5 * torch.lgamma(1 / alpha) - 0.5 * torch.lgamma(3 / alpha))
    mean = (right.sqrt() - left.sqrt()) * scale
    return torch.stack([alpha, mean, left, right], 1)


def _patch_rows(t, patch):
    """[N, 1, H, W] -> [N, patches, patch*patch] over non-overlapping patches."""
    n = t.shape[0]
    t = t[:, :, :t.shape[2] // patch * patch, :t.shape[3] // patch * patch]
    return F.unfold(t, patch, stride=patch).transpose(1, 2).reshape(n, -1, patch * patch)


def nss_features(images_uint8, patch):
    """(features [N, patches, 36], sharpness [N, patches]) of uint8 NCHW images."""
    gray = _luminance(images_uint8)
    feats, sharpness = [], None
    for scale in range(2):
        coeffs, sigma = mscn(gray)
        size = patch // (2 ** scale)
        rows = _patch_rows(coeffs, size)
        n, p, m = rows.shape
        flat = rows.reshape(n * p, m)
        parts = [ggd_fit(flat)]
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):   # horizontal, vertical, two diagonals
            shifted = torch.roll(coeffs, shifts=(-dy, -dx), dims=(2, 3))
            parts.append(aggd_fit(_patch_rows(coeffs * shifted, size).reshape(n * p, m)))
        feats.append(torch.cat(parts, 1).reshape(n, p, -1))
        if scale == 0:
            sharpness = _patch_rows(sigma, size).mean(2)
        gray = F.interpolate(gray, scale_factor=0.5, mode='bicubic', align_corners=False, antialias=True)
    return torch.cat(feats, 2), sharpness


def fit_pristine(images_uint8, patch, sharpness_fraction=0.75):
    """(mu, cov) of the NSS features of the sharpest patches (those above 75% of the peak sharpness
    of their image, as for NIQE's pristine corpus)."""
    feats, sharp = nss_features(images_uint8, patch)
    keep = sharp >= sharpness_fraction * sharp.amax(1, keepdim=True)
    chosen = feats[keep].numpy()
    return chosen.mean(0), np.cov(chosen, rowvar=False)


def niqe_scores(images_uint8, mu_p, cov_p, patch):
    """(NIQE per image [N], NIQE of the whole set): distance of each image's patch MVG (and of the
    pooled patches' MVG) to the pristine one."""
    feats, _ = nss_features(images_uint8, patch)
    feats = feats.numpy()

    def distance(f):
        mu = f.mean(0)
        cov = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros_like(cov_p)
        diff = mu_p - mu
        return float(math.sqrt(max(diff @ np.linalg.pinv((cov_p + cov) / 2) @ diff, 0)))
    return np.array([distance(f) for f in feats]), distance(feats.reshape(-1, feats.shape[2]))


def load_niqe_model(path):
    if path.endswith('.mat'):
        import scipy.io
        data = scipy.io.loadmat(path)
        return np.asarray(data['mu_prisparam']).ravel(), np.asarray(data['cov_prisparam'])
    with np.load(path) as data:
        return data['mu'], data['cov']


def compute_niqe(opts, num_gen, max_real=10000, patch=None, niqe_model=None, prefix='niqe'):
    res = opts.G.img_resolution
    patch = patch or min(96, max(res // 2, 8))
    if niqe_model is not None:
        mu_p, cov_p = load_niqe_model(niqe_model)
    else:
        n = features.num_real_items(opts, max_real)
        reals = features.run_in_chunks(opts, n, lambda items: features.real_images(opts, items),
                                       desc='NIQE pristine model (reals)')
        mu_p, cov_p = fit_pristine(reals, patch)
    fakes = features.run_in_chunks(opts, num_gen, lambda items: features.generated_images(
        opts, items).cpu(), desc='NIQE (generated)')
    per_image, whole = niqe_scores(fakes, mu_p, cov_p, patch)
    return {prefix: float(per_image.mean()), f'{prefix}_std': float(per_image.std()), f'{prefix}_set': whole}


# ----------------------------------------------------------------------------------------------
# BRISQUE and CLIP-IQA through piq

def _import_piq():
    try:
        import piq
    except ImportError as err:
        raise ImportError('BRISQUE and CLIP-IQA use the piq package: pip install piq (or pip install '
                          '"stylegan2-fair[nriqa]").') from err
    return piq


def _require_file(path, url, what):
    if not os.path.isfile(path):
        raise MissingWeightsError(
            f'{what} needs {os.path.basename(path)}, which is not on this machine and is not downloaded at run '
            f'time. On a machine with internet access get it from {url} and put it at {path}.')


def compute_brisque(opts, num_gen, prefix='brisque'):
    piq = _import_piq()
    _require_file(os.path.join(torch.hub.get_dir(), 'checkpoints', BRISQUE_FILE), BRISQUE_URL,
                  'BRISQUE (piq\'s SVR model)')

    def compute(items):
        images = features.generated_images(opts, items).float() / 255
        return piq.brisque(images, data_range=1.0, reduction='none').float()
    scores = features.run_in_chunks(opts, num_gen, compute, desc='BRISQUE').numpy()
    return {prefix: float(scores.mean()), f'{prefix}_std': float(scores.std())}


def compute_clipiqa(opts, num_gen, prefix='clipiqa'):
    piq = _import_piq()
    for name, url in CLIP_FILES.items():
        _require_file(os.path.join(os.path.expanduser('~/.cache/clip'), name), url, 'CLIP-IQA')
    model = piq.CLIPIQA(data_range=1.0).to(opts.device)

    def compute(items):
        images = features.as_rgb(features.generated_images(opts, items)).float() / 255
        with torch.no_grad():
            return model(images).flatten().float()
    scores = features.run_in_chunks(opts, num_gen, compute, desc='CLIP-IQA').numpy()
    return {prefix: float(scores.mean()), f'{prefix}_std': float(scores.std())}
