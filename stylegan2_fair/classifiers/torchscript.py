"""Any classifier saved as TorchScript: `torchscript:PATH`.

Contract for the file (torch.jit.save of a scripted or traced module):
  input   float images [N, C, R, R] in [-1, 1] (G's range), RGB (or grayscale if C = 1), where R is
          the module's own resolution; images of another size are resized (bilinear) to R first.
  output  [N, num_classes] logits (a softmax is applied here), or probabilities when the module
          declares `output = 'probabilities'`.
Optional metadata, from a JSON file beside it (PATH with the extension replaced by .json) or else
from attributes of the module: `class_names` (list of str), `resolution` (int R), `channels`
(int C; grayscale images are repeated to 3 channels and vice versa), `output` ('logits' or
'probabilities'). Without class names the classes are called class0, class1, ...; their number comes
from one probe forward pass (at R, or at the resolution of the images to classify).
"""
import json
import os

import torch

from . import register_classifier
from .base import Classifier, match_channels, resize_square

_META_KEYS = ('class_names', 'resolution', 'channels', 'output')


def read_metadata(path, module):
    meta = {}
    for key in _META_KEYS:
        if hasattr(module, key):
            meta[key] = getattr(module, key)
    sidecar = os.path.splitext(path)[0] + '.json'
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            meta.update({k: v for k, v in json.load(f).items() if k in _META_KEYS})
    if meta.get('output', 'logits') not in ('logits', 'probabilities'):
        raise ValueError(f'{path}: output={meta["output"]!r}; declare output as "logits" or "probabilities"')
    return meta


class TorchScriptClassifier(Classifier):
    def __init__(self, module, class_names, resolution=None, channels=None, output='logits'):
        super().__init__(class_names)
        self.module = module
        self.resolution = resolution
        self.channels = channels
        self.outputs_probabilities = output == 'probabilities'

    def class_probabilities(self, images):
        if self.channels is not None:
            images = match_channels(images, self.channels)
        if self.resolution is not None:
            images = resize_square(images, self.resolution)
        out = self.module(images)
        return out if self.outputs_probabilities else out.softmax(dim=1)


@register_classifier('torchscript')
def build_torchscript(path, device='cpu', img_resolution=None):
    if not os.path.isfile(path):
        raise FileNotFoundError(f'torchscript:{path}: no such file; save a classifier with '
                                f'torch.jit.save(torch.jit.script(model), PATH)')
    try:
        module = torch.jit.load(path, map_location='cpu')
    except RuntimeError as err:
        raise ValueError(f'torchscript:{path} is not a TorchScript file ({err}); save one with '
                         f'torch.jit.save, or use labels:PATH for train-classifier outputs.') from err
    meta = read_metadata(path, module)
    resolution = int(meta['resolution']) if meta.get('resolution') else None
    channels = int(meta['channels']) if meta.get('channels') else None
    class_names = meta.get('class_names')
    if not class_names:
        size = resolution or img_resolution
        if size is None:
            raise ValueError(f'torchscript:{path} declares neither class_names nor resolution; add '
                             f'{os.path.splitext(path)[0]}.json with {{"class_names": [...]}}')
        probe = torch.zeros([1, channels or 3, size, size])
        with torch.no_grad():
            num_classes = module.eval()(probe).shape[1]
        class_names = [f'class{i}' for i in range(num_classes)]
    return TorchScriptClassifier(module, list(class_names), resolution=resolution, channels=channels,
                                 output=meta.get('output', 'logits'))
