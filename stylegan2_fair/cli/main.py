"""The `stylegan2-fair` command: one group over the same commands as the launcher scripts."""
import click

from .dataset_tool import convert
from .generate import generate
from .train import train


@click.group()
def cli():
    """stylegan2-fair: StyleGAN2-ADA training with fairness and coverage methods."""


cli.add_command(train)
cli.add_command(generate)
cli.add_command(convert, name='dataset')


def main():
    cli()  # pylint: disable=no-value-for-parameter
