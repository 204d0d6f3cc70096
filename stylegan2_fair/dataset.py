"""Training images from a folder or a .zip, in the format of the official StyleGAN2-ADA dataset_tool.

Layout (a folder, or the same tree inside a .zip)::

    dataset.json                      optional; see below
    00000/img00000000.png             any relative paths work; they are read in sorted order,
    00000/img00000001.png             recursively; .png, .jpg and .jpeg are images
    ...

Every image is square, of one power-of-two size, and either grayscale ('L', kept as 1 channel) or
RGB (3 channels). Items come out as uint8 arrays in CHW order.

dataset.json (every key optional)::

    {
      "labels": [["00000/img00000000.png", 3], ...]          # int class -> one-hot of size max+1
             or [["00000/img00000000.png", [0.0, 1.0]], ...]  # vector -> float32 as given
             or null,
      "attributes": {                                       # our extension (official code ignores it)
        "names": ["Eyeglasses", "Male", ...],
        "values": [["00000/img00000000.png", [0, 1, ...]], ...]
      }
    }

"labels" is the official field and conditions the networks (``use_labels=True``). "attributes" are
named binary subgroup attributes (CelebA's 40, or the colour of a toy digit) that fairness and
coverage methods select minorities with; they never condition the networks. Attribute values are
0/1 (booleans and CelebA's -1/1 are accepted: a value is true when it is > 0). When a key is given it
must cover every image, and it must not name files that are not there.
"""
import dataclasses
import io
import json
import os
import zipfile

import numpy as np
import PIL.Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
OFFICIAL_CLASS_NAME = 'training.dataset.ImageFolderDataset'
CLASS_NAME = 'stylegan2_fair.dataset.ImageFolderDataset'
_MODE_CHANNELS = {'L': 1, 'RGB': 3}


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says what is wrong and how to fix it."""


def _fix_hint(path):
    return f'python dataset_tool.py --source={path} --dest=NEW.zip'


def _is_image_name(name):
    parts = name.split('/')
    # macOS zips carry '__MACOSX/._x.png' resource forks that are not images.
    if any(part.startswith('.') or part == '__MACOSX' for part in parts):
        return False
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _first(names, count=3):
    names = sorted(names)
    more = f' and {len(names) - count} more' if len(names) > count else ''
    return ', '.join(repr(n) for n in names[:count]) + more


# ----------------------------------------------------------------------------------------------
# Where the files live: a folder or a zip. Paths inside are '/'-separated and relative.

class FolderFiles:
    def __init__(self, root):
        self.root = root

    def names(self):
        found = []
        for dirpath, _dirs, files in os.walk(self.root, followlinks=True):
            rel_dir = os.path.relpath(dirpath, self.root)
            for fname in files:
                rel = fname if rel_dir == '.' else os.path.join(rel_dir, fname)
                found.append(rel.replace(os.sep, '/'))
        return found

    def open(self, name):
        return open(os.path.join(self.root, *name.split('/')), 'rb')

    def close(self):
        pass


class ZipFiles:
    """Reads a zip; each process opens its own handle (a handle inherited through fork shares one
    file offset with the parent, so DataLoader workers would read each other's bytes)."""

    def __init__(self, path):
        self.path = path
        self._zip = None
        self._pid = None

    def _handle(self):
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, EOFError) as err:
                raise DatasetError(
                    f'{self.path} is not a readable zip file ({err}); it may be truncated or not a '
                    f'zip at all. Re-create it with dataset_tool, or unzip it and pass the folder.'
                ) from err
            self._pid = os.getpid()
        return self._zip

    def names(self):
        return [info.filename for info in self._handle().infolist() if not info.is_dir()]

    def open(self, name):
        return self._handle().open(name)

    def close(self):
        if self._zip is not None and self._pid == os.getpid():
            self._zip.close()
        self._zip = None

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _pid=None)


def open_files(path):
    """FolderFiles or ZipFiles for `path`, with a clear error when it is neither."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f'Dataset path {path!r} does not exist. Check the path, or create a dataset with '
            f'`python dataset_tool.py --source=IMAGES_OR_toy:stacked-digits --dest={path}`.')
    if os.path.isdir(path):
        return FolderFiles(path)
    if os.path.splitext(path)[1].lower() == '.zip':
        return ZipFiles(path)
    raise DatasetError(f'Dataset path {path!r} is neither a folder nor a .zip file; pass a folder '
                       f'of images or a zip made by dataset_tool.')


def list_images(names):
    return sorted(name for name in names if _is_image_name(name))


def read_dataset_json(files, where, names):
    """The parsed dataset.json at the root, or {} when there is none."""
    if 'dataset.json' not in names:
        return {}
    with files.open('dataset.json') as f:
        text = f.read()
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise DatasetError(f'dataset.json in {where} is not valid JSON ({err}); fix the file or '
                           f're-create the dataset with dataset_tool.') from err
    if not isinstance(meta, dict):
        raise DatasetError(f'dataset.json in {where} must hold a JSON object with "labels" and/or '
                           f'"attributes"; see the docstring of stylegan2_fair/dataset.py.')
    return meta


def _pairs_by_name(pairs, field, where, image_names):
    """{relpath: value} from [[relpath, value], ...], checked against the images on disk."""
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise DatasetError(f'{field} in dataset.json of {where} must be a list of [relpath, value] pairs.')
    by_name = {str(name).replace('\\', '/'): value for name, value in pairs}
    unknown = set(by_name) - set(image_names)
    if unknown:
        raise DatasetError(
            f'{field} in dataset.json of {where} name {len(unknown)} file(s) that are not images of '
            f'the dataset: {_first(unknown)}. Remove those entries, or re-create the dataset with '
            f'dataset_tool.')
    missing = set(image_names) - set(by_name)
    if missing:
        raise DatasetError(
            f'{field} in dataset.json of {where} miss {len(missing)} image(s): {_first(missing)}. '
            f'Every image needs an entry: add them, or re-create the dataset with dataset_tool.')
    return by_name


def parse_labels(meta, where, image_names):
    """Labels in image order: int64 [N] class indices, float32 [N, D] vectors, or None."""
    pairs = meta.get('labels')
    if pairs is None:
        return None
    by_name = _pairs_by_name(pairs, 'labels', where, image_names)
    try:
        labels = np.array([by_name[name] for name in image_names])
    except ValueError as err:
        raise DatasetError(f'labels in dataset.json of {where} have mixed shapes ({err}); use one int '
                           f'class or one equal-length vector per image.') from err
    if labels.ndim == 1:
        if labels.dtype.kind not in 'iub' or (labels.dtype.kind == 'i' and labels.min() < 0):
            raise DatasetError(f'labels in dataset.json of {where} must be class indices >= 0 (ints) '
                               f'or vectors of numbers; found {labels.dtype} values.')
        return labels.astype(np.int64)
    if labels.ndim == 2 and labels.dtype.kind in 'iubf':
        return labels.astype(np.float32)
    raise DatasetError(f'labels in dataset.json of {where} must be ints or vectors of numbers, got '
                       f'an array of shape {labels.shape} and type {labels.dtype}.')


def parse_attributes(meta, where, image_names):
    """(names, bool array [N, len(names)] in image order); ([], [N, 0]) without attributes."""
    block = meta.get('attributes')
    if block is None:
        return [], np.zeros([len(image_names), 0], dtype=bool)
    names = block.get('names') if isinstance(block, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise DatasetError(f'attributes in dataset.json of {where} need "names": a list of distinct '
                           f'strings, and "values": [[relpath, [0|1, ...]], ...].')
    by_name = _pairs_by_name(block.get('values'), 'attribute values', where, image_names)
    try:
        values = np.array([by_name[name] for name in image_names], dtype=np.float64).reshape(len(image_names), -1)
    except (ValueError, TypeError) as err:
        raise DatasetError(f'attribute values in dataset.json of {where} must be lists of 0/1, one per '
                           f'attribute name ({err}).') from err
    if values.shape[1] != len(names):
        raise DatasetError(f'attribute values in dataset.json of {where} have {values.shape[1]} entries '
                           f'per image but there are {len(names)} names; make them match.')
    if not np.isin(values, (-1, 0, 1)).all():
        raise DatasetError(f'attribute values in dataset.json of {where} must be 0/1 (or -1/1).')
    return list(names), values > 0


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_COLOUR_TYPES = {0: 'L', 2: 'RGB', 3: 'P', 4: 'LA', 6: 'RGBA'}   # IHDR colour type -> PIL mode


def read_header(f):
    """(mode, (width, height)) of an open image file, reading a few bytes for PNG (the PNG IHDR
    chunk is at a fixed offset; ~10x faster than PIL when scanning big datasets)."""
    head = f.read(26)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b'IHDR':
        width, height = int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
        mode, depth = _PNG_COLOUR_TYPES.get(head[25], '?'), head[24]
        return (mode if depth == 8 or mode == 'P' else f'{mode} {depth}-bit'), (width, height)
    with PIL.Image.open(io.BytesIO(head + f.read())) as image:
        return image.mode, image.size


def decode_image(data, name, where):
    """uint8 CHW array from encoded PNG/JPEG bytes."""
    try:
        image = PIL.Image.open(io.BytesIO(data))
        mode = image.mode
        if mode not in _MODE_CHANNELS:
            raise DatasetError(f'{name!r} in {where} has image mode {mode!r}; only grayscale (L) and '
                               f'RGB are supported. Convert with {_fix_hint(where)} (it drops alpha).')
        array = np.asarray(image)
    except (OSError, SyntaxError) as err:
        raise DatasetError(f'{name!r} in {where} cannot be decoded ({err}); remove or re-save it.') from err
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array.transpose(2, 0, 1)


# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ItemDetails:
    raw_idx: int          # position among all images of the folder/zip
    xflip: bool           # True for the mirrored second half when xflip=True
    path: str             # relative path inside the folder/zip
    raw_label: object     # int class, float32 vector, or None without labels
    attributes: np.ndarray


class ImageFolderDataset:
    """Images of a folder or zip with their labels, attributes and dataset index.

    Arguments follow the official class: `resolution` (checked, not resized), `use_labels`,
    `max_size` (a subset seeded by `random_seed`), `xflip` (doubles the dataset with mirrored
    copies). `check_images` reads every image header up front so size and mode problems surface
    before training; turn it off for huge datasets on slow disks.
    """

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False,
                 random_seed=0, name=None, check_images=True, **kwargs):
        if kwargs:
            raise TypeError(f'ImageFolderDataset got unknown arguments {sorted(kwargs)}; expected path, '
                            f'resolution, use_labels, max_size, xflip, random_seed, name, check_images.')
        self._path = str(path)
        self._name = name if name is not None else os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        self._use_labels = bool(use_labels)
        self._requested = dict(max_size=max_size, xflip=bool(xflip), random_seed=int(random_seed))
        self._files = open_files(self._path)
        all_names = set(self._files.names())
        self._image_names = list_images(all_names)
        if not self._image_names:
            raise DatasetError(f'No images (.png, .jpg, .jpeg) found in {self._path}. Point --data at a '
                               f'folder or zip of images, or create one with dataset_tool.')
        num_raw = len(self._image_names)

        # Subset and mirroring as the official code does, so a seed selects the same images.
        self._raw_idx = np.arange(num_raw, dtype=np.int64)
        if max_size is not None and num_raw > max_size:
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

        first = self._image_names[self._raw_idx[0]]
        with self._files.open(first) as f:
            first_image = decode_image(f.read(), first, self._path)
        self._image_shape = list(first_image.shape)
        if check_images:
            self._check_headers()
        else:
            self._check_shape(self._image_shape, first)
        if resolution is not None and self._image_shape[1] != resolution:
            raise DatasetError(
                f'Images in {self._path} are {self._image_shape[1]}x{self._image_shape[2]} but resolution='
                f'{resolution} was asked for. Leave out the resolution, or re-create the dataset with '
                f'{_fix_hint(self._path)} --resolution={resolution}.')

        meta = read_dataset_json(self._files, self._path, all_names)
        self._raw_labels = parse_labels(meta, self._path, self._image_names) if use_labels else None
        if use_labels and self._raw_labels is None:
            raise DatasetError(
                f'use_labels=True (--cond=1) but dataset.json in {self._path} has no labels. Train '
                f'without --cond, or add labels with dataset_tool (--labels-from=subfolder or '
                f'--labels-from=attributes:NAME).')
        self._attribute_names, self._raw_attributes = parse_attributes(meta, self._path, self._image_names)

    # -- checks ---------------------------------------------------------------------------------

    def _check_shape(self, shape, fname):
        channels, height, width = shape
        if height != width:
            raise DatasetError(
                f'{fname!r} in {self._path} is {width}x{height}; images must be square. Crop and '
                f'resize with {_fix_hint(self._path)} --resolution=N (center-crop by default).')
        if width < 4 or width & (width - 1):
            raise DatasetError(
                f'{fname!r} in {self._path} is {width}x{height}; the size must be a power of two. '
                f'Resize with {_fix_hint(self._path)} --resolution=N (e.g. N=256).')

    def _check_headers(self):
        """Every image used has the first image's size and mode (read from headers only)."""
        self._check_shape(self._image_shape, self._image_names[self._raw_idx[0]])
        first_name = self._image_names[self._raw_idx[0]]
        want_size = (self._image_shape[2], self._image_shape[1])
        want_channels = self._image_shape[0]
        for raw in np.unique(self._raw_idx):
            fname = self._image_names[raw]
            try:
                with self._files.open(fname) as f:
                    mode, size = read_header(f)
            except (OSError, SyntaxError) as err:
                raise DatasetError(f'{fname!r} in {self._path} cannot be read as an image ({err}); '
                                   f'remove or re-save it.') from err
            if mode not in _MODE_CHANNELS:
                raise DatasetError(f'{fname!r} in {self._path} has image mode {mode!r}; only grayscale '
                                   f'(L) and RGB are supported. Convert with {_fix_hint(self._path)} '
                                   f'(it drops alpha).')
            if size != want_size:
                raise DatasetError(
                    f'Images in {self._path} have different sizes: {fname!r} is {size[0]}x{size[1]} but '
                    f'{first_name!r} is {want_size[0]}x{want_size[1]}. Bring them to one size with '
                    f'{_fix_hint(self._path)} --resolution=N.')
            if _MODE_CHANNELS[mode] != want_channels:
                raise DatasetError(
                    f'Images in {self._path} mix channel counts: {fname!r} has {_MODE_CHANNELS[mode]} but '
                    f'{first_name!r} has {want_channels}. Re-encode with {_fix_hint(self._path)} (it '
                    f'converts all to RGB when any is colour).')

    # -- official properties --------------------------------------------------------------------

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._image_shape)

    @property
    def num_channels(self):
        return self._image_shape[0]

    @property
    def resolution(self):
        return self._image_shape[1]

    @property
    def label_shape(self):
        if self._raw_labels is None:
            return [0]
        if self._raw_labels.dtype == np.int64:
            return [int(self._raw_labels.max()) + 1]
        return list(self._raw_labels.shape[1:])

    @property
    def label_dim(self):
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._raw_labels is not None and self._raw_labels.dtype == np.int64

    @property
    def attribute_names(self):
        return list(self._attribute_names)

    @property
    def path(self):
        return self._path

    def __len__(self):
        return self._raw_idx.size

    # -- items ----------------------------------------------------------------------------------

    def _position(self, idx):
        idx = int(idx)
        if not 0 <= idx < len(self):
            raise IndexError(f'dataset index {idx} out of range 0..{len(self) - 1}')
        return idx

    def raw_index(self, idx):
        """Position of item `idx` among all images of the folder/zip (before subset and xflip)."""
        return int(self._raw_idx[self._position(idx)])

    def load_raw_image(self, raw_idx):
        fname = self._image_names[raw_idx]
        with self._files.open(fname) as f:
            image = decode_image(f.read(), fname, self._path)
        if list(image.shape) != self._image_shape:
            raise DatasetError(f'{fname!r} in {self._path} has shape {list(image.shape)} (CHW) but the '
                               f'dataset is {self._image_shape}; re-create it with {_fix_hint(self._path)}.')
        return image

    def __getitem__(self, idx):
        """(uint8 CHW image, float32 label, idx): idx is the item's position in this dataset."""
        idx = self._position(idx)
        image = self.load_raw_image(self._raw_idx[idx])
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image), self.get_label(idx), idx

    def get_label(self, idx):
        """float32 label of item `idx`: one-hot for int classes, the vector as given, or shape [0]."""
        if self._raw_labels is None:
            return np.zeros([0], dtype=np.float32)
        raw = self._raw_labels[self._raw_idx[self._position(idx)]]
        if self._raw_labels.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[raw] = 1
            return onehot
        return raw.copy()

    def get_attributes(self, indices, names=None):
        """bool [len(indices), num_attributes] for dataset positions `indices` (a scalar gives one
        row). `names` picks and orders columns by attribute name."""
        positions = np.asarray(indices, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f'dataset indices must lie in 0..{len(self) - 1}')
        rows = self._raw_attributes[self._raw_idx[positions]]
        if names is not None:
            rows = rows[..., self.attribute_columns(names)]
        return rows

    def attribute_columns(self, names):
        """Column numbers of attribute `names` (a name or a list), with a clear error for unknowns."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self._attribute_names]
        if unknown:
            have = ', '.join(self._attribute_names) or 'none'
            raise KeyError(f'unknown attribute(s) {unknown} in {self._path}; it has: {have}. Add '
                           f'attributes with dataset_tool --attributes=FILE.')
        return [self._attribute_names.index(n) for n in names]

    def get_details(self, idx):
        idx = self._position(idx)
        raw = int(self._raw_idx[idx])
        raw_label = None if self._raw_labels is None else self._raw_labels[raw].copy()
        return ItemDetails(raw_idx=raw, xflip=bool(self._xflip[idx]), path=self._image_names[raw],
                           raw_label=raw_label, attributes=self._raw_attributes[raw].copy())

    # -- bookkeeping ----------------------------------------------------------------------------

    def dataset_kwargs(self):
        """Constructor kwargs in the form of the official training_options.json."""
        kwargs = dict(class_name=OFFICIAL_CLASS_NAME, path=self._path, use_labels=self.has_labels,
                      max_size=int(np.unique(self._raw_idx).size), xflip=self._requested['xflip'],
                      resolution=self.resolution)
        if self._requested['random_seed'] != 0:
            kwargs['random_seed'] = self._requested['random_seed']
        return kwargs

    def close(self):
        self._files.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f'ImageFolderDataset({self._path!r}, {len(self)} items, {self.image_shape} CHW, '
                f'labels={self.label_shape}, attributes={len(self._attribute_names)})')


def open_dataset(class_name=None, **kwargs):
    """Build a dataset from training_set_kwargs, ours or the official ones."""
    if class_name not in (None, OFFICIAL_CLASS_NAME, CLASS_NAME, 'ImageFolderDataset'):
        raise ValueError(f'unknown dataset class {class_name!r}; supported: {OFFICIAL_CLASS_NAME}')
    return ImageFolderDataset(**kwargs)
