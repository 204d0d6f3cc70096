"""Glue between a patched official StyleGAN2-ADA checkout and our training hooks.

The patch series in patches/stylegan2-ada-pytorch/ inserts a handful of one-line calls into the
official train.py, training/training_loop.py and training/loss.py; every one of them lands here.
This module turns the official loop's objects into the `run` our hooks expect (it reuses
`TrainingRun`, so hooks see exactly the interface of our own loop) and calls the hooks at the
same moments as `stylegan2_fair.training_loop` does. With no --fair-method, every call is a no-op
and the patched checkout trains exactly as the unpatched one.

The official code is passed in as values (or as `locals()` of the calling function, read by the
official variable names); nothing here imports the official package except its stats module.
"""
import copy
import inspect
import os
import re

import click
import numpy as np
import torch

from .base import PhaseBatch, cli_options, create_hooks, get_hook_class, list_hooks, parse_methods

_HOOKS_ATTR = '_stylegan2_fair_hooks'  # set on the official loss object by attach()
_CLI_NAMES = set()                     # parameter names that click_options() added to train.py


# ---------------------------------------------------------------------------------------------
# train.py: options


def click_options(fn):
    """Decorator for the official `main`: adds --fair-method, --hook-opt and every method's options."""
    unique = []
    for option in cli_options():
        if all(option is not seen for seen in unique):  # a shared option (e.g. --classifier) once
            unique.append(option)
    options = [
        click.option('--fair-method', default='none', show_default=True,
                     help='stylegan2-fair: comma-separated training hooks: ' + ', '.join(['none'] + list_hooks())),
        click.option('--hook-opt', multiple=True, metavar='KEY=VALUE',
                     help='stylegan2-fair: a method option, e.g. dia.k=3 or classifier=labels:clf.pt (repeatable)'),
    ] + unique
    before = len(getattr(fn, '__click_params__', []))
    for option in reversed(options):
        fn = option(fn)
    _CLI_NAMES.update(param.name for param in fn.__click_params__[before:])
    return fn


def pop_cli_options(config_kwargs):
    """Take our options out of the official `config_kwargs` (its setup function does not know them)."""
    return {name: config_kwargs.pop(name) for name in list(config_kwargs) if name in _CLI_NAMES}


def parse_hook_opts(pairs):
    """['dia.k=3', 'classifier=x.pt'] -> {'dia_k': 3, 'classifier': 'x.pt'}; values become bool/int/float when they read so."""
    out = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition('=')
        key = re.sub(r'[.\-]', '_', key.strip())
        if not sep or not key:
            raise click.UsageError(f'--hook-opt {pair!r}: expected KEY=VALUE, e.g. --hook-opt dia.k=3')
        out[key] = _typed(value.strip())
    return out


def _typed(text):
    lowered = text.lower()
    if lowered in ('true', 'yes', 'on'):
        return True
    if lowered in ('false', 'no', 'off'):
        return False
    if lowered == 'none':
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def add_training_options(args, run_desc, fair_options):
    """Validate --fair-method and its options, store them in `args.fair_kwargs` (so they reach the
    loop and training_options.json) and return the run description with the methods appended."""
    fair_options = dict(fair_options)
    try:
        methods = parse_methods(fair_options.pop('fair_method', 'none'))
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    extra = parse_hook_opts(fair_options.pop('hook_opt', ()))
    if not methods:
        if extra:
            raise click.UsageError('--hook-opt was given without --fair-method; name the method(s) it is for')
        return run_desc
    values = {key: value for key, value in fair_options.items() if value is not None}
    values.update(extra)
    from stylegan2_fair.cli.train import hook_kwargs_for
    unused = [key for key, value in extra.items() if not any(hook_kwargs_for(m, {key: value}) for m in methods)]
    if unused:
        accepted = sorted(f'{m}.{p}' for m in methods for p in _constructor_params(m))
        raise click.UsageError(f'--hook-opt {", ".join(unused)}: not an option of {", ".join(methods)}; '
                               f'accepted: {", ".join(accepted) or "none"}')
    hook_kwargs = {m: hook_kwargs_for(m, values) for m in methods}
    try:
        create_hooks(','.join(methods), hook_kwargs)  # constructors validate their options: fail before the run dir exists
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    args['fair_kwargs'] = dict(fair_method=','.join(methods), hook_kwargs=hook_kwargs)
    return f'{run_desc}-{"+".join(methods)}'


def _constructor_params(name):
    params = inspect.signature(get_hook_class(name).__init__).parameters.values()
    return [p.name for p in params if p.name != 'self' and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


# ---------------------------------------------------------------------------------------------
# training/training_loop.py: the loop-side hook points


def attach(fair_kwargs, scope):
    """Build the hooks named in `fair_kwargs` (None: official behaviour) for the loop whose
    variables are in `scope` (its locals() once networks, loss and phases exist); call setup()."""
    if not fair_kwargs:
        return NoHooks()
    hooks = create_hooks(fair_kwargs['fair_method'], fair_kwargs.get('hook_kwargs') or {})
    return OfficialLoopHooks(hooks, scope) if hooks else NoHooks()


class NoHooks:
    """What the patched loop talks to without --fair-method: every hook point does nothing."""

    def data_iterator(self, current):
        return current

    def begin_round(self, round_idx):
        pass

    def step_end(self, cur_nimg):
        pass

    def tick_end(self, cur_tick):
        pass

    def add_to_snapshot(self, snapshot_data, snapshot_pkl):
        pass

    def train_end(self):
        pass


class _WithIndex(torch.utils.data.Dataset):
    """A dataset whose items also carry their index, so hooks learn which reals a round holds."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        image, label = self.dataset[idx][:2]
        return image, label, idx


class OfficialLoopHooks:
    """Our hooks inside the official loop. Also plays the loop's part for `TrainingRun`, which
    reads the attributes below, so hooks get the very interface of our own loop."""

    def __init__(self, hooks, scope):
        self.hooks = hooks
        for name in ('G', 'D', 'G_ema', 'augment_pipe', 'loss', 'device', 'rank', 'batch_size', 'batch_gpu',
                     'total_kimg', 'run_dir', 'random_seed', 'data_loader_kwargs', 'training_set_kwargs',
                     'D_reg_interval'):
            setattr(self, name, scope[name])
        # The official train.py writes betas=[0,0.99]; torch >= 2 optimisers want both as floats.
        self.G_opt_kwargs, self.D_opt_kwargs = (_float_betas(scope[name]) for name in ('G_opt_kwargs', 'D_opt_kwargs'))
        self.world_size = scope['num_gpus']
        self.official_set = scope['training_set']
        self.official_sampler = scope['training_set_sampler']
        self._hook_view_set = None
        self.cur_nimg = self.prev_nimg = self.cur_tick = 0
        self.sampler_requested = False
        self.streaming = False
        self.round_indices = []
        self.real_idx = None
        self.run = _OfficialRun(self)
        setattr(self.loss, _HOOKS_ATTR, self)
        for hook in self.hooks:
            hook.setup(self.run)
        self._load_state_beside(scope.get('resume_pkl'))

    # What TrainingRun reads -----------------------------------------------------------------
    @property
    def training_set(self):
        # Hooks get our dataset class over the same files and options: the same items at the same
        # indices as the official one, plus what hooks use beyond it (attributes, item indices).
        if self._hook_view_set is None:
            from stylegan2_fair.dataset import open_dataset
            self._hook_view_set = open_dataset(**self.training_set_kwargs)
        return self._hook_view_set

    def random_labels(self, n):
        labels = [self.official_set.get_label(np.random.randint(len(self.official_set))) for _ in range(n)]
        return torch.from_numpy(np.stack(labels)).to(self.device)

    def make_stream(self, sampler, batch_size):
        """Endless (float image in [-1, 1], label, index) batches on the device, for extra networks."""
        for img, c, idx in self._loader(sampler, batch_size):
            yield img.to(self.device).to(torch.float32) / 127.5 - 1, c.to(self.device), idx.to(self.device)

    def _loader(self, sampler, batch_size):
        return torch.utils.data.DataLoader(_WithIndex(self.official_set), sampler=sampler, batch_size=batch_size,
                                           **self.data_loader_kwargs)

    # Hook points called by the patched loop -----------------------------------------------------
    def data_iterator(self, current):
        """At the top of every iteration: the loop's (image, label) iterator. On the first call and
        after run.request_new_sampler(), the hooks' make_sampler() decide which stream it reads."""
        if self.streaming and not self.sampler_requested:
            return current
        sampler = None
        for hook in self.hooks:
            offered = hook.make_sampler(self.run)
            if offered is not None:  # several hooks offering one: the last wins
                sampler = offered
        self.sampler_requested = False
        if sampler is None and self.streaming:
            return current
        if sampler is None:
            # Same official sampler, re-read from its start: the stream the official loop would
            # read, but with indices, so phase_loss and on_real_logits know which reals they see.
            sampler = self.official_sampler
        self.streaming = True
        return self._indexed_batches(sampler)

    def _indexed_batches(self, sampler):
        for img, c, idx in self._loader(sampler, self.batch_size // self.world_size):
            self.round_indices = idx.to(self.device).split(self.batch_gpu)
            yield img, c

    def begin_round(self, round_idx):
        self.real_idx = self.round_indices[round_idx] if round_idx < len(self.round_indices) else None

    def phase_term(self, phase, value, scope):
        """`value` (a phase's per-sample loss, or 0) plus the hooks' extra terms for this round."""
        batch = _phase_batch(phase, scope, self.real_idx)
        if phase == 'Dmain' and batch.real_idx is not None:
            for hook in self.hooks:
                hook.on_real_logits(self.run, batch.real_logits.detach(), batch.real_idx)
        terms = [t for t in (hook.phase_loss(self.run, phase, batch) for hook in self.hooks) if t is not None]
        # The official backward takes mean() of this value: a scalar added to every element adds
        # exactly itself to the mean, and the phase gain multiplies it afterwards, as our loss does.
        return value + sum(terms) if terms else value

    def step_end(self, cur_nimg):
        self.prev_nimg, self.cur_nimg = self.cur_nimg, int(cur_nimg)
        for hook in self.hooks:
            hook.on_step_end(self.run)

    def tick_end(self, cur_tick):
        self.cur_tick = int(cur_tick)
        for hook in self.hooks:
            hook.on_tick_end(self.run)

    def add_to_snapshot(self, snapshot_data, snapshot_pkl):
        """Hook networks into the snapshot dict; hook state into hook-state-NNNNNN.pt beside it."""
        from stylegan2_fair import checkpoint
        state = dict(cur_nimg=self.cur_nimg, cur_tick=self.cur_tick,
                     hooks={hook.name: hook.state_dict() for hook in self.hooks})  # every rank: may gather
        for hook in self.hooks:
            for key, module in hook.snapshot_modules().items():
                if key in snapshot_data:
                    raise ValueError(f'hook {hook.name!r} wants to save a network under {key!r}, which is taken')
                snapshot_data[key] = copy.deepcopy(module).cpu().eval().requires_grad_(False)
        if self.rank == 0:
            checkpoint.save_training_state(hook_state_path(snapshot_pkl), state)

    def train_end(self):
        for hook in self.hooks:
            hook.on_train_end(self.run)

    def _load_state_beside(self, resume_pkl):
        # The official resume restarts at kimg 0 with the networks of the pickle; hooks continue
        # from their own saved state when the pickle came from a patched run.
        path = hook_state_path(resume_pkl) if isinstance(resume_pkl, str) else None
        if path is None or not os.path.isfile(path):
            return
        from stylegan2_fair import checkpoint
        saved = checkpoint.load_training_state(path)['hooks']
        for hook in self.hooks:
            hook.load_state_dict(saved.get(hook.name, {}))
        if self.rank == 0:
            print(f'stylegan2-fair: loaded hook state from "{path}"')


def _float_betas(opt_kwargs):
    opt_kwargs = dict(opt_kwargs)
    if 'betas' in opt_kwargs:
        opt_kwargs['betas'] = tuple(float(beta) for beta in opt_kwargs['betas'])
    return opt_kwargs


def _OfficialRun(loop):
    """Our loop's `TrainingRun`, reporting stats through the official training_stats (so they reach
    its stats.jsonl and TensorBoard)."""
    from stylegan2_fair.training_loop import TrainingRun

    class OfficialRun(TrainingRun):
        def report(self, name, value):
            from torch_utils import training_stats  # the official checkout's module
            return training_stats.report(name, value)

    return OfficialRun(loop)


def hook_state_path(snapshot_pkl):
    """network-snapshot-000123.pkl -> hook-state-000123.pt in the same folder."""
    folder, name = os.path.split(str(snapshot_pkl))
    match = re.fullmatch(r'network-snapshot-(\d+)\.pkl', name)
    return os.path.join(folder, f'hook-state-{match.group(1)}.pt') if match else None


# ---------------------------------------------------------------------------------------------
# training/loss.py: the loss-side hook point


def add_phase_loss(loss, phase, value, scope):
    """Called inside the official accumulate_gradients just before a phase's backward, with that
    function's locals(): returns `value` plus the hooks' terms (unchanged without hooks)."""
    hooks = getattr(loss, _HOOKS_ATTR, None)
    return value if hooks is None else hooks.phase_term(phase, value, scope)


def _phase_batch(phase, scope, real_idx):
    """A PhaseBatch from the official accumulate_gradients' locals (official variable names)."""
    gain, gen_z, gen_c = scope['gain'], scope['gen_z'], scope['gen_c']
    if phase == 'Gmain':
        return PhaseBatch(phase, gain, gen_z=gen_z, gen_c=gen_c, gen_img=scope['gen_img'],
                          gen_ws=scope['_gen_ws'], gen_logits=scope['gen_logits'])
    if phase == 'Greg':
        n = scope['batch_size']  # the path-length batch: the first n latents of the round
        return PhaseBatch(phase, gain, gen_z=gen_z[:n], gen_c=gen_c[:n], gen_img=scope['gen_img'],
                          gen_ws=scope['gen_ws'])
    fakes = {}
    if phase == 'Dmain':
        # The official loss back-propagates the fake half before the real half, so its graph is
        # gone here: hooks get the fakes detached (none of ours differentiates through them in D).
        fakes = dict(gen_img=scope['gen_img'].detach(), gen_logits=scope['gen_logits'].detach())
    return PhaseBatch(phase, gain, gen_z=gen_z, gen_c=gen_c, real_img=scope['real_img'], real_c=scope['real_c'],
                      real_idx=real_idx, real_logits=scope['real_logits'], **fakes)
