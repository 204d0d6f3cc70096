"""dataset_tool: images (a folder or zip) or a toy dataset -> a training zip/folder with dataset.json.

Output follows the official tool: PNGs at {idx//1000:05d}/img{idx:08d}.png in sorted source order,
plus dataset.json with "labels" (or null) and, our extension, "attributes" (see dataset.py).

Examples:
  python dataset_tool.py --source=~/celeba/img_align_celeba --dest=celeba64.zip --resolution=64 \\
      --attributes=~/celeba/list_attr_celeba.txt
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

_GRAYSCALE_MODES = {'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N'}


class ConvertError(click.ClickException):
    """Bad input for the tool; printed as 'Error: ...' without a traceback."""


def archive_name(idx):
    return f'{idx // 1000:05d}/img{idx:08d}.png'


# ----------------------------------------------------------------------------------------------
# Sources: the images to write, in order, with their labels and attributes keyed by source name.

class Source:
    """What to write: names, a way to get each image, labels and attributes keyed by name."""

    def __init__(self, names, load, labels=None, attribute_names=(), attributes=None, channels=None,
                 header=None):
        self.names = names                 # sorted source names, one per output image
        self.load = load                   # name -> decoded PIL image
        self.header = header               # name -> (mode, size), reading the header only
        self.labels = labels               # {name: int or list} or None
        self.attribute_names = list(attribute_names)
        self.attributes = attributes or {} # {name: [0/1, ...]}
        self.channels = channels           # 1 or 3; None: decide from the images


def toy_source(kind, num_images, resolution, seed, majority, imbalance):
    options = {'colored-digits': dict(majority=majority), 'longtail-digits': dict(imbalance=imbalance)}
    try:
        data = toy_data.make_toy(kind, num_images, resolution=resolution, seed=seed, **options.get(kind, {}))
    except ValueError as err:
        raise ConvertError(f'toy:{kind}: {err}') from err
    names = [f'toy{i:08d}' for i in range(len(data))]
    index = {name: i for i, name in enumerate(names)}
    return Source(
        names=names, load=lambda name: PIL.Image.fromarray(data.images[index[name]]),
        labels={name: int(label) for name, label in zip(names, data.labels)},
        attribute_names=data.attribute_names,
        attributes={name: [int(v) for v in row] for name, row in zip(names, data.attributes)},
        channels=3)


def image_source(path):
    try:
        files = ds.open_files(path)
        all_names = set(files.names())
    except (FileNotFoundError, ds.DatasetError) as err:
        raise ConvertError(str(err)) from err
    names = ds.list_images(all_names)
    if not names:
        raise ConvertError(f'No .png/.jpg/.jpeg images found in {path}.')
    meta = ds.read_dataset_json(files, path, all_names)
    labels = None
    if meta.get('labels') is not None:
        ds.parse_labels(meta, path, names)          # validates; raw values are kept below
        labels = {str(k).replace('\\', '/'): v for k, v in meta['labels']}
    attribute_names, attributes = [], {}
    if meta.get('attributes') is not None:
        attribute_names, values = ds.parse_attributes(meta, path, names)
        attributes = {name: [int(v) for v in row] for name, row in zip(names, values)}

    def load(name):
        try:
            with files.open(name) as f:
                image = PIL.Image.open(f)
                image.load()
        except (OSError, SyntaxError) as err:
            raise ConvertError(f'{name!r} in {path} cannot be decoded ({err}); remove or re-save it.') from err
        return image

    def header(name):
        try:
            with files.open(name) as f, PIL.Image.open(f) as image:
                return image.mode, image.size
        except (OSError, SyntaxError) as err:
            raise ConvertError(f'{name!r} in {path} cannot be read as an image ({err}); remove or '
                               f're-save it.') from err
    return Source(names, load, labels, attribute_names, attributes, header=header)


def read_attribute_list(path):
    """CelebA's list_attr_celeba.txt (count line, names line, 'file v1 v2 ...' with -1/1) or its CSV
    form (header 'image_id,Name,...'). Returns (names, {filename: [0/1, ...]})."""
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ConvertError(f'attribute file {path} is empty')
    if ',' in lines[0]:
        names, rows, first_row = lines[0].split(',')[1:], [line.split(',') for line in lines[1:]], 2
    else:
        if len(lines) < 2 or not lines[0].isdigit():
            raise ConvertError(f'attribute file {path}: expected the image count on line 1 and the '
                               f'attribute names on line 2 (the format of list_attr_celeba.txt).')
        names, rows, first_row = lines[1].split(), [line.split() for line in lines[2:]], 3
        if int(lines[0]) != len(rows):
            raise ConvertError(f'attribute file {path} says {lines[0]} images but lists {len(rows)}; '
                               f'the file may be truncated.')
    table = {}
    for lineno, row in enumerate(rows, first_row):
        if len(row) != len(names) + 1 or not all(v.strip() in ('-1', '1', '0') for v in row[1:]):
            raise ConvertError(f'attribute file {path}, line {lineno}: expected a filename and '
                               f'{len(names)} values of -1/1, got {len(row) - 1} fields.')
        table[row[0].strip()] = [int(int(v) > 0) for v in row[1:]]
    return [n.strip() for n in names], table


def merge_attribute_list(source, path):
    names, table = read_attribute_list(path)
    clash = set(names) & set(source.attribute_names)
    if clash:
        raise ConvertError(f'attributes {sorted(clash)} of {path} are already in the source dataset.json; '
                           f'remove them from one of the two.')
    missing = [name for name in source.names if name not in table and os.path.basename(name) not in table]
    if missing:
        raise ConvertError(f'{len(missing)} source image(s) are not listed in {path}, e.g. '
                           f'{missing[:3]}. Use the attribute file of these images, or --max-images '
                           f'to convert only listed ones.')
    for name in source.names:
        row = table[name] if name in table else table[os.path.basename(name)]
        source.attributes[name] = source.attributes.get(name, []) + row
    source.attribute_names += names


def labels_from(source, spec):
    """Replace the labels: 'subfolder' (class = top-level folder, sorted) or 'attributes:A[,B...]'
    (one name: class 0/1; several: a 0/1 vector for multi-label conditioning)."""
    if spec == 'subfolder':
        top = [name.split('/')[0] if '/' in name else None for name in source.names]
        if None in top:
            raise ConvertError('--labels-from=subfolder needs every image inside a class folder '
                               '(SOURCE/CLASS/image.png); some are at the top level.')
        classes = sorted(set(top))
        source.labels = {name: classes.index(t) for name, t in zip(source.names, top)}
        return classes
    if spec.startswith('attributes:'):
        wanted = [n for n in spec.split(':', 1)[1].split(',') if n]
        unknown = [n for n in wanted if n not in source.attribute_names]
        if not wanted or unknown:
            raise ConvertError(f'--labels-from: unknown attribute(s) {unknown or wanted}; available: '
                               f'{", ".join(source.attribute_names) or "none (add --attributes=FILE)"}.')
        cols = [source.attribute_names.index(n) for n in wanted]
        source.labels = {}
        for name in source.names:
            row = [source.attributes[name][c] for c in cols]
            source.labels[name] = row[0] if len(row) == 1 else [float(v) for v in row]
        return wanted
    raise ConvertError(f'--labels-from={spec!r}: use "subfolder" or "attributes:NAME[,NAME...]".')


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


def fit(image, resolution, transform):
    """Square `resolution` x `resolution`: center-crop (default), pad with black, or stretch."""
    w, h = image.size
    if transform == 'stretch':
        return image.resize((resolution, resolution), PIL.Image.LANCZOS)
    if transform == 'pad':
        side = max(w, h)
        canvas = PIL.Image.new(image.mode, (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas.resize((resolution, resolution), PIL.Image.LANCZOS)
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.crop(box).resize((resolution, resolution), PIL.Image.LANCZOS)


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
                    overwrite=False, progress=True):
    """Library form of the `convert` command; returns a summary dict."""
    dest = os.path.expanduser(dest)  # the shell leaves ~ in --dest=~/x.zip alone
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
            src = image_source(source)
        except ds.DatasetError as err:
            raise ConvertError(str(err)) from err
        if max_images is not None:
            src.names = src.names[:max_images]
    if transform is not None and resolution is None:
        raise ConvertError('--transform needs --resolution (the output size).')
    if resolution is not None and not _is_power_of_two(resolution):
        raise ConvertError(f'--resolution={resolution} must be a power of two (e.g. 64, 256, 1024).')
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
            (width, height), first = next(iter(sizes.items()))
            if len(sizes) > 1:
                (w2, h2), other = list(sizes.items())[1]
                raise ConvertError(f'source images differ in size ({first!r} is {width}x{height}, {other!r} '
                                   f'is {w2}x{h2}); pass --resolution=N to crop and resize them all.')
            if width != height or not _is_power_of_two(width):
                raise ConvertError(f'source images are {width}x{height}; training needs a square power-of-'
                                   f'two size: pass --resolution=N (and --transform to choose how).')

    writer = _Writer(dest, overwrite)
    try:
        labels, attributes = [], []
        names = src.names
        if progress:
            from tqdm import tqdm
            names = tqdm(names, desc='converting', unit='img', file=sys.stderr, disable=None)
        for idx, name in enumerate(names):
            image = to_8bit(src.load(name), src.channels)
            if resolution is not None and image.size != (resolution, resolution):
                image = fit(image, resolution, transform or 'center-crop')
            out = archive_name(idx)
            writer.write(out, encode_png(image))
            size = image.size[0]
            if src.labels is not None:
                labels.append([out, src.labels[name]])
            if src.attribute_names:
                attributes.append([out, src.attributes[name]])
        meta = {'labels': labels if src.labels is not None else None}
        if src.attribute_names:
            meta['attributes'] = {'names': src.attribute_names, 'values': attributes}
        writer.write('dataset.json', json.dumps(meta).encode('utf-8'))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return dict(dest=dest, images=len(src.names), channels=src.channels, resolution=size,
                labels=_describe_labels(meta['labels'], label_names), attributes=src.attribute_names)


def _describe_labels(labels, label_names):
    if labels is None:
        return 'none'
    first = labels[0][1]
    text = f'vectors of {len(first)}' if isinstance(first, list) else f'{max(l for _, l in labels) + 1} classes'
    return f'{text} ({", ".join(map(str, label_names))})' if label_names else text


@click.command('convert')
@click.option('--source', required=True, metavar='PATH|toy:NAME',
              help='Folder or zip of images (optionally with dataset.json), or toy:stacked-digits, '
                   'toy:colored-digits, toy:longtail-digits.')
@click.option('--dest', required=True, metavar='PATH', help='Output .zip (or a folder).')
@click.option('--max-images', type=click.IntRange(min=1), help='Convert at most this many (the first, sorted).')
@click.option('--resolution', type=click.IntRange(min=4), help='Output size NxN, a power of two (toy default 32).')
@click.option('--transform', type=click.Choice(['center-crop', 'pad', 'stretch']),
              help='How to make images square with --resolution (default center-crop).')
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
def convert(source, dest, max_images, resolution, transform, attributes_file, labels_spec, num_images,
            seed, majority, imbalance, overwrite):
    """Convert images or a toy dataset into a StyleGAN2-ADA training dataset (zip or folder)."""
    summary = convert_dataset(source, dest, max_images=max_images, resolution=resolution,
                              transform=transform, num_images=num_images, seed=seed, majority=majority,
                              imbalance=imbalance, attributes_file=attributes_file,
                              labels_spec=labels_spec, overwrite=overwrite)
    click.echo(f'Wrote {summary["images"]} images ({summary["resolution"]}x{summary["resolution"]}, '
               f'{summary["channels"]} channel(s)) to {summary["dest"]}; labels: {summary["labels"]}; '
               f'attributes: {len(summary["attributes"])}.')


def main(args=None):
    convert.main(args=args, prog_name='dataset_tool.py')


if __name__ == '__main__':
    main()
