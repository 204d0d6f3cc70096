"""Latent-search throughput at training-like sizes: batched vs one candidate per G call, in one run.

    python benchmarks/rebalance_throughput.py --device=cuda                  # ~3 min on one GPU
    python benchmarks/rebalance_throughput.py --device=cpu --cfgs=tiny --seconds=20 --threads=1

For each G shape in --cfgs (the train.py presets: cifar at 32x32, the paper's CIFAR10-LT setting;
paper256 at 256x256; tiny at 16x16) a random-weight G (or --network PKL) is searched with a small
CNN of random weights over --classes classes, its head standardised on G's images so that every
class is found about equally often (a stand-in of the real auxiliary classifier: throughput does
not depend on what the weights say, only acceptance rates do). Both searches start from the same
state, run for --seconds each, and report kept and evaluated candidates per second. Writes
benchmarks/results/rebalance_throughput.md.
"""
import os
import platform
import sys

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import RESOLUTIONS, preset_generator, timed_search  # noqa: E402


def race(G, classifier, device, batch, seconds, trunc, seed):
    """The report of a search with `batch` candidates per call, run for `seconds` from a fresh start."""
    from stylegan2_fair.rebalance import SearchOptions
    # per_class too large to finish: the search runs for the whole window.
    options = SearchOptions(per_class=10 ** 6, max_candidates=10 ** 8, batch=batch, truncation_psi=trunc, seed=seed)
    return timed_search(G, classifier, options, seconds, device=device).report()


def build_networks(network, cfg, classes, device, seed):
    from stylegan2_fair.classifiers.small_cnn import LabelClassifier
    from stylegan2_fair.rebalance import load_generator
    torch.manual_seed(seed)
    G = load_generator(network) if network else preset_generator(cfg)
    classifier = LabelClassifier([f'class{i}' for i in range(classes)], resolution=min(64, G.img_resolution),
                                 channels=G.img_channels)
    G, classifier = G.to(device).eval(), classifier.freeze().to(device)
    calibrate(G, classifier, device)
    return G, classifier


@torch.no_grad()
def calibrate(G, classifier, device, num=512):
    """Standardise the random head's logits over G's images, so that every class is found about equally
    often (a random CNN alone puts nearly all images in one class, and the search then mostly looks
    for roots it never finds: acceptance would measure the stand-in, not the search)."""
    z = torch.randn(num, G.z_dim, device=device)
    logits = torch.cat([classifier.logits(G(part, None, truncation_psi=0.7, noise_mode='const').float())
                        for part in z.split(64)])
    mean, std = logits.mean(dim=0), logits.std(dim=0).clamp_min(1e-6)
    head = classifier.net.head
    head.weight.div_(std[:, None])
    head.bias.sub_(mean).div_(std)


@click.command()
@click.option('--device', default='cuda', show_default=True)
@click.option('--network', default=None, help='Search this pickle instead of random-weight Gs of --cfgs')
@click.option('--cfgs', default='cifar,paper256', show_default=True, help=f'G shapes, of {sorted(RESOLUTIONS)}')
@click.option('--classes', type=int, default=4, show_default=True)
@click.option('--batch', type=int, default=256, show_default=True, help='Candidates per call of the batched search')
@click.option('--seconds', type=float, default=30, show_default=True, help='Length of each search')
@click.option('--trunc', type=float, default=0.7, show_default=True)
@click.option('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'rebalance_throughput.md'), show_default=True)
def main(device, network, cfgs, classes, batch, seconds, trunc, threads, seed, out):
    from stylegan2_fair.fileio import atomic_write_text
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.UsageError('--device=cuda but no CUDA GPU is visible; use --device=cpu')
    cfgs = ['network'] if network else [c.strip() for c in cfgs.split(',') if c.strip()]
    unknown = [c for c in cfgs if c != 'network' and c not in RESOLUTIONS]
    if unknown:
        raise click.BadParameter(f'unknown G shape(s) {unknown}; choose from {sorted(RESOLUTIONS)}', param_hint='--cfgs')
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({platform.processor() or "?"})'
    lines = ['# Latent search throughput: batched vs one candidate per call (same run)', '',
             f'Machine: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads. '
             f'Command: `python benchmarks/rebalance_throughput.py {" ".join(sys.argv[1:])}`', '',
             f'Classifier: small CNN with random weights, {classes} classes (head standardised on G\'s images), '
             f'at up to 64x64; psi {trunc}; each search runs {seconds:g} s from the same start.', '',
             '| G | search | batch | candidates | kept | seconds | candidates/s | kept/s | batched / one-at-a-time (kept/s) |',
             '|---|---|---|---|---|---|---|---|---|']
    for cfg in cfgs:
        G, classifier = build_networks(network, cfg, classes, device, seed)
        # Warm-up outside the timed windows (kernel builds, cuDNN plans), at both batch sizes.
        race(G, classifier, device, 1, 2, trunc, seed)
        race(G, classifier, device, batch, 2, trunc, seed)
        single = race(G, classifier, device, 1, seconds, trunc, seed)
        batched = race(G, classifier, device, batch, seconds, trunc, seed)
        label = network or f'random {cfg} ({G.img_resolution}x{G.img_resolution})'
        ratio = batched['kept_per_second'] / max(single['kept_per_second'], 1e-9)
        for what, b, r in (('one candidate per call', 1, single), ('batched', batch, batched)):
            lines.append(f'| {label} | {what} | {b} | {r["candidates"]} | {r["kept"]} | {r["seconds"]:.1f} | '
                         f'{r["candidates_per_second"]:.1f} | {r["kept_per_second"]:.1f} | '
                         f'{f"**{ratio:.1f}x**" if b > 1 else ""} |')
        print(lines[-2] + '\n' + lines[-1], flush=True)
        del G, classifier
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_text(out, text)


if __name__ == '__main__':
    main()
