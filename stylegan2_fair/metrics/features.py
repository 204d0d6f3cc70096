"""What every metric shares: options, real and generated images split across processes, detector
features (real ones cached on disk), subgroups of the real images.

Work is cut into chunks of `batch_size` items; chunk k runs on rank k % num_gpus, and the results
are gathered back in item order, so a metric gives the same numbers on any number of processes.
"""
import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..imaging import atomic_write
from . import detectors


@dataclasses.dataclass
class MetricOptions:
    """Everything a metric needs besides its own parameters (field names follow the official code)."""
    G: Any = None                       # generator (G_ema); None for metrics of the data alone
    G_kwargs: dict = dataclasses.field(default_factory=dict)   # extra G(...) kwargs, e.g. truncation_psi
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)
    num_gpus: int = 1
    rank: int = 0
    device: Any = 'cpu'
    progress: bool = True               # tqdm bars (rank 0 only)
    cache: bool = True                  # cache real-image features under dnnlib_cache_dir('gan-metrics')
    detector_search: tuple = ()         # --detector values: files, folders or NAME=PATH
    classifier: Any = None              # --classifier spec or a Classifier, for metrics that take one
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0                       # seeds of the latents and labels drawn for generated images

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.detector_search = tuple(self.detector_search or ())
        self._dataset = None

    @property
    def dataset(self):
        if self._dataset is None:
            from ..dataset import open_dataset
            if not self.dataset_kwargs:
                raise ValueError('this metric needs the real images: pass --data=DATASET (or dataset_kwargs)')
            self._dataset = open_dataset(**self.dataset_kwargs)
        return self._dataset

    def use_dataset(self, dataset_kwargs):
        """Switch to other dataset kwargs (e.g. the *_full metrics drop max_size and xflip)."""
        if dict(dataset_kwargs) != dict(self.dataset_kwargs):
            self.dataset_kwargs = dict(dataset_kwargs)
            self._dataset = None

    def detector(self, name):
        return detectors.load_detector(name, self.device, self.detector_search)


def progress_bar(opts, total, desc):
    """A tqdm bar on rank 0 when progress is on, else a silent stand-in."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', leave=False, disable=not (opts.progress and opts.rank == 0))


def run_in_chunks(opts, num_items, compute, desc='items', batch_size=None):
    """Call `compute(item_indices) -> tensor [len, ...]` on this rank's chunks and return
    every rank's results, in item order, as one CPU tensor [num_items, ...].

    Chunks past the end (so every rank runs the same number) and the tail of the last chunk repeat
    earlier items; their rows are dropped after the gather.
    """
    batch = int(batch_size or opts.batch_size)
    num_chunks = max(math.ceil(num_items / batch), 1)
    per_rank = math.ceil(num_chunks / opts.num_gpus)
    local = []
    with progress_bar(opts, num_items, desc) as bar:
        for j in range(per_rank):
            k = j * opts.num_gpus + opts.rank
            items = np.arange(k * batch, (k + 1) * batch) % max(num_items, 1)
            local.append(compute(items).to(opts.device))
            bar.update(min(batch * opts.num_gpus, max(num_items - bar.n, 0)))
    local = torch.cat(local)
    gathered = distributed.all_gather_cat(local) if opts.num_gpus > 1 else local
    # gathered[r, j, i] is item (j * num_gpus + r) * batch + i.
    rest = gathered.shape[1:]
    ordered = gathered.reshape(opts.num_gpus, per_rank, batch, *rest).transpose(0, 1).reshape(-1, *rest)
    return ordered[:num_items].cpu()


# ----------------------------------------------------------------------------------------------
# Images

def to_uint8(images):
    """Generator output [-1, 1] -> uint8 [0, 255], rounded as the official metrics do."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def real_images(opts, items):
    """uint8 NCHW tensor of dataset items `items` on the device."""
    dataset = opts.dataset
    return torch.from_numpy(np.stack([dataset[int(i)][0] for i in items])).to(opts.device)


def item_generator(opts, item, stream=0):
    """The torch RNG of generated item `item`: latents depend on (seed, item) only, so batch size and
    process count do not change the images a metric sees."""
    return torch.Generator().manual_seed((opts.seed * 1_000_003 + int(item)) * 4 + stream)


def random_labels(opts, n, rng):
    """Labels for conditional G drawn from the dataset's own labels (as the training loop does)."""
    if not opts.G.c_dim:
        return torch.zeros([n, 0], device=opts.device)
    dataset = opts.dataset
    labels = [dataset.get_label(int(i)) for i in rng.integers(0, len(dataset), size=n)]
    return torch.from_numpy(np.stack(labels)).to(opts.device)


def item_labels(opts, items):
    """One label per generated item, drawn from the dataset's labels by the item's own RNG."""
    if not opts.G.c_dim:
        return torch.zeros([len(items), 0], device=opts.device)
    dataset = opts.dataset
    picks = [int(torch.randint(len(dataset), [1], generator=item_generator(opts, i, stream=1))) for i in items]
    return torch.from_numpy(np.stack([dataset.get_label(i) for i in picks])).to(opts.device)


def latents(opts, items):
    """(z [n, z_dim], c [n, c_dim]) of generated items `items`."""
    z = torch.stack([torch.randn([opts.G.z_dim], generator=item_generator(opts, i)) for i in items])
    return z.to(opts.device), item_labels(opts, items)


@torch.no_grad()
def generated_images(opts, items):
    """uint8 NCHW images of generated items `items` from opts.G."""
    z, c = latents(opts, items)
    kwargs = dict(dict(noise_mode='const'), **opts.G_kwargs)
    return to_uint8(opts.G(z, c, **kwargs))


def as_rgb(images):
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


# ----------------------------------------------------------------------------------------------
# Detector features

def generated_features(opts, detector, detector_kwargs, num_gen, desc=None):
    """Detector features of `num_gen` generated images, float32 [num_gen, D] on every rank."""
    net = opts.detector(detector)

    def compute(items):
        with torch.no_grad():
            return net(as_rgb(generated_images(opts, items)), **detector_kwargs).float()
    return run_in_chunks(opts, num_gen, compute, desc=desc or f'{detector} features (generated)').numpy()


def num_real_items(opts, max_items):
    n = len(opts.dataset)
    return n if max_items is None else min(n, int(max_items))


def real_features(opts, detector, detector_kwargs, max_items=None, desc=None):
    """Detector features of the first `max_items` real images (all when None), float32 [n, D], cached
    on disk under a key of the dataset, the detector file, its kwargs and the item count."""
    n = num_real_items(opts, max_items)
    cache_file = None
    if opts.cache:
        key = dict(dataset=_dataset_identity(opts.dataset_kwargs), detector=detectors.detector_identity(
            detector, opts.detector_search), kwargs=detector_kwargs, items=n, version=1)
        digest = hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        name = f'{opts.dataset.name}-{detector}-{digest}.npz'
        cache_file = detectors.dnnlib_cache_dir('gan-metrics', name)
        # Rank 0 decides, so every rank takes the same branch even on unshared disks.
        if distributed.all_gather_object(os.path.isfile(cache_file))[0]:
            with np.load(cache_file) as data:
                return data['features']
    net = opts.detector(detector)

    def compute(items):
        with torch.no_grad():
            return net(as_rgb(real_images(opts, items)), **detector_kwargs).float()
    features = run_in_chunks(opts, n, compute, desc=desc or f'{detector} features (real)').numpy()
    if cache_file is not None and opts.rank == 0:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        atomic_write(cache_file, lambda f: np.savez(f, features=features), suffix='.npz')
    return features


def _dataset_identity(dataset_kwargs):
    kwargs = {k: v for k, v in dataset_kwargs.items() if k != 'class_name'}
    path = kwargs.get('path')
    if path is not None and os.path.exists(path):
        kwargs['path'] = os.path.abspath(path)
        stat = os.stat(path)
        kwargs['stat'] = [stat.st_size, int(stat.st_mtime)]   # a re-made dataset gets new features
    return kwargs


def mean_cov(features):
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


# ----------------------------------------------------------------------------------------------
# Subgroups of the real images, for per-attribute breakdowns

def subgroups(opts, n):
    """{name: bool mask [n]} over the first n real items: each named attribute of dataset.json, and each
    class when the dataset is opened with one-hot labels. Empty groups are left out."""
    dataset = opts.dataset
    groups = {}
    names = dataset.attribute_names
    if names:
        table = dataset.get_attributes(np.arange(n))
        for col, name in enumerate(names):
            groups[name] = table[:, col]
    if dataset.has_onehot_labels:
        classes = np.array([int(np.argmax(dataset.get_label(i))) for i in range(n)])
        for k in range(dataset.label_dim):
            groups[f'class{k}'] = classes == k
    return {name: mask for name, mask in groups.items() if mask.any()}


def breakdown(prefix, values, groups):
    """{prefix/group: mean of `values` over the group} for every subgroup (json-ready floats)."""
    values = np.asarray(values, dtype=np.float64)
    return {f'{prefix}/{name}': float(values[mask].mean()) for name, mask in groups.items()}
