"""`stylegan2-fair train-classifier`: a small CNN on a dataset's own class labels, for `--classifier labels:CLF.pt`.

Example (toy digits, a few minutes on 2 CPU cores):
  python dataset_tool.py --source=toy:longtail-digits --imbalance=0.1 --resolution=16 --dest=lt.zip
  stylegan2-fair train-classifier --data=lt.zip --out=clf.pt
  python train.py --outdir=runs --data=lt.zip --cfg=tiny --fair-method=fairness --classifier=labels:clf.pt
"""
import json
import os

import click
import torch


@click.command(context_settings=dict(show_default=True))
@click.option('--data', help='Training data (zip or folder) with integer class labels in dataset.json',
              metavar='PATH', required=True)
@click.option('--out', help='Where to write the classifier (.pt)', metavar='FILE', required=True)
@click.option('--epochs', help='Passes over the training split', type=click.IntRange(min=1), default=10)
@click.option('--batch', help='Batch size', type=click.IntRange(min=1), default=64)
@click.option('--lr', help='Peak learning rate (one-cycle schedule)', type=float, default=2e-3)
@click.option('--resolution', help='Input resolution of the CNN [default: dataset resolution, at most 64]',
              type=click.IntRange(min=4))
@click.option('--width', help='Channels of the first stage', type=click.IntRange(min=1), default=32)
@click.option('--balanced', help='Weight the loss by inverse class frequency', type=bool, default=True)
@click.option('--val-fraction', help='Share of images held out to report accuracy', type=click.FloatRange(0, 0.9),
              default=0.1)
@click.option('--class-names', help='Comma-separated class names in label order [default: class0, class1, ...]')
@click.option('--seed', help='Random seed', type=int, default=0)
@click.option('--device', help='Where to train', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
@click.option('--workers', help='DataLoader workers for reading images', type=click.IntRange(min=0), default=0)
def train_classifier(data, out, epochs, batch, lr, resolution, width, balanced, val_fraction, class_names, seed,
                     device, workers):
    """Train an auxiliary classifier on the class labels of a dataset."""
    from ..classifiers.small_cnn import train_label_classifier
    from ..dataset import ImageFolderDataset
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException('--device=cuda but no CUDA GPU is visible; use --device=cpu')
    if not os.path.exists(data):
        raise click.ClickException(f'--data={data}: no such file or folder; build one with dataset_tool.py')
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise click.ClickException(f'--out={out}: folder {out_dir} does not exist; create it first')
    names = [n.strip() for n in class_names.split(',')] if class_names else None
    try:
        dataset = ImageFolderDataset(data, use_labels=True)
        clf, metrics = train_label_classifier(dataset, epochs=epochs, batch_size=batch, lr=lr, resolution=resolution,
                                              width=width, balanced=balanced, val_fraction=val_fraction, seed=seed,
                                              device=device, class_names=names, num_workers=workers)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    clf.save(out, metrics=metrics, data=data)
    print(json.dumps(metrics, indent=2))
    print(f'Saved {out}; use it with --classifier=labels:{out}')


def main():
    train_classifier()  # pylint: disable=no-value-for-parameter


if __name__ == '__main__':
    main()
