"""`generate.py`: images from an official or stylegan2-fair network pickle, on CPU or GPU."""
import os
import re

import click
import numpy as np
import PIL.Image
import torch

from ..fileio import atomic_write
from ..imaging import to_uint8


def parse_range(text):
    """'0-3,7,9-10' -> [0, 1, 2, 3, 7, 9, 10]."""
    out = []
    for part in str(text).split(','):
        part = part.strip()
        m = re.fullmatch(r'(\d+)-(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise click.BadParameter(f'range {part!r} runs backwards')
            out.extend(range(lo, hi + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise click.BadParameter(f'{part!r} is not a number or a range such as 0-7')
    return out


def class_label(G, class_idx, device):
    """The one-hot label for `class_idx` (conditional G), or an empty label (unconditional G)."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim:
        if class_idx is None:
            raise click.UsageError('this network is conditional: pass --class N')
        if not 0 <= class_idx < G.c_dim:
            raise click.UsageError(f'--class={class_idx} is out of range: the network has {G.c_dim} classes (0..{G.c_dim - 1})')
        label[:, class_idx] = 1
    elif class_idx is not None:
        print('warning: --class is ignored for an unconditional network')
    return label


def seed_latents(G, seeds, device):
    """z for each seed, drawn as the official generate.py does (numpy RandomState(seed).randn)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds])).float().to(device)


@torch.no_grad()
def generate_images(G, seeds, truncation_psi=1.0, class_idx=None, noise_mode='const', device='cpu', batch=16):
    """uint8 NHWC images, one per seed."""
    label = class_label(G, class_idx, device)
    out = []
    for i in range(0, len(seeds), batch):
        z = seed_latents(G, seeds[i:i + batch], device)
        img = G(z, label.expand(len(z), -1), truncation_psi=truncation_psi, noise_mode=noise_mode)
        out.append(to_uint8(img.cpu().numpy(), (-1, 1)).transpose(0, 2, 3, 1))
    return np.concatenate(out)


def load_generator(network, device):
    from .. import checkpoint
    if not os.path.isfile(network):
        raise click.UsageError(f'--network={network}: no such file')
    data = checkpoint.load_network_pkl(network)
    G = data.get('G_ema') if data.get('G_ema') is not None else data.get('G')
    if G is None:
        raise click.UsageError(f'{network} holds no generator (G_ema or G)')
    return data, G.eval().requires_grad_(False).to(device)


def save_png(array_hwc, path):
    image = PIL.Image.fromarray(array_hwc[:, :, 0] if array_hwc.shape[2] == 1 else array_hwc)
    atomic_write(path, lambda f: image.save(f, format='PNG'), suffix='.png')


@click.command(context_settings=dict(show_default=True))
@click.option('--network', 'network_pkl', help='Network pickle (official or ours)', required=True)
@click.option('--seeds', type=parse_range, help='List of random seeds, e.g. 0-7 or 1,5,9', required=True)
@click.option('--trunc', 'truncation_psi', type=float, help='Truncation psi', default=1)
@click.option('--class', 'class_idx', type=int, help='Class label (conditional networks)')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const')
@click.option('--outdir', help='Where to save the output images', required=True, metavar='DIR')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
def generate(network_pkl, seeds, truncation_psi, class_idx, noise_mode, outdir, device):
    """Generate images with a trained network.

    \b
    python generate.py --network=network-snapshot-000100.pkl --seeds=0-7 --outdir=out
    """
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.UsageError(f'--outdir={outdir} is a file; choose a folder')
    _, G = load_generator(network_pkl, device)
    os.makedirs(outdir, exist_ok=True)
    images = generate_images(G, seeds, truncation_psi, class_idx, noise_mode, device)
    for seed, image in zip(seeds, images):
        save_png(image, os.path.join(outdir, f'seed{seed:04d}.png'))
    print(f'Wrote {len(seeds)} images to {outdir}')


def main():
    generate()  # pylint: disable=no-value-for-parameter
