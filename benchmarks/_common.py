"""Pieces several benchmark scripts share (run them as `python benchmarks/NAME.py`: this folder is on sys.path)."""
import os
import subprocess
import time

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLUTIONS = {'tiny': 16, 'cifar': 32, 'paper256': 256}  # the train.py presets' usual resolutions


def preset_generator(cfg, resolution=None):
    """A random-weight unconditional G shaped as train.py builds it for the preset `cfg` (speed does not
    depend on the weights). Facts: channel_base = fmaps * 32768, channels capped at 512."""
    from stylegan2_fair.cli.train import CFG_SPECS
    from stylegan2_fair.networks import Generator
    spec = CFG_SPECS[cfg]
    return Generator(z_dim=spec.get('z_dim', 512), c_dim=0, w_dim=spec.get('z_dim', 512),
                     img_resolution=resolution or RESOLUTIONS[cfg], img_channels=3,
                     mapping_kwargs=dict(num_layers=spec['map']),
                     synthesis_kwargs=dict(channel_base=int(spec['fmaps'] * 32768),
                                           channel_max=spec.get('channel_max', 512),
                                           num_fp16_res=spec.get('num_fp16_res', 4), conv_clamp=256))


@torch.no_grad()
def generate(G, n, seed, batch=256):
    """n images of G at psi 1 with constant noise, clipped to [-1, 1] as saved images would be, on the
    CPU; the latents come from `seed` alone (drawn on the CPU), so two models given the same seed see
    the same z on any device."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    out = []
    for start in range(0, n, batch):
        z = torch.randn([min(batch, n - start), G.z_dim], generator=gen).to(device)
        out.append(G(z, torch.zeros([len(z), G.c_dim], device=device), noise_mode='const').clamp(-1, 1).cpu())
    return torch.cat(out)


def make_tiny_loop(data, run_dir, kimg, seed, method, hook_kwargs, device='cpu', batch=None, channels=None,
                   lr_scale=1.0, mbstd=None):
    """A TrainingLoop as `train.py --cfg=tiny --aug=noaug --workers=0` builds it, in this process;
    hook_kwargs without the method prefix ({'k': 1} for --dia-k=1); channels: channel_max of G and D
    (channel_base 8x it) instead of the preset's; lr_scale as --lr-scale; mbstd: D's minibatch-std group
    size instead of the preset's 4 (capped at the batch, as a group must divide it)."""
    import training_hooks
    from stylegan2_fair.cli.train import setup_training_options
    from stylegan2_fair.training_loop import TrainingLoop
    cli = {f'{method}_{k}': v for k, v in hook_kwargs.items()}
    _, args = setup_training_options(data=data, cfg='tiny', kimg=kimg, batch=batch, aug='noaug', workers=0,
                                     seed=seed, device=device, fair_method=method, snap=10 ** 6, hook_kwargs=cli,
                                     lr_scale=lr_scale)
    if channels is not None:
        args['G_kwargs']['synthesis_kwargs'].update(channel_base=8 * channels, channel_max=channels)
        args['D_kwargs'].update(channel_base=8 * channels, channel_max=channels)
    if mbstd is not None:
        args['D_kwargs']['epilogue_kwargs']['mbstd_group_size'] = min(mbstd, args['batch_gpu'])
    hooks = training_hooks.create_hooks(args['fair_method'], args['hook_kwargs'])
    kwargs = {k: v for k, v in args.items() if k not in ('num_gpus', 'fair_method', 'hook_kwargs', 'device')}
    return TrainingLoop(run_dir=run_dir, hooks=hooks, device=device, progress=False, **kwargs)


def longtail_options(fn):
    """The data, metric and machine options of the benchmarks on toy:longtail-digits."""
    options = [
        click.option('--num-images', type=int, default=5000, show_default=True),
        click.option('--imbalance', type=float, default=0.1, show_default=True),
        click.option('--num-sets', type=int, default=5, show_default=True, help='Image sets the fairness is averaged over'),
        click.option('--set-size', type=int, default=2000, show_default=True),
        click.option('--threads', type=int, default=1, show_default=True,
                     help='torch threads per process (1 is fastest on a shared 2-core machine)'),
        click.option('--seed', type=int, default=0, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run(cmd, env, log):
    """Run a command from the repository root, its output into `log`; stop the benchmark if it fails.
    Returns (wall seconds, stdout)."""
    start = time.time()
    print('$ ' + ' '.join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    with open(log, 'w') as f:
        f.write(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SystemExit(f'command failed (log: {log}):\n{out.stderr[-3000:]}')
    return time.time() - start, out.stdout


class _TimeUp(Exception):
    pass


def timed_search(G, classifier, options, seconds, device='cpu', log=None):
    """A fresh latent search (stylegan2_fair.rebalance) run for at most `seconds`, or until done; returns
    the RebalanceSearch, whose report() gives its throughput. Throughput comparisons start each search
    this way, from the same state."""
    from stylegan2_fair.rebalance import RebalanceSearch
    search = RebalanceSearch(G, classifier, options, device=device, log=log or (lambda *a: None))
    deadline = time.time() + seconds
    sync = torch.cuda.synchronize if torch.device(device).type == 'cuda' else (lambda: None)

    def stop_when_due(_):
        sync()  # count the GPU's work in the window it was queued in
        if time.time() > deadline:
            raise _TimeUp
    try:
        search.run(progress=False, on_batch=stop_when_due)
    except _TimeUp:
        pass
    return search
