"""AugmentPipe (ADA, Karras et al. 2020 Appendix B): official compatibility, behaviour, statistics, R1."""
import inspect
import io
import math
import pickle

import pytest
import torch

from stylegan2_fair.augment import AugmentPipe, _resample, adjust_p, augpipe_specs


def _official_augment_state(path):
    """State dict of the augment_pipe in an official-format pickle, read without its classes."""
    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if name == '_reconstruct_persistent_obj':
                return lambda meta: meta
            if name == 'EasyDict':
                return dict
            if (module, name) == ('torch.storage', '_load_from_bytes'):
                return lambda b: torch.load(io.BytesIO(b), weights_only=True)
            if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
                return torch._utils._rebuild_tensor_v2
            if module.startswith(('collections', 'builtins', 'numpy', 'torch')):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f'unexpected global {module}.{name}')

    with open(path, 'rb') as f:
        return Unpickler(f).load()['augment_pipe']['state']


@pytest.fixture(scope='module')
def official_state(official_fixtures):
    return _official_augment_state(official_fixtures / 'uncond-skip-resnet-32-official-format.pkl')


def _images(n=8, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, c, size, size], generator=g) * 2 - 1


def _pipe(p=1.0, **kwargs):
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def test_buffers_match_official_pipe(official_state):
    official = official_state['_buffers']
    ours = AugmentPipe.from_preset('bgc').state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}
    assert ours['p'].ndim == 0
    # The wavelet filters are derived from the paper's description; they must equal the official taps.
    for name in ('Hz_geom', 'Hz_fbank'):
        torch.testing.assert_close(ours[name], official[name], atol=1e-7, rtol=0)


def test_official_buffers_load_by_name(official_state):
    pipe = AugmentPipe.from_preset('bgc')
    pipe.load_state_dict(official_state['_buffers'])
    assert float(pipe.p) == 0.25


def test_constructor_names_and_defaults_match_official(official_state):
    official = {k: v for k, v in official_state.items() if not k.startswith('_') and k != 'training'}
    params = inspect.signature(AugmentPipe.__init__).parameters
    assert set(params) - {'self'} == set(official)
    for name, value in official.items():
        if name not in official_state['_init_kwargs']:
            default = params[name].default
            assert (list(default) if isinstance(default, tuple) else default) == value, name
    assert official_state['_init_kwargs'] == augpipe_specs['bgc']


@pytest.mark.parametrize('size', [16, 32])
@pytest.mark.parametrize('preset', sorted(augpipe_specs))
def test_every_preset_keeps_shape_and_changes_images_at_p1(preset, size):
    torch.manual_seed(0)
    x = _images(size=size)
    pipe = AugmentPipe.from_preset(preset)
    pipe.p.fill_(1.0)
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown augment preset 'bgcx'.*bgc"):
        AugmentPipe.from_preset('bgcx')


def test_zero_p_returns_input_unchanged():
    x = _images()
    assert torch.equal(_pipe(0.0, **augpipe_specs['bgcfnc'])(x), x)


def test_xflip_gives_exactly_flipped_or_original():
    torch.manual_seed(0)
    x = _images(n=64)
    y = _pipe(1.0, xflip=1)(x)
    flipped = torch.tensor([torch.equal(yi, xi.flip(-1)) for xi, yi in zip(x, y)])
    same = torch.tensor([torch.equal(yi, xi) for xi, yi in zip(x, y)])
    assert (flipped | same).all()
    assert flipped.any() and same.any()


def test_rotate90_gives_exact_quarter_turns():
    torch.manual_seed(0)
    x = _images(n=64)
    y = _pipe(1.0, rotate90=1)(x)
    turns = [[torch.equal(yi, xi.rot90(k, dims=(-2, -1))) for k in range(4)] for xi, yi in zip(x, y)]
    assert all(any(t) for t in turns)
    assert all(any(t[k] for t in turns) for k in range(4))


def test_brightness_shift_has_brightness_std():
    torch.manual_seed(0)
    x = _images(n=4000, size=4)
    shift = (_pipe(1.0, brightness=1)(x) - x).mean(dim=(1, 2, 3))
    assert abs(shift.std().item() - 0.2) < 0.015
    assert abs(shift.mean().item()) < 0.015


def test_contrast_log2_gain_has_contrast_std():
    torch.manual_seed(0)
    x = _images(n=4000, size=4)
    gain = _pipe(1.0, contrast=1)(x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert abs(gain.log2().std().item() - 0.5) < 0.03


def test_noise_std_is_half_normal():
    torch.manual_seed(0)
    x = _images(n=2000, size=16)
    sigma = (_pipe(1.0, noise=1)(x) - x).flatten(1).std(dim=1)
    assert abs(sigma.mean().item() - 0.1 * math.sqrt(2 / math.pi)) < 0.005


def test_cutout_zeroes_expected_area():
    torch.manual_seed(0)
    x = _images(n=2000, size=16)
    zeroed = (_pipe(1.0, cutout=1)(x) == 0).float().mean().item()
    # Half-size box at a uniform centre: expected overlap 0.4375 per axis.
    assert abs(zeroed - 0.4375 ** 2) < 0.015


def test_partial_p_leaves_some_images_untouched():
    torch.manual_seed(0)
    x = _images(n=200)
    y = _pipe(0.3, **augpipe_specs['bg'])(x)
    untouched = torch.tensor([torch.equal(a, b) for a, b in zip(x, y)]).float().mean().item()
    # bg has 7 transforms (rotation counted once): P(untouched) = 0.7**7 ~ 0.08.
    assert 0.02 < untouched < 0.18


def test_geometric_resampling_with_identity_preserves_smooth_image():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(24.0), indexing='ij')
    img = (torch.sin(xx * 2 * math.pi / 16 + 0.3) * torch.cos(yy * 2 * math.pi / 11))[None, None].double()
    eye = torch.eye(3, dtype=torch.float64)[None]
    shift = eye.clone()
    shift[0, 0, 2] = 0.5  # pull from half a pixel to the right
    expected = (torch.sin((xx + 0.5) * 2 * math.pi / 16 + 0.3) * torch.cos(yy * 2 * math.pi / 11))[None, None]
    hz = AugmentPipe().Hz_geom
    assert (_resample(img, eye, hz) - img).abs().max() < 1e-4
    assert (_resample(img, shift, hz) - expected.double())[..., 8:-8, 8:-8].abs().max() < 1e-4


def test_grey_images_get_luma_colour_transforms():
    torch.manual_seed(0)
    x = _images(n=16, c=1)
    y = _pipe(1.0, **augpipe_specs['color'])(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    # Per image the result is affine in the input (brightness, contrast, luma flip).
    for xi, yi in zip(x.flatten(1), y.flatten(1)):
        a = (yi[1] - yi[0]) / (xi[1] - xi[0])
        torch.testing.assert_close(yi, a * xi + (yi[0] - a * xi[0]), atol=1e-5, rtol=0)


def test_colour_on_two_channels_names_the_fix():
    with pytest.raises(ValueError, match='1 \\(grey\\) or 3 \\(RGB\\) channels, got 2.*set brightness'):
        _pipe(1.0, brightness=1)(_images(c=2))


def test_r1_double_backward_through_bgc_matches_finite_differences():
    pipe = _pipe(1.0, **augpipe_specs['bgc'])
    weight = torch.randn([3, 8, 8], dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def r1_gradient(x):
        torch.manual_seed(3)  # same augmentation draw on every call
        logits = torch.tanh(pipe(x) * weight).sum()  # a tiny nonlinear stand-in for D
        return torch.autograd.grad(logits, x, create_graph=True)[0]

    x = torch.randn([2, 3, 8, 8], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(r1_gradient, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    penalty = r1_gradient(x).square().sum()
    (second,) = torch.autograd.grad(penalty, x)
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_adjust_p_rises_when_d_is_overconfident_on_reals():
    pipe = _pipe(0.1)
    p = adjust_p(pipe, sign_mean=0.9, target=0.6, batch_size=64, interval=4, ada_kimg=500)
    assert p == pytest.approx(0.1 + 64 * 4 / 500_000)
    assert float(pipe.p) == pytest.approx(p)


def test_adjust_p_falls_otherwise_but_never_below_zero():
    pipe = _pipe(0.1)
    assert adjust_p(pipe, sign_mean=0.2, target=0.6, batch_size=64, interval=4, ada_kimg=500) < 0.1
    pipe.p.fill_(1e-5)
    assert adjust_p(pipe, sign_mean=torch.tensor(-1.0), target=0.6, batch_size=64, interval=4, ada_kimg=500) == 0
