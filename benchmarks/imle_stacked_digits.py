"""Inclusive GAN (IMLE) vs vanilla StyleGAN2: mode coverage, minority inclusion, and cost.

The CPU-sized stand-in for the paper's Stacked-MNIST experiment (Yu et al. 2020, Table 1) and its
minority inclusion (Sec. 4.5), all at `--cfg=tiny` with the same budget (kimg) and seed per pair:

  1. Coverage: toy:stacked-digits (1000 modes = 3 digits stacked as R, G, B). A digit classifier is
     trained here on sklearn's 8x8 digits (rendered with the toy's random scale/shift, then pooled to
     8x8), applied per channel; we count covered modes and KL(generated modes || uniform) over
     `--samples` G_ema samples, for vanilla and for imle, with the training set as reference.
  2. Cost: vanilla and imle training steps alternated in one process (so both see the same machine
     load), plus the measured cost of one re-match amortised over the run's re-match schedule.
  3. Minority inclusion: toy:colored-digits (Green = 5%) with --imle-subgroup=Green: the LPIPS
     distance from each green real image to its nearest of `--eval-pool` G_ema samples, vanilla vs
     imle (lower = the minority is better covered), and the share of green samples.

    python benchmarks/imle_stacked_digits.py                          # ~30 min on 2 busy CPU cores
    python benchmarks/imle_stacked_digits.py --parts=cost             # re-measure one part
    python benchmarks/imle_stacked_digits.py --kimg=1 --num-images=200 --minority-images=200 \
        --samples=500 --eval-pool=300 --pool-factor=2 --cost-steps=4 --workdir=/tmp/imle-smoke   # smoke run

LPIPS uses the random VGG16 trunk when the ImageNet weights are not on this machine (offline), which
the report states. Figures go to WORKDIR/results.json; the report to `--out`, by default
benchmarks/results/imle-generated.md, a file this script owns and rewrites whole (it starts with
GENERATED_MARK). benchmarks/results/imle.md is the hand-curated report (earlier runs' figures and
sessions' notes): copy figures from the generated file into it by hand. A run refuses an `--out` that
exists without the mark, before training anything, so it cannot destroy hand-written text.
"""
import json
import os
import platform
import sys
import time

import click
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import generate, make_tiny_loop  # noqa: E402
from stylegan2_fair.fileio import atomic_write_text  # noqa: E402

GENERATED_MARK = ('<!-- Written by benchmarks/imle_stacked_digits.py, which rewrites this whole file at each run: '
                  'keep hand-written notes in benchmarks/results/imle.md -->')


def make_dataset(workdir, kind, num_images, resolution, seed, **options):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    path = os.path.join(workdir, f'{kind}-{num_images}-{resolution}.zip')
    # Rebuilt every run (a second or two): a zip left by an older toy generator must not be reused.
    convert_dataset(f'toy:{kind}', path, num_images=num_images, resolution=resolution, seed=seed,
                    progress=False, overwrite=True, **options)
    return path


def train(loop):
    from stylegan2_fair import stats
    stats.collect()  # drop figures other loops of this process reported, so each run's stats.jsonl is its own
    start = time.time()
    loop.train()
    return time.time() - start


# Mode classifier --------------------------------------------------------------------------------

def mode_reader(resolution, seed):
    """images float [N, 3, R, R] in [-1, 1] -> mode ids 100 R + 10 G + B, read by the metrics' classifier."""
    from stylegan2_fair.metrics.modes import DigitModeClassifier
    clf = DigitModeClassifier(resolution=resolution, seed=seed)
    return lambda images: clf((images + 1) * 127.5)


def mode_stats(modes):
    from stylegan2_fair.metrics.modes import mode_statistics
    return mode_statistics(modes, 1000)


# Minority reconstruction distance --------------------------------------------------------------

@torch.no_grad()
def nearest_lpips(lpips, reals, fakes, batch=128, device='cpu'):
    from stylegan2_fair.nn_search import nearest_neighbors
    embed = lambda x: torch.cat([lpips.embed(b.to(device)).cpu() for b in x.split(batch)])
    _, dist = nearest_neighbors(embed(reals), embed(fakes))
    return dist


def green_share(images):
    return float(((images[:, 1] + 1).sum((1, 2)) > (images[:, 0] + 1).sum((1, 2))).float().mean())


# Cost -----------------------------------------------------------------------------------------

def time_calls(obj, name, seconds):
    """Wrap obj.name so that each call appends its duration to `seconds`."""
    fn = getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.time() - start)
    setattr(obj, name, timed)


def alternate_steps(loops, steps, warmup=2):
    """Mean seconds per training step of each loop, steps interleaved so that load changes hit all alike
    (a mean, not a median: with --imle-interval=N only every N-th step carries the terms)."""
    for loop in loops.values():
        loop.setup()
        loop.ada_signs = np.zeros(2)
    times = {name: [] for name in loops}
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    for i in range(warmup + steps):
        for name, loop in loops.items():
            sync()
            start = time.time()
            loop._step()
            sync()
            if i >= warmup:
                times[name].append(time.time() - start)
    return {name: float(np.mean(t)) for name, t in times.items()}


@click.command()
@click.option('--workdir', default='/tmp/imle-bench', show_default=True)
@click.option('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'imle-generated.md'), show_default=True,
              help='The generated report (a file of this script\'s own; see the module docstring)')
@click.option('--parts', default='coverage,cost,minority', show_default=True,
              help='Which parts to run; the others keep their figures from WORKDIR/results.json ("" = report only)')
@click.option('--kimg', type=int, default=3, show_default=True, help='Training length of every run')
@click.option('--num-images', type=int, default=1000, show_default=True, help='Stacked-digits training images')
@click.option('--minority-images', type=int, default=1000, show_default=True, help='Colored-digits training images')
@click.option('--resolution', type=int, default=16, show_default=True)
@click.option('--samples', type=int, default=10000, show_default=True, help='Generated samples for mode counting')
@click.option('--eval-pool', type=int, default=2000, show_default=True, help='Generated samples for minority distances')
@click.option('--batch', type=int, help='Batch size of every run [default: the tiny preset\'s]')
@click.option('--channels', type=int, help='channel_max of G and D (base = 8x) [default: the tiny preset\'s]')
@click.option('--pool-factor', type=float, default=10, show_default=True)
@click.option('--pairs', type=int, default=4, show_default=True, help='--imle-pairs of the training runs')
@click.option('--interval', type=int, default=1, show_default=True, help='--imle-interval of the training runs')
@click.option('--rematch', default='double:10', show_default=True, help='--imle-rematch of the training runs')
@click.option('--cost-steps', type=int, default=8, show_default=True, help='Timed steps per loop (a multiple of 4)')
@click.option('--lpips-backbone', default=None, help='VGG16 weights file; default: torchvision cache, else random')
@click.option('--threads', type=int, default=1, show_default=True,
              help='torch threads (1 is fastest on a shared 2-core machine)')
@click.option('--device', default='cpu', show_default=True, help='Training device (cuda for a GPU run)')
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--methods', default='vanilla,imle', show_default=True,
              help='coverage: the models to train (e.g. vanilla alone, to find a size that keeps its modes)')
def main(workdir, out, parts, kimg, num_images, minority_images, resolution, samples, eval_pool, batch, channels, pool_factor, pairs,
         interval, rematch, cost_steps, lpips_backbone, threads, device, seed, methods):
    from stylegan2_fair.lpips_features import LPIPSBackboneMissing, LPIPSFeatures, load_lpips
    from stylegan2_fair.toy_data import make_toy
    methods = [m.strip() for m in methods.split(',') if m.strip()]
    if not methods or set(methods) - {'vanilla', 'imle'}:
        raise click.BadParameter('give vanilla, imle or both', param_hint='--methods')
    check_report_is_ours(out)  # now, not after the runs: the runs take half an hour
    torch.set_num_threads(threads)
    os.makedirs(workdir, exist_ok=True)
    results_path = os.path.join(workdir, 'results.json')
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    parts = [p.strip() for p in parts.split(',') if p.strip()]
    if lpips_backbone is None:
        try:
            load_lpips(None)
        except LPIPSBackboneMissing:
            lpips_backbone = 'random'
    imle_kwargs = dict(pool_factor=pool_factor, pairs=pairs, interval=interval, rematch=rematch,
                       lpips_backbone=lpips_backbone)
    size = dict(batch=batch, channels=channels)  # of every training loop; None: the tiny preset's
    setup = dict(kimg=kimg, num_images=num_images, minority_images=minority_images, resolution=resolution,
                 samples=samples, eval_pool=eval_pool, seed=seed, imle_kwargs=imle_kwargs, device=device, **size)
    stacked = make_dataset(workdir, 'stacked-digits', num_images, resolution, seed)
    colored = make_dataset(workdir, 'colored-digits', minority_images, resolution, seed, majority=0.95)
    minority = dict(imle_kwargs, subgroup='Green')

    if 'coverage' in parts:  # 1. Mode coverage on stacked digits.
        start = time.time()
        read_modes = mode_reader(resolution, seed + 1)
        data = make_toy('stacked-digits', num_images, resolution=resolution, seed=seed)
        reals = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
        read = read_modes(reals)
        part = dict(setup, classifier_accuracy=float((read == data.labels).mean()),
                    data=dict(zip(('modes', 'kl'), mode_stats(data.labels))),
                    data_classified=dict(zip(('modes', 'kl'), mode_stats(read))))
        # A one-model run keeps the other model's figures from an earlier run of the same setup.
        earlier = results.get('coverage', {})
        if all(earlier.get(k) == v for k, v in json.loads(json.dumps(setup)).items()):
            kept = [m for m in ('vanilla', 'imle') if m not in methods and m in earlier]
            part.update({k: earlier[k] for k in kept + (['rematch_sec', 'pool_size'] if 'imle' in kept else [])})
        rematch_sec = []
        for method, kwargs in (('vanilla', {}), ('imle', imle_kwargs)):
            if method not in methods:
                continue
            loop = make_tiny_loop(stacked, os.path.join(workdir, f'stacked-{method}'), kimg, seed,
                             'imle' if method == 'imle' else 'none', kwargs, device, **size)
            if method == 'imle':
                time_calls(loop.hooks[0], 'rematch', rematch_sec)
            seconds = train(loop)
            modes, kl = mode_stats(read_modes(generate(loop.G_ema, samples, seed + 2)))
            part[method] = dict(modes=modes, kl=kl, train_sec=seconds)
            print(method, part[method], flush=True)
        if 'imle' in methods:
            part.update(rematch_sec=rematch_sec[0], pool_size=loop.hooks[0].pool_size)
        part['minutes'] = (time.time() - start) / 60
        results['coverage'] = part

    if 'cost' in parts:  # 2. Cost, steps alternated so that both see the same machine load.
        # Per-step cost does not depend on the data set size: these loops use the small colored-digits
        # minority, whose re-match at step 0 (in the untimed warm-up) is cheap.
        start = time.time()
        loops = {'vanilla': make_tiny_loop(colored, os.path.join(workdir, 'cost-vanilla'), kimg, seed, 'none', {}, device, **size),
                 'imle, paper composition (pairs=batch_gpu, interval=1)': make_tiny_loop(
                     colored, os.path.join(workdir, 'cost-paper'), kimg, seed, 'imle',
                     dict(minority, pairs=None, interval=1), device, **size)}
        for p_, i_ in sorted({(pairs, interval), (4, 1), (4, 4)}):
            loops[f'imle, pairs={p_}, interval={i_}'] = make_tiny_loop(
                colored, os.path.join(workdir, f'cost-{p_}-{i_}'), kimg, seed, 'imle', dict(minority, pairs=p_, interval=i_), device, **size)
        step_sec = alternate_steps(loops, cost_steps)
        results['cost'] = dict(step_sec=step_sec, batch=loops['vanilla'].batch_size, steps=cost_steps,
                               minutes=(time.time() - start) / 60)
        print(results['cost'], flush=True)

    if 'minority' in parts:  # 3. Minority inclusion on colored digits.
        start = time.time()
        cdata = make_toy('colored-digits', minority_images, resolution=resolution, seed=seed, majority=0.95)
        creals = torch.from_numpy(cdata.images).permute(0, 3, 1, 2).float() / 127.5 - 1
        green = torch.from_numpy(cdata.extras['color'] == 1)
        lpips = LPIPSFeatures(lpips_backbone).to(device)
        part = dict(setup, data_green_share=float(green.float().mean()))
        for method, kwargs in (('vanilla', {}), ('imle', minority)):
            loop = make_tiny_loop(colored, os.path.join(workdir, f'colored-{method}'), kimg, seed,
                             'imle' if method == 'imle' else 'none', kwargs, device, **size)
            seconds = train(loop)
            fakes = generate(loop.G_ema, eval_pool, seed + 3)
            dist = nearest_lpips(lpips, creals, fakes, device=device)
            part[method] = dict(green_dist=float(dist[green].mean()), red_dist=float(dist[~green].mean()),
                                green_share=green_share(fakes), train_sec=seconds)
            print(method, part[method], flush=True)
        part['minutes'] = (time.time() - start) / 60
        results['minority'] = part

    results['commands'] = dict(results.get('commands', {}), **{p: ' '.join(['python'] + sys.argv) for p in parts})
    atomic_write_text(results_path, json.dumps(results, indent=2))  # a crash keeps the earlier parts' figures
    if all(k in results for k in ('coverage', 'cost', 'minority')) and 'imle' in results['coverage'] \
            and 'vanilla' in results['coverage']:
        write_report(out, results)
    else:
        print(f'{results_path} lacks some parts; run them to write {out}')


def check_report_is_ours(path):
    """Refuse to overwrite a file this script did not write (one without GENERATED_MARK on its first line)."""
    if not os.path.exists(path):
        return
    with open(path, encoding='utf-8') as f:
        first_line = f.readline().rstrip('\n')
    if first_line != GENERATED_MARK:
        raise click.ClickException(
            f'--out={path} exists and was not written by this script (its first line is not the generated-file '
            f'mark), so it may hold hand-written sections that a run would destroy. Pass another --out (default: '
            f'benchmarks/results/imle-generated.md), or delete the file if it is an old generated report.')


def write_report(path, r):
    """Write the report of results `r` to `path` (a whole file of its own, atomically) and print it."""
    check_report_is_ours(path)
    text = report_text(r)
    atomic_write_text(path, f'{GENERATED_MARK}\n{text}')
    print(text)


def report_text(r):
    """The markdown report of the figures `r` (WORKDIR/results.json)."""
    cov, cost, mino = r['coverage'], r['cost'], r['minority']
    base = cost['step_sec']['vanilla']
    cost_rows = '\n'.join(f'| {name} | {sec:.2f} | {100 * (sec / base - 1):+.0f}% |'
                          for name, sec in cost['step_sec'].items() if name != 'vanilla')
    epoch_kimg = cov['num_images'] / 1000
    v, i, cv, ci = cov['vanilla'], cov['imle'], mino['vanilla'], mino['imle']
    vanilla_epoch_sec = v['train_sec'] / cov['kimg'] * epoch_kimg
    rematch_rows, lazy_epochs = [], None
    lazy_name = next((k for k in cost['step_sec'] if k.endswith('pairs=4, interval=4')), None)
    lazy_pct = 100 * (cost['step_sec'][lazy_name] / base - 1) if lazy_name else float('nan')
    for epochs in (20, 40, 80, 160, 320, 640):
        count = 1 + sum(1 for k in range(1, 64) if 10 * 2 ** (k - 1) < epochs)
        share = 100 * count * cov['rematch_sec'] / (epochs * vanilla_epoch_sec)
        rematch_rows.append(f'| {epochs} | {count} | {share:.0f}% |')
        if lazy_epochs is None and lazy_pct + share < 35:
            lazy_epochs = epochs
    rematch_rows = '\n'.join(rematch_rows)
    paper_ratio = cost['step_sec'][next(k for k in cost['step_sec'] if 'paper' in k)] / base
    backbone = cov['imle_kwargs']['lpips_backbone']
    commands = '\n'.join(f'    {cmd}' for cmd in dict.fromkeys(r['commands'].values()))
    seen = cov.get('data_classified')  # older results.json files lack it
    data_classified_row = (f"| training set itself, as the mode classifier reads it | {seen['modes']} | {seen['kl']:.3f} | |\n"
                           if seen else '')
    if str(cov.get('device', 'cpu')).startswith('cuda') and torch.cuda.is_available():
        machine = f'{torch.cuda.get_device_name()} (training and evaluation on the GPU), torch {torch.__version__}'
    else:
        machine = (f'{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, '
                   f'torch {torch.__version__}, no GPU, 1 torch thread')
    text = f"""# IMLE / Inclusive GAN benchmark (toy data)

Machine: {machine}. Commands (`benchmarks/imle_stacked_digits.py`):

{commands}

Every run: `train.py --cfg=tiny --aug=noaug` settings in-process, {cov['kimg']} kimg, seed {cov['seed']},
{cov['resolution']}x{cov['resolution']}; vanilla and imle of a pair differ only in `--fair-method`. imle options:
`{json.dumps(cov['imle_kwargs'])}` (pairs=4 instead of the paper's batch_gpu=16 to fit the CPU budget;
all else default: lambda 2.5, beta 1.0, LPIPS matching projected to 512, re-match at epochs 0, 10, 20, ...).
LPIPS backbone: {'an untrained VGG16 trunk (seeded) with the real v0.1 linear weights: the ImageNet VGG16 file cannot be downloaded on this offline machine, so LPIPS here is the weaker "random features" metric' if backbone == 'random' else backbone or 'ImageNet VGG16'}.

## Mode coverage, toy:stacked-digits ({cov['num_images']} training images, 1000 possible modes)

Mode classifier: `stylegan2_fair.metrics.modes.DigitModeClassifier` (an RBF SVM on sklearn's 8x8 digits, rendered
with the toy's random scale and shift and pooled to 8x8), applied per channel; {100 * cov['classifier_accuracy']:.1f}% of the training images get all three digits right.
Modes and KL over {cov['samples']} G_ema samples (the paper: 240,000).

| | modes covered | KL(modes \\|\\| uniform) | train time |
|---|---|---|---|
| training set itself ({cov['num_images']} images), true labels | {cov['data']['modes']} | {cov['data']['kl']:.3f} | |
{data_classified_row}| vanilla | {v['modes']} | {v['kl']:.3f} | {v['train_sec']:.0f} s |
| imle | {i['modes']} | {i['kl']:.3f} | {i['train_sec']:.0f} s |

imle covers {i['modes'] - v['modes']:+d} modes and changes KL by {i['kl'] - v['kl']:+.3f} against vanilla at the same budget. After {cov['kimg']}
kimg the tiny models' samples are still rough, and the classifier scatters rough samples over modes they do not
really show; KL is the more telling figure. (toy:stacked-digits holds every mode equally often since session 4;
before, 1000 i.i.d. draws held only ~630 modes, which capped any generator trained on them.)
The paper's targets (>= 990 modes, KL <= 0.2; StyleGAN2 alone 940 / 0.424) are far away at this budget; see the last section.

## Cost: steps of batch {cost['batch']} alternated in one process (mean of {cost['steps']} steps each)

| run | sec/step | vs vanilla ({base:.2f} s/step) |
|---|---|---|
{cost_rows}

Re-matching: one re-match of the stacked run (pool {cov['pool_size']} = 10 x {cov['num_images']} renders by G, LPIPS
embeddings, exact search) took {cov['rematch_sec']:.0f} s, against {vanilla_epoch_sec:.0f} s per epoch ({epoch_kimg:g} kimg) of vanilla training in
the same run. The schedule re-matches at epochs 0, 10, 20, 40, 80, ..., so its share of a run of E epochs falls with E:

| run length E (epochs) | re-matches | re-matching / vanilla training time |
|---|---|---|
{rematch_rows}

So the < 35% target, re-matching included, is not met with the paper's batch composition: per G step it renders
3 x batch_gpu extra images with gradients and runs VGG16 forward and backward on them, which on this CPU (tiny G
and D at 16x16, where VGG16 dominates) makes a step {paper_ratio:.1f}x a vanilla one. With `--imle-pairs=4 --imle-interval=4`
(the terms every 4th G step, scaled by 4, as StyleGAN2 runs its lazy regularisers) the steps cost {lazy_pct:+.0f}%, which
with re-matching stays under 35% for runs of {lazy_epochs} epochs or more. On a GPU with the paper's full-size G and D,
VGG16 is a much smaller share of a step; not measured (no GPU in this session).

## Minority inclusion, toy:colored-digits (Green = {100 * mino['data_green_share']:.0f}% of {mino['minority_images']} images)

`--imle-subgroup=Green`: only the green images are matched and reconstructed; the adversarial term sees all data.
LPIPS distance from each real image to its nearest of {mino['eval_pool']} G_ema samples (lower = covered better), and the
share of green samples:

| | green (minority) distance | red (majority) distance | green share of samples | train time |
|---|---|---|---|---|
| vanilla | {cv['green_dist']:.4f} | {cv['red_dist']:.4f} | {100 * cv['green_share']:.1f}% | {cv['train_sec']:.0f} s |
| imle --imle-subgroup=Green | {ci['green_dist']:.4f} | {ci['red_dist']:.4f} | {100 * ci['green_share']:.1f}% | {ci['train_sec']:.0f} s |

The minority's distance to its nearest generated sample falls by {100 * (1 - ci['green_dist'] / cv['green_dist']):.0f}% against vanilla. At this short budget the
reconstruction term (lambda 2.5 on the 5% minority) also over-corrects: {100 * ci['green_share']:.0f}% of the samples are green (data:
{100 * mino['data_green_share']:.0f}%) and the majority's distance grows by {100 * (ci['red_dist'] / cv['red_dist'] - 1):.0f}%; the paper reports little cost to the
majority after full training, which we could not reach here.

## Matching projection size (why `--imle-proj-dim` defaults to 512)

LPIPS embeddings of 16x16 images have 31,232 numbers (~2M at 128x128), so the
matching projects them with a fixed count sketch (a sparse random projection: one bucket and one sign per input
number; a dense Gaussian 2M x 512 matrix would be 4 GB). Measured on 300 stacked-digit queries against 2000
others (random trunk, 3 sketch seeds): share of queries whose sketched nearest neighbour is the exact LPIPS one,
and the true LPIPS of the chosen neighbour relative to the exact nearest:

| proj dim | exact NN found | LPIPS of chosen / nearest | pool features at m = 300k |
|---|---|---|---|
| 128 | 27% | 1.122 | 154 MB |
| 256 | 45% | 1.055 | 307 MB |
| 512 | 54% | 1.029 | 614 MB |
| 1024 | 67% | 1.013 | 1.2 GB |
| 2048 | 75% | 1.007 | 2.5 GB |

512 keeps the chosen match within ~3% of the true nearest neighbour's LPIPS for 614 MB of pool features at the
paper's scale (N = 30k reals, m = 300k candidates; the exact chunked search then needs one 4096 x 65536 block,
1 GiB, at a time).

## What the paper's targets would need

Table 1 of the paper: StyleGAN2 (full size) on Stacked MNIST, 240,000 images at 32x32, mode counts over 240,000
samples, pool 10 x 240k = 2.4M latents. Our runs: the tiny config (G/D with <= 64 channels), 16x16, {cov['num_images']}
images, {cov['kimg']} kimg. Reaching >= 990 modes / KL <= 0.2 needs the full-size networks at 32x32 and a training
length of the order of StyleGAN2's (thousands of kimg; the paper does not state it), i.e. GPU-days, not CPU-minutes:
at the ~{i['train_sec'] / cov['kimg']:.0f} s/kimg measured here for the tiny model, even 5,000 kimg would take
~{i['train_sec'] / cov['kimg'] * 5000 / 86400:.0f} days on this CPU, and each re-match of a 2.4M pool (VGG16 on every
candidate) ~{cov['rematch_sec'] / cov['pool_size'] * 2.4e6 / 3600:.0f} hours.
"""
    return text


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
