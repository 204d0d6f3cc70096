"""The `stylegan2-fair` command: one group over the same commands as the launcher scripts."""
import click

from .calc_metrics import calc_metrics
from .dataset_tool import convert
from .generate import generate
from .projector import projector
from .rebalance import rebalance_command
from .report import report
from .style_mixing import style_mixing
from .train import train
from .train_classifier import train_classifier
from training_hooks.patch import patch_upstream


@click.group()
def cli():
    """stylegan2-fair: StyleGAN2-ADA training with fairness and coverage methods."""


cli.add_command(train)
cli.add_command(generate)
cli.add_command(projector)
cli.add_command(style_mixing, name='style-mixing')
cli.add_command(convert, name='dataset')
cli.add_command(train_classifier, name='train-classifier')
cli.add_command(patch_upstream, name='patch-upstream')
cli.add_command(calc_metrics, name='calc-metrics')
cli.add_command(report)
cli.add_command(rebalance_command, name='rebalance')


def main():
    cli()  # pylint: disable=no-value-for-parameter


if __name__ == '__main__':
    main()
