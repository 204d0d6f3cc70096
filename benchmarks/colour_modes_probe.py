"""How long a tiny StyleGAN2 keeps drawing the green digits of toy:colored-digits.

Trains one model (`--cfg=tiny --aug=noaug` settings, in this process) and prints the share of green
samples of G and G_ema every --every kimg. It separates two reasons a minority can vanish: too few
minority images (the problem dia reweights against) and a generator that cannot hold two colour
modes at all (then even --majority=0.5 collapses to one colour, and no data sampler can help).

    python benchmarks/colour_modes_probe.py --majority=0.5 --kimg=10          # ~3 min on one CPU core
    python benchmarks/colour_modes_probe.py --majority=0.99 --fair-method=dia --dia-phase2-kimg=4 --dia-refresh-kimg=2
"""
import os
import sys

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import generate, make_tiny_loop  # noqa: E402
from dia_colored_digits import green_share  # noqa: E402


@click.command()
@click.option('--workdir', default='/tmp/colour-probe', show_default=True)
@click.option('--majority', type=float, default=0.95, show_default=True, help='Share of red digits')
@click.option('--num-images', type=int, default=1000, show_default=True)
@click.option('--resolution', type=int, default=16, show_default=True)
@click.option('--channels', type=int, default=64, show_default=True, help='channel_max of G and D (base = 8x)')
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--lr-scale', type=float, default=1.0, show_default=True)
@click.option('--kimg', type=int, default=16, show_default=True)
@click.option('--every', type=float, default=2, show_default=True, help='kimg between measurements')
@click.option('--samples', type=int, default=1000, show_default=True)
@click.option('--fair-method', type=click.Choice(['none', 'dia']), default='none', show_default=True)
@click.option('--dia-phase2-kimg', type=float)
@click.option('--dia-refresh-kimg', type=float)
@click.option('--dia-clip-min', type=float, default=0.1, show_default=True)
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
@click.option('--device', default='cpu', show_default=True)
def main(workdir, majority, num_images, resolution, channels, batch, lr_scale, kimg, every, samples, fair_method,
         dia_phase2_kimg, dia_refresh_kimg, dia_clip_min, seed, threads, device):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    torch.set_num_threads(threads)
    os.makedirs(workdir, exist_ok=True)
    data = os.path.join(workdir, f'colored-{num_images}-{majority}-{resolution}.zip')
    convert_dataset('toy:colored-digits', data, num_images=num_images, resolution=resolution, seed=seed,
                    majority=majority, progress=False, overwrite=True)
    options = {}
    if fair_method == 'dia':
        options = dict(phase2_kimg=dia_phase2_kimg, refresh_kimg=dia_refresh_kimg, clip_min=dia_clip_min)
        options = {k: v for k, v in options.items() if v is not None}
    loop = make_tiny_loop(data, os.path.join(workdir, 'run'), kimg, seed, fair_method, options, batch=batch,
                          channels=channels, lr_scale=lr_scale, device=device)
    loop.setup()
    print(f'data: {100 * (1 - majority):.1f}% green; {channels} channels, batch {batch}, lr x{lr_scale:g}, {fair_method}')
    print('kimg  green share G  green share G_ema')
    due = 0.0
    while True:
        if loop.cur_nimg >= due * 1000:
            shares = [green_share(generate(net, samples, seed + 1)) for net in (loop.G, loop.G_ema)]
            print(f'{loop.cur_nimg / 1000:5.1f}  {100 * shares[0]:12.1f}%  {100 * shares[1]:16.1f}%', flush=True)
            due += every
        if loop.cur_nimg >= kimg * 1000:
            break
        loop._step()


if __name__ == '__main__':
    main()
