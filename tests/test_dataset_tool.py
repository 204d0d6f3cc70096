"""Toy datasets and the dataset_tool `convert` command."""
import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from stylegan2_fair import toy_data
from stylegan2_fair.cli.dataset_tool import convert
from stylegan2_fair.dataset import ImageFolderDataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return CliRunner().invoke(convert, [str(a) for a in args])


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path)


# -- toy datasets -------------------------------------------------------------------------------

def test_stacked_digits_channels_hold_the_digits_that_make_the_label():
    from sklearn.neighbors import KNeighborsClassifier
    data = toy_data.stacked_digits(900, resolution=16, seed=0)
    digits = data.extras['channel_digits']
    assert data.images.shape == (900, 16, 16, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.labels, digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2])
    # A classifier trained on channel images must read each channel's digit back.
    pixels = data.images.transpose(0, 3, 1, 2).reshape(900 * 3, -1) / 255.0
    targets = digits.reshape(-1)
    model = KNeighborsClassifier(3).fit(pixels[:1800], targets[:1800])
    assert model.score(pixels[1800:], targets[1800:]) > 0.85


def test_stacked_digits_hold_every_mode_equally_often():
    counts = np.bincount(toy_data.stacked_digits(2500, resolution=8, seed=1).labels, minlength=1001)
    assert counts[1000] == 0 and set(np.unique(counts[:1000])) == {2, 3} and (counts == 3).sum() == 500
    first = toy_data.stacked_digits(1000, resolution=8, seed=1).labels
    assert sorted(first) == list(range(1000)) and not np.array_equal(first, np.arange(1000))  # shuffled


def test_colored_digits_minority_is_green_at_the_requested_fraction():
    data = toy_data.colored_digits(4000, resolution=16, majority=0.9, seed=0)
    red, green = data.attributes[:, 0], data.attributes[:, 1]
    assert data.attribute_names == ['Red', 'Green'] and np.all(red ^ green)
    assert abs(green.mean() - 0.1) < 0.01
    assert data.images[green][..., 0].max() == 0 and data.images[red][..., 1].max() == 0
    assert data.images[green][..., 1].max() > 0 and set(np.unique(data.labels)) == set(range(10))


def test_longtail_digits_class_counts_decay_to_the_imbalance_ratio():
    data = toy_data.longtail_digits(3000, resolution=8, imbalance=0.05, seed=0)
    counts = np.bincount(data.labels, minlength=10)
    assert counts.sum() == 3000 and np.all(np.diff(counts) < 0)
    assert counts[9] / counts[0] == pytest.approx(0.05, rel=0.15)
    assert np.all(data.images[..., 0] == data.images[..., 2])       # grayscale in 3 channels


def test_toy_data_is_deterministic_by_seed_and_has_no_duplicates_beyond_the_source():
    a = toy_data.colored_digits(2500, resolution=8, seed=3)
    b = toy_data.colored_digits(2500, resolution=8, seed=3)
    c = toy_data.colored_digits(2500, resolution=8, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert len(np.unique(a.images.reshape(2500, -1), axis=0)) == 2500   # > 1797 source digits


@pytest.mark.parametrize('make, kwargs, problem', [
    (toy_data.stacked_digits, dict(resolution=12), 'power of two'),
    (toy_data.colored_digits, dict(majority=1.5), 'majority'),
    (toy_data.longtail_digits, dict(n=20, imbalance=0.01), 'too small'),
])
def test_toy_data_refuses_bad_arguments(make, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        make(**{'n': 100, **kwargs})


# -- convert: toy sources -----------------------------------------------------------------------

@pytest.mark.parametrize('kind, options', [
    ('stacked-digits', {}),
    ('colored-digits', {'majority': 0.9}),
    ('longtail-digits', {'imbalance': 0.2}),
])
def test_toy_source_converts_to_a_zip_the_dataset_loads(tmp_path, kind, options):
    dest = tmp_path / f'{kind}.zip'
    flags = [f'--{k}={v}' for k, v in options.items()]
    result = run(f'--source=toy:{kind}', f'--dest={dest}', '--num-images=200', '--seed=5', '--resolution=16', *flags)
    assert result.exit_code == 0, result.output
    expected = toy_data.make_toy(kind, 200, resolution=16, seed=5, **options)
    dataset = ImageFolderDataset(str(dest), use_labels=True)
    assert len(dataset) == 200 and dataset.image_shape == [3, 16, 16]
    assert dataset.attribute_names == expected.attribute_names
    np.testing.assert_array_equal([dataset.get_label(i).argmax() for i in range(200)], expected.labels)
    np.testing.assert_array_equal(dataset.get_attributes(np.arange(200)), expected.attributes)
    np.testing.assert_array_equal(dataset[7][0], expected.images[7].transpose(2, 0, 1))
    with zipfile.ZipFile(dest) as zf:
        assert '00000/img00000199.png' in zf.namelist()


def test_launcher_at_the_repo_root_runs_the_command(tmp_path):
    dest = tmp_path / 'toy.zip'
    subprocess.run([sys.executable, 'dataset_tool.py', '--source=toy:colored-digits', f'--dest={dest}',
                    '--num-images=50', '--resolution=8'], cwd=REPO_ROOT, check=True, capture_output=True)
    assert len(ImageFolderDataset(str(dest))) == 50


# -- convert: image sources ---------------------------------------------------------------------

def test_image_folder_is_cropped_resized_and_keeps_its_labels(tmp_path):
    source = tmp_path / 'src'
    rng = np.random.default_rng(0)
    names = ['b/x.png', 'a/y.jpg', 'a/z.png']
    for name in names:
        save(source / name, rng.integers(0, 256, [20, 30, 3], dtype=np.uint8))
    (source / 'dataset.json').write_text(json.dumps({'labels': [[n, i] for i, n in enumerate(names)]}))
    result = run(f'--source={source}', f'--dest={tmp_path / "out.zip"}', '--resolution=16')
    assert result.exit_code == 0, result.output
    dataset = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert dataset.image_shape == [3, 16, 16]
    # Output order is the sorted source order: a/y.jpg, a/z.png, b/x.png -> labels 1, 2, 0.
    assert [int(dataset.get_label(i).argmax()) for i in range(3)] == [1, 2, 0]


def test_max_images_keeps_the_first_sorted_images(tmp_path):
    for i in range(5):
        save(tmp_path / 'src' / f'{i}.png', np.full([8, 8], i * 40, np.uint8))
    assert run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out"}', '--max-images=3').exit_code == 0
    dataset = ImageFolderDataset(str(tmp_path / 'out'))
    assert len(dataset) == 3 and dataset.num_channels == 1
    assert [int(dataset[i][0].max()) for i in range(3)] == [0, 40, 80]


def test_mixed_gray_and_colour_sources_become_rgb(tmp_path):
    save(tmp_path / 'src' / 'a.png', np.zeros([8, 8], np.uint8))
    save(tmp_path / 'src' / 'b.png', np.zeros([8, 8, 4], np.uint8))
    assert run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "o.zip"}').exit_code == 0
    assert ImageFolderDataset(str(tmp_path / 'o.zip')).num_channels == 3


def test_mixed_sizes_without_resolution_ask_for_it(tmp_path):
    save(tmp_path / 'src' / 'a.png', np.zeros([8, 8, 3], np.uint8))
    save(tmp_path / 'src' / 'b.png', np.zeros([16, 16, 3], np.uint8))
    result = run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "o.zip"}')
    assert result.exit_code != 0 and '--resolution' in result.output
    assert not (tmp_path / 'o.zip').exists()


def test_labels_from_subfolders(tmp_path):
    for name in ['dog/1.png', 'cat/1.png', 'cat/2.png']:
        save(tmp_path / 'src' / name, np.zeros([8, 8, 3], np.uint8))
    assert run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "o.zip"}', '--labels-from=subfolder').exit_code == 0
    dataset = ImageFolderDataset(str(tmp_path / 'o.zip'), use_labels=True)
    assert [int(dataset.get_label(i).argmax()) for i in range(3)] == [0, 0, 1]     # cat=0, dog=1


CELEBA_ATTRS = ['Eyeglasses', 'Male', 'Smiling']
CELEBA_VALUES = {'000001.jpg': [-1, 1, 1], '000002.jpg': [1, -1, -1], '000003.jpg': [-1, -1, 1]}


@pytest.fixture
def celeba(tmp_path):
    source = tmp_path / 'img_align_celeba'
    for name in CELEBA_VALUES:
        save(source / name, np.zeros([16, 12, 3], np.uint8))
    attr_file = tmp_path / 'list_attr_celeba.txt'
    lines = [str(len(CELEBA_VALUES)), ' '.join(CELEBA_ATTRS)]
    lines += [f'{name}  ' + ' '.join(f'{v:2d}' for v in values) for name, values in CELEBA_VALUES.items()]
    attr_file.write_text('\n'.join(lines) + '\n')
    return source, attr_file


def test_celeba_attribute_list_is_merged_as_binary_attributes(tmp_path, celeba):
    source, attr_file = celeba
    result = run(f'--source={source}', f'--dest={tmp_path / "c.zip"}', '--resolution=8',
                 f'--attributes={attr_file}', '--labels-from=attributes:Eyeglasses')
    assert result.exit_code == 0, result.output
    dataset = ImageFolderDataset(str(tmp_path / 'c.zip'), use_labels=True)
    assert dataset.attribute_names == CELEBA_ATTRS
    expected = np.array(list(CELEBA_VALUES.values())) > 0
    np.testing.assert_array_equal(dataset.get_attributes(np.arange(3)), expected)
    assert [int(dataset.get_label(i).argmax()) for i in range(3)] == [0, 1, 0]


def test_celeba_attribute_list_must_cover_every_image(tmp_path, celeba):
    source, attr_file = celeba
    save(source / '000004.jpg', np.zeros([16, 12, 3], np.uint8))
    result = run(f'--source={source}', f'--dest={tmp_path / "c.zip"}', '--resolution=8', f'--attributes={attr_file}')
    assert result.exit_code != 0 and '000004.jpg' in result.output and '--max-images' in result.output


# -- dest safety --------------------------------------------------------------------------------

def test_existing_dest_is_not_clobbered_without_overwrite(tmp_path):
    dest = tmp_path / 'keep.zip'
    dest.write_bytes(b'precious')
    result = run('--source=toy:colored-digits', f'--dest={dest}', '--num-images=20', '--resolution=8')
    assert result.exit_code != 0 and '--overwrite' in result.output
    assert dest.read_bytes() == b'precious'
    result = run('--source=toy:colored-digits', f'--dest={dest}', '--num-images=20', '--resolution=8', '--overwrite')
    assert result.exit_code == 0 and len(ImageFolderDataset(str(dest))) == 20


def test_failed_conversion_leaves_no_partial_files(tmp_path):
    source = tmp_path / 'src'
    save(source / 'a.png', np.zeros([8, 8, 3], np.uint8))
    save(source / 'b.png', np.random.default_rng(0).integers(0, 256, [8, 8, 3], dtype=np.uint8))
    (source / 'b.png').write_bytes((source / 'b.png').read_bytes()[:60])   # header intact, pixels cut off
    result = run(f'--source={source}', f'--dest={tmp_path / "out.zip"}', '--resolution=8')
    assert result.exit_code != 0 and 'b.png' in result.output
    assert sorted(os.listdir(tmp_path)) == ['src']


def test_home_relative_dest_and_a_missing_attribute_list_after_an_equals_sign(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(convert, ['--source=toy:colored-digits', '--dest=~/x.zip', '--num-images=8',
                                     '--resolution=8'])
    assert result.exit_code == 0, result.output
    assert (tmp_path / 'x.zip').is_file() and not (tmp_path / '~').exists()
    result = runner.invoke(convert, ['--source=toy:colored-digits', '--dest=~/y.zip', '--num-images=8',
                                     '--resolution=8', '--attributes=~/list_attr_celeba.txt'])
    assert result.exit_code != 0 and 'Traceback' not in result.output
    assert f'{tmp_path}/list_attr_celeba.txt: no such file' in result.output and not (tmp_path / 'y.zip').exists()


# -- official sources and options ---------------------------------------------------------------

def read_zip(dest):
    """(png names, images as arrays, dataset.json) of a converted zip, in archive order."""
    with zipfile.ZipFile(dest) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith('.png'))
        images = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(n)))) for n in names]
        return names, images, json.loads(zf.read('dataset.json'))


def add_to_tar(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar10(path, per_batch=2):
    """A small cifar-10-python.tar.gz in the real layout: pickled dicts of N x 3072 planar-RGB uint8
    rows and N labels in data_batch_1..5, plus a test_batch that the conversion must leave out.
    Returns the expected training images (NHWC) and labels."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    with tarfile.open(path, 'w:gz') as tar:
        for name in [f'data_batch_{b}' for b in range(1, 6)] + ['test_batch']:
            data = rng.integers(0, 256, [per_batch, 3072], dtype=np.uint8)
            batch_labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            batch = {'batch_label': name, 'labels': batch_labels, 'data': data,
                     'filenames': [f'{name}_{i}.png' for i in range(per_batch)]}
            # The real batches were pickled by Python 2 numpy, which names numpy.core.
            raw = pickle.dumps(batch, protocol=2).replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            add_to_tar(tar, f'cifar-10-batches-py/{name}', raw)
            if name != 'test_batch':
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels += batch_labels
    return np.concatenate(images), labels


def test_cifar10_archive_converts_with_its_class_labels(tmp_path):
    source = tmp_path / 'downloads' / 'cifar-10-python.tar.gz'
    source.parent.mkdir()
    images, labels = make_cifar10(source)
    result = run(f'--source={source}', f'--dest={tmp_path / "cifar10.zip"}')     # the official command
    assert result.exit_code == 0, result.output
    names, out, meta = read_zip(tmp_path / 'cifar10.zip')
    assert len(out) == 10 and names[-1] == '00000/img00000009.png'
    np.testing.assert_array_equal(np.stack(out), images)
    assert meta['labels'] == [[name, label] for name, label in zip(names, labels)]
    dataset = ImageFolderDataset(str(tmp_path / 'cifar10.zip'), use_labels=True)
    assert dataset.image_shape == [3, 32, 32]
    assert [int(dataset.get_label(i).argmax()) for i in range(10)] == labels


def test_cifar10_archive_refuses_a_pickle_that_would_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f'touch {tmp_path / "pwned"}',)
    source = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(source, 'w:gz') as tar:
        add_to_tar(tar, 'cifar-10-batches-py/data_batch_1', pickle.dumps({'data': Evil(), 'labels': []}))
    result = run(f'--source={source}', f'--dest={tmp_path / "c.zip"}')
    assert result.exit_code != 0 and 'refusing to load' in result.output and 'download' in result.output
    assert sorted(os.listdir(tmp_path)) == ['cifar-10-python.tar.gz']


def test_renamed_or_foreign_tarball_gets_a_clear_error(tmp_path):
    make_cifar10(tmp_path / 'cifar10.tar.gz')
    result = run(f'--source={tmp_path / "cifar10.tar.gz"}', f'--dest={tmp_path / "c.zip"}')
    assert result.exit_code != 0 and 'cifar-10-python.tar.gz' in result.output and 'Traceback' not in result.output


def write_idx_gz(path, array, magic):
    header = np.array([magic, *array.shape], '>i4').tobytes()
    with gzip.open(path, 'wb') as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def test_mnist_idx_pair_is_padded_to_32_with_its_labels(tmp_path):
    digits = np.random.default_rng(0).integers(1, 256, [3, 28, 28], dtype=np.uint8)
    write_idx_gz(tmp_path / 'train-images-idx3-ubyte.gz', digits, 0x803)
    write_idx_gz(tmp_path / 'train-labels-idx1-ubyte.gz', np.array([7, 0, 3]), 0x801)
    result = run(f'--source={tmp_path / "train-images-idx3-ubyte.gz"}', f'--dest={tmp_path / "mnist.zip"}')
    assert result.exit_code == 0, result.output
    names, out, meta = read_zip(tmp_path / 'mnist.zip')
    assert len(out) == 3 and all(image.shape == (32, 32) for image in out)     # grayscale, 28 + 2 + 2
    for image, digit in zip(out, digits):
        np.testing.assert_array_equal(image[2:30, 2:30], digit)
        assert image.sum() == digit.sum()                                      # the 2 px border is black
    assert meta['labels'] == [[names[0], 7], [names[1], 0], [names[2], 3]]


def test_mnist_without_its_labels_file_names_the_missing_file(tmp_path):
    write_idx_gz(tmp_path / 'train-images-idx3-ubyte.gz', np.zeros([2, 28, 28]), 0x803)
    result = run(f'--source={tmp_path / "train-images-idx3-ubyte.gz"}', f'--dest={tmp_path / "m.zip"}')
    assert result.exit_code != 0 and 'train-labels-idx1-ubyte.gz' in result.output
    assert not (tmp_path / 'm.zip').exists()


@pytest.mark.parametrize('flags', [['--width=16', '--height=16'], ['--width=16'], ['--height=16'],
                                   ['--resolution=16', '--width=16', '--height=16']])
def test_width_and_height_set_a_square_output(tmp_path, flags):
    result = run('--source=toy:colored-digits', f'--dest={tmp_path / "t.zip"}', '--num-images=4', *flags)
    assert result.exit_code == 0, result.output
    assert ImageFolderDataset(str(tmp_path / 't.zip')).image_shape == [3, 16, 16]


@pytest.mark.parametrize('flags, fix', [
    (['--width=16', '--height=8'], '--width == --height'),
    (['--resolution=16', '--width=32'], 'either --resolution or --width/--height'),
    (['--resolution=16', '--height=32'], 'either --resolution or --width/--height'),
    (['--transform=center-crop-wide', '--width=16'], '--height'),
    (['--transform=center-crop-wide', '--width=8', '--height=16'], 'must not exceed'),
])
def test_bad_width_height_combinations_say_how_to_fix_them(tmp_path, flags, fix):
    save(tmp_path / 'src' / 'a.png', np.zeros([8, 8, 3], np.uint8))
    result = run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "o.zip"}', *flags)
    assert result.exit_code != 0 and fix in result.output and 'Traceback' not in result.output
    assert not (tmp_path / 'o.zip').exists()


def test_box_resize_filter_averages_blocks_unlike_lanczos(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, [32, 32], dtype=np.uint8)
    save(tmp_path / 'src' / 'a.png', noise)
    out = {}
    for name in ['box', 'lanczos']:
        result = run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / name}.zip', '--resolution=8',
                     f'--resize-filter={name}')
        assert result.exit_code == 0, result.output
        out[name] = read_zip(tmp_path / f'{name}.zip')[1][0].astype(int)
    block_means = noise.reshape(8, 4, 8, 4).mean(axis=(1, 3))
    assert np.abs(out['box'] - block_means).max() <= 1
    assert np.abs(out['lanczos'] - block_means).max() > 10          # default filter: lanczos


def test_center_crop_wide_geometry_follows_the_official_tool(tmp_path):
    red, green, blue, white, gray = [255, 0, 0], [0, 255, 0], [0, 0, 255], [255] * 3, [100] * 3
    wide = np.zeros([16, 32, 3], np.uint8)
    wide[:] = red
    wide[4:12, :16], wide[4:12, 16:] = green, blue             # the band a 16x8 crop keeps
    square = np.zeros([16, 16, 3], np.uint8)
    square[:8], square[8:] = white, gray
    sources = {'a.png': wide, 'b.png': np.zeros([8, 8, 3], np.uint8),        # narrower than --width
               'c.png': np.zeros([8, 32, 3], np.uint8), 'd.png': square}       # band < --height
    for name, image in sources.items():
        save(tmp_path / 'src' / name, image)
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [[n, i] for i, n in enumerate(sources)]}))
    result = run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "w.zip"}', '--transform=center-crop-wide',
                 '--width=16', '--height=8', '--resize-filter=box')
    assert result.exit_code == 0, result.output
    assert 'Wrote 2 images (2 source images dropped)' in result.output
    names, out, meta = read_zip(tmp_path / 'w.zip')
    assert names == ['00000/img00000000.png', '00000/img00000001.png']         # numbered without gaps
    assert meta['labels'] == [[names[0], 0], [names[1], 3]]
    expected = np.zeros([16, 16, 3], np.uint8)                                 # letterboxed: rows 4..11
    expected[4:12, :8], expected[4:12, 8:] = green, blue
    np.testing.assert_array_equal(out[0], expected)
    # A source exactly --width wide keeps all round(16 * 16 / 16) = 16 rows, squashed to 8: the
    # official tool cuts the band in source rows at output scale, and we match it.
    expected = np.zeros([16, 16, 3], np.uint8)
    expected[4:8], expected[8:12] = white, gray
    np.testing.assert_array_equal(out[1], expected)


def test_center_crop_keeps_the_centred_square_of_the_shorter_side(tmp_path):
    image = np.zeros([8, 12, 3], np.uint8)
    image[:, 2:10] = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    save(tmp_path / 'src' / 'a.png', image)
    result = run(f'--source={tmp_path / "src"}', f'--dest={tmp_path / "o.zip"}', '--transform=center-crop',
                 '--width=8', '--height=8')
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_zip(tmp_path / 'o.zip')[1][0], image[:, 2:10])


def encode(array, fmt='png'):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_lsun_lmdb_folder_converts_in_key_order_skipping_broken_entries(tmp_path):
    lmdb = pytest.importorskip('lmdb', reason='LSUN sources need the optional lmdb package (pip install lmdb)')
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, [8, 12, 3], dtype=np.uint8)
    gray = rng.integers(0, 256, [12, 8], dtype=np.uint8)
    folder = tmp_path / 'lsun' / 'cat_lmdb'
    folder.parent.mkdir()
    env = lmdb.open(str(folder), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for key, value in {b'k2': encode(gray), b'k0': encode(colour, 'webp'), b'k1': b'not an image',
                           b'k3': encode(colour)}.items():
            txn.put(key, value)
    env.close()
    colour = np.asarray(PIL.Image.open(io.BytesIO(encode(colour, 'webp'))).convert('RGB'))  # lossy
    # The official README's command line, --max_images spelling included.
    result = run(f'--source={folder}', f'--dest={tmp_path / "lsuncat.zip"}', '--transform=center-crop',
                 '--width=8', '--height=8', '--max_images=3')
    assert result.exit_code == 0, result.output
    assert "skipping LMDB entry 'k1'" in result.output and '1 source images dropped' in result.output
    names, out, meta = read_zip(tmp_path / 'lsuncat.zip')
    assert meta['labels'] is None and len(out) == 2
    np.testing.assert_array_equal(out[0], colour[:, 2:10])                     # k0, centre 8x8
    np.testing.assert_array_equal(out[1], np.repeat(gray[2:10, :, None], 3, axis=2))   # k2, made RGB
    # A folder holding data.mdb is LMDB whatever its name; without a size it asks for one.
    os.rename(folder, tmp_path / 'lsun' / 'cat')
    result = run(f'--source={tmp_path / "lsun" / "cat"}', f'--dest={tmp_path / "x.zip"}')
    assert result.exit_code != 0 and '--width=256 --height=256' in result.output
    assert not (tmp_path / 'x.zip').exists()


@pytest.mark.parametrize('folder, content', [('cat_lmdb', None), ('church', 'data.mdb')])
def test_lmdb_source_without_the_lmdb_package_says_how_to_install_it(tmp_path, monkeypatch, folder, content):
    monkeypatch.setitem(sys.modules, 'lmdb', None)                             # import lmdb -> ImportError
    (tmp_path / folder).mkdir()
    if content:
        (tmp_path / folder / content).write_bytes(b'')
    result = run(f'--source={tmp_path / folder}', f'--dest={tmp_path / "o.zip"}', '--resolution=8')
    assert result.exit_code != 0 and 'pip install lmdb' in result.output and 'Traceback' not in result.output
    assert not (tmp_path / 'o.zip').exists()
