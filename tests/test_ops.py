"""The reference ops: official numbers, exact resampling semantics, first and second derivatives."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylegan2_fair.ops import bias_act, conv2d_resample, upfirdn2d


def _official_calls(prefix):
    from conftest import _fixtures_dir  # the lookup behind the official_fixtures fixture
    path = _fixtures_dir() / 'ops.json'
    calls = json.loads(path.read_text()) if path.is_file() else []
    return [c for c in calls if c['out'].startswith(prefix)]


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors: see conftest


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # random inputs, but the same in every run


def _max_err(a, b):
    return float(np.abs(a.detach().numpy() - b).max())


# ---------------------------------------------------------------- official outputs

@pytest.mark.parametrize('call', _official_calls('upfirdn2d.'), ids=lambda c: c['out'])
def test_upfirdn2d_matches_official(official_fixtures, call):
    arrays = np.load(official_fixtures / 'ops.npz')
    y = upfirdn2d.upfirdn2d(torch.from_numpy(arrays[call['x']]), torch.from_numpy(arrays[call['f']]),
                            up=call['up'], down=call['down'], padding=call['padding'],
                            flip_filter=call['flip_filter'], gain=call['gain'])
    assert y.shape == arrays[call['out']].shape
    assert _max_err(y, arrays[call['out']]) <= 1e-5


@pytest.mark.parametrize('call', _official_calls('bias_act.'), ids=lambda c: f"{c['out']}-{c['act']}")
def test_bias_act_matches_official(official_fixtures, call):
    arrays = np.load(official_fixtures / 'ops.npz')
    y = bias_act.bias_act(torch.from_numpy(arrays[call['x']]), torch.from_numpy(arrays[call['b']]),
                          dim=call['dim'], act=call['act'], alpha=call['alpha'], gain=call['gain'],
                          clamp=call['clamp'])
    assert _max_err(y, arrays[call['out']]) <= 1e-5


def test_upsample2d_and_downsample2d_pad_like_official(official_fixtures):
    # y1 / y2 are the official upfirdn2d calls that its upsample2d / downsample2d make for a 4-tap filter.
    arrays = np.load(official_fixtures / 'ops.npz')
    x, f = torch.from_numpy(arrays['upfirdn2d.x']), torch.from_numpy(arrays['upfirdn2d.f_1331'])
    assert _max_err(upfirdn2d.upsample2d(x, f), arrays['upfirdn2d.y1']) <= 1e-5
    assert _max_err(upfirdn2d.downsample2d(x, f, flip_filter=True), arrays['upfirdn2d.y2']) <= 1e-5


# ---------------------------------------------------------------- filters and sizes

def test_setup_filter_short_taps_become_normalised_outer_product():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    expected = torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64
    assert f.shape == (4, 4) and f.dtype == torch.float32
    assert torch.allclose(f, expected)


def test_setup_filter_long_taps_stay_separable_with_same_effect():
    taps = torch.arange(1., 10.)
    f_sep = upfirdn2d.setup_filter(taps, gain=3)
    f_full = upfirdn2d.setup_filter(taps, gain=3, separable=False)
    assert f_sep.shape == (9,) and f_full.shape == (9, 9)
    x = torch.randn(1, 2, 12, 11, dtype=torch.float64)
    for kwargs in (dict(up=2, padding=[4, 3, 5, 4]), dict(down=[2, 3], padding=1, flip_filter=True)):
        # float32 taps: the outer product rounds differently from two 1-D passes (~1e-7 relative).
        assert torch.allclose(upfirdn2d.upfirdn2d(x, f_sep, **kwargs), upfirdn2d.upfirdn2d(x, f_full, **kwargs),
                              atol=1e-6)


def test_upfirdn2d_matches_direct_definition():
    # Zero insertion by explicit indexing, pad, true convolution by an explicit loop over taps, subsample.
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    f = torch.randn(3, 4, dtype=torch.float64)
    upx, upy, downx, downy, (px0, px1, py0, py1), gain = 3, 2, 2, 1, (2, -1, 1, 3), 1.7
    z = torch.zeros(2, 3, 5 * upy, 6 * upx, dtype=torch.float64)
    z[:, :, ::upy, ::upx] = x
    z = F.pad(z, [px0, px1, py0, py1])
    fh, fw = f.shape
    out_h, out_w = z.shape[2] - fh + 1, z.shape[3] - fw + 1
    ref = sum(f[fh - 1 - i, fw - 1 - j] * z[:, :, i:i + out_h, j:j + out_w] for i in range(fh) for j in range(fw))
    ref = ref[:, :, ::downy, ::downx] * gain
    y = upfirdn2d.upfirdn2d(x, f, up=[upx, upy], down=[downx, downy], padding=[px0, px1, py0, py1], gain=gain)
    assert torch.allclose(y, ref)


@pytest.mark.parametrize('taps', [[1, 3, 3, 1], [1, 2, 1], list(range(1, 13))])
def test_resampling_helpers_give_exact_sizes(taps):
    f = upfirdn2d.setup_filter(taps)
    x = torch.randn(1, 2, 12, 8)
    assert upfirdn2d.upsample2d(x, f).shape == (1, 2, 24, 16)
    assert upfirdn2d.upsample2d(x, f, up=[3, 2]).shape == (1, 2, 24, 24)
    assert upfirdn2d.downsample2d(x, f).shape == (1, 2, 6, 4)
    assert upfirdn2d.filter2d(x, f).shape == (1, 2, 12, 8)


def test_filter_none_is_identity_and_gain_scales():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(upfirdn2d.upfirdn2d(x, None), x)
    assert torch.allclose(upfirdn2d.upfirdn2d(x, None, gain=2.5), 2.5 * x)
    assert torch.equal(upfirdn2d.upfirdn2d(x, None, padding=[-1, 0, 0, -2]), x[:, :, :-2, 1:])


# ---------------------------------------------------------------- conv2d_resample fast paths

def _conv2d_resample_by_definition(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """Zero-insert by `up`, pad, FIR filter (gain up**2), conv with w, subsample by `down`."""
    px0, px1, py0, py1 = padding  # already including the resampling adjustment
    if up > 1:
        z = torch.zeros(*x.shape[:2], x.shape[2] * up, x.shape[3] * up, dtype=x.dtype)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [px0, px1, py0, py1])
    if f is not None and (up > 1 or down > 1):
        f = f if f.ndim == 2 else torch.outer(f, f)
        f = (f if flip_filter else f.flip([0, 1])).to(x.dtype) * up ** 2
        x = F.conv2d(x, f.expand(x.shape[1], 1, *f.shape), groups=x.shape[1])
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    return x[:, :, ::down, ::down]


_FAST_PATHS = [  # (up, down, kernel): transposed conv, strided conv, 1x1 either side, plain conv
    (2, 1, 3), (2, 1, 4), (3, 1, 3), (1, 2, 3), (1, 2, 4), (2, 1, 1), (1, 2, 1), (1, 1, 3), (1, 1, 1), (2, 2, 3),
]


@pytest.mark.parametrize('up,down,k', _FAST_PATHS)
@pytest.mark.parametrize('padding', [0, 1, [2, 0, 1, 3]])
def test_conv2d_resample_fast_paths_equal_definition(up, down, k, padding):
    torch.manual_seed(up * 100 + down * 10 + k)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    groups = 2
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64)
    full_padding = conv2d_resample._resample_padding(f, up, down, padding)
    for flip_weight in (True, False):
        for flip_filter in (False, True):
            y = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                                                flip_weight=flip_weight, flip_filter=flip_filter)
            ref = _conv2d_resample_by_definition(x, w, f, up, down, full_padding, groups, flip_weight, flip_filter)
            assert y.shape == ref.shape
            assert torch.allclose(y, ref, atol=1e-10)


def test_conv2d_resample_scales_size_like_stylegan_layers():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 8, 8)
    assert conv2d_resample.conv2d_resample(x, torch.randn(5, 3, 3, 3), f=f, up=2, padding=1).shape == (2, 5, 16, 16)
    assert conv2d_resample.conv2d_resample(x, torch.randn(5, 3, 3, 3), f=f, down=2, padding=1).shape == (2, 5, 4, 4)
    assert conv2d_resample.conv2d_resample(x, torch.randn(5, 3, 1, 1), f=f, down=2).shape == (2, 5, 4, 4)
    assert conv2d_resample.conv2d_resample(x, torch.randn(5, 3, 3, 3), padding=1).shape == (2, 5, 8, 8)


def test_conv2d_resample_plain_is_conv2d():
    x, w = torch.randn(2, 3, 7, 6), torch.randn(4, 3, 3, 3)
    assert torch.allclose(conv2d_resample.conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1), atol=1e-6)
    assert torch.allclose(conv2d_resample.conv2d_resample(x, w, flip_weight=False),
                          F.conv2d(x, w.flip([2, 3])), atol=1e-6)


# ---------------------------------------------------------------- first and second derivatives

def _check_grads(func, *inputs):
    assert torch.autograd.gradcheck(func, inputs)
    assert torch.autograd.gradgradcheck(func, inputs)


@pytest.mark.parametrize('kwargs', [
    dict(up=2, padding=[2, 1, 2, 1], gain=4),
    dict(down=2, padding=1, flip_filter=True),
    dict(up=[2, 1], down=[1, 2], padding=[-1, 1, 2, 0]),
    dict(up=2, down=2, padding=[1, 2, 0, 3], gain=2.5),
])
def test_upfirdn2d_first_and_second_derivatives(kwargs):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    _check_grads(lambda x: upfirdn2d.upfirdn2d(x, f, **kwargs), x)


def test_upfirdn2d_separable_first_and_second_derivatives():
    x = torch.randn(1, 1, 10, 9, dtype=torch.float64, requires_grad=True)
    f = upfirdn2d.setup_filter(list(range(1, 9)))
    _check_grads(lambda x: upfirdn2d.upsample2d(x, f), x)


@pytest.mark.parametrize('act', sorted(bias_act.activation_funcs))
def test_bias_act_first_and_second_derivatives(act):
    # Keep x + b away from 0 (the kinks of relu/lrelu) so finite differences are valid.
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64) * 0.8 + 0.1
    x = (x * torch.sign(torch.randn_like(x))).requires_grad_()
    b = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64, requires_grad=True)
    _check_grads(lambda x, b: bias_act.bias_act(x, b, act=act), x, b)
    # clamp far from the outputs' range: only its pass-through region is differentiated.
    _check_grads(lambda x, b: bias_act.bias_act(x, b, act=act, gain=0.5, clamp=100.0), x, b)


def test_bias_act_clamped_region_has_zero_gradient():
    x = torch.tensor([[-5.0, -0.5, 0.5, 5.0]], requires_grad=True)
    y = bias_act.bias_act(x, act='linear', clamp=1.0)
    assert torch.equal(y, torch.tensor([[-1.0, -0.5, 0.5, 1.0]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))


@pytest.mark.parametrize('up,down,k,groups', [(2, 1, 3, 1), (1, 2, 3, 1), (1, 1, 3, 1), (2, 1, 3, 2), (1, 2, 1, 2)])
def test_conv2d_resample_first_and_second_derivatives(up, down, k, groups):
    torch.manual_seed(1)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // groups, k, k, dtype=torch.float64, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    _check_grads(lambda x, w: conv2d_resample.conv2d_resample(
        x, w, f=f, up=up, down=down, padding=k // 2, groups=groups, flip_weight=(up == 1)), x, w)


# ---------------------------------------------------------------- registry and errors

def test_activation_registry_exposes_official_defaults():
    funcs = bias_act.activation_funcs
    assert set(funcs) == {'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish'}
    assert funcs['lrelu'].def_alpha == 0.2 and funcs['lrelu'].def_gain == pytest.approx(2 ** 0.5)
    assert funcs['swish'].def_gain == pytest.approx(2 ** 0.5) and funcs['tanh'].def_gain == 1


def test_bias_act_negative_clamp_means_off():
    x = torch.full([1, 2, 1, 1], 10.0)
    assert torch.equal(bias_act.bias_act(x, clamp=-1), x)
    assert torch.equal(bias_act.bias_act(x, clamp=None), x)


def test_bias_act_applies_bias_along_dim():
    x, b = torch.zeros(2, 3, 4), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(bias_act.bias_act(x, b, dim=2)[1, 2], b)


def test_cuda_switch_is_off_on_cpu():
    assert not upfirdn2d._use_cuda(torch.zeros(1), 'auto')
    assert not bias_act._use_cuda(torch.zeros(1), 'cuda')


@pytest.mark.parametrize('call,message', [
    (lambda: upfirdn2d.upfirdn2d(torch.zeros(3, 4, 4), None), '4-D'),
    (lambda: upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), None, up=0), 'up'),
    (lambda: upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), None, padding=[1, 2, 3]), 'padding'),
    (lambda: upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(3, 3), padding=-1), 'smaller than'),
    (lambda: upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), None, impl='fast'), 'impl'),
    (lambda: upfirdn2d.setup_filter(torch.ones(2, 2, 2)), '1-D or 2-D'),
    (lambda: bias_act.bias_act(torch.zeros(1, 2), act='gelu'), 'unknown activation'),
    (lambda: bias_act.bias_act(torch.zeros(1, 2), torch.zeros(3)), 'x.shape[dim]=2'),
    (lambda: conv2d_resample.conv2d_resample(torch.zeros(1, 4, 4), torch.zeros(1, 1, 1, 1)), '4-D'),
    (lambda: conv2d_resample.conv2d_resample(torch.zeros(1, 3, 4, 4), torch.zeros(2, 2, 1, 1)), 'channel mismatch'),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        call()
