"""Offline toy datasets from scikit-learn's 8x8 digits (shipped with sklearn: nothing is downloaded).

Stand-ins for the benchmarks of the coverage papers, small enough for CPU tests:
  - stacked_digits:  Stacked-MNIST (1000 modes: one digit per colour channel), for mode counting.
  - colored_digits:  Colored-MNIST (a red majority and a green minority), for minority coverage.
  - longtail_digits: CIFAR-10-LT-style class counts decaying exponentially, for long-tail recall.

Every function returns a `ToyData` whose images are uint8 NHWC [n, resolution, resolution, 3]
(channels last, ready for Pillow). Each image is a source digit upscaled with a small random scale
and shift (bilinear), so `n` may exceed the 1797 source digits without exact duplicates. Output
depends only on the arguments, `seed` included.
"""
import dataclasses
import functools

import numpy as np

_SOURCE_SIZE = 8


@dataclasses.dataclass
class ToyData:
    images: np.ndarray       # uint8 [n, resolution, resolution, 3], NHWC
    labels: np.ndarray       # int64 [n] class index
    num_classes: int
    attribute_names: list    # names of the boolean columns of `attributes`
    attributes: np.ndarray   # bool [n, len(attribute_names)]
    extras: dict             # per-dataset ground truth (e.g. 'channel_digits', 'color')

    def __len__(self):
        return len(self.labels)


@functools.lru_cache(maxsize=1)
def _source_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0    # sklearn's values are 0..16
    return images, digits.target.astype(np.int64)


def _check(n, resolution):
    if int(n) < 1:
        raise ValueError(f'n must be >= 1, got {n}')
    if resolution < _SOURCE_SIZE or resolution & (resolution - 1):
        raise ValueError(f'resolution must be a power of two >= 8 (e.g. 32), got {resolution}')


def _pick_sources(classes, rng):
    """A random source digit of each requested class."""
    _, targets = _source_digits()
    picks = np.empty(len(classes), dtype=np.int64)
    for digit in range(10):
        where = np.flatnonzero(classes == digit)
        picks[where] = rng.choice(np.flatnonzero(targets == digit), size=where.size)
    return picks


def _interp_matrix(scale, shift, resolution):
    """[m, resolution, 8] bilinear weights: output pixel -> source pixels, after scaling about the
    centre and shifting (in source pixels). Samples outside the 8x8 source get zero (black)."""
    centre = (_SOURCE_SIZE - 1) / 2
    out = (np.arange(resolution) + 0.5) * _SOURCE_SIZE / resolution - 0.5     # output centres, source units
    src = (out[None, :] - centre - shift[:, None]) / scale[:, None] + centre
    return np.maximum(0.0, 1.0 - np.abs(src[:, :, None] - np.arange(_SOURCE_SIZE)[None, None, :]))


def render_digits(source_idx, resolution, rng, max_shift=0.75, scale_range=(0.85, 1.15)):
    """Float [m, resolution, resolution] in [0, 1]: source digits, randomly scaled and shifted.

    The transform is separable (independent x and y scales and shifts), so one image is
    rows @ digit @ cols^T with two small interpolation matrices.
    """
    images, _ = _source_digits()
    m = len(source_idx)
    scales = rng.uniform(*scale_range, size=[2, m])
    shifts = rng.uniform(-max_shift, max_shift, size=[2, m])
    out = np.empty([m, resolution, resolution], dtype=np.float32)
    chunk = max(1, 2 ** 22 // resolution ** 2)      # bounds the float64 temporaries
    for start in range(0, m, chunk):
        part = slice(start, start + chunk)
        rows = _interp_matrix(scales[0, part], shifts[0, part], resolution)
        cols = _interp_matrix(scales[1, part], shifts[1, part], resolution)
        out[part] = np.einsum('mik,mkl,mjl->mij', rows, images[source_idx[part]], cols, optimize=True)
    return np.clip(out, 0.0, 1.0)


def _to_uint8(x):
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def stacked_digits(n, resolution=32, seed=0):
    """Stacked digits: three independent digits as the R, G, B channels; 1000 modes.

    label = 100 * digit_R + 10 * digit_G + digit_B. The modes are stratified, not drawn i.i.d.: each
    round of 1000 images holds every mode once (in random order), so every mode appears n // 1000 or
    n // 1000 + 1 times. Stacked-MNIST's 240k i.i.d. images hold every mode; 1000 i.i.d. draws would
    hold only ~632, and a mode-coverage benchmark on them could never reach 1000.
    extras['channel_digits'] int64 [n, 3] are the per-channel digits (to train a mode classifier).
    """
    _check(n, resolution)
    rng = np.random.default_rng(seed)
    modes = np.concatenate([rng.permutation(1000) for _ in range(-(-n // 1000))])[:n]
    channel_digits = np.stack([modes // 100, modes // 10 % 10, modes % 10], axis=1)
    images = np.empty([n, resolution, resolution, 3], dtype=np.uint8)
    for channel in range(3):
        sources = _pick_sources(channel_digits[:, channel], rng)
        images[..., channel] = _to_uint8(render_digits(sources, resolution, rng))
    labels = channel_digits @ np.array([100, 10, 1])
    return ToyData(images=images, labels=labels.astype(np.int64), num_classes=1000,
                   attribute_names=[], attributes=np.zeros([n, 0], dtype=bool),
                   extras=dict(channel_digits=channel_digits.astype(np.int64)))


def colored_digits(n, resolution=32, majority=0.99, seed=0):
    """Digits drawn in red (the majority) or green (exactly round(n * (1 - majority)) images).

    label = digit class 0..9; attributes 'Red' and 'Green' (exactly one true);
    extras['color'] int64 [n]: 0 red, 1 green.
    """
    _check(n, resolution)
    if not 0.0 < majority <= 1.0:
        raise ValueError(f'majority must be in (0, 1], got {majority}')
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, len(_source_digits()[1]), size=n)
    # An exact count (not Bernoulli draws) keeps a small dataset's minority from vanishing.
    green = np.zeros(n, dtype=bool)
    green[rng.choice(n, size=int(round(n * (1.0 - majority))), replace=False)] = True
    gray = _to_uint8(render_digits(sources, resolution, rng))
    images = np.zeros([n, resolution, resolution, 3], dtype=np.uint8)
    images[~green, :, :, 0] = gray[~green]
    images[green, :, :, 1] = gray[green]
    return ToyData(images=images, labels=_source_digits()[1][sources], num_classes=10,
                   attribute_names=['Red', 'Green'], attributes=np.stack([~green, green], axis=1),
                   extras=dict(color=green.astype(np.int64)))


def longtail_counts(n, imbalance, num_classes=10):
    """Class counts n_k proportional to imbalance**(k / (C - 1)) summing to n (CIFAR-10-LT's profile),
    so count[-1] / count[0] ~= imbalance."""
    if not 0.0 < imbalance <= 1.0:
        raise ValueError(f'imbalance must be in (0, 1] (count of the last class / first), got {imbalance}')
    share = imbalance ** (np.arange(num_classes) / (num_classes - 1))
    exact = n * share / share.sum()
    counts = np.floor(exact).astype(np.int64)
    # Hand the rounding remainder to the largest fractional parts: sums to n, keeps the profile.
    counts[np.argsort(counts - exact)[:n - counts.sum()]] += 1
    if counts[-1] < 1:
        need = int(np.ceil(share.sum() / share[-1]))
        raise ValueError(f'n={n} is too small for imbalance={imbalance}: the rarest class gets no image; '
                         f'use n >= {need}.')
    return counts


def longtail_digits(n, resolution=32, imbalance=0.1, seed=0):
    """Grayscale digits (replicated to 3 channels) with exponentially decaying class counts from
    class 0 (most) to class 9 (fewest), count(9) / count(0) ~= imbalance. label = digit class;
    extras['class_counts'] int64 [10]."""
    _check(n, resolution)
    counts = longtail_counts(n, imbalance)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), counts))
    gray = _to_uint8(render_digits(_pick_sources(labels, rng), resolution, rng))
    images = np.repeat(gray[..., np.newaxis], 3, axis=3)
    return ToyData(images=images, labels=labels.astype(np.int64), num_classes=10,
                   attribute_names=[], attributes=np.zeros([n, 0], dtype=bool),
                   extras=dict(class_counts=counts))


TOY_DATASETS = {
    'stacked-digits': stacked_digits,
    'colored-digits': colored_digits,
    'longtail-digits': longtail_digits,
}


def make_toy(name, n, resolution=32, seed=0, **options):
    """A toy dataset by its name in TOY_DATASETS, e.g. make_toy('colored-digits', 1000, majority=0.9)."""
    if name not in TOY_DATASETS:
        raise ValueError(f'unknown toy dataset {name!r}; choose from {", ".join(TOY_DATASETS)}')
    return TOY_DATASETS[name](n, resolution=resolution, seed=seed, **options)
