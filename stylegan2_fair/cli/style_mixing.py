"""`style_mixing.py`: a style-mixing matrix, as in the StyleGAN papers' figures.

Each row seed's ws get the ws of a column seed at the layers given by --styles (low indices are the
coarse layers: pose, shape; high ones colour and texture). Writes every image as ROW-COL.png (a
seed's own image as SEED-SEED.png) and grid.png: column seeds across the top, row seeds down the
left, the mixes inside.
"""
import os

import click
import numpy as np
import torch

from .generate import class_label, load_generator, parse_range, save_png, seed_latents, synthesize_ws


@torch.no_grad()
def style_mix(G, row_seeds, col_seeds, styles, truncation_psi=1.0, noise_mode='const', label=None):
    """{(row, col): uint8 HWC image} for every pair, and {(seed, seed): its own image} for every seed.

    Each seed is mapped on its own and each image synthesised on its own, so a cell's pixels do not
    depend on which other seeds share the grid.
    """
    device = next(G.parameters()).device
    label = torch.zeros([1, G.c_dim], device=device) if label is None else label
    ws = {seed: G.mapping(seed_latents(G, [seed], device), label, truncation_psi=truncation_psi)
          for seed in dict.fromkeys(row_seeds + col_seeds)}
    images = {(seed, seed): synthesize_ws(G, w, noise_mode)[0] for seed, w in ws.items()}
    for row in row_seeds:
        for col in col_seeds:
            mixed = ws[row].clone()
            mixed[:, styles] = ws[col][:, styles]
            images[(row, col)] = synthesize_ws(G, mixed, noise_mode)[0]
    return images


def mixing_grid(images, row_seeds, col_seeds):
    """One uint8 HWC canvas: black corner, column seeds' images on top, row seeds' down the left."""
    H, W, C = next(iter(images.values())).shape
    grid = np.zeros([H * (len(row_seeds) + 1), W * (len(col_seeds) + 1), C], dtype=np.uint8)
    for j, col in enumerate(col_seeds, start=1):
        grid[:H, W * j:W * (j + 1)] = images[(col, col)]
    for i, row in enumerate(row_seeds, start=1):
        grid[H * i:H * (i + 1), :W] = images[(row, row)]
        for j, col in enumerate(col_seeds, start=1):
            grid[H * i:H * (i + 1), W * j:W * (j + 1)] = images[(row, col)]
    return grid


@click.command(context_settings=dict(show_default=True))
@click.option('--network', 'network_pkl', help='Network pickle (official or ours)', required=True)
@click.option('--rows', 'row_seeds', type=parse_range, metavar='SEEDS', help='Seeds of the rows, e.g. 85,100,75',
              required=True)
@click.option('--cols', 'col_seeds', type=parse_range, metavar='SEEDS', help='Seeds of the columns, e.g. 55,821',
              required=True)
@click.option('--styles', 'col_styles', type=parse_range, default='0-6', metavar='LAYERS',
              help='Style layers (ws) taken from the column seed, e.g. 0-3 or 4,5')
@click.option('--trunc', 'truncation_psi', type=float, default=1, help='Truncation psi')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const')
@click.option('--outdir', help='Where to save the images', required=True, metavar='DIR')
@click.option('--class', 'class_idx', type=int, help='Class label (conditional networks)')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
def style_mixing(network_pkl, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, outdir, class_idx,
                 device):
    """Style-mixing matrix of a network: rows x columns images and grid.png.

    \b
    python style_mixing.py --network=network-snapshot-000100.pkl --rows=85,100,75 --cols=55,821,1789 --outdir=out
    """
    network_pkl, outdir = os.path.expanduser(network_pkl), os.path.expanduser(outdir)
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.UsageError(f'--outdir={outdir} is a file; choose a folder')
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    _, G = load_generator(network_pkl, device)
    bad = [s for s in col_styles if s >= G.num_ws]
    if bad:
        raise click.BadParameter(f'style layer(s) {", ".join(map(str, bad))} out of range: this network has '
                                 f'{G.num_ws} style layers, 0-{G.num_ws - 1}', param_hint='--styles')
    label = class_label(G, class_idx, device)
    images = style_mix(G, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, label)
    os.makedirs(outdir, exist_ok=True)
    for (row, col), image in images.items():
        save_png(image, os.path.join(outdir, f'{row}-{col}.png'))
    save_png(mixing_grid(images, row_seeds, col_seeds), os.path.join(outdir, 'grid.png'))
    print(f'Wrote {len(images)} images and grid.png ({len(row_seeds)} rows x {len(col_seeds)} columns) to {outdir}')


def main():
    style_mixing()  # pylint: disable=no-value-for-parameter
