"""`stylegan2-fair rebalance` / `python rebalance.py`: a class-balanced dataset searched out of a biased generator.

The search of "Fair GANs through model rebalancing" (Algorithm 2; stylegan2_fair/rebalance.py), for every
class of an auxiliary classifier, batched, resumable (rerun the same command after an interruption: the state
lives in OUT.zip.partial/ until the dataset is written). The dataset holds the images, their classes as
dataset.json labels, and latents.npz (the latent of every image); NAME-report.json beside it has the counts.

Example (toy digits, CPU):
  python rebalance.py --network=biased.pkl --classifier=labels:clf.pt --per-class=500 --outdir=balanced.zip
  python train.py --outdir=runs --data=balanced.zip --resume=biased.pkl --resume-arch=1 \\
      --fair-method=fairness --classifier=labels:clf.pt --lr-scale=0.1
"""
import os
import sys

import click
import torch

from ..rebalance import NOISE_MODES, RebalanceError, rebalance, report_path, retrofit_commands, state_dir_for


@click.command(context_settings=dict(show_default=True))
@click.option('--network', 'network_pkl', help='Biased generator: an official or stylegan2-fair network pickle',
              metavar='PKL', required=True)
@click.option('--classifier', help='Auxiliary classifier whose classes are balanced: labels:CLF.pt, '
              'deepface:race, torchscript:MODEL.pt', metavar='SPEC', required=True)
@click.option('--per-class', help='Images to find per class (N)', type=click.IntRange(min=1), required=True)
@click.option('--outdir', '--dest', 'dest', help='Output dataset: a .zip (or a folder); the report goes beside it '
              'as NAME-report.json', metavar='ZIP', required=True)
@click.option('--space', help='Latent space searched: z, or w (w+: one w per layer)', type=click.Choice(['z', 'w']),
              default='z')
@click.option('--trunc', 'truncation_psi', help='Truncation psi of the rendered images (w: of the roots)', type=float,
              default=0.7)
@click.option('--noise-mode', help='Synthesis noise', type=click.Choice(NOISE_MODES), default='const')
@click.option('--sigma', help='z space: child = parent + N(0, sigma^2)', type=click.FloatRange(0, min_open=True),
              default=0.5)
@click.option('--delta', help='w space: child = parent + U(-delta, delta), elementwise',
              type=click.FloatRange(0, min_open=True), default=0.3)
@click.option('--children', 'num_children', help='Children of each kept latent', type=click.IntRange(min=1), default=3)
@click.option('--max-candidates', help='Cap on images rendered per class [default: max(100 N, 10000)]',
              type=click.IntRange(min=1))
@click.option('--max-per-root', help='Latents kept per tree before a new random root (xi of Algorithm 2) '
              '[default: no limit]', type=click.IntRange(min=1))
@click.option('--batch', help='Candidates per generator/classifier call, all classes together [default: 256 on GPU, '
              '64 on CPU]', type=click.IntRange(min=1))
@click.option('--min-confidence', help='Keep an image only if the classifier gives its class at least this '
              'probability', type=click.FloatRange(0, 1), default=0.0)
@click.option('--dedup-dist', help='Reject a latent closer than this to a kept one of its class (0: off)',
              type=click.FloatRange(0), default=0.0)
@click.option('--g-label', help='Conditional G: its class for each search: target (= the target class), random, '
              'or an index; none for an unconditional G', default='none', metavar='none|target|random|INT')
@click.option('--classes', help='Comma-separated target classes (names or indices) [default: all]', metavar='LIST')
@click.option('--gate', help='A check each image must pass before the classifier judges it: face (OpenCV face '
              'detection, as the authors\' w+ search of face models) or none', default='none', metavar='NAME')
@click.option('--seed', help='Random seed of the search', type=int, default=0)
@click.option('--device', help='Where to run', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
@click.option('--allow-missing', help='Write the dataset even if some classes fall short of N', is_flag=True)
@click.option('--overwrite', help='Replace an existing output dataset', is_flag=True)
@click.option('--checkpoint-seconds', help='Save the search state this often', type=click.FloatRange(0), default=30.0)
@click.option('--keep-state', help='Keep the search state folder after success (to continue to a larger N)',
              is_flag=True)
def rebalance_command(network_pkl, classifier, per_class, dest, device, allow_missing, overwrite, checkpoint_seconds,
                      keep_state, classes, **search_kwargs):
    """Search N images per class out of a biased generator and write them as a balanced dataset.

    \b
    python rebalance.py --network=biased.pkl --classifier=labels:clf.pt --per-class=500 --outdir=balanced.zip
    """
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException('--device=cuda but no CUDA GPU is visible; use --device=cpu')
    if search_kwargs['batch'] is None:   # a CPU is fastest with batches that stay in its caches
        search_kwargs['batch'] = 256 if device == 'cuda' else 64
    if classes:
        search_kwargs['classes'] = [c.strip() for c in classes.split(',') if c.strip()]
    try:
        report = rebalance(network_pkl, classifier, dest, per_class, device=device, overwrite=overwrite,
                           allow_missing=allow_missing, checkpoint_seconds=checkpoint_seconds, keep_state=keep_state,
                           log=lambda msg: click.echo(msg, err=True), **search_kwargs)
    except RebalanceError as err:
        raise click.ClickException(str(err)) from err
    except KeyboardInterrupt:
        click.echo(f'\nInterrupted. The search state is in {state_dir_for(dest)}: rerun the same command to continue '
                   f'from its last checkpoint.', err=True)
        sys.exit(130)

    click.echo()
    for row in report['classes']:
        click.echo(f'  {row["name"]:>12s}: {row["kept"]:6d} kept of {row["candidates"]:8d} tried '
                   f'(acceptance {row["acceptance_rate"]:.1%}, {row["trees"]} tree(s))')
    click.echo(f'Wrote {report["images"]} images to {report["dest"]} in {report["seconds"]:.1f} s '
               f'({report["kept_per_second"]:.1f} images/s); report: {report_path(dest)}')
    for message in report['shortfalls']:
        click.echo(f'warning: {message}', err=True)
    commands = retrofit_commands(network_pkl, dest, classifier, conditional=report['g_c_dim'] > 0)
    click.echo('\nRetrofit the model with the balanced data (paper Tables 1 and 4):')
    click.echo(f'  finetune (bias loss, 10x lower learning rate):\n    {commands["finetune"]}')
    click.echo(f'  finetune with freeze-D:\n    {commands["finetune_freezed"]}')
    click.echo(f'  train a new model on the synthetic data (set --cfg as for the original model):\n'
               f'    {commands["retrain"]}')


def main():
    rebalance_command.main(prog_name=os.path.basename(sys.argv[0]) if sys.argv[0].endswith('.py') else 'rebalance')


if __name__ == '__main__':
    main()
