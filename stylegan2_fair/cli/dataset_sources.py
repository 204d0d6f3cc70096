"""dataset_tool's sources: the images to convert, in order, with labels and attributes keyed by name.

A folder or zip of images (optionally with dataset.json), the archives the official tool reads
(cifar-10-python.tar.gz, MNIST idx files, LSUN lmdb folders), or a toy dataset; `open_source`
picks the reader from the path as the official tool does.
"""
import codecs
import gzip
import io
import os
import pickle
import re
import sys
import tarfile

import click
import numpy as np
import PIL.Image

from .. import dataset as ds
from .. import toy_data


class ConvertError(click.ClickException):
    """Bad input for the tool; printed as 'Error: ...' without a traceback."""


# ----------------------------------------------------------------------------------------------
# Sources: the images to write, in order, with their labels and attributes keyed by source name.

class Source:
    """What to write: names, a way to get each image, labels and attributes keyed by name."""

    def __init__(self, names, load, labels=None, attribute_names=(), attributes=None, channels=None,
                 header=None, varied_sizes=False):
        self.names = names                 # sorted source names, one per output image unless skipped
        self.load = load                   # name -> decoded PIL image, or None to skip it
        self.header = header               # name -> (mode, size), reading the header only
        self.labels = labels               # {name: int or list} or None
        self.attribute_names = list(attribute_names)
        self.attributes = attributes or {} # {name: [0/1, ...]}
        self.channels = channels           # 1 or 3; None: decide from the images
        self.varied_sizes = varied_sizes   # sizes unknown without decoding: the output size is required


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


def array_source(prefix, images, labels, channels):
    """In-memory images (N, H, W[, C]) uint8 with integer class labels."""
    names = [f'{prefix}{i:08d}' for i in range(len(images))]
    index = {name: i for i, name in enumerate(names)}
    return Source(names, lambda name: PIL.Image.fromarray(images[index[name]]),
                  labels={name: int(label) for name, label in zip(names, labels)}, channels=channels)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles, and unpickling runs whatever the file names; allow only what a
    pickled dict of numpy arrays needs, so a tampered archive fails instead of running code."""
    _ALLOWED = {('numpy.core.multiarray', '_reconstruct'): np.array([]).__reduce__()[0],
                ('numpy._core.multiarray', '_reconstruct'): np.array([]).__reduce__()[0],
                ('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
                ('_codecs', 'encode'): codecs.encode}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
        return self._ALLOWED[module, name]


CIFAR10_NAME = 'cifar-10-python.tar.gz'


def cifar10_source(path):
    """The training half (data_batch_1..5, 50000 images) like the official tool; test_batch is left out."""
    hint = f'download {CIFAR10_NAME} again from https://www.cs.toronto.edu/~kriz/cifar.html'
    images, labels = [], []
    try:
        with tarfile.open(path, 'r:*') as tar:
            for batch in range(1, 6):
                member = f'cifar-10-batches-py/data_batch_{batch}'
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    raise ConvertError(f'{path} has no {member}; it is not the CIFAR-10 python archive '
                                       f'or is incomplete: {hint}.') from None
                with f:
                    data = _ArrayUnpickler(f, encoding='latin1').load()
                pixels = np.asarray(data['data'])
                if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 \
                        or len(data['labels']) != len(pixels):
                    raise ConvertError(f'{path}: {member} does not hold N x 3072 uint8 pixels with N '
                                       f'labels; {hint}.')
                images.append(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # stored planar RGB
                labels += [int(label) for label in data['labels']]
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError, TypeError) as err:
        raise ConvertError(f'{path} cannot be read as the CIFAR-10 archive ({err}); {hint}.') from err
    if not all(0 <= label <= 9 for label in labels):
        raise ConvertError(f'{path}: CIFAR-10 labels must be 0..9; {hint}.')
    return array_source('cifar', np.ascontiguousarray(np.concatenate(images)), labels, channels=3)


_MNIST_IMAGES = re.compile(r'(.*)-images-idx3-ubyte(\.gz)?$')


def _read_idx(path, magic, what):
    """An MNIST idx file: big-endian int32 magic and dimensions, then uint8 data."""
    try:
        with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ConvertError(f'{path} cannot be read ({err}); download the MNIST {what} file again.') from err
    ndim = magic - 0x800
    header = np.frombuffer(raw[:4 + 4 * ndim], '>i4') if len(raw) >= 4 + 4 * ndim else None
    if header is None or header[0] != magic or len(raw) != 4 + 4 * ndim + int(np.prod(header[1:])):
        raise ConvertError(f'{path} is not an MNIST idx {what} file (wrong header or size); download it '
                           f'again from the MNIST site.')
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(header[1:])


def mnist_source(path):
    """Digits padded with black to the next power of two (28 -> 32, 2 px each side, as the official
    tool does); labels come from the matching *-labels-idx1-ubyte[.gz] file beside the images."""
    base = os.path.basename(path)
    labels_path = os.path.join(os.path.dirname(path), base.replace('-images-idx3-', '-labels-idx1-'))
    if not os.path.isfile(labels_path):
        raise ConvertError(f'MNIST labels not found: expected {labels_path} next to {path} (download '
                           f'{os.path.basename(labels_path)} into the same folder).')
    images = _read_idx(path, 0x803, 'images')
    labels = _read_idx(labels_path, 0x801, 'labels')
    if len(labels) != len(images):
        raise ConvertError(f'{path} holds {len(images)} images but {labels_path} {len(labels)} labels; '
                           f'use the labels file of the same split.')
    n, h, w = images.shape
    side = 1 << (int(max(h, w)) - 1).bit_length()
    top, left = (side - h) // 2, (side - w) // 2
    padded = np.zeros([n, side, side], np.uint8)
    padded[:, top:top + h, left:left + w] = images
    return array_source('mnist', padded, labels, channels=1)


def is_lmdb_folder(path):
    # The official tool goes by the _lmdb suffix; data.mdb also catches renamed/unzipped folders.
    name = os.path.basename(path.rstrip('/\\'))
    return name.endswith('_lmdb') or os.path.isfile(os.path.join(path, 'data.mdb'))


def lmdb_source(path):
    """LSUN: encoded images in key order. Entries that do not decode are skipped with a warning, as
    the official tool does (LSUN has a few), and always made RGB like its OpenCV decoder."""
    try:
        import lmdb
    except ImportError:
        raise ConvertError(f'{path} is an LMDB folder (LSUN); reading it needs the lmdb package: '
                           f'pip install lmdb   (or pip install "stylegan2-fair[lsun]").') from None
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
        with env.begin() as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
    except lmdb.Error as err:
        raise ConvertError(f'{path} cannot be opened as an LMDB database ({err}); pass the folder that '
                           f'holds data.mdb.') from err
    if not keys:
        raise ConvertError(f'{path} is an empty LMDB database.')

    def load(name):
        with env.begin() as txn:
            value = txn.get(name.encode('latin1'))
        try:
            image = PIL.Image.open(io.BytesIO(value))
            image.load()
            return image
        except (OSError, SyntaxError, ValueError) as err:
            print(f'warning: skipping LMDB entry {name!r}: cannot be decoded ({err})', file=sys.stderr)
            return None
    # latin1 maps every byte to one character, so any key survives the round trip.
    return Source([key.decode('latin1') for key in keys], load, channels=3, varied_sizes=True)


def open_source(path):
    """Pick the reader from the name/content, as the official tool does."""
    base = os.path.basename(path.rstrip('/\\'))
    if os.path.isdir(path) and is_lmdb_folder(path):
        return lmdb_source(path)
    if os.path.isfile(path):
        if base == CIFAR10_NAME:
            return cifar10_source(path)
        if _MNIST_IMAGES.match(base):
            return mnist_source(path)
        if base.lower().endswith(('.tar', '.tar.gz', '.tgz', '.gz')):
            raise ConvertError(f'{path}: unknown archive. Supported are {CIFAR10_NAME} (keep that name), '
                               f'MNIST train-images-idx3-ubyte.gz, a .zip of images, or an unpacked folder.')
    return image_source(path)


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
