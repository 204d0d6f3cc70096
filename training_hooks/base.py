"""The training-hook interface: small named hook points called by the training loop.

A fairness method is one subclass of `TrainingHook` in its own module, registered by name with
`@register_hook('name')`. The loop calls every active hook, in the order given on the command
line, at the points below; hooks never call each other, never import the loop, and the loop
never imports a hook. Everything a hook may read or do goes through `run` (see
`stylegan2_fair.training_loop.TrainingRun`): networks, dataset, device, rank, progress, and the
few actions it may take (report a stat, ask for a new sampler, gather across ranks, build a
data stream).

"Contracts, in the order they run:

    check_dataset(training_set)     in train.py, before any run dir exists, with the dataset the
                                    loop will open: raise ValueError naming the problem and the
                                    fix if this dataset cannot serve the hook (e.g. an unknown
                                    attribute). Must be cheap: no networks, no training.
    setup(run)                      once, after networks, dataset and options exist and before
                                    the first step. May create extra networks/optimisers/data
                                    streams. Must not change G or D.
    load_state_dict(state)          on resume, after setup, with what state_dict() returned.
    make_sampler(run)               at start and whenever some hook called
                                    run.request_new_sampler(): return a torch Sampler of dataset
                                    indices for THIS rank to use from now on, or None to leave
                                    the current one. Several hooks returning one: the last wins.
    phase_loss(run, phase, batch)   for each round of each phase ('Gmain', 'Greg', 'Dmain',
                                    'Dreg'; a fused phase such as Gboth is delivered as its
                                    parts, Dmain carrying the R1 term too): return an extra
                                    scalar loss (mean over the round's samples, before the phase
                                    gain) or None. `batch` is a PhaseBatch (see below); the loop
                                    adds the term and backpropagates it with the phase's gain.
    on_real_logits(run, logits, indices)
                                    in Dmain, with D's logits on this round's (augmented) reals
                                    and their dataset indices; read-only.
    on_step_end(run)                after the optimiser steps, EMA and ADA of one iteration; for
                                    per-step work (e.g. training an extra network) and periodic
                                    work (use run.crossed_kimg(k) to act every k kimg).
    on_tick_end(run)                once per tick before stats are collected; report stats with
                                    run.report(name, value).
    snapshot_modules()              dict name -> nn.Module of extra networks to store in network
                                    snapshots (keys must not clash with G, D, G_ema, augment_pipe).
    state_dict()                    picklable dict of everything needed to continue exactly.
    on_train_end(run)               once, after the last tick of a completed run; not called when
                                    the run stops early to be resumed (preemption), since the
                                    same command continues it.
"""
import dataclasses
from typing import Any, Dict, Optional

import torch

from stylegan2_fair.registry import registrar

_HOOKS: Dict[str, type] = {}


def register_hook(name):
    """Class decorator: make a hook constructible by name (`--fair-method=name`)."""
    def decorator(cls):
        cls.name = name
        return registrar(_HOOKS, 'training hook')(name)(cls)
    return decorator


def list_hooks():
    _import_builtin_hooks()
    return sorted(_HOOKS)


def get_hook_class(name):
    _import_builtin_hooks()
    if name not in _HOOKS:
        raise ValueError(f'unknown fair method {name!r}; choose from: none, {", ".join(sorted(_HOOKS))}')
    return _HOOKS[name]


def parse_methods(spec):
    """'dia,imle' -> ['dia', 'imle']; 'none' or '' -> []. Unknown names raise a clear error."""
    names = [s.strip() for s in (spec or '').split(',') if s.strip() and s.strip() != 'none']
    for name in names:
        get_hook_class(name)
    if len(set(names)) != len(names):
        raise ValueError(f'--fair-method lists a method twice: {spec!r}')
    return names


def create_hooks(spec, hook_kwargs=None):
    """Build the hooks named in `spec` with their options: hook_kwargs = {name: {option: value}}."""
    hook_kwargs = hook_kwargs or {}
    return [get_hook_class(name)(**hook_kwargs.get(name, {})) for name in parse_methods(spec)]


def cli_options():
    """All registered hooks' click options, for train.py (a new method adds options in its own file)."""
    options = []
    for name in list_hooks():
        options.extend(getattr(_HOOKS[name], 'cli_options', []))
    return options


def _import_builtin_hooks():
    # Importing the package modules runs their @register_hook decorators.
    import importlib
    import pkgutil
    import training_hooks
    for info in pkgutil.iter_modules(training_hooks.__path__):
        if info.name not in ('base', 'patch', 'official_adapter') and not info.name.startswith('_'):
            importlib.import_module(f'training_hooks.{info.name}')


@dataclasses.dataclass
class PhaseBatch:
    """What one round of one phase has computed, handed to `phase_loss`.

    Images are float in [-1, 1] NCHW on the device, labels float [N, c_dim], indices int64 [N].
    Fields a phase does not compute are None (e.g. real_* in Gmain).
    """
    phase: str
    gain: float
    gen_z: Optional[torch.Tensor] = None
    gen_c: Optional[torch.Tensor] = None
    gen_img: Optional[torch.Tensor] = None      # G(gen_z, gen_c), still attached to G's graph in G phases
    gen_ws: Optional[torch.Tensor] = None
    gen_logits: Optional[torch.Tensor] = None   # D(augment(gen_img))
    real_img: Optional[torch.Tensor] = None
    real_c: Optional[torch.Tensor] = None
    real_idx: Optional[torch.Tensor] = None
    real_logits: Optional[torch.Tensor] = None  # D(augment(real_img)), Dmain/Dboth only


class TrainingHook:
    """Base class: every hook point is optional and does nothing by default."""

    name: str = None
    cli_options: list = []  # click.option(...) decorators for train.py, e.g. --dia-k

    def check_dataset(self, training_set) -> None:
        pass

    def setup(self, run) -> None:
        pass

    def make_sampler(self, run) -> Optional[torch.utils.data.Sampler]:
        return None

    def phase_loss(self, run, phase: str, batch: PhaseBatch) -> Optional[torch.Tensor]:
        return None

    def on_real_logits(self, run, logits: torch.Tensor, indices: torch.Tensor) -> None:
        pass

    def on_step_end(self, run) -> None:
        pass

    def on_tick_end(self, run) -> None:
        pass

    def on_train_end(self, run) -> None:
        pass

    def snapshot_modules(self) -> Dict[str, torch.nn.Module]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
