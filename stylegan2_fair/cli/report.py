"""`stylegan2-fair report RUN_DIR`: one offline page (HTML or PNG) about a training run."""
import os

import click


@click.command()
@click.argument('run_dir', type=click.Path(exists=True, file_okay=False))
@click.option('--out', type=click.Path(dir_okay=False), default=None,
              help='Output file: .html (default RUN_DIR/report.html) or .png')
def report(run_dir, out):
    """Training curves, metric curves, per-attribute bars and the newest image grids of RUN_DIR.

    \b
    stylegan2-fair report training-runs/00000-colored-tiny
    stylegan2-fair report training-runs/00000-colored-tiny --out=summary.png
    """
    from ..report import write_report
    if out is not None and os.path.splitext(out)[1].lower() not in ('.html', '.htm', '.png'):
        raise click.BadParameter(f'{out}: give a .html or .png file name', param_hint='--out')
    path = write_report(run_dir, out)
    click.echo(f'Wrote {path}')


def main():
    report()  # pylint: disable=no-value-for-parameter
