"""Feature detectors: the official TorchScript files, found on disk (never downloaded at run time).

The official metrics use two TorchScript networks that take uint8 NCHW RGB images:
  inception-2015-12-05.pt  `det(img, return_features=True)` -> [N, 2048] pool3 features (FID, KID);
                           `det(img, no_output_bias=True)` -> [N, 1008] softmax probabilities (IS)
  vgg16.pt                 `det(img, return_features=True)` -> [N, 4096] fc features (precision/recall);
                           `det(img_float_0_255, resize_images=False, return_lpips=True)` -> LPIPS
                           features whose squared L2 distance is the LPIPS distance (PPL)
The official code downloads them into ~/.cache/dnnlib/downloads ($DNNLIB_CACHE_DIR/downloads). We
look there (also for files the official code cached under an md5-prefixed name) and in the folders
or files given with --detector; a missing file is an error that says where to get it.

`save_standin_detector` writes random-weight stand-ins of the same architectures and call
signatures (torchvision's inception_v3 and vgg16), so tests and offline dry runs exercise the real
loading path. Their numbers mean nothing.
"""
import contextlib
import glob
import os
import warnings

import torch
import torch.nn.functional as F

DETECTOR_FILES = {
    'inception': 'inception-2015-12-05.pt',
    'vgg16': 'vgg16.pt',
}
DETECTOR_URLS = {
    'inception': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt',
    'vgg16': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt',
}


class MissingDetectorError(FileNotFoundError):
    """A detector file is not on this machine; the message says which file, where to put it and where to get it."""


def dnnlib_cache_dir(*parts):
    """The official cache root: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib."""
    root = os.environ.get('DNNLIB_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib')
    return os.path.join(root, *parts)


def _candidates(name, search):
    filename = DETECTOR_FILES[name]
    for entry in search:
        entry = os.path.expanduser(str(entry))
        key, sep, value = entry.partition('=')
        if sep and key in DETECTOR_FILES:           # 'vgg16=/path/to/file.pt'
            if key == name:
                yield os.path.expanduser(value)
            continue
        if os.path.isdir(entry):
            yield os.path.join(entry, filename)
            yield from sorted(glob.glob(os.path.join(glob.escape(entry), '*_' + filename)))
        elif _kind_of_file(entry) == name:
            yield entry
    downloads = dnnlib_cache_dir('downloads')
    yield os.path.join(downloads, filename)
    yield from sorted(glob.glob(os.path.join(glob.escape(downloads), '*_' + filename)))  # official md5_ prefix
    yield dnnlib_cache_dir(filename)


def _kind_of_file(path):
    base = os.path.basename(path).lower()
    if 'inception' in base:
        return 'inception'
    if 'vgg' in base:
        return 'vgg16'
    return None


def check_detector_args(search):
    """Reject --detector values that cannot name a detector, before any work is done."""
    for entry in search or ():
        entry = os.path.expanduser(str(entry))
        key, sep, value = entry.partition('=')
        if sep and key in DETECTOR_FILES:
            entry = os.path.expanduser(value)
        elif os.path.isdir(entry) or _kind_of_file(entry):
            pass
        else:
            raise ValueError(f'--detector={entry}: give a folder holding {" and ".join(DETECTOR_FILES.values())}, a '
                             f'file whose name contains "inception" or "vgg", or NAME=PATH with NAME one of '
                             f'{", ".join(DETECTOR_FILES)}.')
        if not os.path.exists(entry):
            raise ValueError(f'--detector={entry}: no such file or folder.')


def required_detectors(metrics):
    """The detectors a list of metric names needs, so that a missing file fails before any work starts."""
    needed = set()
    for name in metrics:
        if name.startswith(('fid', 'kid', 'is', 'partial_recall')):
            needed.add('inception')
        if name.startswith(('pr', 'ppl')) and not name.startswith('partial'):
            needed.add('vgg16')
    return sorted(needed)


def find_detector(name, search=()):
    """Path of detector `name` ('inception' or 'vgg16'), or MissingDetectorError with instructions."""
    if name not in DETECTOR_FILES:
        raise ValueError(f'unknown detector {name!r}; known: {", ".join(DETECTOR_FILES)}')
    for path in _candidates(name, search):
        if os.path.isfile(path):
            return path
    filename, url = DETECTOR_FILES[name], DETECTOR_URLS[name]
    target = dnnlib_cache_dir('downloads', filename)
    raise MissingDetectorError(
        f'Feature detector {filename} was not found, and nothing is downloaded at run time. On a machine '
        f'with internet access, get it from {url}\n'
        f'  (e.g. curl -L -o {filename} {url}), then either put it at {target}\n'
        f'  (set DNNLIB_CACHE_DIR to move that cache) or pass --detector=PATH (a file or a folder holding it).')


_loaded = {}


@contextlib.contextmanager
def _quiet_torchscript():
    # torch 2.x marks TorchScript deprecated, but the official detectors are TorchScript files.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning, message=r'.*torch\.jit')
        yield


def load_detector(name, device='cpu', search=()):
    """The TorchScript detector `name`, loaded once per (file, device) and kept in eval mode."""
    path = find_detector(name, search)
    key = (os.path.abspath(path), str(device))
    if key not in _loaded:
        try:
            with _quiet_torchscript():
                module = torch.jit.load(path, map_location='cpu')
        except RuntimeError as err:
            raise RuntimeError(f'{path} is not a TorchScript file that this torch can load ({err}). Re-download '
                               f'{DETECTOR_FILES[name]} from {DETECTOR_URLS[name]}.') from err
        for param in module.parameters():
            param.requires_grad = False
        _loaded[key] = module.eval().to(device)
    return _loaded[key]


def detector_identity(name, search=()):
    """A short string that changes when the detector file changes (for feature-cache keys)."""
    path = find_detector(name, search)
    return f'{os.path.basename(path)}:{os.path.getsize(path)}'


# ----------------------------------------------------------------------------------------------
# Random-weight stand-ins with the official call signatures (tests, offline dry runs).

class _InceptionStandIn(torch.nn.Module):
    def __init__(self, trunk, size=299):
        super().__init__()
        self.trunk = trunk
        self.logits = torch.nn.Linear(2048, 1008)
        self.size = size

    def forward(self, img, return_features: bool = False, no_output_bias: bool = False):
        x = img.to(torch.float32)
        x = F.interpolate(x, size=(self.size, self.size), mode='bilinear', align_corners=False)
        features = self.trunk((x - 128) / 128).flatten(1)
        if return_features:
            return features
        if no_output_bias:
            return torch.softmax(F.linear(features, self.logits.weight), dim=1)
        return self.logits(features)


class _VGG16Taps(torch.nn.Module):
    """VGG16's conv layers up to relu5_3, returning the five LPIPS taps (relu1_2 .. relu5_3)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in (3, 8, 15, 22, 29):
                taps.append(x)
        return tuple(taps)


class _VGG16StandIn(torch.nn.Module):
    def __init__(self, features, taps, head, size=224):
        super().__init__()
        self.features = features
        self.taps = taps
        self.head = head
        self.size = size

    def forward(self, img, return_features: bool = False, resize_images: bool = True, return_lpips: bool = False):
        x = img.to(torch.float32)
        if resize_images:
            x = F.interpolate(x, size=(self.size, self.size), mode='area')
        x = (x - 128) / 128
        if return_lpips:
            parts = []
            for t in self.taps(x):
                unit = t / (t.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                parts.append(unit.flatten(1) / (t.shape[2] * t.shape[3]) ** 0.5)
            return torch.cat(parts, dim=1)
        return self.head(self.features(x))


def _calibrate(module, example):
    """Random weights blow activations up layer by layer; let BatchNorm measure one batch so that
    features come out at a sane scale (the numbers still mean nothing)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        module.train()(example)
    return module.eval()


def _tiny_inception_trunk():
    conv = lambda i, o: [torch.nn.Conv2d(i, o, 3, stride=2, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU()]
    return torch.nn.Sequential(*conv(3, 16), *conv(16, 32), *conv(32, 64), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(64, 2048), torch.nn.ReLU())


def _tiny_vgg_features():
    """Five conv stages with ReLU at VGG16's tap positions (indices 3, 8, 15, 22, 29), pools between."""
    layers, c_in = [], 3
    for stage, (width, convs) in enumerate([(8, 2), (16, 2), (16, 3), (32, 3), (32, 3)]):
        for _ in range(convs):
            layers += [torch.nn.Conv2d(c_in, width, 3, padding=1), torch.nn.ReLU()]
            c_in = width
        layers.append(torch.nn.MaxPool2d(2))
    return torch.nn.Sequential(*layers), c_in


def save_standin_detector(name, path, size=None, seed=0, small=False, tiny=False):
    """Write a random-weight TorchScript stand-in for detector `name` to `path` (its numbers mean nothing).

    Same call signatures and output sizes as the official files. By default the same networks too
    (torchvision's inception_v3 and vgg16, untrained); `tiny=True` swaps in a few small conv layers
    (fast tests). `size` is the resolution they resize to (299 / 224 like the real ones; less is
    faster, 75 is inception_v3's minimum). `small` pools VGG16's last conv map to 1x1 instead of 7x7
    before fc6 (a 130 MB file instead of 530 MB). The conv trunks are traced inside a scripted
    wrapper that keeps the keyword flags.
    """
    torch.manual_seed(seed)
    with torch.no_grad(), _quiet_torchscript():
        if name == 'inception':
            size = size or 299
            if tiny:
                trunk = _tiny_inception_trunk()
            else:
                import torchvision
                net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
                trunk = torch.nn.Sequential(*[m for n, m in net.named_children() if n not in ('AuxLogits', 'dropout', 'fc')])
            example = torch.randn([4, 3, size, size])
            trunk = torch.jit.trace(_calibrate(trunk, example), example)
            module = _InceptionStandIn(trunk, size)
        elif name == 'vgg16':
            size = size or 224
            if tiny:
                conv, width = _tiny_vgg_features()
            else:
                import torchvision
                conv, width = torchvision.models.vgg16(weights=None).features, 512
            pool = 1 if (small or tiny) else 7
            fc7 = [] if tiny else [torch.nn.Linear(4096, 4096), torch.nn.ReLU()]
            head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(pool), torch.nn.Flatten(),
                                       torch.nn.Linear(width * pool * pool, 4096), torch.nn.ReLU(), *fc7)
            example = torch.randn([2, 3, max(size, 32), max(size, 32)])
            features = torch.jit.trace(conv.eval(), example)
            taps = torch.jit.trace(_VGG16Taps(conv[:30]), example)
            head = torch.jit.trace(head, conv(example))
            module = _VGG16StandIn(features, taps, head, size)
        else:
            raise ValueError(f'unknown detector {name!r}; known: {", ".join(DETECTOR_FILES)}')
    with _quiet_torchscript():
        scripted = torch.jit.script(module.eval())
    for param in scripted.parameters():
        param.requires_grad = False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    scripted.save(path)
    return path
