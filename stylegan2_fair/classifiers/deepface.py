"""DeepFace's attribute models (race, gender) through their PyTorch form, as differentiable classifiers.

DeepFace (PyPI `deepface`, MIT licence; 0.0.103 checked) builds its race and gender models in its
PyTorch backend as the VGG-Face convolutional trunk (fc6/fc7 as convolutions, no 2622-way fc8)
followed by a 1x1 convolution to the classes and a softmax; input (n, 3, 224, 224) BGR in [0, 1].
Installing the package would pull in OpenCV, ONNX Runtime and retina-face (hence TensorFlow) just to
import these classes, so the same architecture is declared here with DeepFace's parameter names,
and DeepFace's own weight files load into it unchanged (strict state_dict match).

Weights are read where DeepFace keeps them, `$DEEPFACE_HOME/.deepface/weights/` (DEEPFACE_HOME
defaults to the home folder). Nothing is downloaded: a missing file raises an error that names the
file, the folder and where to get it.

Preprocessing mirrors what DeepFace.analyze feeds the model after face detection (which is skipped:
generated images are already aligned faces): RGB in [0, 1] -> BGR -> resize keeping the aspect
ratio, black padding to 224 x 224.
"""
import os

import torch

from . import register_classifier
from .base import Classifier, match_channels, resize_keep_aspect

# name -> (weights file, DeepFace's label order, download addresses DeepFace uses)
DEEPFACE_MODELS = {
    'race': ('race_model_single_batch.pth',
             ['asian', 'indian', 'black', 'white', 'middle eastern', 'latino hispanic'],
             ['https://github.com/serengil/deepface_models/releases/download/v1.0/race_model_single_batch.pth',
              'https://huggingface.co/serengil/deepface/resolve/main/race_model_single_batch.pth']),
    'gender': ('gender_model_weights.pth',
               ['Woman', 'Man'],
               ['https://github.com/serengil/deepface_models/releases/download/v1.0/gender_model_weights.pth',
                'https://huggingface.co/serengil/deepface/resolve/main/gender_model_weights.pth']),
}
INPUT_SIZE = 224


def deepface_weights_dir():
    """Where DeepFace looks for weights: $DEEPFACE_HOME/.deepface/weights (home folder by default)."""
    home = os.environ.get('DEEPFACE_HOME') or os.path.expanduser('~')
    return os.path.join(home, '.deepface', 'weights')


class VGGFaceTrunk(torch.nn.Module):
    """VGG-16 as trained for VGG-Face, up to fc7 (4096 features). Parameter names follow DeepFace's
    `VggFaceBaseModel(include_top=False)` so its weight files load as they are."""

    _BLOCKS = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]

    def __init__(self):
        super().__init__()
        for block, (in_ch, out_ch, depth) in enumerate(self._BLOCKS, start=1):
            for layer in range(1, depth + 1):
                setattr(self, f'conv{block}_{layer}',
                        torch.nn.Conv2d(in_ch if layer == 1 else out_ch, out_ch, kernel_size=3, padding=1))
        self.fc6 = torch.nn.Conv2d(512, 4096, kernel_size=7)  # 7x7 map after five poolings of 224
        self.fc7 = torch.nn.Conv2d(4096, 4096, kernel_size=1)
        self.dropout = torch.nn.Dropout(0.5)  # inactive in eval mode; kept for the same graph

    def forward(self, x):
        relu = torch.nn.functional.relu
        for block, (_, _, depth) in enumerate(self._BLOCKS, start=1):
            for layer in range(1, depth + 1):
                x = relu(getattr(self, f'conv{block}_{layer}')(x))
            x = torch.nn.functional.max_pool2d(x, kernel_size=2, stride=2)
        x = self.dropout(relu(self.fc6(x)))
        return relu(self.fc7(x)).flatten(1)


class DeepFaceAttributeNet(torch.nn.Module):
    """DeepFace's `VggFaceClassifier`: trunk -> 1x1 conv to the classes -> softmax; input BGR [0, 1] 224x224."""

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = VGGFaceTrunk()
        self.predictions = torch.nn.Conv2d(4096, num_classes, kernel_size=1)

    def forward(self, x):
        features = self.backbone(x)
        return self.predictions(features[:, :, None, None]).flatten(1).softmax(dim=1)


class DeepFaceClassifier(Classifier):
    """G's images ([-1, 1] RGB, any size) -> DeepFace attribute probabilities, differentiably."""

    def __init__(self, attribute, net=None):
        if attribute not in DEEPFACE_MODELS:
            raise ValueError(f'deepface:{attribute} is not available; choose from '
                             f'{", ".join("deepface:" + name for name in DEEPFACE_MODELS)}')
        _, class_names, _ = DEEPFACE_MODELS[attribute]
        super().__init__(class_names)
        self.attribute = attribute
        self.net = net if net is not None else DeepFaceAttributeNet(len(class_names))

    def class_probabilities(self, images):
        # Clamp as a saved image would be; gradients still reach every in-range pixel.
        x = ((images + 1) / 2).clamp(0, 1)
        x = match_channels(x, 3).flip(1)  # RGB -> BGR, as DeepFace.analyze does
        x = resize_keep_aspect(x, INPUT_SIZE)
        return self.net(x)


def load_deepface_net(attribute, weights_dir=None):
    """The attribute network with DeepFace's weights from `weights_dir` (default: where DeepFace keeps them)."""
    if attribute not in DEEPFACE_MODELS:
        raise ValueError(f'deepface:{attribute} is not available; choose from '
                         f'{", ".join("deepface:" + name for name in DEEPFACE_MODELS)}')
    file_name, class_names, urls = DEEPFACE_MODELS[attribute]
    weights_dir = weights_dir or deepface_weights_dir()
    path = os.path.join(weights_dir, file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'DeepFace weights {file_name!r} not found in {weights_dir}. This tool never downloads: fetch '
            f'{urls[0]} (or {urls[1]}) and put it in that folder, or set DEEPFACE_HOME to the folder that '
            f'holds .deepface/weights/{file_name}.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise ValueError(f'{path} cannot be read as a PyTorch state_dict ({err}); it may be truncated or '
                         f'the TensorFlow .h5 file: download the .pth again from {urls[0]}.') from err
    net = DeepFaceAttributeNet(len(class_names))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f'{path} does not hold the weights of the DeepFace {attribute} model ({err}); '
                         f'download {file_name} again from {urls[0]}.') from err
    return net


@register_classifier('deepface')
def build_deepface(attribute, device='cpu', img_resolution=None):
    return DeepFaceClassifier(attribute, net=load_deepface_net(attribute))
