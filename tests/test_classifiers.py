"""Auxiliary classifiers: the registry, DeepFace's race model, TorchScript files, the labels CNN."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stylegan2_fair.classifiers import Classifier, create_classifier, list_classifiers, resize_keep_aspect
from stylegan2_fair.classifiers.deepface import DEEPFACE_MODELS, DeepFaceAttributeNet, DeepFaceClassifier


def test_registry_builds_by_scheme_and_rejects_unknown_specs():
    assert {'deepface', 'labels', 'torchscript'} <= set(list_classifiers())
    with pytest.raises(ValueError, match='unknown classifier .*SCHEME:ARGUMENT'):
        create_classifier('resnet50')
    with pytest.raises(ValueError, match='deepface:race'):
        create_classifier('nosuchscheme:x')


# ----------------------------------------------------------------------------------------------
# DeepFace

def test_deepface_race_loads_weights_where_deepface_keeps_them_and_runs_batched_with_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv('DEEPFACE_HOME', str(tmp_path))
    weights_dir = tmp_path / '.deepface' / 'weights'
    weights_dir.mkdir(parents=True)
    torch.manual_seed(0)
    reference = DeepFaceAttributeNet(6)
    # Half precision keeps the 134M-parameter file at 270 MB; load_state_dict casts back to float32.
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, weights_dir / 'race_model_single_batch.pth')
    del reference

    clf = create_classifier('deepface:race')
    assert clf.class_names == ['asian', 'indian', 'black', 'white', 'middle eastern', 'latino hispanic']
    saved = torch.load(weights_dir / 'race_model_single_batch.pth', weights_only=True)
    assert torch.equal(clf.net.predictions.weight, saved['predictions.weight'].float())
    assert not any(p.requires_grad for p in clf.parameters())

    images = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    probs = clf(images)
    assert probs.shape == (2, 6)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    torch.log(probs[:, 0] + 1e-30).sum().backward()  # log: the random net's softmax is nearly saturated
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_deepface_missing_weights_error_names_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('DEEPFACE_HOME', str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_classifier('deepface:race')
    message = str(err.value)
    assert 'race_model_single_batch.pth' in message
    assert str(tmp_path / '.deepface' / 'weights') in message
    assert 'https://' in message  # where to fetch it by hand


def test_deepface_unknown_attribute_lists_the_available_ones():
    with pytest.raises(ValueError, match='deepface:race, deepface:gender'):
        create_classifier('deepface:age')


class _Recorder(torch.nn.Module):
    def forward(self, x):
        self.seen = x.detach().clone()
        return torch.full([x.shape[0], 6], 1 / 6)


def test_deepface_input_is_bgr_in_unit_range_at_224():
    clf = DeepFaceClassifier('race', net=_Recorder())
    image = torch.empty(1, 3, 32, 32)
    image[:, 0], image[:, 1], image[:, 2] = 1.0, 0.0, -1.0  # red 1, green 0.5, blue 0 after (x+1)/2
    clf(image)
    seen = clf.net.seen
    assert seen.shape == (1, 3, 224, 224)
    assert torch.allclose(seen[0, :, 100, 100], torch.tensor([0.0, 0.5, 1.0]))  # B, G, R


def test_resize_keep_aspect_pads_black_around_the_centred_image():
    wide = torch.ones(1, 3, 8, 16)
    out = resize_keep_aspect(wide, 32)
    assert out.shape == (1, 3, 32, 32)
    rows = out[0, 0].sum(1)
    assert torch.all(rows[:8] == 0) and torch.all(rows[24:] == 0) and torch.allclose(rows[8:24], torch.full([16], 32.))


def test_deepface_gender_uses_deepface_label_order():
    assert DEEPFACE_MODELS['gender'][1] == ['Woman', 'Man']
    assert DeepFaceClassifier('gender', net=_Recorder()).num_classes == 2


# ----------------------------------------------------------------------------------------------
# TorchScript

class _MeanColour(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def test_torchscript_classifier_takes_class_names_from_the_sidecar_json_and_softmaxes(tmp_path):
    torch.manual_seed(0)
    model = _MeanColour()
    path = tmp_path / 'clf.pt'
    torch.jit.save(torch.jit.script(model), str(path))
    (tmp_path / 'clf.json').write_text(json.dumps(dict(class_names=['a', 'b', 'c', 'd'], resolution=8)))
    clf = create_classifier(f'torchscript:{path}')
    assert clf.class_names == ['a', 'b', 'c', 'd']
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    expected = model(torch.nn.functional.interpolate(images, size=(8, 8), mode='bilinear', antialias=True)).softmax(1)
    assert torch.allclose(clf(images), expected, atol=1e-5)


def test_torchscript_classifier_without_metadata_names_classes_by_index(tmp_path):
    path = tmp_path / 'clf.pt'
    torch.jit.save(torch.jit.script(_MeanColour()), str(path))
    clf = create_classifier(f'torchscript:{path}', img_resolution=16)
    assert clf.class_names == ['class0', 'class1', 'class2', 'class3']


# ----------------------------------------------------------------------------------------------
# labels: a small CNN trained on the dataset's labels

@pytest.fixture(scope='module')
def toy_digits_zip(tmp_path_factory):
    from stylegan2_fair.cli.dataset_tool import convert
    dest = tmp_path_factory.mktemp('data') / 'digits.zip'
    result = CliRunner().invoke(convert, ['--source=toy:longtail-digits', '--num-images=600', '--resolution=16',
                                          '--imbalance=0.5', f'--dest={dest}'])
    assert result.exit_code == 0, result.output
    return dest


def test_train_classifier_cli_beats_chance_and_writes_a_weights_only_file(toy_digits_zip, tmp_path):
    from stylegan2_fair.cli.train_classifier import train_classifier
    from stylegan2_fair.classifiers.small_cnn import dataset_class_labels
    from stylegan2_fair.dataset import ImageFolderDataset
    out = tmp_path / 'clf.pt'
    result = CliRunner().invoke(train_classifier, [f'--data={toy_digits_zip}', f'--out={out}', '--epochs=5',
                                                   '--width=8', '--batch=48', '--lr=1e-2', '--val-fraction=0.2',
                                                   '--device=cpu'])
    assert result.exit_code == 0, result.output
    payload = torch.load(out, weights_only=True)  # plain tensors and metadata only
    assert payload['resolution'] == 16 and len(payload['class_names']) == 10
    assert payload['metrics']['val_accuracy'] > 0.6  # chance is 0.1

    clf = create_classifier(f'labels:{out}')
    dataset = ImageFolderDataset(toy_digits_zip, use_labels=True)
    images = torch.from_numpy(np.stack([dataset[i][0] for i in range(len(dataset))])).float() / 127.5 - 1
    accuracy = (clf.predict(images).argmax(1).numpy() == dataset_class_labels(dataset)).mean()
    assert accuracy > 0.6


def test_labels_classifier_round_trips_through_its_file(tmp_path):
    from stylegan2_fair.classifiers.small_cnn import LabelClassifier
    torch.manual_seed(1)
    clf = LabelClassifier(['x', 'y', 'z'], resolution=8, channels=1, width=4)
    clf.save(tmp_path / 'c.pt')
    loaded = create_classifier(f'labels:{tmp_path / "c.pt"}')
    images = torch.rand(3, 3, 16, 16) * 2 - 1  # RGB at another size: averaged to gray, resized to 8
    assert loaded.class_names == ['x', 'y', 'z']
    assert torch.allclose(loaded(images), clf.eval()(images))


def test_labels_classifier_rejects_other_files_with_a_pointer_to_torchscript(tmp_path):
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='torchscript:PATH'):
        create_classifier(f'labels:{tmp_path / "other.pt"}')
    with pytest.raises(FileNotFoundError, match='train-classifier'):
        create_classifier(f'labels:{tmp_path / "missing.pt"}')


def test_train_classifier_needs_integer_labels(tmp_path):
    import PIL.Image
    from stylegan2_fair.classifiers.small_cnn import dataset_class_labels
    from stylegan2_fair.dataset import ImageFolderDataset
    for i in range(2):
        PIL.Image.fromarray(np.zeros([8, 8, 3], dtype=np.uint8)).save(tmp_path / f'{i}.png')
    with pytest.raises(ValueError, match='integer class labels'):
        dataset_class_labels(ImageFolderDataset(tmp_path))


def test_classifier_base_rejects_unbatched_images():
    class Constant(Classifier):
        def class_probabilities(self, images):
            return torch.ones(images.shape[0], 1)
    with pytest.raises(ValueError, match='images\\[None\\]'):
        Constant(['only'])(torch.zeros(3, 8, 8))
