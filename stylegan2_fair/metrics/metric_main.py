"""Metrics by name, as the official calc_metrics.py and training loop name them, and their reports.

A name is a family and a sample count: fid50k_full, kid50k_full, pr50k3_full, is50k, ppl2_wend (the
official ones), or short forms with any count: fid10k, fid1k, fid64, kid10k, pr10k3, pr64, is1k,
ppl2_wend1k. '50k' = 50,000; a count without 'k' is exact (pr counts without 'k' use k=3). As in the
official code, `_full` reads the whole dataset without mirrored copies and compares with every real
image (fid), up to 1M (kid) or 200k (pr); without it, as many reals as generated images. Coverage
and quality metrics follow the same pattern: ivom3k (ivom3k_w optimises w), modes240k,
partial_recall10k, re50k, niqe10k, brisque10k, clipiqa10k. Metrics registered by exact name in
`stylegan2_fair.metrics` (e.g. 'fairness') are found too.

`calc_metric(name, G=..., dataset_kwargs=..., ...)` returns
{results: {...}, metric, total_time, total_time_str, num_gpus}; `report_metric(result, run_dir,
snapshot_pkl)` adds snapshot_pkl and timestamp and appends the line to run_dir/metric-<name>.jsonl,
the official format.
"""
import copy
import inspect
import json
import os
import re
import time

import torch

from . import (fid, inception_score, ivom, kid, modes, nriqa, partial_recall, ppl, precision_recall,
               recon_error)
from .. import stats
from .features import MetricOptions

COUNT = r'(?P<num>\d+k?)'
_FAMILIES = []   # (compiled pattern, function(opts, name, match, **kwargs) -> results, summary)


def metric_family(pattern, summary):
    """Decorator: metrics whose names fully match `pattern` are computed by the decorated function."""
    def decorator(fn):
        _FAMILIES.append((re.compile(pattern), fn, summary))
        return fn
    return decorator


def parse_count(text):
    """'50k' -> 50000, '64' -> 64."""
    return int(text[:-1]) * 1000 if text.endswith('k') else int(text)


def _reals(m, num):
    return None if m.groupdict().get('full') else num


def _full_data(opts, m):
    """The official *_full metrics read every real image once: no subset, no mirrored copies."""
    if m.groupdict().get('full'):
        opts.use_dataset(dict(opts.dataset_kwargs, max_size=None, xflip=False))


@metric_family(rf'fid{COUNT}(?P<full>_full)?', 'Frechet Inception Distance')
def _fid(opts, name, m):
    n = parse_count(m['num'])
    _full_data(opts, m)
    return {name: fid.compute_fid(opts, max_real=_reals(m, n), num_gen=n)}


@metric_family(rf'kid{COUNT}(?P<full>_full)?', 'Kernel Inception Distance')
def _kid(opts, name, m):
    n = parse_count(m['num'])
    _full_data(opts, m)
    max_real = 1_000_000 if m['full'] else n
    return {name: kid.compute_kid(opts, max_real=max_real, num_gen=n)}


@metric_family(r'pr(?P<num>\d+k|\d+(?=_|$))(?P<nhood>\d+)?(?P<full>_full)?', 'precision and recall (k-NN, VGG16)')
def _pr(opts, name, m):
    n = parse_count(m['num'])
    _full_data(opts, m)
    max_real = 200_000 if m['full'] else n   # the official pr50k3_full compares with up to 200k reals
    precision, recall = precision_recall.compute_pr(opts, max_real, n, nhood_size=int(m['nhood'] or 3))
    return {f'{name}_precision': precision, f'{name}_recall': recall}


@metric_family(rf'is{COUNT}', 'Inception Score')
def _is(opts, name, m):
    mean, std = inception_score.compute_is(opts, parse_count(m['num']), num_splits=10)
    return {f'{name}_mean': mean, f'{name}_std': std}


@metric_family(r'ppl(?P<v2>2)?_(?P<space>[zw])(?P<sampling>full|end)(?P<num>\d+k?)?', 'perceptual path length')
def _ppl(opts, name, m):
    n = parse_count(m['num'] or '50k')
    # ppl_* are the legacy variants with the face crop of the StyleGAN paper; ppl2_* use the whole image.
    value = ppl.compute_ppl(opts, n, epsilon=1e-4, space=m['space'], sampling=m['sampling'], crop=not m['v2'])
    return {name: value}


@metric_family(rf'ivom{COUNT}(?P<w>_w)?', 'IvOM: distance left after latent optimisation (per attribute)')
def _ivom(opts, name, m, lpips_backbone=None, ivom_steps=200, ivom_lr=0.05, ivom_restarts=1, ivom_mse_weight=1.0,
          ivom_distance=None):
    return ivom.compute_ivom(opts, parse_count(m['num']), space='w' if m['w'] else 'z', steps=ivom_steps, lr=ivom_lr,
                             mse_weight=ivom_mse_weight, restarts=ivom_restarts, lpips_backbone=lpips_backbone,
                             distance_to=ivom_distance, prefix=name)


@metric_family(rf'modes{COUNT}', 'mode count and KL to uniform (stacked data; --classifier)')
def _modes(opts, name, m, mode_classifier=None):
    return modes.compute_modes(opts, parse_count(m['num']), classifier=mode_classifier, prefix=name)


@metric_family(rf'partial_recall{COUNT}(?P<full>_full)?', 'recall of each attribute\'s real images')
def _partial_recall(opts, name, m):
    n = parse_count(m['num'])
    _full_data(opts, m)
    return partial_recall.compute_partial_recall(opts, _reals(m, n), n, prefix=name)


@metric_family(rf're{COUNT}(?P<full>_full)?', 'reconstruction error of reals under a CAE trained on fakes')
def _re(opts, name, m, re_epochs=50):
    n = parse_count(m['num'])
    _full_data(opts, m)
    return recon_error.compute_recon_error(opts, n, max_real=_reals(m, n), epochs=re_epochs, prefix=name)


@metric_family(rf'niqe{COUNT}', 'NIQE of generated images (pristine model from the reals)')
def _niqe(opts, name, m, niqe_model=None):
    n = parse_count(m['num'])
    return nriqa.compute_niqe(opts, n, max_real=max(n, 1000), niqe_model=niqe_model, prefix=name)


@metric_family(rf'brisque{COUNT}', 'BRISQUE of generated images (piq)')
def _brisque(opts, name, m):
    return nriqa.compute_brisque(opts, parse_count(m['num']), prefix=name)


@metric_family(rf'clipiqa{COUNT}', 'CLIP-IQA of generated images (piq)')
def _clipiqa(opts, name, m):
    return nriqa.compute_clipiqa(opts, parse_count(m['num']), prefix=name)


# ----------------------------------------------------------------------------------------------

def _registry():
    """Metrics other modules registered by exact name (e.g. 'fairness'), through the package registry."""
    from .. import metrics
    getter = getattr(metrics, 'registered_metrics', None)
    return getter() if getter is not None else {}


def find_metric(name):
    """(function, match) for `name`, or ValueError listing what exists."""
    for pattern, fn, _ in _FAMILIES:
        m = pattern.fullmatch(name)
        if m:
            return fn, m
    raise ValueError(f'unknown metric {name!r}. Known: {", ".join(list_valid_metrics())}; counts may change '
                     f'(fid10k, kid1k, pr64, ivom100, ...).')


def is_valid_metric(name):
    try:
        find_metric(name)
        return True
    except ValueError:
        return name in _registry()


def list_valid_metrics():
    examples = ['fid50k_full', 'kid50k_full', 'pr50k3_full', 'is50k', 'ppl2_wend', 'ppl_zfull', 'fid50k', 'kid50k',
                'pr50k3', 'ivom3k', 'modes240k', 'partial_recall10k', 're50k', 'niqe10k', 'brisque10k', 'clipiqa10k']
    return examples + sorted(_registry())


def _accepted(fn, kwargs):
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


_OPTION_FIELDS = ('G', 'G_kwargs', 'dataset_kwargs', 'num_gpus', 'rank', 'device', 'progress', 'cache',
                  'detector_search', 'classifier', 'batch_size', 'num_workers', 'seed')


def calc_metric(metric, **kwargs):
    """Compute `metric` (a name, see the module doc). kwargs: the MetricOptions fields (G, dataset_kwargs,
    num_gpus, rank, device, progress, cache, detector_search, classifier, batch_size, seed) and metric
    settings (lpips_backbone, ivom_steps, re_epochs, niqe_model, mode_classifier, ...), each passed to
    the metrics that take it. Every rank must call it; results are valid on rank 0."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_FIELDS}
    opts = MetricOptions(**options)
    if opts.G is not None:   # a private frozen copy: the caller's G (maybe the one training) is untouched
        opts.G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    start = time.time()
    registered = _registry()
    if metric in registered:
        fn = registered[metric]
        results = fn(opts, **_accepted(fn, kwargs))
    else:
        fn, match = find_metric(metric)
        results = fn(opts, metric, match, **_accepted(fn, kwargs))
    if opts.device.type == 'cuda':
        torch.cuda.synchronize(opts.device)
    total = time.time() - start
    return dict(results=dict(results), metric=metric, total_time=total, total_time_str=stats.format_time(total),
                num_gpus=opts.num_gpus)


def report_metric(result_dict, run_dir=None, snapshot_pkl=None, echo=True):
    """Stamp the result with snapshot_pkl and time, print it, and append it to run_dir/metric-<name>.jsonl."""
    if run_dir is not None and snapshot_pkl is not None:
        snapshot_pkl = os.path.relpath(os.path.abspath(snapshot_pkl), os.path.abspath(run_dir))
    line = json.dumps(dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time()), default=_json_default)
    if echo:
        print(line)
    if run_dir is not None and os.path.isdir(run_dir):
        with open(os.path.join(run_dir, f'metric-{result_dict["metric"]}.jsonl'), 'at') as f:
            f.write(line + '\n')
    return line


def _json_default(value):
    if hasattr(value, 'item'):
        return value.item()
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')
