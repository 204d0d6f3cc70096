"""Image grids: the fixed snapshot grid of the training loop, and atomic PNG writes."""
import os

import numpy as np
import PIL.Image
import torch

from .fileio import atomic_write


def snapshot_grid(training_set, random_seed=0):
    """A fixed grid of reals: ~1080p worth of images, one row per label when labels exist.

    Returns (grid_size (gw, gh), images uint8 [N,C,H,W], labels float32 [N, c_dim]).
    """
    rnd = np.random.RandomState(random_seed)
    gw = int(np.clip(7680 // training_set.image_shape[2], 7, 32))
    gh = int(np.clip(4320 // training_set.image_shape[1], 4, 32))
    if not training_set.has_labels:
        order = rnd.permutation(len(training_set))
        indices = [order[i % len(order)] for i in range(gw * gh)]
    else:
        by_label = {}
        for idx in rnd.permutation(len(training_set)):
            by_label.setdefault(tuple(training_set.get_label(idx).tolist()), []).append(idx)
        keys = sorted(by_label)
        indices = []
        for y in range(gh):
            members = by_label[keys[y % len(keys)]]
            indices.extend(members[x % len(members)] for x in range(gw))
    images, labels = zip(*[training_set[i][:2] for i in indices])
    return (gw, gh), np.stack(images), np.stack(labels).astype(np.float32)


@torch.no_grad()
def generate_grid(G, z, c, device, batch=32):
    out = []
    for z_part, c_part in zip(z.split(batch), c.split(batch)):
        out.append(G(z_part.to(device), c_part.to(device), noise_mode='const').cpu())
    return torch.cat(out).numpy()


def to_uint8(images, drange):
    lo, hi = drange
    images = (np.asarray(images, dtype=np.float32) - lo) * (255 / (hi - lo))
    return np.rint(images).clip(0, 255).astype(np.uint8)


def save_image_grid(images, path, drange, grid_size):
    """Tile NCHW images (values in `drange`) into a gw x gh grid PNG."""
    gw, gh = grid_size
    images = to_uint8(images, drange)
    n, C, H, W = images.shape
    if n < gw * gh:
        images = np.concatenate([images, np.zeros([gw * gh - n, C, H, W], np.uint8)])
    grid = images[:gw * gh].reshape(gh, gw, C, H, W).transpose(0, 3, 1, 4, 2).reshape(gh * H, gw * W, C)
    image = PIL.Image.fromarray(grid[:, :, 0] if C == 1 else grid, 'L' if C == 1 else 'RGB')
    atomic_write(path, lambda f: image.save(f, format='PNG'), suffix='.png')
