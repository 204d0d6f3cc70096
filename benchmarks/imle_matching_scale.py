"""IMLE's re-match at the paper's scale: N real images against a pool of m = 10 N candidates.

The issue's bar: N = 30k images and m = 300k candidates fit in memory and re-match in minutes on one
GPU, split across processes when training is distributed. A re-match is two pieces, timed here:

1. search: the exact nearest neighbour (`stylegan2_fair.nn_search`) of N query features among m
   candidate features of --dim numbers (the sketched LPIPS space, `--imle-proj-dim`). The features are random:
   the search's cost does not depend on them. The result is checked against brute force for a sample of
   queries. With --world-size W, one rank's share is timed: N / W queries against the whole pool,
   as the hook splits it.
2. features: render a candidate with G, then take its LPIPS embedding and sketch. G is a random-weight
   G of the --cfg preset (speed does not depend on the weights), and so is the VGG trunk. This is timed over
   --render-batches batches, then scaled to the m / W candidates one rank renders.
   The reals' features are computed once per run (LPIPS is a fixed space), so they are not counted.

    python benchmarks/imle_matching_scale.py --device=cuda                       # the paper's N and m
    python benchmarks/imle_matching_scale.py --device=cpu --threads=2 --render-batches=1 --render-batch=4
"""
import os
import resource
import sys
import time

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import RESOLUTIONS, preset_generator  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def peak_bytes(device):
    """Peak memory so far: the CUDA allocator's high-water mark, or the process's max RSS on the CPU."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def time_search(queries, pool, device, check):
    from stylegan2_fair.nn_search import nearest_neighbors
    before = peak_bytes(device)
    start = time.time()
    index, _ = nearest_neighbors(queries, pool)
    sync(device)
    seconds, search_bytes = time.time() - start, peak_bytes(device) - before
    # Brute force on a sample: the full distance rows of `check` queries.
    sample = torch.randperm(len(queries), generator=torch.Generator().manual_seed(1))[:check]
    brute = torch.cdist(queries[sample].double(), pool.double()).argmin(1)
    agree = float((brute.cpu() == index[sample].cpu()).float().mean())
    return seconds, agree, search_bytes


@torch.no_grad()
def time_features(cfg, resolution, device, batch, batches, proj_dim):
    """Seconds per candidate for G render + LPIPS embedding + sketch."""
    from stylegan2_fair.lpips_features import CountSketch, LPIPSFeatures
    torch.manual_seed(0)
    G = preset_generator(cfg, resolution).to(device).eval()
    lpips = LPIPSFeatures('random').to(device)
    sketch = CountSketch(proj_dim)

    def features():
        z = torch.randn([batch, G.z_dim], device=device)
        images = G(z, torch.zeros([batch, 0], device=device), noise_mode='const')
        return lpips.embed(images, sketch)
    features()  # warm-up: kernel builds, cuDNN plans, the sketch's maps
    sync(device)
    start = time.time()
    for _ in range(batches):
        features()
    sync(device)
    return (time.time() - start) / (batches * batch)


@click.command()
@click.option('--queries', 'num_queries', type=int, default=30_000, show_default=True, help='N: real images matched')
@click.option('--pool-factor', type=int, default=10, show_default=True, help='m = factor x N candidates')
@click.option('--dim', type=int, default=512, show_default=True, help='feature size (--imle-proj-dim)')
@click.option('--world-size', type=int, default=1, show_default=True, help='time one rank of W (its N / W queries)')
@click.option('--check', type=int, default=256, show_default=True, help='queries checked against brute force')
@click.option('--cfg', default='paper256', show_default=True, type=click.Choice(sorted(RESOLUTIONS)))
@click.option('--resolution', type=int, help='G resolution [default: the preset\'s]')
@click.option('--render-batch', type=int, default=64, show_default=True)
@click.option('--render-batches', type=int, default=8, show_default=True)
@click.option('--device', default='cuda', show_default=True)
@click.option('--threads', type=int, default=None, help='torch threads on the CPU')
def main(num_queries, pool_factor, dim, world_size, check, cfg, resolution, render_batch, render_batches,
         device, threads):
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.UsageError('no CUDA GPU is visible; run with --device=cpu (the search alone takes ~1.5 min '
                               'on 2 cores at the default sizes)')
    if threads:
        torch.set_num_threads(threads)
    pool_size = pool_factor * num_queries
    share = -(-num_queries // world_size)
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn([pool_size, dim], generator=gen).to(device)
    queries = torch.randn([share, dim], generator=gen).to(device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}; N = {num_queries}, m = {pool_size}, dim {dim}, world size {world_size}',
          flush=True)
    print(f'features held: pool {pool.numel() * 4 / 2**20:.0f} MiB, queries {queries.numel() * 4 / 2**20:.0f} MiB',
          flush=True)

    search_sec, agree, search_bytes = time_search(queries, pool, device, check)
    print(f'search: {share} queries x {pool_size} candidates in {search_sec:.1f} s, peak +{search_bytes / 2**30:.2f} GiB; '
          f'agrees with brute force on {agree:.1%} of {check} queries', flush=True)

    per_candidate = time_features(cfg, resolution, device, render_batch, render_batches, dim)
    render_sec = per_candidate * pool_size / world_size
    print(f'features ({cfg}, {resolution or RESOLUTIONS[cfg]}x{resolution or RESOLUTIONS[cfg]}): '
          f'{1 / per_candidate:.1f} candidates/s -> {render_sec:.0f} s for this rank\'s {pool_size // world_size} '
          f'candidates', flush=True)
    print(f'| {name} | {num_queries} | {pool_size} | {dim} | {world_size} | {search_sec:.1f} | {agree:.0%} | '
          f'{search_bytes / 2**30:.2f} | {1 / per_candidate:.1f} | {render_sec:.0f} | {(render_sec + search_sec) / 60:.1f} |')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
