"""Does a tiny StyleGAN2 keep its modes over training? One model, a measurement every --every kimg.

  --toy=colored-digits  the share of green samples of G and G_ema. It separates two reasons a
                        minority can vanish: too few minority images (what dia reweights against)
                        and a generator that cannot hold two colour modes at all (then even
                        --majority=0.5 collapses to one colour, and no data sampler can help).
  --toy=stacked-digits  modes covered and KL to uniform of G_ema's samples (the mode reader of
                        imle_stacked_digits.py), e.g. to compare R1 weights with --gamma.

    python benchmarks/collapse_probe.py --majority=0.5 --kimg=10                   # ~3 min on one CPU core
    python benchmarks/collapse_probe.py --majority=0.99 --fair-method=dia --dia-phase2-kimg=4 --dia-refresh-kimg=2
    python benchmarks/collapse_probe.py --toy=stacked-digits --kimg=40 --every=4 --gamma=0.0032   # ~12 min
"""
import os
import sys

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import generate, make_tiny_loop  # noqa: E402


@click.command()
@click.option('--workdir', default='/tmp/collapse-probe', show_default=True)
@click.option('--toy', type=click.Choice(['colored-digits', 'stacked-digits']), default='colored-digits', show_default=True)
@click.option('--majority', type=float, default=0.95, show_default=True, help='colored-digits: share of red digits')
@click.option('--num-images', type=int, default=1000, show_default=True)
@click.option('--resolution', type=int, default=16, show_default=True)
@click.option('--channels', type=int, default=64, show_default=True, help='channel_max of G and D (base = 8x)')
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--lr-scale', type=float, default=1.0, show_default=True)
@click.option('--mbstd', type=int, help="D's minibatch-std group size [default: the tiny preset's 4]")
@click.option('--gamma', type=float, help='R1 weight [default: the tiny preset\'s]')
@click.option('--pl-weight', type=float, help='Path length regularisation weight [default: the tiny preset\'s 2]')
@click.option('--mapping-lr', type=float, help='Learning-rate multiplier of the mapping network [default: 0.01]')
@click.option('--style-mixing', type=float, help='Style mixing probability [default: the tiny preset\'s 0.9]')
@click.option('--kimg', type=int, default=16, show_default=True)
@click.option('--every', type=float, default=2, show_default=True, help='kimg between measurements')
@click.option('--samples', type=int, default=None, help='Samples per measurement [default: 1000 colored, 5000 stacked]')
@click.option('--fair-method', type=click.Choice(['none', 'dia']), default='none', show_default=True)
@click.option('--dia-phase2-kimg', type=float)
@click.option('--dia-refresh-kimg', type=float)
@click.option('--dia-clip-min', type=float, default=0.1, show_default=True)
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
@click.option('--device', default='cpu', show_default=True)
def main(workdir, toy, majority, num_images, resolution, channels, batch, lr_scale, mbstd, gamma, pl_weight, mapping_lr, style_mixing, kimg, every, samples,
         fair_method, dia_phase2_kimg, dia_refresh_kimg, dia_clip_min, seed, threads, device):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    torch.set_num_threads(threads)
    os.makedirs(workdir, exist_ok=True)
    data = os.path.join(workdir, f'{toy}-{num_images}-{majority}-{resolution}.zip')
    convert_dataset(f'toy:{toy}', data, num_images=num_images, resolution=resolution, seed=seed,
                    majority=majority, progress=False, overwrite=True)
    options = {}
    if fair_method == 'dia':
        options = dict(phase2_kimg=dia_phase2_kimg, refresh_kimg=dia_refresh_kimg, clip_min=dia_clip_min)
        options = {k: v for k, v in options.items() if v is not None}
    loop = make_tiny_loop(data, os.path.join(workdir, 'run'), kimg, seed, fair_method, options, batch=batch,
                          channels=channels, lr_scale=lr_scale, device=device, mbstd=mbstd)
    if mapping_lr is not None:
        loop.G_kwargs['mapping_kwargs']['lr_multiplier'] = mapping_lr
    loop.setup()
    if gamma is not None:
        loop.loss.r1_gamma = gamma
    if pl_weight is not None:
        loop.loss.pl_weight = pl_weight
    if style_mixing is not None:
        loop.loss.style_mixing_prob = style_mixing
    if toy == 'colored-digits':
        from dia_colored_digits import green_share
        samples = samples or 1000
        header = 'kimg  green share G  green share G_ema'

        def measure():
            shares = [green_share(generate(net, samples, seed + 1)) for net in (loop.G, loop.G_ema)]
            return f'{100 * shares[0]:12.1f}%  {100 * shares[1]:16.1f}%'
        print(f'data: {100 * (1 - majority):.1f}% green; ', end='')
    else:
        from imle_stacked_digits import mode_reader, mode_stats
        read_modes, samples = mode_reader(resolution, seed + 1), samples or 5000
        header = 'kimg  modes (G_ema)  KL'

        def measure():
            modes, kl = mode_stats(read_modes(generate(loop.G_ema, samples, seed + 2)))
            return f'{modes:13d}  {kl:.3f}'
    print(f'{channels} channels, batch {batch}, mbstd group {loop.D.b4.mbstd.group_size}, lr x{lr_scale:g}, '
          f'R1 gamma {loop.loss.r1_gamma:g}, path length weight {loop.loss.pl_weight:g}, '
          f'style mixing {loop.loss.style_mixing_prob:g}, mapping lr x{loop.G.mapping.fc0.bias_gain:g}, {fair_method}')
    print(header)
    due = 0.0
    while True:
        if loop.cur_nimg >= due * 1000:
            print(f'{loop.cur_nimg / 1000:5.1f}  {measure()}', flush=True)
            due += every
        if loop.cur_nimg >= kimg * 1000:
            break
        loop._step()


if __name__ == '__main__':
    main()
