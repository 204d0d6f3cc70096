"""Fairness on long-tailed toy digits: vanilla StyleGAN2 vs importance reweighting vs the fairness loss.

The CPU-sized stand-in for the paper's CIFAR-10-LT experiment (arXiv 2308.08638 Table 3/4):
toy:longtail-digits with imbalance 0.1 (class 9 has a tenth of class 0's images) at 16x16, an
auxiliary classifier trained on the same imbalanced data (`train-classifier`, class-balanced
loss), then three `train.py --cfg=tiny` runs of the same length and seed:
    vanilla            --fair-method=none
    reweight           --fair-method=reweight  --classifier=labels:clf.pt
    fairness loss      --fair-method=fairness  --classifier=labels:clf.pt
Each final G_ema is scored with the fairness metric (|| 1/|D| - E_z p(d|z) ||_2, mean +- std over
sets) and its class histogram; the training set itself is scored as the reference.

    python benchmarks/fairness_longtail.py                      # ~15 min on 2 busy CPU cores
    python benchmarks/fairness_longtail.py --kimg=2 --set-size=500 --num-sets=2   # smoke run
    python benchmarks/fairness_longtail.py --methods=dia --out=benchmarks/results/dia_longtail.md   # dia on the same data

dia (Self-Diagnosing GAN) needs no classifier: its scores come from D. On this data it shows whether
a sampler driven by D's diagnosis moves G's class frequencies the way the classifier-driven
reweighting does. It records LDRs every --dia-record-every kimg and starts phase 2 at --dia-phase2-kimg.

Writes benchmarks/results/fairness.md (and a bar chart PNG in the work folder).
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

from _common import longtail_options, run  # noqa: E402

# --methods name: (report name, train.py flags). vanilla always runs: it is the reference.
METHODS = {'vanilla': ('vanilla', ['--fair-method=none']),
           'reweight': ('reweight', ['--fair-method=reweight']),
           'fairness': ('fairness loss', ['--fair-method=fairness']),
           'dia': ('dia', ['--fair-method=dia'])}
CLASSIFIER_METHODS = ('reweight', 'fairness')  # the others never see the classifier


def latest(folder, pattern_prefix, suffix):
    """The newest file named prefix...suffix (by time written: refreshes within a kimg share its number)."""
    paths = [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(pattern_prefix) and n.endswith(suffix)]
    return max(paths, key=os.path.getmtime)


def dia_sampler_shares(scores_npz, dataset):
    """Each class's share of dia's phase-2 sampling weights (the latest scores it wrote); dataset with labels."""
    scores = np.load(scores_npz)
    weights = np.zeros(len(dataset))
    weights[scores['index']] = scores['score']
    labels = np.array([int(np.argmax(dataset.get_label(i))) for i in range(len(dataset))])
    return [float(weights[labels == c].sum() / weights.sum()) for c in range(10)]


def fmt_hist(shares):
    return ' '.join(f'{100 * s:.1f}' for s in shares)


@click.command()
@click.option('--workdir', default='/tmp/fairness-longtail', show_default=True, help='Datasets, runs, figures')
@click.option('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'fairness.md'), show_default=True)
@click.option('--kimg', type=int, default=6, show_default=True, help='Training length of every run')
@click.option('--fair-weight', type=float, default=1.0, show_default=True)
@click.option('--classifier-epochs', type=int, default=6, show_default=True)
@click.option('--methods', default='reweight,fairness', show_default=True,
              help='Methods to compare with vanilla: reweight, fairness, dia')
@click.option('--dia-record-every', type=float, default=0.25, show_default=True, help='dia: kimg between LDR records')
@click.option('--dia-phase2-kimg', type=float, help='dia: start of weighted sampling [default: half of --kimg]')
@click.option('--dia-clip-min', type=float, default=0.01, show_default=True, help='dia: lower clip of the scores')
@longtail_options
@click.option('--report-only', is_flag=True, help='Rewrite the report from WORKDIR/results.json of an earlier run')
def main(workdir, out, kimg, num_images, imbalance, num_sets, set_size, fair_weight, classifier_epochs, methods,
         dia_record_every, dia_phase2_kimg, dia_clip_min, threads, seed, report_only):
    if report_only:
        with open(os.path.join(workdir, 'results.json')) as f:
            saved = json.load(f)
        return finish(workdir, out, saved['rows'], saved['ctx'])
    from stylegan2_fair import load_network_pkl
    from stylegan2_fair.classifiers import create_classifier
    from stylegan2_fair.dataset import ImageFolderDataset
    from stylegan2_fair.metrics.fairness import fairness_discrepancy, fairness_metric
    from training_hooks.reweight import classify_dataset
    methods = ['vanilla'] + [m.strip() for m in methods.split(',') if m.strip() and m.strip() != 'vanilla']
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise click.BadParameter(f'unknown {unknown}; choose from {", ".join(METHODS)}', param_hint='--methods')
    dia_flags = [f'--dia-record-every={dia_record_every:g}', f'--dia-clip-min={dia_clip_min:g}',
                 f'--dia-phase2-kimg={dia_phase2_kimg if dia_phase2_kimg is not None else kimg / 2:g}']

    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    py = sys.executable
    timings = {}
    t_all = time.time()

    data = os.path.join(workdir, f'longtail{imbalance:g}-16.zip')
    if not os.path.exists(data):
        timings['dataset'], _ = run([py, 'dataset_tool.py', '--source=toy:longtail-digits', f'--imbalance={imbalance}',
                                     '--resolution=16', f'--num-images={num_images}', f'--seed={seed}',
                                     f'--dest={data}'], env, os.path.join(workdir, 'dataset.log'))
    clf_path = os.path.join(workdir, 'clf.pt')
    timings['classifier'], _ = run([py, '-m', 'stylegan2_fair.cli.train_classifier', f'--data={data}',
                                    f'--out={clf_path}', f'--epochs={classifier_epochs}', '--width=16',
                                    '--class-names=' + ','.join(str(d) for d in range(10)), f'--seed={seed}',
                                    '--device=cpu'], env, os.path.join(workdir, 'classifier.log'))
    clf_metrics = torch.load(clf_path, weights_only=True)['metrics']
    classifier = create_classifier(f'labels:{clf_path}')

    # Reference: the training set as the classifier sees it.
    dataset = ImageFolderDataset(data, use_labels=True)  # labels: the class shares of dia's sampler
    probs = classify_dataset(dataset, classifier, 'cpu')
    data_shares = (torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)).numpy()
    rows = [dict(method='training data', fairness=fairness_discrepancy(data_shares), std=0.0, shares=data_shares,
                 soft=fairness_discrepancy(probs.double().mean(0).numpy()), soft_std=0.0, seconds=None)]

    for key in methods:
        name, flags = METHODS[key]
        flags = flags + (dia_flags if key == 'dia' else [])
        outdir = os.path.join(workdir, 'runs', name.replace(' ', '-'))
        cmd = [py, 'train.py', f'--outdir={outdir}', f'--data={data}', '--cfg=tiny', f'--kimg={kimg}',
               '--aug=noaug', '--workers=0', f'--snap={10 * kimg}', f'--seed={seed}', '--device=cpu'] + flags
        if key in CLASSIFIER_METHODS:
            cmd.append(f'--classifier=labels:{clf_path}')
        if key == 'fairness':
            cmd.append(f'--fair-weight={fair_weight}')
        seconds, _ = run(cmd, env, os.path.join(workdir, f'train-{name.replace(" ", "-")}.log'))
        run_dir = os.path.join(outdir, sorted(os.listdir(outdir))[-1])
        G = load_network_pkl(latest(run_dir, 'network-snapshot-', '.pkl'))['G_ema']
        start = time.time()
        result = fairness_metric(G, classifier, num_sets=num_sets, set_size=set_size, batch=500, seed=seed)
        rows.append(dict(method=name, fairness=result['fairness_mean'], std=result['fairness_std'],
                         shares=np.array(result['class_shares']), soft=result['fairness_soft_mean'],
                         soft_std=result['fairness_soft_std'], seconds=seconds, metric_seconds=time.time() - start,
                         cmd=' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])))
        print(f'{name}: fairness {result["fairness_mean"]:.4f} +- {result["fairness_std"]:.4f}', flush=True)
        if key == 'dia':  # what D's diagnosis fed D: the phase-2 sampler's share of each class
            rows[-1]['sampler_shares'] = dia_sampler_shares(latest(run_dir, 'dia-scores-', '.npz'), dataset)
    total = time.time() - t_all

    ctx = dict(methods=','.join(methods[1:]), dia_flags=' '.join(dia_flags) if 'dia' in methods else '',
               threads=threads, kimg=kimg, num_sets=num_sets, set_size=set_size, fair_weight=fair_weight,
               total=total, timings=timings, num_images=num_images, imbalance=imbalance,
               classifier_epochs=classifier_epochs, clf_metrics=clf_metrics, seed=seed)
    rows = [dict(r, shares=[float(x) for x in r['shares']]) for r in rows]
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump(dict(rows=rows, ctx=ctx), f, indent=1)
    finish(workdir, out, rows, ctx)


def finish(workdir, out, rows, ctx):
    from stylegan2_fair.metrics.fairness import plot_class_distribution
    ctx['png'] = os.path.join(workdir, 'fairness_histograms.png')
    plot_class_distribution(ctx['png'], [str(d) for d in range(10)], {r['method']: r['shares'] for r in rows},
                            title=f'longtail-digits (imbalance {ctx["imbalance"]:g}), {ctx["kimg"]} kimg per run')
    write_report(out, rows, ctx)
    print(f'wrote {out} and {ctx["png"]} ({ctx["total"] / 60:.1f} min of runs)')


def write_report(path, rows, ctx):
    vanilla = next(r for r in rows if r['method'] == 'vanilla')
    lines = [
        '# Fairness on long-tailed toy digits: vanilla vs ' + ', '.join(r['method'] for r in rows[2:]),
        '',
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores '
        f'(shared with other jobs), torch {torch.__version__}, {ctx["threads"]} thread(s) per process, no GPU.',
        f'Command: `python benchmarks/fairness_longtail.py --kimg={ctx["kimg"]} --num-sets={ctx["num_sets"]} '
        f'--set-size={ctx["set_size"]} --fair-weight={ctx["fair_weight"]} --threads={ctx["threads"]} '
        f'--methods={ctx.get("methods", "reweight,fairness")}' + (f' {ctx["dia_flags"]}' if ctx.get('dia_flags') else '')
        + '`',
        f'Budget: {ctx["total"] / 60:.1f} min wall clock in all (classifier {ctx["timings"]["classifier"]:.0f} s; '
        f'each GAN run {ctx["kimg"]} kimg).',
        '',
        f'Data: toy:longtail-digits, {ctx["num_images"]} images, 16x16, imbalance {ctx["imbalance"]:g} '
        f'(count of class 9 / class 0). Classifier: `train-classifier` small CNN (width 16, class-balanced loss, '
        f'{ctx["classifier_epochs"]} epochs) on the same imbalanced data; held-out accuracy '
        f'{ctx["clf_metrics"]["val_accuracy"]:.3f}, balanced accuracy {ctx["clf_metrics"]["val_balanced_accuracy"]:.3f}.',
        f'GAN: `train.py --cfg=tiny --aug=noaug --kimg={ctx["kimg"]} --seed={ctx["seed"]}`, same seed for every method.',
        f'Metric: fairness = ||1/|D| - E_z p(d|z)||_2 over all 10 classes (argmax counts; "soft" uses the mean '
        f'probabilities), mean +- std over {ctx["num_sets"]} sets of {ctx["set_size"]} images of G_ema '
        f'(the paper uses 5 x 10,000; reduced for the CPU budget). Uniform = 0; all images in one class = 0.949.',
        '',
        '| method | fairness (hard) | fairness (soft) | vs vanilla | train time |',
        '|---|---|---|---|---|',
    ]
    for r in rows:
        ratio = f'{r["fairness"] / vanilla["fairness"]:.2f}x' if r['method'] != 'training data' else ''
        secs = f'{r["seconds"]:.0f} s' if r['seconds'] else ''
        lines.append(f'| {r["method"]} | {r["fairness"]:.4f} +- {r["std"]:.4f} | {r["soft"]:.4f} +- {r["soft_std"]:.4f} '
                     f'| {ratio} | {secs} |')
    lines += ['', 'Class histograms (% of images per class 0..9, argmax of the classifier; uniform = 10.0 each):', '',
              '| method | ' + ' | '.join(str(d) for d in range(10)) + ' |',
              '|---|' + '---|' * 10]
    for r in rows:
        lines.append(f'| {r["method"]} | ' + ' | '.join(f'{100 * s:.1f}' for s in r['shares']) + ' |')
        if r.get('sampler_shares'):
            lines.append(f'| {r["method"]}: its phase-2 sampler (reals fed to D) | '
                         + ' | '.join(f'{100 * s:.1f}' for s in r['sampler_shares']) + ' |')
    lines += ['', 'Training commands (from the repository root):', '']
    lines += [f'- `python {r["cmd"]}`' for r in rows if r.get('cmd')]
    lines += ['', f'Bar chart: {ctx["png"]} (regenerated by the script).', '',
              'Reading the figures:',
              '- One training run per method, early in training (blurry digits at this budget). The +- is the '
              'spread over metric sets of one G, not over training seeds; short GAN runs differ a lot from seed '
              'to seed (e.g. which class a run collapses onto), so read the ordering rather than the decimals.']
    names = {r['method'] for r in rows}
    if 'fairness loss' in names:
        lines += ['- The fairness loss is trained against the same classifier that scores it (as in the paper), so '
                  'part of its gain may be specific to that classifier rather than more real digits of the rare '
                  'classes; reweighting only uses the classifier on real images.']
    if 'reweight' in names:
        lines += ['- Reweighting can overshoot: the rarest classes\' reals get the largest weights (up to '
                  '1/(|D| p_min) before normalisation), and D-side weighting moves G only indirectly.']
    if 'dia' in names:
        lines += ['- dia never sees the classifier or the labels: its sampler weights come from D\'s logits on the '
                  'training images (LDRM + k sqrt(LDRV), clipped), so any move toward the rare classes is D\'s '
                  'own diagnosis.']
    lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
