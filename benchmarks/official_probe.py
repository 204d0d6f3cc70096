"""Is a collapse ours or StyleGAN2's? The official training loop and ours, same config, same data.

    python benchmarks/official_probe.py --official=DIR --majority=0.5 --kimg=16   # ~6 min, one CPU core
    python benchmarks/official_probe.py --official=DIR --toy=stacked-digits --kimg=40 --every=8

Trains the official `training.training_loop.training_loop` (a checkout of NVlabs/stylegan2-ada-pytorch in
DIR, run on the CPU) with the kwargs our `--cfg=tiny --aug=noaug` builds, then our TrainingLoop with the
same kwargs, on a toy, and prints both side by side every --every kimg:
- on `toy:colored-digits`, the green share of 1000 samples of each model's G and G_ema;
- on `toy:stacked-digits`, the modes covered by 5000 G_ema samples and their KL to uniform (the mode
  reader of imle_stacked_digits.py).
The official loop is read from its snapshots (written every tick, read with our loader); ours is
measured in-process. The script first checks that both codes build the same initial weights from the
same torch seed (the loops themselves draw their random numbers in a different order).

The official loop hard-codes CUDA (its device, timing events, peak-memory stats, pinned batches).
Four stand-ins make it run on the CPU, and nothing else changes: its module's `torch` is seen through
a proxy whose `device()` is the CPU and whose `cuda` has no events and reports 0 bytes; `pin_memory()`
returns the tensor. Its ops then take their reference paths, as ours do on the CPU.
"""
import glob
import os
import sys
import types

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import generate, make_tiny_loop  # noqa: E402
from dia_colored_digits import green_share  # noqa: E402


# The official training_loop's arguments that our TrainingLoop kwargs carry under the same names.
OFFICIAL_ARGS = ('training_set_kwargs', 'G_kwargs', 'D_kwargs', 'G_opt_kwargs', 'D_opt_kwargs', 'augment_kwargs',
                 'loss_kwargs', 'random_seed', 'batch_size', 'batch_gpu', 'ema_kimg', 'ema_rampup', 'augment_p',
                 'ada_target', 'total_kimg')


def official_loop_on_cpu(official):
    """The official training_loop function, its CUDA-only calls replaced by CPU stand-ins."""
    sys.path.insert(0, os.path.abspath(official))
    torch.utils.data.Sampler.__init__ = lambda self, *args, **kwargs: None  # torch >= 2.2 (see _official_train.py)
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    try:
        from training import training_loop
    except ImportError as e:
        raise SystemExit(f'--official={official}: cannot import training.training_loop ({e}). Give a checkout '
                         'of NVlabs/stylegan2-ada-pytorch; it also needs `requests` and `psutil` installed.')
    cpu_torch = types.SimpleNamespace(**vars(torch))
    cpu_torch.device = lambda *args, **kwargs: torch.device('cpu')
    cpu_torch.cuda = types.SimpleNamespace(Event=lambda **kwargs: None, max_memory_allocated=lambda *args: 0,
                                           reset_peak_memory_stats=lambda *args: None)
    training_loop.torch = cpu_torch
    return training_loop.training_loop


def same_initial_weights(G_kwargs, D_kwargs, common, seeds=range(12)):
    """Do the official networks and ours start from the same weights for the same torch seed?"""
    from training import networks as official_networks
    from stylegan2_fair import networks
    for seed in seeds:
        states = []
        for module in (official_networks, networks):
            torch.manual_seed(seed)
            states.append({**module.Generator(**G_kwargs, **common).state_dict(),
                           **{'D.' + k: v for k, v in module.Discriminator(**D_kwargs, **common).state_dict().items()}})
        if states[0].keys() != states[1].keys() or not all(torch.equal(states[0][k], states[1][k]) for k in states[0]):
            return False
    return True


def make_measure(toy, samples, seed):
    """(column header, measure(nets) -> cells) for a dict of networks holding G and G_ema."""
    if toy == 'colored-digits':
        def measure(nets):
            return [f'{100 * green_share(generate(nets[name], samples, seed)):.1f}%' for name in ('G', 'G_ema')]
        return ['green G', 'green G_ema'], measure
    from imle_stacked_digits import mode_reader, mode_stats
    read_modes = mode_reader(16, seed)

    def measure(nets):
        modes, kl = mode_stats(read_modes(generate(nets['G_ema'], samples, seed + 1)))
        return [f'{modes}', f'{kl:.3f}']
    return ['modes G_ema', 'KL G_ema'], measure


def measure_snapshots(run_dir, measure):
    """{kimg: cells} for every network snapshot the official loop wrote."""
    from stylegan2_fair.checkpoint import load_network_pkl
    cells = {}
    for pkl in sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl'))):
        kimg = int(os.path.basename(pkl)[len('network-snapshot-'):-len('.pkl')])
        cells[kimg] = measure(load_network_pkl(pkl))
    return cells


@click.command()
@click.option('--official', required=True, metavar='DIR', help='a checkout of NVlabs/stylegan2-ada-pytorch')
@click.option('--workdir', default='/tmp/official-probe', show_default=True)
@click.option('--toy', type=click.Choice(['colored-digits', 'stacked-digits']), default='colored-digits', show_default=True)
@click.option('--majority', type=float, default=0.5, show_default=True, help='colored-digits: share of red digits')
@click.option('--num-images', type=int, default=1000, show_default=True)
@click.option('--channels', type=int, default=64, show_default=True, help='channel_max of G and D (base = 8x)')
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--kimg', type=int, default=16, show_default=True)
@click.option('--every', type=int, default=1, show_default=True, help='kimg between measurements')
@click.option('--samples', type=int, help='samples per measurement [default: 1000 colored, 5000 stacked]')
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
def main(official, workdir, toy, majority, num_images, channels, batch, kimg, every, samples, seed, threads):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    torch.set_num_threads(threads)
    training_loop = official_loop_on_cpu(official)
    os.makedirs(workdir, exist_ok=True)
    data = os.path.join(workdir, f'{toy}-{num_images}-{majority}.zip')
    convert_dataset(f'toy:{toy}', data, num_images=num_images, resolution=16, seed=seed,
                    majority=majority, progress=False, overwrite=True)
    samples = samples or (1000 if toy == 'colored-digits' else 5000)
    header, measure = make_measure(toy, samples, seed + 1)

    ours = make_tiny_loop(data, os.path.join(workdir, 'ours'), kimg, seed, 'none', {}, batch=batch, channels=channels)
    args = {k: getattr(ours, k) for k in OFFICIAL_ARGS}
    args['G_kwargs'] = dict(args['G_kwargs'], class_name='training.networks.Generator')
    args['D_kwargs'] = dict(args['D_kwargs'], class_name='training.networks.Discriminator')
    args['loss_kwargs'] = dict(args['loss_kwargs'], class_name='training.loss.StyleGAN2Loss')
    common = dict(c_dim=0, img_resolution=16, img_channels=3)
    nets = [{k: v for k, v in args[name].items() if k != 'class_name'} for name in ('G_kwargs', 'D_kwargs')]
    print(f'same initial weights as the official networks for torch seeds 0-11: {same_initial_weights(*nets, common)}')
    official_dir = os.path.join(workdir, 'official')
    os.makedirs(official_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(official_dir, 'network-snapshot-*.pkl')):
        os.remove(stale)
    training_loop(run_dir=official_dir, **args,
                  data_loader_kwargs=dict(pin_memory=False, num_workers=0), kimg_per_tick=every,
                  image_snapshot_ticks=None, network_snapshot_ticks=1, cudnn_benchmark=False)
    official_cells = measure_snapshots(official_dir, measure)

    ours.setup()
    our_cells = {}
    while True:
        if ours.cur_nimg >= len(our_cells) * every * 1000:
            our_cells[len(our_cells) * every] = measure(dict(G=ours.G, G_ema=ours.G_ema))
        if ours.cur_nimg >= kimg * 1000:
            break
        ours._step()

    what = f'{100 * (1 - majority):.1f}% green, ' if toy == 'colored-digits' else ''
    print(f'\n{toy}: {what}{num_images} images at 16x16; {channels} channels, batch {batch}, '
          f'R1 gamma {args["loss_kwargs"]["r1_gamma"]:g}; {samples} samples per measurement')
    print('kimg  ' + '  '.join(f'official {h:>11}' for h in header) + '  ' + '  '.join(f'ours {h:>11}' for h in header))
    for k in sorted(set(official_cells) | set(our_cells)):
        cells = official_cells.get(k, ['-'] * 2) + our_cells.get(k, ['-'] * 2)
        print(f'{k:4d}  ' + '  '.join(f'{c:>20}' for c in cells[:2]) + '  ' + '  '.join(f'{c:>16}' for c in cells[2:]))


if __name__ == '__main__':
    main()
