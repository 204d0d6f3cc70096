"""dataset_tool: images or a toy dataset -> a training zip/folder with dataset.json.

Sources: a folder or zip of images, the official tool's archives (cifar-10-python.tar.gz, MNIST
*-images-idx3-ubyte.gz with its labels file beside it, LSUN *_lmdb folders), or toy:NAME.
The official options (--width/--height, --transform, --resize-filter, --max-images) work unchanged.

Output follows the official tool: PNGs at {idx//1000:05d}/img{idx:08d}.png in sorted source order,
plus dataset.json with "labels" (or null) and, our extension, "attributes" (see dataset.py).

Examples:
  python dataset_tool.py --source=~/celeba/img_align_celeba --dest=celeba64.zip --resolution=64 \\
      --attributes=~/celeba/list_attr_celeba.txt
  python dataset_tool.py --source=~/downloads/cifar-10-python.tar.gz --dest=cifar10.zip
  python dataset_tool.py --source=~/lsun/car_lmdb --dest=car.zip --transform=center-crop-wide \\
      --width=512 --height=384
  python dataset_tool.py --source=toy:colored-digits --majority=0.99 --num-images=20000 --dest=cdigits.zip
"""
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile

import click
import numpy as np
import PIL.Image

from .. import dataset as ds
from .. import toy_data
from .dataset_sources import ConvertError, labels_from, merge_attribute_list, open_source, toy_source

_GRAYSCALE_MODES = {'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N'}


def archive_name(idx):
    return f'{idx // 1000:05d}/img{idx:08d}.png'


# ----------------------------------------------------------------------------------------------
# Pixels

def _is_power_of_two(x):
    return x >= 4 and not x & (x - 1)


def to_8bit(image, channels):
    if image.mode.startswith('I'):
        # 16-bit grayscale: keep the high byte rather than clipping at 255.
        array = np.asarray(image, dtype=np.int64)
        image = PIL.Image.fromarray((np.clip(array, 0, 65535) >> 8).astype(np.uint8))
    return image.convert('L' if channels == 1 else 'RGB')      # drops alpha, expands palettes


RESIZE_FILTERS = {'box': PIL.Image.BOX, 'lanczos': PIL.Image.LANCZOS}


def fit(image, resolution, transform, resample=PIL.Image.LANCZOS, wide_height=None):
    """Square `resolution` x `resolution`: center-crop (default), pad with black, stretch, or
    center-crop-wide (see crop_wide). Returns None for an image that transform drops."""
    w, h = image.size
    if transform == 'center-crop-wide':
        return crop_wide(image, resolution, wide_height, resample)
    if transform == 'stretch':
        return image.resize((resolution, resolution), resample)
    if transform == 'pad':
        side = max(w, h)
        canvas = PIL.Image.new(image.mode, (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas.resize((resolution, resolution), resample)
    # The official center-crop: the centred square of the shorter side, then resized.
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.crop(box).resize((resolution, resolution), resample)


def crop_wide(image, side, height, resample):
    """The official center-crop-wide, pixel for pixel (so datasets match the official LSUN car):
    a full-width band of round(side * h / w) source rows around the centre, resized to side x
    height and letterboxed into a black side x side square (the band at rows (side-height)//2...).
    Images narrower than `side`, or whose band would be shorter than `height`, are dropped. The
    band height is the source height at output scale yet is cut in source rows, so the aspect is
    kept only for sources exactly `side` wide; we reproduce this rather than fix it."""
    w, h = image.size
    rows = int(round(side * h / w))
    if w < side or rows < height:
        return None
    top = (h - rows) // 2
    band = image.crop((0, top, w, top + rows)).resize((side, height), resample)
    canvas = PIL.Image.new(image.mode, (side, side))
    canvas.paste(band, (0, (side - height) // 2))
    return canvas


def output_size(resolution, width, height, transform):
    """(side, wide_height) from --resolution/--width/--height; side None keeps the source size."""
    if transform == 'center-crop-wide':
        if width is not None and resolution is not None and width != resolution:
            raise ConvertError(f'--resolution={resolution} and --width={width} disagree; give one of them.')
        side = width if width is not None else resolution
        if side is None or height is None:
            raise ConvertError('--transform=center-crop-wide needs --width (the square output size) and '
                               '--height (the picture height inside it), e.g. --width=512 --height=384.')
        if height > side:
            raise ConvertError(f'--transform=center-crop-wide: --height={height} must not exceed '
                               f'--width={side} (the picture is letterboxed into a {side}x{side} square).')
        return side, height
    if width is not None and height is not None and width != height:
        raise ConvertError(f'--width={width} --height={height}: training needs square images; give '
                           f'--width == --height, or use --resolution=N (for wide images letterboxed '
                           f'into a square, use --transform=center-crop-wide).')
    given = width if width is not None else height
    if given is not None and resolution is not None and given != resolution:
        raise ConvertError(f'--resolution={resolution} and --width/--height={given} disagree; give '
                           f'either --resolution or --width/--height.')
    return (resolution if resolution is not None else given), None


def scan_headers(source):
    """Channel count (3 if any image is colour) and {size: first image name}, from headers only."""
    channels, sizes = 1, {}
    for name in source.names:
        mode, size = source.header(name)
        if mode not in _GRAYSCALE_MODES:
            channels = 3
        sizes.setdefault(size, name)
    return channels, sizes


# ----------------------------------------------------------------------------------------------
# Writing

class _Writer:
    """Writes into a temporary sibling of `dest` and moves it into place at the end, so a dest
    is either absent, the old one, or complete."""

    def __init__(self, dest, overwrite):
        self.dest = os.path.abspath(dest)
        self.is_zip = self.dest.lower().endswith('.zip')
        if os.path.exists(self.dest) and not overwrite:
            raise ConvertError(f'{dest} already exists; pass --overwrite to replace it, or choose '
                               f'another --dest.')
        parent = os.path.dirname(self.dest)
        os.makedirs(parent, exist_ok=True)
        prefix = f'.{os.path.basename(self.dest)}.tmp-'
        if self.is_zip:
            fd, self.tmp = tempfile.mkstemp(prefix=prefix, suffix='.zip', dir=parent)
            os.close(fd)
            self.zip = zipfile.ZipFile(self.tmp, 'w', compression=zipfile.ZIP_STORED)
        else:
            self.tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)

    def write(self, name, data):
        if self.is_zip:
            self.zip.writestr(name, data)
        else:
            path = os.path.join(self.tmp, *name.split('/'))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def commit(self):
        if self.is_zip:
            self.zip.close()
        # mkstemp/mkdtemp create private (0600/0700) entries; give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, (0o666 if self.is_zip else 0o777) & ~umask)
        if os.path.isdir(self.dest) and not os.path.islink(self.dest):
            old = self.tmp + '.old'
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.dest)

    def abort(self):
        if self.is_zip:
            self.zip.close()
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def encode_png(image):
    buffer = io.BytesIO()
    image.save(buffer, format='png', compress_level=1)
    return buffer.getvalue()


def convert_dataset(source, dest, max_images=None, resolution=None, transform=None, num_images=10000,
                    seed=0, majority=0.99, imbalance=0.1, attributes_file=None, labels_spec=None,
                    overwrite=False, progress=True, width=None, height=None, resize_filter='lanczos'):
    """Library form of the `convert` command; returns a summary dict."""
    dest = os.path.expanduser(dest)  # the shell leaves ~ in --dest=~/x.zip alone
    resolution, wide_height = output_size(resolution, width, height, transform)
    if source.startswith('toy:'):
        if transform is not None:
            raise ConvertError('--transform applies to image sources; toy datasets are rendered at '
                               '--resolution directly.')
        kind = source[len('toy:'):]
        if kind not in toy_data.TOY_DATASETS:
            raise ConvertError(f'unknown toy source {source!r}; choose from '
                               f'{", ".join("toy:" + k for k in toy_data.TOY_DATASETS)}.')
        count = num_images if max_images is None else min(num_images, max_images)
        resolution = 32 if resolution is None else resolution
        if not _is_power_of_two(resolution) or resolution < 8:
            raise ConvertError(f'--resolution={resolution}: toy datasets need a power of two >= 8.')
        src = toy_source(kind, count, resolution, seed, majority, imbalance)
    else:
        source = os.path.expanduser(source)
        if os.path.abspath(source) == os.path.abspath(dest):
            raise ConvertError('--dest must differ from --source.')
        try:
            src = open_source(source)
        except ds.DatasetError as err:
            raise ConvertError(str(err)) from err
        if max_images is not None:
            # Like the official tool, counts source images, including any a transform drops.
            src.names = src.names[:max_images]
    if transform is not None and resolution is None:
        raise ConvertError('--transform needs the output size: --resolution=N or --width=N --height=N.')
    if resolution is not None and not _is_power_of_two(resolution):
        raise ConvertError(f'output size {resolution} (--resolution/--width/--height) must be a power of '
                           f'two (e.g. 64, 256, 1024).')
    if resolution is None and src.varied_sizes:
        raise ConvertError(f'{source} holds images of varying sizes; give the output size and crop, e.g. '
                           f'--transform=center-crop --width=256 --height=256.')
    if attributes_file is not None:
        attributes_file = os.path.expanduser(attributes_file)
        if not os.path.isfile(attributes_file):
            raise ConvertError(f'--attributes={attributes_file}: no such file; give the path of '
                               f'list_attr_celeba.txt or a .csv of attributes.')
        merge_attribute_list(src, attributes_file)
    label_names = labels_from(src, labels_spec) if labels_spec else None

    if src.channels is None:
        src.channels, sizes = scan_headers(src)
        if resolution is None:
            (w, h), first = next(iter(sizes.items()))
            if len(sizes) > 1:
                (w2, h2), other = list(sizes.items())[1]
                raise ConvertError(f'source images differ in size ({first!r} is {w}x{h}, {other!r} '
                                   f'is {w2}x{h2}); pass --resolution=N to crop and resize them all.')
            if w != h or not _is_power_of_two(w):
                raise ConvertError(f'source images are {w}x{h}; training needs a square power-of-'
                                   f'two size: pass --resolution=N (and --transform to choose how).')

    resample = RESIZE_FILTERS[resize_filter]
    writer = _Writer(dest, overwrite)
    try:
        labels, attributes, size, written, skipped = [], [], None, 0, 0
        names = src.names
        if progress:
            from tqdm import tqdm
            names = tqdm(names, desc='converting', unit='img', file=sys.stderr, disable=None)
        for name in names:
            image = src.load(name)
            if image is not None:
                image = to_8bit(image, src.channels)
                if resolution is not None and (image.size != (resolution, resolution) or wide_height):
                    image = fit(image, resolution, transform or 'center-crop', resample, wide_height)
            if image is None:           # undecodable LSUN entry, or too small for center-crop-wide
                skipped += 1
                continue
            if size is None:
                size = image.size
            elif image.size != size:    # a safety net; sources of unknown sizes need --resolution
                raise ConvertError(f'source image {name!r} is {image.size[0]}x{image.size[1]}, earlier ones '
                                   f'{size[0]}x{size[1]}; pass --resolution=N to resize them all.')
            # Numbered without gaps for dropped images (the official tool leaves gaps there).
            out = archive_name(written)
            writer.write(out, encode_png(image))
            written += 1
            if src.labels is not None:
                labels.append([out, src.labels[name]])
            if src.attribute_names:
                attributes.append([out, src.attributes[name]])
        if size is None:
            why = 'too narrow or too wide for center-crop-wide' if wide_height else 'undecodable'
            raise ConvertError(f'no image was written: all {skipped} source images were dropped ({why}).')
        meta = {'labels': labels if src.labels is not None else None}
        if src.attribute_names:
            meta['attributes'] = {'names': src.attribute_names, 'values': attributes}
        writer.write('dataset.json', json.dumps(meta).encode('utf-8'))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return dict(dest=dest, images=written, skipped=skipped, channels=src.channels,
                resolution=size[0], labels=_describe_labels(meta['labels'], label_names),
                attributes=src.attribute_names)


def _describe_labels(labels, label_names):
    if labels is None:
        return 'none'
    first = labels[0][1]
    text = f'vectors of {len(first)}' if isinstance(first, list) else f'{max(l for _, l in labels) + 1} classes'
    return f'{text} ({", ".join(map(str, label_names))})' if label_names else text


@click.command('convert')
@click.option('--source', required=True, metavar='PATH|toy:NAME',
              help='Folder or zip of images (optionally with dataset.json), cifar-10-python.tar.gz, '
                   'MNIST train-images-idx3-ubyte.gz (labels file beside it), an LSUN *_lmdb folder '
                   '(pip install lmdb), or toy:stacked-digits, toy:colored-digits, toy:longtail-digits.')
@click.option('--dest', required=True, metavar='PATH', help='Output .zip (or a folder).')
@click.option('--max-images', '--max_images', type=click.IntRange(min=1),
              help='Read at most this many source images (the first, sorted). --max_images as in the '
                   'official README works too.')
@click.option('--resolution', type=click.IntRange(min=4), help='Output size NxN, a power of two (toy default 32).')
@click.option('--width', type=click.IntRange(min=1), help='Output width (official name; with --height, or alone '
              'for square output).')
@click.option('--height', type=click.IntRange(min=1), help='Output height; must equal --width except with '
              'center-crop-wide, where it is the picture height inside a width x width square.')
@click.option('--transform', type=click.Choice(['center-crop', 'center-crop-wide', 'pad', 'stretch']),
              help='How to fit images to the output size (default center-crop).')
@click.option('--resize-filter', type=click.Choice(list(RESIZE_FILTERS)), default='lanczos', show_default=True,
              help='Filter for every resize (box: what the paper used for FFHQ 256).')
@click.option('--attributes', 'attributes_file', type=click.Path(dir_okay=False),
              help='CelebA-style attribute list (list_attr_celeba.txt or .csv) to store as attributes.')
@click.option('--labels-from', 'labels_spec', metavar='subfolder|attributes:A[,B]',
              help='Make labels from class subfolders or from attributes (for --cond).')
@click.option('--num-images', type=click.IntRange(min=1), default=10000, show_default=True,
              help='Toy sources: number of images.')
@click.option('--seed', type=int, default=0, show_default=True, help='Toy sources: random seed.')
@click.option('--majority', type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
              help='toy:colored-digits: fraction drawn red (the rest green).')
@click.option('--imbalance', type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help='toy:longtail-digits: count of class 9 / count of class 0.')
@click.option('--overwrite', is_flag=True, help='Replace an existing --dest.')
def convert(source, dest, max_images, resolution, width, height, transform, resize_filter, attributes_file,
            labels_spec, num_images, seed, majority, imbalance, overwrite):
    """Convert images or a toy dataset into a StyleGAN2-ADA training dataset (zip or folder)."""
    summary = convert_dataset(source, dest, max_images=max_images, resolution=resolution,
                              transform=transform, num_images=num_images, seed=seed, majority=majority,
                              imbalance=imbalance, attributes_file=attributes_file,
                              labels_spec=labels_spec, overwrite=overwrite, width=width, height=height,
                              resize_filter=resize_filter)
    dropped = f' ({summary["skipped"]} source images dropped)' if summary['skipped'] else ''
    click.echo(f'Wrote {summary["images"]} images{dropped} ({summary["resolution"]}x{summary["resolution"]}, '
               f'{summary["channels"]} channel(s)) to {summary["dest"]}; labels: {summary["labels"]}; '
               f'attributes: {len(summary["attributes"])}.')


def main(args=None):
    convert.main(args=args, prog_name='dataset_tool.py')


if __name__ == '__main__':
    main()
