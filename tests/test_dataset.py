"""ImageFolderDataset: the official zip/folder format, labels, attributes, indices and clear errors."""
import json
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest

from stylegan2_fair.dataset import DatasetError, ImageFolderDataset, open_dataset


def write_images(root, images, names=None):
    """Save HWC/HW uint8 arrays as PNGs under root; returns the relative names."""
    names = names or [f'{i // 3:02d}/img{i:03d}.png' for i in range(len(images))]
    for name, image in zip(names, images):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(path)
    return names


def write_json(root, **meta):
    (root / 'dataset.json').write_text(json.dumps(meta))


def zip_folder(root, zip_path):
    with zipfile.ZipFile(zip_path, 'w') as zf:
        for path in sorted(root.rglob('*')):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return zip_path


def random_images(n, size=8, channels=3, seed=0):
    shape = [n, size, size] + ([channels] if channels > 1 else [])
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """7 RGB 8x8 images in nested folders, with int labels and two attributes."""
    root = tmp_path / 'data'
    images = random_images(7)
    names = write_images(root, images)
    write_json(root, labels=[[n, i % 3] for i, n in enumerate(names)],
               attributes={'names': ['Smiling', 'Eyeglasses'],
                           'values': [[n, [i % 2, int(i == 4)]] for i, n in enumerate(names)]})
    return root, images, names


# -- loading ------------------------------------------------------------------------------------

def test_items_are_uint8_chw_images_in_sorted_path_order_with_their_index(folder):
    root, images, names = folder
    dataset = ImageFolderDataset(str(root))
    assert len(dataset) == 7 and dataset.image_shape == [3, 8, 8] and dataset.resolution == 8
    order = np.argsort(names)
    for idx in range(len(dataset)):
        image, label, index = dataset[idx]
        assert image.dtype == np.uint8 and index == idx
        np.testing.assert_array_equal(image, images[order[idx]].transpose(2, 0, 1))


def test_zip_and_folder_give_the_same_items(folder, tmp_path):
    root, _, _ = folder
    from_folder = ImageFolderDataset(str(root), use_labels=True)
    from_zip = ImageFolderDataset(str(zip_folder(root, tmp_path / 'data.zip')), use_labels=True)
    assert from_zip.name == 'data' and len(from_zip) == len(from_folder)
    for idx in range(len(from_zip)):
        for a, b in zip(from_zip[idx], from_folder[idx]):
            np.testing.assert_array_equal(a, b)
    assert from_zip.attribute_names == from_folder.attribute_names


def test_grayscale_images_stay_one_channel(tmp_path):
    write_images(tmp_path, random_images(3, channels=1))
    dataset = ImageFolderDataset(str(tmp_path))
    assert dataset.num_channels == 1 and dataset[0][0].shape == (1, 8, 8)


def test_jpeg_images_are_read(tmp_path):
    write_images(tmp_path, random_images(2), names=['a.jpg', 'b.jpeg'])
    assert len(ImageFolderDataset(str(tmp_path))) == 2


def test_int_labels_become_one_hot_of_size_max_plus_one(tmp_path):
    names = write_images(tmp_path, random_images(3))
    write_json(tmp_path, labels=[[n, c] for n, c in zip(names, [4, 0, 2])])
    dataset = ImageFolderDataset(str(tmp_path), use_labels=True)
    assert dataset.has_onehot_labels and dataset.label_shape == [5] and dataset.label_dim == 5
    label = dataset[0][1]
    assert label.dtype == np.float32 and label.argmax() == 4 and label.sum() == 1


def test_vector_labels_are_float32_as_given(tmp_path):
    names = write_images(tmp_path, random_images(2))
    vectors = [[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]]
    write_json(tmp_path, labels=[[n, v] for n, v in zip(names, vectors)])
    dataset = ImageFolderDataset(str(tmp_path), use_labels=True)
    assert not dataset.has_onehot_labels and dataset.label_shape == [3]
    np.testing.assert_array_equal(dataset.get_label(1), np.float32(vectors[1]))


def test_without_use_labels_the_label_is_empty(folder):
    dataset = ImageFolderDataset(str(folder[0]), use_labels=False)
    assert not dataset.has_labels and dataset.label_dim == 0 and dataset[0][1].shape == (0,)


def test_attributes_come_back_by_index_and_by_name(folder):
    root, _, names = folder
    dataset = ImageFolderDataset(str(root))
    order = np.argsort(names)
    expected = np.array([[i % 2, i == 4] for i in order], dtype=bool)
    assert dataset.attribute_names == ['Smiling', 'Eyeglasses']
    np.testing.assert_array_equal(dataset.get_attributes(np.arange(7)), expected)
    np.testing.assert_array_equal(dataset.get_attributes([2, 0], names=['Eyeglasses']), expected[[2, 0]][:, [1]])


def test_celeba_minus_one_values_read_as_false(tmp_path):
    names = write_images(tmp_path, random_images(2))
    write_json(tmp_path, attributes={'names': ['Male'], 'values': [[names[0], [-1]], [names[1], [1]]]})
    assert ImageFolderDataset(str(tmp_path)).get_attributes([0, 1])[:, 0].tolist() == [False, True]


def test_no_attributes_give_zero_columns(tmp_path):
    write_images(tmp_path, random_images(3))
    dataset = ImageFolderDataset(str(tmp_path))
    assert dataset.attribute_names == [] and dataset.get_attributes([0, 1]).shape == (2, 0)


def test_unknown_attribute_name_lists_the_known_ones(folder):
    with pytest.raises(KeyError, match='Smiling'):
        ImageFolderDataset(str(folder[0])).get_attributes([0], names=['Bald'])


def test_xflip_doubles_the_dataset_and_mirrors_the_second_half(folder):
    plain = ImageFolderDataset(str(folder[0]))
    flipped = ImageFolderDataset(str(folder[0]), xflip=True)
    assert len(flipped) == 2 * len(plain)
    np.testing.assert_array_equal(flipped[3][0], plain[3][0])
    np.testing.assert_array_equal(flipped[len(plain) + 3][0], plain[3][0][:, :, ::-1])
    assert flipped[len(plain) + 3][2] == len(plain) + 3 and flipped.raw_index(len(plain) + 3) == 3
    assert flipped.get_details(len(plain) + 3).xflip


def test_max_size_takes_a_subset_chosen_by_the_seed(tmp_path):
    write_images(tmp_path, random_images(20))
    subsets = {seed: [ImageFolderDataset(str(tmp_path), max_size=6, random_seed=seed).raw_index(i)
                      for i in range(6)] for seed in (0, 1)}
    for seed, subset in subsets.items():
        # The official subset: shuffle all raw indices with RandomState(seed), keep the first, sort.
        assert subset == sorted(np.random.RandomState(seed).permutation(20)[:6].tolist())
    assert subsets[0] != subsets[1]


def test_details_name_the_source_file(folder):
    root, _, names = folder
    details = ImageFolderDataset(str(root), use_labels=True).get_details(2)
    assert details.path == sorted(names)[2] and details.raw_idx == 2
    assert details.raw_label == names.index(details.path) % 3


def test_dataset_kwargs_have_the_official_form_and_rebuild_the_dataset(folder):
    dataset = ImageFolderDataset(str(folder[0]), use_labels=True, xflip=True, max_size=5)
    kwargs = dataset.dataset_kwargs()
    assert kwargs == dict(class_name='training.dataset.ImageFolderDataset', path=str(folder[0]),
                          use_labels=True, max_size=5, xflip=True, resolution=8)
    rebuilt = open_dataset(**kwargs)
    assert [rebuilt.raw_index(i) for i in range(len(rebuilt))] == [dataset.raw_index(i) for i in range(len(dataset))]


def test_zip_dataset_pickles_without_its_open_file_and_works_in_dataloader_workers(folder, tmp_path):
    import torch
    dataset = ImageFolderDataset(str(zip_folder(folder[0], tmp_path / 'd.zip')), use_labels=True)
    dataset[0]                                            # opens the zip in this process
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[4][0], dataset[4][0])
    loader = torch.utils.data.DataLoader(dataset, batch_size=7, num_workers=2)
    images, labels, indices = next(iter(loader))
    assert indices.tolist() == list(range(7))
    np.testing.assert_array_equal(images.numpy(), np.stack([dataset[i][0] for i in range(7)]))


def test_index_out_of_range_raises_index_error(folder):
    dataset = ImageFolderDataset(str(folder[0]))
    with pytest.raises(IndexError):
        dataset[len(dataset)]


# -- bad input: the error names the problem and the fix -----------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist.*dataset_tool'):
        ImageFolderDataset(str(tmp_path / 'nope.zip'))


def test_corrupt_zip(tmp_path):
    path = tmp_path / 'broken.zip'
    path.write_bytes(b'PK\x03\x04 this is not really a zip')
    with pytest.raises(DatasetError, match='not a readable zip.*Re-create'):
        ImageFolderDataset(str(path))


def test_folder_without_images(tmp_path):
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(DatasetError, match='No images.*dataset_tool'):
        ImageFolderDataset(str(tmp_path))


@pytest.mark.parametrize('images, problem', [
    ([np.zeros([8, 16, 3], np.uint8)], 'must be square'),
    ([np.zeros([12, 12, 3], np.uint8)], 'power of two'),
    ([np.zeros([8, 8, 3], np.uint8), np.zeros([16, 16, 3], np.uint8)], 'different sizes'),
    ([np.zeros([8, 8, 3], np.uint8), np.zeros([8, 8], np.uint8)], 'mix channel counts'),
    ([np.zeros([8, 8, 4], np.uint8)], "mode 'RGBA'"),
], ids=['non-square', 'non-power-of-two', 'mixed-sizes', 'mixed-channels', 'rgba'])
def test_bad_images_are_refused_with_the_dataset_tool_fix(tmp_path, images, problem):
    write_images(tmp_path, images)
    with pytest.raises(DatasetError, match=problem) as err:
        ImageFolderDataset(str(tmp_path))
    assert 'dataset_tool' in str(err.value)


def test_resolution_mismatch(folder):
    with pytest.raises(DatasetError, match='resolution=16.*--resolution=16'):
        ImageFolderDataset(str(folder[0]), resolution=16)


def test_use_labels_without_labels_says_run_without_cond(tmp_path):
    write_images(tmp_path, random_images(2))
    write_json(tmp_path, labels=None)
    with pytest.raises(DatasetError, match='no labels.*without --cond.*dataset_tool'):
        ImageFolderDataset(str(tmp_path), use_labels=True)


@pytest.mark.parametrize('field', ['labels', 'attributes'])
def test_entries_for_files_that_are_not_there(tmp_path, field):
    names = write_images(tmp_path, random_images(2)) + ['ghost.png']
    if field == 'labels':
        write_json(tmp_path, labels=[[n, 0] for n in names])
    else:
        write_json(tmp_path, attributes={'names': ['A'], 'values': [[n, [1]] for n in names]})
    with pytest.raises(DatasetError, match="not images of the dataset: 'ghost.png'.*Remove those entries"):
        ImageFolderDataset(str(tmp_path), use_labels=(field == 'labels'))


def test_images_without_a_label(tmp_path):
    names = write_images(tmp_path, random_images(3))
    write_json(tmp_path, labels=[[names[0], 1]])
    with pytest.raises(DatasetError, match='miss 2 image'):
        ImageFolderDataset(str(tmp_path), use_labels=True)


def test_attribute_rows_must_match_the_names(tmp_path):
    names = write_images(tmp_path, random_images(2))
    write_json(tmp_path, attributes={'names': ['A', 'B'], 'values': [[n, [1]] for n in names]})
    with pytest.raises(DatasetError, match='1 entries per image but there are 2 names'):
        ImageFolderDataset(str(tmp_path))


def test_invalid_dataset_json(tmp_path):
    write_images(tmp_path, random_images(1))
    (tmp_path / 'dataset.json').write_text('{"labels": [')
    with pytest.raises(DatasetError, match='not valid JSON'):
        ImageFolderDataset(str(tmp_path))
