"""Model rebalancing on long-tailed toy digits: the variants of arXiv 2308.08638 Table 4, CPU-sized.

1. toy:longtail-digits (imbalance 0.1, 16x16) and a `labels` classifier trained on it (class-balanced loss).
2. Biased baseline: `train.py --cfg=tiny` on the long-tailed data; "+ bias loss": the same with
   `--fair-method=fairness`.
3. Rebalance: the latent search (stylegan2_fair/rebalance.py) finds N images per class in the
   baseline's G_ema -> balanced.zip. Its throughput is measured twice in this process, batched
   (--batch) and one candidate per G call (batch 1, for --single-seconds), on the same G.
4. Retrofit: finetune the baseline on balanced.zip with the bias loss and a 10x lower learning
   rate ("+ Syn data"), the same with --freezed=5, and new models trained on balanced.zip alone
   ("Syn data") and with the bias loss ("+ bias loss").
5. Fairness ||1/|D| - E_z p(d|z)||_2 of every G_ema (mean +- std over sets), class histograms.

    python benchmarks/rebalance_longtail.py              # ~22 min of CPU time (more wall clock on a busy machine)
    python benchmarks/rebalance_longtail.py --kimg=1 --ft-kimg=1 --per-class=50 --set-size=500 --num-sets=2  # smoke

Writes benchmarks/results/rebalance.md. Steps whose outputs exist in --workdir are reused with --reuse.
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

from _common import longtail_options, run, timed_search  # noqa: E402


def cpu_seconds():
    """CPU time of this process and its finished children (user + system)."""
    import resource
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


class Timings:
    """Wall and CPU seconds per step, kept in WORKDIR/timings.json so that a --reuse run still reports
    what every step cost when it ran."""

    def __init__(self, path, reuse):
        self.path = path
        self.steps = json.load(open(path)) if reuse and os.path.exists(path) else {}

    def measure(self, name, fn):
        wall, cpu = time.time(), cpu_seconds()
        result = fn()
        self.steps[name] = dict(wall=time.time() - wall, cpu=cpu_seconds() - cpu)
        with open(self.path, 'w') as f:
            json.dump(self.steps, f, indent=2)
        return result


def latest_snapshot(outdir):
    run_dir = os.path.join(outdir, sorted(os.listdir(outdir))[-1])
    names = sorted(n for n in os.listdir(run_dir) if n.startswith('network-snapshot-') and n.endswith('.pkl'))
    return os.path.join(run_dir, names[-1])


def short(path):
    return os.path.relpath(path, REPO) if path.startswith(REPO) else path


@click.command()
@click.option('--workdir', default='/tmp/rebalance-longtail', show_default=True, help='Datasets, runs, figures')
@click.option('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'rebalance.md'), show_default=True)
@click.option('--kimg', type=int, default=12, show_default=True, help='Length of the runs trained from scratch')
@click.option('--ft-kimg', type=int, default=10, show_default=True, help='Length of the finetunes')
@click.option('--ft-fair-weight', type=float, default=1.0, show_default=True,
              help='--fair-weight of the finetunes (the bias loss while retrofitting on the synthetic data)')
@click.option('--per-class', type=int, default=300, show_default=True, help='Synthetic images per class')
@click.option('--batch', type=int, default=64, show_default=True, help='Batch of the batched search')
@click.option('--single-seconds', type=float, default=20, show_default=True,
              help='How long each search of the throughput comparison runs')
@click.option('--trunc', type=float, default=1.0, show_default=True,
              help='Truncation psi of the search (the paper: 0.7; see the report)')
@click.option('--classifier-epochs', type=int, default=4, show_default=True)
@longtail_options
@click.option('--reuse', is_flag=True, help='Reuse the outputs of steps already in --workdir')
def main(workdir, out, kimg, ft_kimg, ft_fair_weight, per_class, batch, single_seconds, trunc, num_images, imbalance, num_sets,
         set_size, classifier_epochs, threads, seed, reuse):
    from stylegan2_fair.classifiers import create_classifier
    from stylegan2_fair.metrics.fairness import plot_class_distribution
    from stylegan2_fair.rebalance import SearchOptions, load_generator, rebalance

    os.makedirs(workdir, exist_ok=True)
    torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    py = sys.executable
    timings = Timings(os.path.join(workdir, 'timings.json'), reuse)
    reused = []

    def step(name, outputs, fn):
        if reuse and all(os.path.exists(p) for p in outputs):
            print(f'reusing {name}', flush=True)
            reused.append(name)
            return
        timings.measure(name, fn)

    data = os.path.join(workdir, f'longtail{imbalance:g}-16.zip')
    step('dataset', [data], lambda: run(
        [py, 'dataset_tool.py', '--source=toy:longtail-digits', f'--imbalance={imbalance}', '--resolution=16',
         f'--num-images={num_images}', f'--seed={seed}', f'--dest={data}', '--overwrite'], env,
        os.path.join(workdir, 'dataset.log')))
    clf_path = os.path.join(workdir, 'clf.pt')
    step('classifier', [clf_path], lambda: run(
        [py, '-m', 'stylegan2_fair.cli.train_classifier', f'--data={data}', f'--out={clf_path}',
         f'--epochs={classifier_epochs}', '--width=16', '--class-names=' + ','.join(str(d) for d in range(10)),
         f'--seed={seed}', '--device=cpu'], env, os.path.join(workdir, 'classifier.log')))
    clf_spec = f'labels:{clf_path}'
    clf_metrics = torch.load(clf_path, weights_only=True)['metrics']
    classifier = create_classifier(clf_spec)

    common = ['--cfg=tiny', '--aug=noaug', '--workers=0', f'--seed={seed}', '--device=cpu']
    bias = ['--fair-method=fairness', f'--classifier={clf_spec}']
    ft_bias = bias + ([f'--fair-weight={ft_fair_weight:g}'] if ft_fair_weight != 1 else [])
    balanced = os.path.join(workdir, 'balanced.zip')
    runs = {}   # name -> (outdir, cmd)

    def train(name, flags, length):
        outdir = os.path.join(workdir, 'runs', name)
        cmd = [py, 'train.py', f'--outdir={outdir}', f'--kimg={length}', f'--snap={10 * length}'] + common + flags
        runs[name] = (outdir, cmd)
        stamp = outdir + '.cmd'  # the command that made outdir: a run is reused only for the same one
        # ... on the same data: a rerun search rewrites balanced.zip under the same name.
        data_arg = next(a[len('--data='):] for a in cmd if a.startswith('--data='))
        signature = ' '.join(cmd) + f'\n# data mtime {os.path.getmtime(data_arg):.0f}'
        if reuse and os.path.isdir(outdir) and os.path.exists(stamp) and open(stamp).read() == signature:
            print(f'reusing {name}', flush=True)
            reused.append(name)
            return
        if os.path.isdir(outdir):
            import shutil
            shutil.rmtree(outdir)
        timings.measure(name, lambda: run(cmd, env, os.path.join(workdir, f'train-{name}.log')))
        with open(stamp, 'w') as f:
            f.write(signature)

    # Table 4 rows on the imbalanced data.
    train('baseline', [f'--data={data}'], kimg)
    biased_pkl = latest_snapshot(runs['baseline'][0])
    train('bias-loss', [f'--data={data}'] + bias, kimg)

    # The search: batched (writes balanced.zip), then one candidate per call on the same G.
    G = load_generator(biased_pkl)
    search_kwargs = dict(truncation_psi=trunc, seed=seed)
    report_file = os.path.join(workdir, 'balanced-report.json')
    def same_search(path):  # a balanced.zip is reused only if the search that wrote it had these options
        options = json.load(open(path)).get('options', {})
        return (options.get('per_class'), options.get('truncation_psi'), options.get('seed')) == (per_class, trunc, seed)
    if not (reuse and os.path.exists(balanced) and os.path.exists(report_file) and same_search(report_file)):
        report = timings.measure('search', lambda: rebalance(
            biased_pkl, clf_spec, balanced, per_class, device='cpu', overwrite=True, allow_missing=True,
            progress=False, batch=batch, **search_kwargs))
    else:
        reused.append('search')
        report = json.load(open(report_file))
    # Throughput, like for like: a fresh batched search and a one-candidate-per-call search, each for
    # --single-seconds from the same start on the same G.
    def race(batch_size):
        return timed_search(G, classifier, SearchOptions(per_class=per_class, batch=batch_size, **search_kwargs),
                            single_seconds, log=print)
    single, fresh = timings.measure('throughput comparison', lambda: (race(1), race(batch)))
    single_report, fresh_report = single.report(), fresh.report()
    # The search is deterministic: the slow run kept the same latents as the full one, as far as it got.
    import zipfile
    with zipfile.ZipFile(balanced) as z:
        latents = np.load(z.open('latents.npz'))
        batched_by_class = {t: latents['latents'][latents['classes'] == t] for t in range(10)}
    same = all(np.array_equal(s.kept[:], batched_by_class[s.index][:s.num_kept]) for s in single.searches)

    # Retrofit rows.
    train('syn-finetune', [f'--data={balanced}', f'--resume={biased_pkl}', '--resume-arch=1', '--lr-scale=0.1'] + ft_bias,
          ft_kimg)
    train('syn-finetune-freezed5', [f'--data={balanced}', f'--resume={biased_pkl}', '--resume-arch=1',
                                    '--lr-scale=0.1', '--freezed=5'] + ft_bias, ft_kimg)
    train('syn-only', [f'--data={balanced}'], kimg)
    train('syn-only-bias-loss', [f'--data={balanced}'] + bias, kimg)

    # Fairness of the data and of every model.
    rows = []
    timings.measure('fairness metrics', lambda: score(rows, runs, data, balanced, classifier, num_sets, set_size, seed))
    png = os.path.join(workdir, 'rebalance_histograms.png')
    plot_class_distribution(png, [str(d) for d in range(10)], {r['method']: r['shares'] for r in rows},
                            title='longtail-digits: rebalancing variants')
    write_report(out, rows, report, single_report, same, locals())
    print(f'wrote {out} and {png}: ' + ', '.join(f'{k} {v["cpu"]:.0f} s CPU' for k, v in timings.steps.items()))


def score(rows, runs, data, balanced, classifier, num_sets, set_size, seed):
    from stylegan2_fair import load_network_pkl
    from stylegan2_fair.dataset import ImageFolderDataset
    from stylegan2_fair.metrics.fairness import fairness_discrepancy, fairness_metric
    from training_hooks.reweight import classify_dataset
    for label, path in (('training data (long-tailed)', data), ('synthetic data (balanced.zip)', balanced)):
        probs = classify_dataset(ImageFolderDataset(path), classifier, 'cpu')
        shares = (torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)).numpy()
        rows.append(dict(method=label, fairness=fairness_discrepancy(shares), std=0.0, shares=shares, kind='data'))
    table = [('Imbalanced data', 'baseline'), ('+ bias loss', 'bias-loss'), ('+ Syn data (finetune)', 'syn-finetune'),
             ('+ freezeD=5', 'syn-finetune-freezed5'), ('Syn data', 'syn-only'), ('+ bias loss', 'syn-only-bias-loss')]
    for label, name in table:
        G_run = load_network_pkl(latest_snapshot(runs[name][0]))['G_ema']
        # Scored on the images as they would be saved (clipped to [-1, 1]); a young G strays far outside that
        # range, where the classifier never looked. The raw-output figure is kept beside it.
        result = fairness_metric(None, classifier, num_sets=num_sets, set_size=set_size, batch=500, seed=seed,
                                 sampler=image_sampler(G_run, seed, clip=True))
        raw = fairness_metric(None, classifier, num_sets=num_sets, set_size=set_size, batch=500, seed=seed,
                              sampler=image_sampler(G_run, seed, clip=False))
        rows.append(dict(method=label, run=name, fairness=result['fairness_mean'], std=result['fairness_std'],
                         raw=raw['fairness_mean'], raw_std=raw['fairness_std'],
                         shares=np.array(result['class_shares']), kind='model',
                         cmd=' '.join(short(c) for c in runs[name][1][1:])))
        print(f'{label} ({name}): fairness {result["fairness_mean"]:.4f} +- {result["fairness_std"]:.4f}', flush=True)


def image_sampler(G, seed, clip):
    """n -> n images of G at psi 1 (the fairness metric's sampler), clipped to [-1, 1] or raw."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def sample(n):
        z = torch.randn([n, G.z_dim], generator=generator)
        # Unfused modulated convolutions: the same images, twice as fast in a CPU batch.
        images = G(z, torch.zeros([n, G.c_dim]), noise_mode='const', fused_modconv=False)
        return images.clamp(-1, 1) if clip else images
    return sample


def write_report(path, rows, report, single, same, ctx):
    base = next(r for r in rows if r.get('run') == 'baseline')
    fresh, steps = ctx['fresh_report'], ctx['timings'].steps
    cpu, wall = sum(v['cpu'] for v in steps.values()), sum(v['wall'] for v in steps.values())
    kept_ratio = fresh['kept_per_second'] / max(single['kept_per_second'], 1e-9)
    cand_ratio = fresh['candidates_per_second'] / max(single['candidates_per_second'], 1e-9)
    lines = [
        '# Model rebalancing on long-tailed toy digits (arXiv 2308.08638, Table 4 variants)',
        '',
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), '
        f'torch {torch.__version__}, {ctx["threads"]} thread(s) per process, no GPU.',
        f'Command: `python benchmarks/rebalance_longtail.py --kimg={ctx["kimg"]} --ft-kimg={ctx["ft_kimg"]} '
        f'--ft-fair-weight={ctx["ft_fair_weight"]:g} --per-class={ctx["per_class"]} --batch={ctx["batch"]} --num-sets={ctx["num_sets"]} '
        f'--set-size={ctx["set_size"]} --threads={ctx["threads"]}`',
        f'Budget: {cpu / 60:.1f} min of CPU time ({wall / 60:.1f} min wall clock on the shared machine); per step, '
        f'CPU s: ' + ', '.join(f'{k} {v["cpu"]:.0f}' for k, v in steps.items()) + '. ' +
        (f'(Reused from an earlier invocation of the same command, with the times measured then: '
         f'{", ".join(ctx["reused"])}.) ' if ctx['reused'] else '') +
        f'Runs from scratch: {ctx["kimg"]} kimg each; finetunes: {ctx["ft_kimg"]} kimg at 0.1x learning rate. The '
        f'paper trains for tens of thousands of kimg; its figures need budgets far beyond this one. These '
        f'numbers show the direction of each variant on a CPU, not the paper\'s values.',
        '',
        f'Data: toy:longtail-digits, {ctx["num_images"]} images, 16x16, imbalance {ctx["imbalance"]:g}. Classifier: '
        f'`train-classifier` small CNN (width 16, class-balanced loss, {ctx["classifier_epochs"]} epochs); held-out '
        f'accuracy {ctx["clf_metrics"]["val_accuracy"]:.3f}, balanced accuracy '
        f'{ctx["clf_metrics"]["val_balanced_accuracy"]:.3f}.',
        f'Search: z space, truncation {ctx["trunc"]:g}, constant noise, sigma 0.5, 3 children, '
        f'{ctx["per_class"]} images per class from the baseline\'s G_ema, batch {ctx["batch"]}. (The paper searches '
        f'at psi 0.7; this young 16x16 G makes some digits only outside the truncated region, e.g. 0 of 2,000 '
        f'images at psi 0.7 for three classes at 12 kimg, so the benchmark searches at psi 1 unless --trunc says '
        f'otherwise. The command\'s default stays 0.7.)',
        f'Metric: fairness = ||1/|D| - E_z p(d|z)||_2 over all 10 classes (argmax counts), mean +- std over '
        f'{ctx["num_sets"]} sets of {ctx["set_size"]} images of G_ema at psi 1 (the paper: 5 x 10,000), on the images '
        f'clipped to [-1, 1] as they would be saved; "raw" classifies G\'s unclipped output, which a young G '
        f'spreads far outside [-1, 1]. Uniform = 0; all in one class = 0.949.',
        '',
        '## Fairness (Table 4 variants)',
        '',
        '| variant | fairness | vs baseline | fairness (raw output) | train CPU time |',
        '|---|---|---|---|---|',
    ]
    for r in rows:
        if r['kind'] == 'data':
            lines.append(f'| {r["method"]} | {r["fairness"]:.4f} | | | |')
            continue
        ratio = base['fairness'] / max(r['fairness'], 1e-9)
        rel = '1.00x' if r is base else (f'{ratio:.2f}x lower' if ratio >= 1 else f'{1 / ratio:.2f}x higher')
        secs = f'{steps[r["run"]]["cpu"]:.0f} s' if r['run'] in steps else ''
        lines.append(f'| {r["method"]} | {r["fairness"]:.4f} +- {r["std"]:.4f} | {rel} | '
                     f'{r["raw"]:.4f} +- {r["raw_std"]:.4f} | {secs} |')
    best = min((r for r in rows if r['kind'] == 'model'), key=lambda r: r['fairness'])
    best_ratio = base['fairness'] / max(best['fairness'], 1e-9)
    lines += ['', f'Best variant: {best["method"]} ({best["run"]}), {best_ratio:.2f}x lower than the biased baseline '
              f'(the target of at least 5x is {"met" if best_ratio >= 5 else "not met"} in this budget).']
    lines += ['', 'Rows "+ Syn data" and "+ freezeD=5" finetune the baseline on the synthetic data with the bias loss; '
              '"Syn data" and the "+ bias loss" under it train new models on the synthetic data alone, as in the '
              'paper\'s Table 4. (On this 16x16 D, --freezed=5 freezes every layer of its two blocks: only the '
              'epilogue trains.)', '',
              'Class histograms (% of images per class 0..9, argmax of the classifier; uniform = 10.0 each):', '',
              '| | ' + ' | '.join(str(d) for d in range(10)) + ' |', '|---|' + '---|' * 10]
    for r in rows:
        lines.append(f'| {r["method"]} | ' + ' | '.join(f'{100 * s:.1f}' for s in r['shares']) + ' |')
    lines += [
        '', '## Search', '',
        '| search | kept | candidates rendered | seconds | kept / s | candidates / s |', '|---|---|---|---|---|---|',
        f'| full search, batch {ctx["batch"]} (wrote balanced.zip) | {report["kept"]} | {report["candidates"]} | '
        f'{report["seconds"]:.1f} | {report["kept_per_second"]:.1f} | {report["candidates_per_second"]:.1f} |',
        f'| from scratch, at most {ctx["single_seconds"]:g} s, batch {ctx["batch"]} | {fresh["kept"]} | '
        f'{fresh["candidates"]} | {fresh["seconds"]:.1f} | {fresh["kept_per_second"]:.1f} | '
        f'{fresh["candidates_per_second"]:.1f} |',
        f'| from scratch, at most {ctx["single_seconds"]:g} s, one at a time (batch 1) | {single["kept"]} | '
        f'{single["candidates"]} | {single["seconds"]:.1f} | {single["kept_per_second"]:.1f} | '
        f'{single["candidates_per_second"]:.1f} |',
        '',
        f'Batched / one-at-a-time, same G, same CPU thread, both from the same start (stopped after '
        f'{ctx["single_seconds"]:g} s, or done): **{kept_ratio:.1f}x** the kept images per second ({cand_ratio:.1f}x '
        f'the candidates per second). On a CPU the gain is bounded by how much cheaper a G call gets per image '
        f'in a batch; on a GPU one call handles hundreds of candidates for about the price of one. The '
        f'one-at-a-time search kept the same latents as the full batched one, as far as it got: {same}.',
        '',
        'Per class (full search): ' + ', '.join(
            f'{c["name"]}: {c["kept"]} kept / {c["candidates"]} tried ({c["trees"]} tree(s))' for c in report['classes']),
    ]
    if report.get('shortfalls'):
        lines += ['', 'Shortfalls: ' + ' '.join(report['shortfalls'])]
    lines += ['', 'Training commands (from the repository root):', '']
    lines += [f'- `python {r["cmd"]}`' for r in rows if r.get('cmd')]
    lines += ['', f'Bar chart: {ctx["png"]} (regenerated by the script).', '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
