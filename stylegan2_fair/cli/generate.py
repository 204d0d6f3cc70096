"""`generate.py`: images from an official or stylegan2-fair network pickle, on CPU or GPU."""
import os
import re
import zipfile

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


@torch.no_grad()
def synthesize_ws(G, ws, noise_mode='const'):
    """uint8 NHWC images from ws [N, num_ws, w_dim]. One synthesis call per image, so an image's pixels do not
    depend on what else is rendered with it (projector.py's proj.png and `--projected-w` must agree exactly)."""
    ws = torch.as_tensor(ws, dtype=torch.float32, device=next(G.parameters()).device)
    images = [G.synthesis(w[None], noise_mode=noise_mode).cpu().numpy() for w in ws]
    return to_uint8(np.concatenate(images), (-1, 1)).transpose(0, 2, 3, 1)


def load_projected_w(path, G=None):
    """The `w` array [N, num_ws, w_dim] of a projector.py result (projected_w.npz), checked against G if given."""
    if not os.path.isfile(path):
        raise click.UsageError(f'--projected-w={path}: no such file')
    try:
        data, ws = np.load(path, allow_pickle=False), None
        if isinstance(data, np.lib.npyio.NpzFile):   # an .npy file loads as a bare array, with no name "w"
            with data:
                ws = data['w'] if 'w' in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise click.UsageError(f'--projected-w={path} is not a readable .npz file ({e})') from e
    if ws is None:
        raise click.UsageError(f'--projected-w={path} holds no array named "w" (projector.py writes '
                               f'projected_w.npz with one)')
    if ws.ndim != 3:
        raise click.UsageError(f'--projected-w={path}: w has shape {list(ws.shape)}; expected [N, num_ws, w_dim]')
    if G is not None and ws.shape[1:] != (G.num_ws, G.w_dim):
        raise click.UsageError(f'--projected-w={path}: w has shape {list(ws.shape)}, but this network takes '
                               f'[N, {G.num_ws}, {G.w_dim}] (num_ws={G.num_ws}, w_dim={G.w_dim}); was it projected '
                               f'with another network?')
    return ws


def save_png(array_hwc, path):
    image = PIL.Image.fromarray(array_hwc[:, :, 0] if array_hwc.shape[2] == 1 else array_hwc)
    atomic_write(path, lambda f: image.save(f, format='PNG'), suffix='.png')


@click.command(context_settings=dict(show_default=True))
@click.option('--network', 'network_pkl', help='Network pickle (official or ours)', required=True)
@click.option('--seeds', type=parse_range, help='List of random seeds, e.g. 0-7 or 1,5,9 (or give --projected-w)')
@click.option('--projected-w', metavar='FILE', help='Render the w in a projector.py result (projected_w.npz) '
              'instead of --seeds: writes proj00.png, proj01.png, ...')
@click.option('--trunc', 'truncation_psi', type=float, help='Truncation psi', default=1)
@click.option('--class', 'class_idx', type=int, help='Class label (conditional networks)')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const')
@click.option('--outdir', help='Where to save the output images', required=True, metavar='DIR')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
@click.option('--drs', is_flag=True, help='Discriminator rejection sampling with the auxiliary D of a Dia-GAN '
              'snapshot: as many images as --seeds lists, latents drawn from the first seed')
@click.option('--drs-percentile', type=float, default=80, help='DRS: percentile of F per batch used as gamma')
@click.option('--balance', is_flag=True, help='Class-balanced rejection sampling under --classifier: as many images '
              'as --seeds lists, latents drawn from the first seed (combines with --drs)')
@click.option('--classifier', metavar='SPEC',
              help='Classifier for --balance and --trunc-mode=class, e.g. labels:clf.pt')
@click.option('--target', metavar='SHARES',
              help='--balance: class shares, 0.1,0.2,... or name=share,... [default: uniform]')
@click.option('--calib', type=click.IntRange(min=1), default=1000,
              help='--balance: candidates classified before sampling')
@click.option('--min-acceptance', type=click.FloatRange(0, 1), default=0.0,
              help='--balance: keep the acceptance rate near this by relaxing the target of classes G hardly draws')
@click.option('--trunc-mode', type=click.Choice(['global', 'class']), default='global',
              help='Truncate toward w_avg (global) or toward the w centroid of each sample\'s class (class)')
@click.option('--centroid-samples', type=click.IntRange(min=1), default=10000,
              help='--trunc-mode=class: mapping samples behind the class centroids (cached next to the pickle)')
def generate(network_pkl, seeds, projected_w, truncation_psi, class_idx, noise_mode, outdir, device, drs,
             drs_percentile, balance, classifier, target, calib, min_acceptance, trunc_mode, centroid_samples):
    """Generate images with a trained network.

    \b
    python generate.py --network=network-snapshot-000100.pkl --seeds=0-7 --outdir=out
    python generate.py --network=network-snapshot-000100.pkl --projected-w=out/projected_w.npz --outdir=out
    """
    if projected_w is not None:
        check_projected_w_options(seeds, drs, balance, trunc_mode, truncation_psi)
        projected_w = os.path.expanduser(projected_w)
        load_projected_w(projected_w)   # a bad file fails before the network is loaded
    elif seeds is None:
        raise click.UsageError('give --seeds (e.g. --seeds=0-7), or --projected-w=FILE to render a projection')
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    network_pkl, outdir = os.path.expanduser(network_pkl), os.path.expanduser(outdir)  # ~ after --opt=
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.UsageError(f'--outdir={outdir} is a file; choose a folder')
    data, G = load_generator(network_pkl, device)
    if projected_w is not None:
        return generate_projected(G, projected_w, class_idx, noise_mode, outdir)
    if balance or (trunc_mode == 'class' and truncation_psi != 1):
        return generate_fair(data, G, network_pkl, seeds, truncation_psi, class_idx, noise_mode, outdir, device,
                             drs, drs_percentile, balance, classifier, target, calib, min_acceptance, trunc_mode,
                             centroid_samples)
    if drs:
        return generate_drs(data, G, network_pkl, seeds, truncation_psi, class_idx, noise_mode, outdir, device,
                            drs_percentile)
    os.makedirs(outdir, exist_ok=True)
    images = generate_images(G, seeds, truncation_psi, class_idx, noise_mode, device)
    for seed, image in zip(seeds, images):
        save_png(image, os.path.join(outdir, f'seed{seed:04d}.png'))
    print(f'Wrote {len(seeds)} images to {outdir}')


def check_projected_w_options(seeds, drs, balance, trunc_mode, truncation_psi):
    """--projected-w renders fixed ws: options that pick or truncate latents have nothing to act on."""
    if seeds is not None:  # the official script warns too: its command lines may carry both
        print('warning: --seeds is ignored with --projected-w (the images come from the w in the file)')
    if drs or balance:
        raise click.UsageError('--projected-w renders the w in the file as it is; it cannot be combined with '
                               '--drs or --balance, which draw latents')
    if trunc_mode == 'class' and truncation_psi != 1:
        raise click.UsageError('--projected-w cannot be combined with --trunc-mode=class')
    if truncation_psi != 1:
        print('warning: --trunc is ignored with --projected-w (the w are rendered as projected)')


def generate_projected(G, path, class_idx, noise_mode, outdir):
    """--projected-w: one image per w in the file, proj00.png, proj01.png, ..."""
    if class_idx is not None:
        print('warning: --class is ignored with --projected-w (the label went into the projected w)')
    ws = load_projected_w(path, G)
    os.makedirs(outdir, exist_ok=True)
    for idx, image in enumerate(synthesize_ws(G, ws, noise_mode)):
        save_png(image, os.path.join(outdir, f'proj{idx:02d}.png'))
    print(f'Wrote {len(ws)} images from {path} to {outdir}')


def generate_drs(data, G, network_pkl, seeds, truncation_psi, class_idx, noise_mode, outdir, device, percentile):
    """--drs: len(seeds) images accepted by DRS under the snapshot's D_aux (stylegan2_fair/drs.py)."""
    from ..drs import DrsStalled, aux_discriminator, drs_sample
    try:
        D = aux_discriminator(data, network_pkl).eval().to(device)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    label = class_label(G, class_idx, device)[0] if G.c_dim else None
    try:
        result = drs_sample(G, D, len(seeds), c=label, percentile=percentile, truncation_psi=truncation_psi,
                            noise_mode=noise_mode, generator=torch.Generator().manual_seed(seeds[0]))
    except DrsStalled as e:
        raise click.ClickException(str(e).replace('lower the percentile', 'lower --drs-percentile')) from e
    os.makedirs(outdir, exist_ok=True)
    for i, image in enumerate(to_uint8(result.images.numpy(), (-1, 1)).transpose(0, 2, 3, 1)):
        save_png(image, os.path.join(outdir, f'drs{i:04d}.png'))
    print(f'DRS acceptance rate {result.acceptance_rate:.3f} ({result.num_accepted} of {result.num_proposed} '
          f'proposals); wrote {len(seeds)} images to {outdir}')
    return result


def generate_fair(data, G, network_pkl, seeds, psi, class_idx, noise_mode, outdir, device, drs, drs_percentile,
                  balance, classifier_spec, target, calib, min_acceptance, trunc_mode, centroid_samples):
    """--balance and/or --trunc-mode=class (stylegan2_fair/fair_generation.py)."""
    from .. import fair_generation as fg
    from ..classifiers import create_classifier
    if classifier_spec is None:
        raise click.UsageError('--balance and --trunc-mode=class need --classifier (e.g. labels:clf.pt)')
    try:
        classifier = create_classifier(classifier_spec, device=device, img_resolution=G.img_resolution)
        target = fg.resolve_target(target, classifier.class_names) if balance else None
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from e
    centroids = None
    if trunc_mode == 'class' and psi != 1:
        centroids = fg.load_or_estimate_centroids(G, classifier, network_pkl, centroid_samples, device=device,
                                                  verbose=True)
    D = None
    if drs:
        from ..drs import aux_discriminator
        try:
            D = aux_discriminator(data, network_pkl).eval().requires_grad_(False).to(device)
        except ValueError as e:
            raise click.UsageError(str(e)) from e
    label = class_label(G, class_idx, device)
    generator = torch.Generator().manual_seed(seeds[0])
    cands = fg.CandidateGenerator(G, truncation_psi=psi, trunc_mode=trunc_mode, centroids=centroids,
                                  classifier=classifier, noise_mode=noise_mode, label_fn=lambda n: label.expand(n, -1),
                                  drs_D=D, drs_percentile=drs_percentile, generator=generator, device=device)
    os.makedirs(outdir, exist_ok=True)
    if not balance and not drs:   # class truncation alone: one image per seed, as plain generation
        chunks = [seeds[i:i + 16] for i in range(0, len(seeds), 16)]
        images = torch.cat([cands.images_for(seed_latents(G, chunk, device), label.expand(len(chunk), -1))
                            for chunk in chunks])
        names = [f'seed{seed:04d}.png' for seed in seeds]
    elif balance:
        sampler = fg.BalancedSampler(G, classifier, target=target, calib=calib, min_acceptance=min_acceptance,
                                     candidates=cands)
        try:
            images, _, stats = sampler.sample(len(seeds))
        except RuntimeError as e:
            raise click.ClickException(str(e)) from e
        names = [f'balanced{i:04d}.png' for i in range(len(images))]
        drs_note = f'; DRS acceptance {stats["drs_acceptance_rate"]:.3f}' if drs else ''
        print(f'Balance acceptance rate {stats["acceptance_rate"]:.3f} ({stats["num_accepted"]} of '
              f'{stats["num_proposed"]} proposals after {stats["num_calibration"]} for calibration{drs_note})')
        print('Class histogram: ' + ', '.join(f'{n}={c}' for n, c in zip(stats['class_names'], stats['histogram'])))
    else:
        images = cands(len(seeds))
        names = [f'drs{i:04d}.png' for i in range(len(images))]
        print(f'DRS acceptance rate {cands.drs_acceptance_rate:.3f}')
    for name, image in zip(names, to_uint8(images.cpu().numpy(), (-1, 1)).transpose(0, 2, 3, 1)):
        save_png(image, os.path.join(outdir, name))
    print(f'Wrote {len(names)} images to {outdir}')


def main():
    generate()  # pylint: disable=no-value-for-parameter
