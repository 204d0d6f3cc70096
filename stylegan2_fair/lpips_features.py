"""LPIPS (Zhang et al. 2018; VGG16 trunk, v0.1 linear weights from the `lpips` package) as a loss and as
a feature space for nearest-neighbour search.

LPIPS(x, y) = sum_l mean_hw sum_c w_lc (f_lchw(x) - f_lchw(y))^2 with f the channel-normalised VGG
activations and w >= 0 the learned linear weights. So with the embedding
e_l(x) = sqrt(w_l) * f_l(x) / sqrt(H_l W_l), LPIPS(x, y) = |e(x) - e(y)|^2 exactly: these are the
"LPIPS features" of Inclusive GAN (Sec. 3.3), in which Euclidean nearest neighbours are LPIPS
nearest neighbours. The embedding is large (~2M numbers per image at 128x128), so for search it is
reduced by a fixed random projection (`CountSketch`).

Images go in as float [-1, 1] NCHW, 1 or 3 channels. VGG's last stage pools 16x16 down to 1x1, so
smaller images are upsampled to `min_resolution` first.
"""
import contextlib
import copy
import functools
import os
import urllib.error
import warnings

import click
import torch
import torch.nn.functional as F

# torchvision's ImageNet VGG16 checkpoint: the file its hub cache looks for (VGG16_Weights.IMAGENET1K_V1).
VGG16_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'
VGG16_FILE = 'vgg16-397923af.pth'
VGG16_SHA256_PREFIX = '397923af'  # torch.hub's naming convention: the name carries the start of the file's sha256

LPIPS_BACKBONE_OPTION = click.option(
    '--lpips-backbone', 'lpips_backbone', metavar='PATH',
    help=f'VGG16 ImageNet weights for LPIPS ({VGG16_FILE}); default: torchvision\'s cache '
         f'$TORCH_HOME/hub/checkpoints/. "random": an untrained trunk (tests, offline benchmarks; a weaker metric)')


class LPIPSBackboneMissing(RuntimeError):
    """The VGG16 ImageNet weights are not on this machine and cannot be downloaded."""


def _missing_backbone_message(reason):
    target = os.path.join(torch.hub.get_dir(), 'checkpoints', VGG16_FILE)
    return (f'LPIPS needs the VGG16 ImageNet weights, which torchvision could not fetch ({reason}). '
            f'Download {VGG16_URL} on a machine with internet access and put it at {target} '
            f'(the folder follows $TORCH_HOME, default ~/.cache/torch), or pass --lpips-backbone=PATH '
            f'to the file.')


def find_backbone_file(backbone=None):
    """Path of the VGG16 weights that `load_lpips(backbone)` will read, or None for 'random', without
    building the network: for checks before a run dir exists (a missing file should not surface only
    at the hook's setup). LPIPSBackboneMissing, naming where the file goes, when it is not there.

    The default (None) is torchvision's cache file; when it is absent it is downloaded as lpips would
    (into the same place, so the later load finds it), and the error comes only when that fails.
    """
    if backbone == 'random':
        return None
    if backbone is not None:
        if not os.path.isfile(backbone):
            raise LPIPSBackboneMissing(_missing_backbone_message(f'--lpips-backbone={backbone} is not a file'))
        return backbone
    target = os.path.join(torch.hub.get_dir(), 'checkpoints', VGG16_FILE)
    if not os.path.isfile(target):
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # The hash check refuses a truncated or corrupted download instead of caching it.
            torch.hub.download_url_to_file(VGG16_URL, target, hash_prefix=VGG16_SHA256_PREFIX, progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise LPIPSBackboneMissing(_missing_backbone_message(err)) from err
    return target


@functools.lru_cache(maxsize=4)
def load_lpips(backbone=None):
    """lpips.LPIPS(net='vgg', version 0.1), frozen and in eval mode, on the CPU (cached: move a copy).

    backbone: None = torchvision's cached ImageNet VGG16 (downloaded on first use where there is a
    network), a path to that file, or 'random' for an untrained trunk of the same architecture.
    """
    import lpips
    with _skip_weight_init(), warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # lpips passes torchvision's deprecated `pretrained`
        if backbone is None:
            try:
                model = lpips.LPIPS(net='vgg', version='0.1', verbose=False)
            except (urllib.error.URLError, OSError, RuntimeError) as err:
                raise LPIPSBackboneMissing(_missing_backbone_message(err)) from err
        else:
            model = lpips.LPIPS(net='vgg', version='0.1', pnet_rand=True, verbose=False)
    if backbone == 'random':
        # torchvision's VGG initialisation, from a fixed seed: every process gets the same trunk.
        gen = torch.Generator().manual_seed(0)
        for module in model.net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu', generator=gen)
                torch.nn.init.zeros_(module.bias)
    elif backbone is not None:
        _load_vgg16_trunk(model.net, backbone)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _skip_weight_init():
    """Skip random initialisation while lpips builds torchvision's VGG16: it initialises a 120M-parameter
    classifier that lpips throws away (seconds on a CPU), and every weight it keeps is loaded (or, for
    'random', initialised) afterwards."""
    names = ('uniform_', 'normal_', 'kaiming_uniform_', 'kaiming_normal_', 'constant_', 'zeros_', 'ones_')
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _load_vgg16_trunk(trunk, path):
    """Copy torchvision VGG16 weights (keys 'features.<i>.weight') into lpips' slices (children named '<i>')."""
    if not os.path.isfile(path):
        raise LPIPSBackboneMissing(_missing_backbone_message(f'--lpips-backbone={path} is not a file'))
    state = torch.load(path, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state)
    for slice_module in trunk.children():
        for index, layer in slice_module.named_children():
            params = {name: state.get(f'features.{index}.{name}') for name, _ in layer.named_parameters()}
            missing = [name for name, value in params.items() if value is None]
            if missing:
                raise LPIPSBackboneMissing(_missing_backbone_message(
                    f'{path} has no features.{index}.{missing[0]}; it is not a torchvision VGG16 checkpoint'))
            layer.load_state_dict(params)


class LPIPSFeatures(torch.nn.Module):
    """LPIPS distance (differentiable) and LPIPS embeddings of images in [-1, 1]."""

    def __init__(self, backbone=None, min_resolution=16):
        super().__init__()
        lpips_model = copy.deepcopy(load_lpips(backbone))  # own copy: moving it must not move the cached one
        self.scaling_layer = lpips_model.scaling_layer
        self.trunk = lpips_model.net
        # sqrt of the non-negative per-channel weights, so that |e(x) - e(y)|^2 is the weighted sum.
        weights = [lin.model[-1].weight.detach().clamp(min=0).sqrt().flatten() for lin in lpips_model.lins]
        for i, w in enumerate(weights):
            self.register_buffer(f'sqrt_w{i}', w.clone())
        self.num_layers = len(weights)
        self.min_resolution = min_resolution
        self.requires_grad_(False).eval()

    def train(self, mode=True):
        return super().train(False)  # frozen metric: always eval mode

    def prepare(self, images):
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        elif images.shape[1] != 3:
            raise ValueError(f'LPIPS takes 1- or 3-channel images, got {images.shape[1]} channels')
        size = images.shape[-1]
        if size < self.min_resolution:
            images = F.interpolate(images, size=(self.min_resolution, self.min_resolution), mode='bilinear',
                                   align_corners=False)
        return images.float()

    def layer_embeddings(self, images):
        """Per VGG stage, e_l(x) [N, C_l, H_l, W_l] such that LPIPS = sum_l |e_l(x) - e_l(y)|^2."""
        outs = self.trunk(self.scaling_layer(self.prepare(images)))
        embeddings = []
        for i, feat in enumerate(outs):
            feat = feat / (feat.square().sum(1, keepdim=True).sqrt() + 1e-10)  # as lpips.normalize_tensor
            scale = getattr(self, f'sqrt_w{i}')[None, :, None, None] / (feat.shape[2] * feat.shape[3]) ** 0.5
            embeddings.append(feat * scale)
        return embeddings

    def distance(self, images, targets):
        """LPIPS per sample [N]; gradients flow into `images` (targets are treated as constants)."""
        with torch.no_grad():
            target_emb = self.layer_embeddings(targets)
        return embedding_distance(self.layer_embeddings(images), target_emb)

    def embed(self, images, sketch=None):
        """Flat LPIPS embedding [N, D], or its projection [N, sketch.dim] when a CountSketch is given."""
        layers = [e.flatten(1) for e in self.layer_embeddings(images)]
        if sketch is None:
            return torch.cat(layers, 1)
        return sketch(layers)


def embedding_distance(a, b):
    """LPIPS per sample from two lists of layer embeddings (as returned by `layer_embeddings`)."""
    return sum((x - y).square().flatten(1).sum(1) for x, y in zip(a, b))


class CountSketch(torch.nn.Module):
    """A fixed sparse random projection R^D -> R^k (feature hashing): input coordinate i is added,
    with a random sign, to output coordinate h(i).

    Why not a dense Gaussian matrix: LPIPS embeddings have ~2M coordinates at 128x128, and a dense
    2M x 256 projection is 2 GB, while the sketch stores one bucket and one sign per coordinate and
    costs O(D) per image. E|Sx|^2 = |x|^2 and Var = O(|x|^4 / k) as for a Gaussian projection, so
    projected squared distances estimate LPIPS on its own scale (relative error ~ sqrt(2 / k)).
    Buckets and signs are drawn from `seed` per input layout: the same seed gives the same map.
    """

    def __init__(self, dim, seed=0):
        super().__init__()
        self.dim = int(dim)
        self.seed = int(seed)
        self._maps = {}

    def _map(self, part, size, device):
        key = (part, size, str(device))
        if key not in self._maps:
            gen = torch.Generator().manual_seed(self.seed * 1000003 + part)
            bucket = torch.randint(0, self.dim, [size], generator=gen)
            sign = torch.randint(0, 2, [size], generator=gen).float() * 2 - 1
            self._maps[key] = (bucket.to(device), sign.to(device))
        return self._maps[key]

    def forward(self, parts):
        """parts: a tensor [N, D] or a list of [N, D_i] (projected separately, summed)."""
        parts = [parts] if torch.is_tensor(parts) else list(parts)
        out = torch.zeros([parts[0].shape[0], self.dim], device=parts[0].device, dtype=torch.float32)
        for i, part in enumerate(parts):
            bucket, sign = self._map(i, part.shape[1], part.device)
            out.index_add_(1, bucket, part.float() * sign)
        return out
