"""stylegan2-fair: a StyleGAN2-ADA training stack with fairness and coverage methods."""

__version__ = '0.1.0'


def load_network_pkl(path_or_file, **kwargs):
    """Load an official or stylegan2-fair network pickle safely (see checkpoint.py)."""
    from .checkpoint import load_network_pkl as _load
    return _load(path_or_file, **kwargs)
