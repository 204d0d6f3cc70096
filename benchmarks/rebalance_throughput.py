"""Latent-search throughput at training-like sizes: batched vs one candidate per G call, in one run.

    python benchmarks/rebalance_throughput.py --device=cuda                 # ~1.5 min on one GPU
    python benchmarks/rebalance_throughput.py --device=cpu --resolution=32 --seconds=20 --threads=1

The searched G is a paper256-shaped generator (or --network PKL), the classifier a small CNN with
random weights over --classes classes (a stand-in of the real auxiliary classifier: throughput does
not depend on what the weights say, only acceptance rates do). Both searches start from the same
state, run for --seconds each, and report kept and evaluated candidates per second. Writes
benchmarks/results/rebalance_throughput.md.
"""
import os
import platform
import sys
import time

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


class TimeUp(Exception):
    pass


def race(G, classifier, device, batch, seconds, trunc, seed):
    """Run the search with `batch` candidates per call for `seconds`; its report."""
    from stylegan2_fair.rebalance import RebalanceSearch, SearchOptions
    # per_class too large to finish: the search runs for the whole window.
    options = SearchOptions(per_class=10 ** 6, max_candidates=10 ** 8, batch=batch, truncation_psi=trunc, seed=seed)
    search = RebalanceSearch(G, classifier, options, device=device, log=lambda *a: None)
    deadline = time.time() + seconds

    def stop_when_due(_):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if time.time() > deadline:
            raise TimeUp
    try:
        search.run(progress=False, on_batch=stop_when_due)
    except TimeUp:
        pass
    return search.report()


def build_networks(network, resolution, classes, device, seed):
    from stylegan2_fair.classifiers.small_cnn import LabelClassifier
    from stylegan2_fair.networks import Generator
    from stylegan2_fair.rebalance import load_generator
    torch.manual_seed(seed)
    if network:
        G = load_generator(network)
    else:
        # paper256: 512-d z and w, 2 mapping layers, channel_base 16384 capped at 512.
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                      mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
    classifier = LabelClassifier([f'class{i}' for i in range(classes)], resolution=64, channels=G.img_channels)
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
@click.option('--network', default=None, help='Search this pickle instead of a random-weight paper256 G')
@click.option('--resolution', type=int, default=256, show_default=True)
@click.option('--classes', type=int, default=4, show_default=True)
@click.option('--batch', type=int, default=256, show_default=True, help='Candidates per call of the batched search')
@click.option('--seconds', type=float, default=30, show_default=True, help='Length of each search')
@click.option('--trunc', type=float, default=0.7, show_default=True)
@click.option('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'rebalance_throughput.md'), show_default=True)
def main(device, network, resolution, classes, batch, seconds, trunc, threads, seed, out):
    from stylegan2_fair.fileio import atomic_write_text
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.UsageError('--device=cuda but no CUDA GPU is visible; use --device=cpu')
    G, classifier = build_networks(network, resolution, classes, device, seed)
    # Warm-up outside the timed windows (kernel builds, cuDNN plans), at both batch sizes.
    race(G, classifier, device, 1, 2, trunc, seed)
    race(G, classifier, device, batch, 2, trunc, seed)
    single = race(G, classifier, device, 1, seconds, trunc, seed)
    batched = race(G, classifier, device, batch, seconds, trunc, seed)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({platform.processor() or "?"})'
    rows = [('one candidate per call', 1, single), (f'batched', batch, batched)]
    lines = ['# Latent search throughput: batched vs one candidate per call (same run)', '',
             f'Machine: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads. '
             f'Command: `python benchmarks/rebalance_throughput.py {" ".join(sys.argv[1:])}`', '',
             f'G: {"" if network else "random-weight paper256 "}{resolution}x{resolution} '
             f'({network or "z 512, w 512, 2 mapping layers, 4 fp16 resolutions"}), psi {trunc}; classifier: '
             f'small CNN with random weights, {classes} classes, at 64x64. Each search runs {seconds:g} s from the '
             f'same start.', '',
             '| search | batch | candidates | kept | seconds | candidates/s | kept/s |', '|---|---|---|---|---|---|---|']
    for label, b, r in rows:
        lines.append(f'| {label} | {b} | {r["candidates"]} | {r["kept"]} | {r["seconds"]:.1f} | '
                     f'{r["candidates_per_second"]:.1f} | {r["kept_per_second"]:.1f} |')
    kept_ratio = batched['kept_per_second'] / max(single['kept_per_second'], 1e-9)
    cand_ratio = batched['candidates_per_second'] / max(single['candidates_per_second'], 1e-9)
    lines += ['', f'**Batched / one-at-a-time: {kept_ratio:.1f}x kept samples per second, {cand_ratio:.1f}x '
                  f'candidates per second.**', '']
    text = '\n'.join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_text(out, text)


if __name__ == '__main__':
    main()
