"""Metrics registered by exact name (e.g. 'fairness'), for calc_metrics.py and the training loop.

A module registers `fn(opts, **settings) -> {result name: value}` with `@register_metric('name')`
(opts: `metrics.features.MetricOptions`) and lists itself in `_MODULES`; metric_main.py handles the
official name families (fid50k_full, ...) and looks here for the rest.
"""
import importlib

from ..registry import registrar

_METRICS = {}
_MODULES = ('fairness',)  # modules whose import registers metrics


register_metric = registrar(_METRICS, 'metric')   # `@register_metric('name')` makes it computable by name


def registered_metrics():
    """{name: fn} of every registered metric."""
    for module in _MODULES:
        importlib.import_module(f'{__name__}.{module}')
    return dict(_METRICS)


def get_metric(name):
    metrics = registered_metrics()
    if name not in metrics:
        raise ValueError(f'unknown metric {name!r}; registered: {", ".join(sorted(metrics))}')
    return metrics[name]
