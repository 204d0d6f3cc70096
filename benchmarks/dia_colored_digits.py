"""Self-Diagnosing GAN (Dia-GAN) vs vanilla StyleGAN2 on colored digits (99% red, 1% green).

The CPU-sized stand-in for the paper's Colored-MNIST experiment (Lee et al. 2021, Table 5, rho=99%):
both runs use `--cfg=tiny --aug=noaug` networks (shrunk, see --channels), the same data, budget
(kimg) and seed; their training steps are interleaved in one process, each with its own RNG
streams, so both see the same machine load and each draws exactly what a standalone run would.
On the CPU, dia's phase 1 is therefore the vanilla run itself (LDR recording does not touch
training), and the runs differ from phase 2 on (the last 20% by default). On a GPU, nondeterministic
kernels let the two trajectories drift apart before that (results/dia.md, runs N-V).

Figures (G_ema samples, --samples of each):
  - minority share: the fraction of green samples (colour statistics: an image is green when its
    green channel carries more ink than its red one; checked on the real data, see classifier_acc);
    vanilla, dia (raw G), dia + DRS with the auxiliary D (the paper's phase 3), vanilla + DRS.
  - reconstruction error RE(x) = ||CAE(x) - x||_2 / 32 (pixels in [0, 1]) of a small conv
    auto-encoder trained on each model's samples, on real minority images: the training set's green
    images and --fresh unseen green digits (and unseen red ones as a majority check); mean over
    --cae-seeds auto-encoders.
  - overhead: seconds spent in LDR recording (phase 1) and in the auxiliary D (phase 2), as a share
    of the dia run's own remaining step time in that phase, and dia vs vanilla step time.

    python benchmarks/dia_colored_digits.py                 # ~12 min on 2 busy CPU cores
    python benchmarks/dia_colored_digits.py --kimg=2 --samples=1000 --cae-epochs=2   # smoke run

Prints the figures and a markdown table; writes results.json and sample grids to --workdir.
"""
import json
import os
import platform
import random
import sys
import time

import click
import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _common import generate, make_tiny_loop  # noqa: E402
from stylegan2_fair.fileio import atomic_write_text  # noqa: E402


class RngSlot:
    """One run's global RNG streams, swapped in around its steps."""

    def __init__(self):
        self.save()

    def save(self):
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def load(self):
        random.setstate(self.state[0])
        np.random.set_state(self.state[1])
        torch.set_rng_state(self.state[2])
        if self.state[3] is not None:
            torch.cuda.set_rng_state_all(self.state[3])


def timed(obj, name, bucket):
    """Wrap obj.name so that its wall time is added to bucket[name]."""
    original = getattr(obj, name)
    bucket[name] = 0.0

    def wrapper(*args, **kwargs):
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            bucket[name] += time.time() - start
    setattr(obj, name, wrapper)


def train_interleaved(vanilla, dia, is_green, probe_kimg=None, probe_samples=1000):
    """Alternate steps of the two loops; per-phase step seconds of each, and dia's hook seconds.
    Every probe_kimg, the green share of both G_ema (untimed): when, if ever, each model draws the minority."""
    slots = {}
    for name, loop in (('vanilla', vanilla), ('dia', dia)):
        loop.setup()
        slots[name] = RngSlot()
    hook = dia.hooks[0]
    hook_sec = {}
    timed(hook, 'record_ldr', hook_sec)
    timed(hook, 'train_aux', hook_sec)
    timed(hook, 'start_phase2', hook_sec)  # one-off: scores, report files, aux D copy
    step_sec = {f'{name}_phase{p}': 0.0 for name in slots for p in (1, 2)}
    hook_by_phase = {'record_ldr_phase1': 0.0, 'record_ldr_phase2': 0.0, 'train_aux_phase2': 0.0, 'start_phase2': 0.0}
    steps = {1: 0, 2: 0}
    probes, phase1_records = [], []
    while dia.cur_nimg < dia.total_kimg * 1000:
        if probe_kimg and dia.run.crossed_kimg(probe_kimg):
            scores = None if hook.scores is None else hook.scores.cpu()
            sampler = None if scores is None else float(scores[is_green].sum() / scores.sum())  # green share drawn
            probes.append(dict(kimg=dia.cur_nimg / 1000, sampler_green=sampler,
                               **{name: green_share(generate(loop.G_ema, probe_samples, 7))
                                  for name, loop in (('vanilla', vanilla), ('dia', dia))}))
            print('probe', json.dumps(probes[-1]), flush=True)
        phase = 2 if hook.phase2 else 1
        steps[phase] += 1
        for name, loop in (('vanilla', vanilla), ('dia', dia)):
            before = dict(hook_sec)
            slots[name].load()
            start = time.time()
            loop._step()
            step_sec[f'{name}_phase{phase}'] += time.time() - start
            slots[name].save()
            if name == 'dia':
                recorded = hook_sec['record_ldr'] - before['record_ldr']
                hook_by_phase[f'record_ldr_phase{phase}'] += recorded
                if recorded and phase == 1:
                    phase1_records.append(recorded)
                hook_by_phase['start_phase2'] += hook_sec['start_phase2'] - before['start_phase2']
                if phase == 2:
                    hook_by_phase['train_aux_phase2'] += hook_sec['train_aux'] - before['train_aux']
    for loop in (vanilla, dia):
        for h in loop.hooks:
            h.on_train_end(loop.run)
    hook_by_phase['phase1_records'] = phase1_records  # seconds of each LDR record in phase 1
    return step_sec, hook_by_phase, steps, probes


def green_share(images):
    """Colour statistics: green when the green channel holds more ink than the red one."""
    ink = (images + 1) / 2
    return float((ink[:, 1].sum((1, 2)) > ink[:, 0].sum((1, 2))).float().mean())


class ConvAutoEncoder(torch.nn.Module):
    """A small CAE with a 4x4x8 bottleneck at 8x8 (or R/4 x R/4 x 8 at resolution R).

    Leaky units: with ReLUs and mostly-black digit images, some seeds died into the all-black output,
    which made RE ||x|| / 32 whatever the samples (GPU runs of session 5, std 1e-8 across inputs)."""

    def __init__(self, width=32):
        super().__init__()
        act = lambda: torch.nn.LeakyReLU(0.2)
        self.encode = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=1, padding=1), act(),
            torch.nn.Conv2d(width, width, 4, stride=2, padding=1), act(),
            torch.nn.Conv2d(width, 8, 3, padding=1))
        self.decode = torch.nn.Sequential(
            torch.nn.Conv2d(8, width, 3, padding=1), act(),
            torch.nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), act(),
            torch.nn.Conv2d(width, 3, 3, padding=1), torch.nn.Sigmoid())

    def forward(self, x):
        return self.decode(self.encode(x))


def train_cae(images01, seed, epochs, batch=128, device='cpu', tries=3):
    """A CAE fitted to images01; retried with the next seeds while it does not reconstruct its own
    training images clearly better (RE < 0.8x) than an all-black output does (a collapsed CAE measures nothing)."""
    images01 = images01.to(device)
    black_re = float(images01.flatten(1).norm(dim=1).mean() / 32)
    for attempt in range(tries):
        torch.manual_seed(seed + 1000 * attempt)
        cae = ConvAutoEncoder().to(device)
        opt = torch.optim.Adam(cae.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed + 1000 * attempt)
        for _ in range(epochs):
            for idx in torch.randperm(len(images01), generator=gen).split(batch):
                loss = F.mse_loss(cae(images01[idx]), images01[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        cae.eval()
        own_re = float(reconstruction_error(cae, images01[:2000]).mean())
        if own_re < 0.8 * black_re:
            return cae
        print(f'CAE seed {seed + 1000 * attempt}: RE {own_re:.4f} on its own training images, an all-black '
              f'output gives {black_re:.4f}; retrying with another seed', flush=True)
    raise RuntimeError(f'the CAE did not learn {len(images01)} images in {tries} tries; raise --cae-epochs')


@torch.no_grad()
def reconstruction_error(cae, images01):
    """RE(x) = ||CAE(x) - x||_2 / 32 per image (the paper's normalisation)."""
    images01 = images01.to(next(cae.parameters()).device)
    return ((cae(images01) - images01).flatten(1).norm(dim=1) / 32).cpu().numpy()


def to01(images):
    return (images + 1) / 2


@click.command()
@click.option('--workdir', default='/tmp/dia-bench', show_default=True)
@click.option('--kimg', type=int, default=15, show_default=True, help='Training length of both runs')
@click.option('--num-images', type=int, default=1000, show_default=True, help='Training images (1% green)')
@click.option('--majority', type=float, default=0.99, show_default=True)
@click.option('--resolution', type=int, default=8, show_default=True)
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--channels', type=int, default=32, show_default=True, help='channel_max of G and D (base = 8x)')
@click.option('--lr-scale', type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help='Multiplies the G and D learning rates')
@click.option('--dia-k', type=float, default=1.0, show_default=True, help='k of Eq. 7 (paper, Colored-MNIST: 1)')
@click.option('--dia-clip-min', type=float, default=0.01, show_default=True,
              help='Lower clip of the scores (the upper one is 50x it): the paper 0.01')
@click.option('--dia-phase2-kimg', type=float, help='Start of Dia phase 2 [default: 80% of --kimg, as the paper]')
@click.option('--dia-clip-ratio', type=float, default=50.0, show_default=True, help='Cap of the scores / their minimum')
@click.option('--dia-refresh-kimg', type=float, help='Recompute the scores every KIMG in phase 2 [default: never]')
@click.option('--probe-kimg', type=click.FloatRange(min=0, min_open=True), help='Print both models\' green share every KIMG (1000 samples, untimed)')
@click.option('--samples', type=int, default=5000, show_default=True, help='G_ema samples per model')
@click.option('--fresh', type=int, default=1000, show_default=True, help='Unseen real images per colour for RE')
@click.option('--cae-epochs', type=int, default=15, show_default=True)
@click.option('--cae-seeds', type=int, default=2, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True,
              help='torch threads (1 on a shared 2-core machine: 2 threads oversubscribe it badly)')
@click.option('--device', default='cpu', show_default=True, help='Training device (cuda for a GPU run)')
@click.option('--seed', type=int, default=0, show_default=True)
def main(workdir, kimg, num_images, majority, resolution, batch, channels, lr_scale, dia_k, dia_clip_min, dia_phase2_kimg,
         dia_clip_ratio, dia_refresh_kimg, probe_kimg, samples, fresh, cae_epochs, cae_seeds, threads, device, seed):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    from stylegan2_fair.drs import drs_sample
    from stylegan2_fair.toy_data import make_toy
    torch.set_num_threads(threads)
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    data_path = os.path.join(workdir, f'colored-{num_images}-{majority}-{resolution}.zip')
    if not os.path.exists(data_path):
        convert_dataset('toy:colored-digits', data_path, num_images=num_images, resolution=resolution, seed=seed,
                        majority=majority, progress=False)
    data = make_toy('colored-digits', num_images, resolution=resolution, seed=seed, majority=majority)
    reals = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    is_green = torch.from_numpy(data.extras['color'] == 1)
    # Unseen digits of each colour, from the same generator with another seed.
    held = make_toy('colored-digits', 2 * fresh, resolution=resolution, seed=seed + 1000, majority=0.5)
    held_imgs = torch.from_numpy(held.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    held_green = torch.from_numpy(held.extras['color'] == 1)
    results = dict(kimg=kimg, num_images=num_images, minority_images=int(is_green.sum()), majority=majority,
                   resolution=resolution, batch=batch, channels=channels, lr_scale=lr_scale, dia_k=dia_k,
                   dia_clip_min=dia_clip_min, dia_phase2_kimg=dia_phase2_kimg, dia_clip_ratio=dia_clip_ratio,
                   dia_refresh_kimg=dia_refresh_kimg, samples=samples, seed=seed, threads=threads, device=device,
                   machine=f'{platform.machine()}, {os.cpu_count()} cores', torch=torch.__version__)
    # The colour rule on real images (ground truth known).
    predicted = torch.tensor([green_share(img[None]) > 0.5 for img in torch.cat([reals, held_imgs])])
    results['classifier_acc'] = float((predicted == torch.cat([is_green, held_green])).float().mean())
    results['data_green_share'] = float(is_green.float().mean())

    sizes = dict(device=device, batch=batch, channels=channels, lr_scale=lr_scale)
    vanilla = make_tiny_loop(data_path, os.path.join(workdir, 'vanilla'), kimg, seed, 'none', {}, **sizes)
    dia_options = dict(k=dia_k, clip_min=dia_clip_min, clip_ratio=dia_clip_ratio, refresh_kimg=dia_refresh_kimg)
    if dia_phase2_kimg is not None:
        dia_options['phase2_kimg'] = dia_phase2_kimg
    dia = make_tiny_loop(data_path, os.path.join(workdir, 'dia'), kimg, seed, 'dia', dia_options, **sizes)
    step_sec, hook_sec, steps, results['probes'] = train_interleaved(vanilla, dia, is_green, probe_kimg)
    hook = dia.hooks[0]
    plain1 = step_sec['dia_phase1'] - hook_sec['record_ldr_phase1'] - hook_sec['start_phase2']
    plain2 = step_sec['dia_phase2'] - hook_sec['train_aux_phase2'] - hook_sec['record_ldr_phase2']
    kimg_of = lambda n: n * batch / 1000
    results['timing'] = dict(
        steps=steps, step_sec=step_sec, hook_sec=hook_sec, ldr_records=hook.history.count,
        record_every_kimg=hook.record_every, phase2_kimg=hook.phase2_kimg,
        vanilla_sec_per_kimg=(step_sec['vanilla_phase1'] + step_sec['vanilla_phase2']) / kimg_of(sum(steps.values())),
        dia_sec_per_kimg=(step_sec['dia_phase1'] + step_sec['dia_phase2']) / kimg_of(sum(steps.values())),
        ldr_overhead=hook_sec['record_ldr_phase1'] / plain1,
        # A typical record (the median after the first, which also pays one-time costs such as cuDNN
        # plans for the record batch's shapes) times the count: what a long run pays.
        ldr_overhead_steady=float(np.median(hook_sec['phase1_records'][1:] or hook_sec['phase1_records'] or [0])
                                  * len(hook_sec['phase1_records']) / plain1),
        aux_overhead=hook_sec['train_aux_phase2'] / plain2,
        dia_vs_vanilla_phase1=(step_sec['dia_phase1'] - hook_sec['start_phase2']) / step_sec['vanilla_phase1'] - 1,
        dia_vs_vanilla_phase2=step_sec['dia_phase2'] / step_sec['vanilla_phase2'] - 1)
    raw_scores, scores, ldrm, ldrv = (torch.as_tensor(t).cpu()
                                      for t in (hook.raw_scores, hook.scores, hook.ldrm, hook.ldrv))
    greens_in_top = torch.argsort(raw_scores, descending=True)[:int(is_green.sum())]
    results['scores'] = dict(
        green_mean_score=float(scores[is_green].mean()), red_mean_score=float(scores[~is_green].mean()),
        green_mean_ldrv=float(ldrv[is_green].mean()), red_mean_ldrv=float(ldrv[~is_green].mean()),
        green_mean_ldrm=float(ldrm[is_green].mean()), red_mean_ldrm=float(ldrm[~is_green].mean()),
        greens_among_top_scores=int(is_green[greens_in_top].sum()),
        green_sampling_share=float(scores[is_green].sum() / scores.sum()))
    print(json.dumps(results['timing'], indent=1), flush=True)
    print(json.dumps(results['scores'], indent=1), flush=True)

    # Samples.
    sets = {'vanilla': generate(vanilla.G_ema, samples, seed + 2), 'dia': generate(dia.G_ema, samples, seed + 2)}
    drs_runs = {'dia + DRS (aux D)': (dia.G_ema, hook.aux_D), 'vanilla + DRS (its D)': (vanilla.G_ema, vanilla.D)}
    results['drs'] = {}
    for name, (G, D) in drs_runs.items():
        start = time.time()
        res = drs_sample(G, D, samples, batch=64, generator=torch.Generator().manual_seed(seed + 3))
        sets[name] = res.images.cpu()
        results['drs'][name] = dict(acceptance_rate=res.acceptance_rate, sec=time.time() - start)
    results['models'] = {}
    for name, images in sets.items():
        res = {'green_share': green_share(images)}
        cae_re = {'train_green': [], 'fresh_green': [], 'fresh_red': []}
        for s in range(cae_seeds):
            cae = train_cae(to01(images), seed=seed + 10 + s, epochs=cae_epochs, device=device)
            cae_re['train_green'].append(float(reconstruction_error(cae, to01(reals[is_green])).mean()))
            cae_re['fresh_green'].append(float(reconstruction_error(cae, to01(held_imgs[held_green])).mean()))
            cae_re['fresh_red'].append(float(reconstruction_error(cae, to01(held_imgs[~held_green])).mean()))
        res.update({f're_{k}': float(np.mean(v)) for k, v in cae_re.items()})
        res.update({f're_{k}_std': float(np.std(v)) for k, v in cae_re.items()})
        results['models'][name] = res
        print(name, json.dumps(res), flush=True)
        import stylegan2_fair.imaging as imaging
        imaging.save_image_grid(images[:256].numpy(), os.path.join(workdir, f'samples-{name.split()[0]}'
                                f'{"-drs" if "DRS" in name else ""}.png'), (-1, 1), (16, 16))
    results['total_sec'] = time.time() - t_start

    v, d = results['models']['vanilla'], results['models']['dia + DRS (aux D)']
    lines = ['| model | green share | RE train greens | RE fresh greens | RE fresh reds |', '|---|---|---|---|---|',
             f'| data | {results["data_green_share"]:.3%} | | | |']
    for name, r in results['models'].items():
        lines.append(f'| {name} | {r["green_share"]:.2%} | {r["re_train_green"]:.4f} | {r["re_fresh_green"]:.4f} '
                     f'| {r["re_fresh_red"]:.4f} |')
    t = results['timing']
    change = lambda key: d[key] / v[key] - 1
    lines += ['', f'minority RE, dia+DRS vs vanilla: fresh greens {change("re_fresh_green"):+.1%}, '
              f'training-set greens {change("re_train_green"):+.1%}',
              f'overhead: LDR {t["ldr_overhead"]:.1%} of phase-1 step time ({t["ldr_overhead_steady"]:.1%} '
              f'at the typical record\'s cost), aux D {t["aux_overhead"]:.1%} of '
              f'phase-2 step time; vanilla {t["vanilla_sec_per_kimg"]:.1f} s/kimg, '
              f'dia {t["dia_sec_per_kimg"]:.1f} s/kimg']
    results['table'] = '\n'.join(lines)
    print(results['table'])
    atomic_write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=1))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
