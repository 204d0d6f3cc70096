"""The CUDA ops equal the reference ops: outputs, gradients and second derivatives.

Two halves:
- CPU: the autograd Functions of ops/cuda/functions.py (adjoint padding of upfirdn2d, the
  separable split, bias_act's grad-of-grad wiring) run on a stand-in for the compiled extension
  made of the reference ops, so their logic is checked on every machine.
- GPU (skipped without CUDA): the compiled kernels against the reference path over a grid of
  shapes, arguments, dtypes and memory layouts, plus gradcheck/gradgradcheck in float64.
"""
import pytest
import torch

from stylegan2_fair.ops import bias_act, cuda_build, upfirdn2d
from stylegan2_fair.ops.cuda import functions

ACTIVATIONS = list(bias_act.activation_funcs)
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors: see conftest


# ----------------------------------------------------------------------------------------------
# CPU: the autograd wiring, on a stand-in extension built from the reference ops.

class ReferenceKernels:
    """The compiled extension's interface, implemented with the reference ops (no autograd through it)."""

    def activation_names(self):
        return list(ACTIVATIONS)

    def upfirdn2d(self, x, f, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, flip_filter, gain):
        with torch.no_grad():
            return upfirdn2d._upfirdn2d_ref(x, f, up_x, up_y, down_x, down_y, (pad_x0, pad_x1, pad_y0, pad_y1),
                                            flip_filter, gain)

    def bias_act(self, x, b, grad, mode, dim, act_code, alpha, gain, clamp, want_bias_grad):
        y = self._bias_act(x, b, grad, mode, dim, act_code, alpha, gain, clamp)
        other_dims = [i for i in range(y.ndim) if i != dim]
        return y, (y.sum(other_dims) if want_bias_grad else None)

    def _bias_act(self, x, b, grad, mode, dim, act_code, alpha, gain, clamp):
        spec = bias_act.activation_funcs[ACTIVATIONS[act_code]]
        if mode == 3:  # x is y: the slope from its sign, the clamp mask strictly inside the range
            assert b is None and ACTIVATIONS[act_code] in ('linear', 'relu', 'lrelu')
            slope = {'linear': torch.ones_like(x), 'relu': (x > 0).to(x.dtype),
                     'lrelu': torch.where(x > 0, 1.0, alpha).to(x.dtype)}[ACTIVATIONS[act_code]]
            mask = (x.abs() < clamp).to(x.dtype) if clamp >= 0 else 1
            return grad * slope * gain * mask
        z = x if b is None else x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
        if mode == 0:
            with torch.no_grad():
                return bias_act._bias_act_ref(z, None, dim, spec, alpha, gain, clamp)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            y = bias_act._bias_act_ref(z, None, dim, spec, alpha, gain, clamp)
            d1, = torch.autograd.grad(y, z, torch.ones_like(y), create_graph=mode == 2)
            if mode == 1:
                return grad * d1.detach()
            # The activation is elementwise, so this is the diagonal of the second derivative.
            d2, = torch.autograd.grad(d1, z, torch.ones_like(d1), allow_unused=True)
            return grad * (torch.zeros_like(z) if d2 is None else d2)


@pytest.fixture
def reference_kernels(monkeypatch):
    stand_in = ReferenceKernels()
    monkeypatch.setattr(functions, '_kernels', lambda: stand_in)
    functions._activation_code.cache_clear()
    yield
    functions._activation_code.cache_clear()


def _grads(fn, inputs, order, seed=1):
    """First (order=1) or second (order=2: the gradient of <grad, v>, what R1 backpropagates)
    derivatives of <fn(inputs), w>, for fixed random w and v; zeros where a gradient is absent."""
    gen = torch.Generator().manual_seed(seed)

    def randn_like(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)
    y = fn(*inputs)
    grads = torch.autograd.grad(y, inputs, randn_like(y), create_graph=order == 2)
    if order == 2:
        total = sum((g.double() * randn_like(g).double()).sum() for g in grads)
        # A gradient that does not depend on the inputs (linear activation) has zero derivative.
        grads = torch.autograd.grad(total, inputs, allow_unused=True) if total.requires_grad else [None] * len(inputs)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


FIR_CASES = [  # up, down, padding, flip_filter, taps
    (1, 1, [1, 2, 1, 2], False, [1, 3, 3, 1]),
    (2, 1, [2, 1, 2, 1], False, [1, 3, 3, 1]),
    (1, 2, [1, 1, 1, 1], True, [1, 3, 3, 1]),
    (3, 2, [0, 3, -1, 2], False, [1, 2, 3, 2, 1]),
    ([2, 1], [1, 3], [3, -1, 0, 2], True, [[1, 2, 0], [0, 3, 1], [2, 1, 1], [1, 0, 4]]),
    (2, 2, [-1, 4, 5, -2], False, [1, 2, 1]),
    (2, 1, [5, 5, 5, 5], False, list(range(1, 11))),  # 10 taps: separable, two passes
]


def _fir_inputs(taps, dtype=torch.float64, device='cpu', shape=(2, 2, 6, 7)):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(True)
    return x, upfirdn2d.setup_filter(taps, device=device)


@pytest.mark.parametrize('up,down,padding,flip,taps', FIR_CASES)
@pytest.mark.parametrize('order', [1, 2])
def test_upfirdn2d_function_derivatives_equal_reference(reference_kernels, up, down, padding, flip, taps, order):
    x, f = _fir_inputs(taps)
    upx, upy = upfirdn2d._parse_scaling(up, 'up')
    downx, downy = upfirdn2d._parse_scaling(down, 'down')
    pad = upfirdn2d._parse_padding(padding)

    # upfirdn2d is linear in x, so its own second derivative is zero: square the output to make
    # the second derivative run through the backward of the backward.
    def cuda_path(x):
        y = functions.upfirdn2d_cuda(x, f, upx, upy, downx, downy, pad, flip, 1.5)
        return y * y if order == 2 else y

    def ref_path(x):
        y = upfirdn2d._upfirdn2d_ref(x, f, upx, upy, downx, downy, pad, flip, 1.5)
        return y * y if order == 2 else y
    assert torch.allclose(cuda_path(x), ref_path(x))
    (grad,), (grad_ref,) = _grads(cuda_path, [x], order), _grads(ref_path, [x], order)
    assert grad.shape == grad_ref.shape and torch.allclose(grad, grad_ref)


def test_upfirdn2d_backward_is_itself_differentiable(reference_kernels):
    x, f = _fir_inputs([1, 3, 3, 1], shape=(1, 1, 3, 4))

    def fn(x):
        return functions.upfirdn2d_cuda(x, f, 2, 2, 1, 1, (2, 1, 2, 1), False, 4.0)
    assert torch.autograd.gradcheck(fn, [x])
    assert torch.autograd.gradgradcheck(fn, [x])


@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('clamp', [-1.0, 0.8])
def test_bias_act_function_derivatives_equal_reference(reference_kernels, act, clamp):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_(True)
    spec = bias_act.activation_funcs[act]

    def cuda_path(x, b):
        return functions.bias_act_cuda(x, b, 1, act, spec.def_alpha, spec.def_gain, clamp)

    def ref_path(x, b):
        return bias_act._bias_act_ref(x, b, 1, spec, spec.def_alpha, spec.def_gain, clamp)
    assert torch.allclose(cuda_path(x, b), ref_path(x, b))
    for order in (1, 2):
        for grad, grad_ref in zip(_grads(cuda_path, [x, b], order), _grads(ref_path, [x, b], order)):
            assert torch.allclose(grad, grad_ref, atol=1e-12), f'order {order}'


def test_bias_act_gradgradcheck_through_the_grad_function(reference_kernels):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def fn(x, b):
        return functions.bias_act_cuda(x, b, 1, 'swish', 0.0, 2 ** 0.5, -1.0)
    assert torch.autograd.gradcheck(fn, [x, b])
    assert torch.autograd.gradgradcheck(fn, [x, b])


def test_bias_act_fp16_second_derivative_keeps_gradient_products_below_fp16_range(reference_kernels):
    # R1 through fp16 layers: dy and ddx of 1e-4 multiply to 1e-8, below float16's smallest
    # subnormal (6e-8), yet d_b sums 512 of them per channel back into range (about 4e-6).
    gen = torch.Generator().manual_seed(4)
    x = (-0.5 - torch.rand(2, 4, 16, 16, generator=gen)).half().requires_grad_(True)  # selu'' = 1.76 exp(x)
    b = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    dy = torch.full_like(x, 1e-4)
    dx, = torch.autograd.grad(functions.bias_act_cuda(x, b, 1, 'selu', 0.0, 1.0, -1.0), x, dy, create_graph=True)
    d_b, = torch.autograd.grad(dx, b, torch.full_like(x, 1e-4))  # a plain backward: the kernel's mode 2
    selu_second = 1.0507009873554804 * 1.6732632423543772 * x.detach().double().exp()
    expected = (dy.double() ** 2 * selu_second).sum(dim=(0, 2, 3))
    assert d_b.dtype == torch.float16
    torch.testing.assert_close(d_b.double(), expected, rtol=2e-2, atol=0)


@pytest.mark.parametrize('act', ['tanh', 'swish', 'lrelu'])
def test_bias_act_third_derivative_equals_reference(reference_kernels, act):
    # A recorded second backward (create_graph=True) switches to autograd through the reference.
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_(True)
    spec = bias_act.activation_funcs[act]

    def third(fn):
        y = fn(x, b)
        g1, = torch.autograd.grad(y, x, torch.cos(y), create_graph=True)
        g2 = torch.autograd.grad((g1 * g1).sum(), [x, b], create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in g2), [x, b])
    got = third(lambda x, b: functions.bias_act_cuda(x, b, 1, act, spec.def_alpha, spec.def_gain, -1.0))
    want = third(lambda x, b: bias_act._bias_act_ref(x, b, 1, spec, spec.def_alpha, spec.def_gain, -1.0))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)


def test_bias_act_auto_keeps_tiny_tensors_on_the_reference_ops(reference_kernels, monkeypatch):
    calls = []
    monkeypatch.setattr(bias_act, '_use_cuda', lambda x, impl: True)  # as for a CUDA tensor with built kernels
    original = functions.bias_act_cuda
    monkeypatch.setattr(functions, 'bias_act_cuda', lambda *a: calls.append(a[0].numel()) or original(*a))
    small = torch.randn(4, bias_act.MIN_KERNEL_NUMEL // 8)
    large = torch.randn(8, bias_act.MIN_KERNEL_NUMEL // 8)
    bias_act.bias_act(small, act='lrelu')
    bias_act.bias_act(large, act='lrelu')
    bias_act.bias_act(small, act='lrelu', impl='cuda')
    assert calls == [large.numel(), small.numel()]


@pytest.mark.parametrize('act,alpha,keeps_x', [('lrelu', None, False), ('relu', None, False), ('linear', None, False),
                                               ('lrelu', -0.5, True), ('tanh', None, True)])
def test_bias_act_frees_the_pre_activation_for_the_rectifiers(reference_kernels, act, alpha, keeps_x):
    # Like the official op: for linear/relu/lrelu (gain > 0, alpha >= 0) the backward keeps y, which
    # the next layer keeps anyway, so x (a conv output) is freed after the forward.
    leaf = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    spec = bias_act.activation_funcs[act]
    alpha = spec.def_alpha if alpha is None else alpha
    x = leaf * 2  # a non-leaf, as a conv output
    y = functions.bias_act_cuda(x, b, 1, act, alpha, spec.def_gain, 1.0)
    saved = y.grad_fn.saved_tensors
    assert saved[0].data_ptr() == (x if keeps_x else y).data_ptr()
    assert (saved[1] is None) != keeps_x  # y already holds the bias

    # ... and the gradients are those of the reference, first and second order.
    def fn(leaf, b):
        return functions.bias_act_cuda(leaf * 2, b, 1, act, alpha, spec.def_gain, 1.0)

    def ref(leaf, b):
        return bias_act._bias_act_ref(leaf * 2, b, 1, spec, alpha, spec.def_gain, 1.0)
    for order in (1, 2):
        for got, want in zip(_grads(fn, [leaf, b], order), _grads(ref, [leaf, b], order)):
            torch.testing.assert_close(got, want)


def test_bias_act_bias_gradient_comes_from_the_grad_call_and_feeds_second_derivatives(reference_kernels):
    # The grad Function returns (dx, db) in one kernel call; R1-style double backward must see db's
    # cotangent too (db depends on x through act'(x + b) and on dy).
    x, b = _fir_inputs(1, shape=(2, 3, 4, 5))[0], torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(x, b):  # the autograd Functions around the stand-in kernels
        return functions.bias_act_cuda(x, b, 1, 'tanh', 0.0, 1.0, 0.9)

    def ref(x, b):
        return bias_act.bias_act(x, b, act='tanh', clamp=0.9, impl='ref')
    for order in (1, 2):
        for got, want in zip(_grads(fn, [x, b], order), _grads(ref, [x, b], order)):
            torch.testing.assert_close(got, want)
    # Only db wanted: the second derivative w.r.t. x of a function of db alone.
    def db_energy(fn):
        db, = torch.autograd.grad(fn(x, b), b, torch.ones(2, 3, 4, 5, dtype=torch.float64), create_graph=True)
        return torch.autograd.grad((db ** 2).sum(), x)[0]
    torch.testing.assert_close(db_energy(fn), db_energy(ref))


# ----------------------------------------------------------------------------------------------
# GPU: the compiled kernels against the reference path.

@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device, exact fp32 math in the reference (no TF32) and a working extension."""
    monkeypatch.delenv(cuda_build.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    cuda_build.get_plugin(required=True)  # a build failure fails the test, with the compiler's message
    return torch.device('cuda')


TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4),
              torch.float16: dict(rtol=2e-2, atol=2e-2)}


def _assert_close(actual, expected, dtype, scale=1.0):
    """Equal within the dtype's tolerance; `scale` widens it for sums of many rounded terms."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol['rtol'], atol=tol['atol'] * scale)


GPU_FIR_CASES = FIR_CASES + [
    (1, 2, [1, 1, 1, 1], False, [1, 3, 3, 1]),      # downsample2d of the discriminator
    (1, 1, [1, 1, 1, 1], False, [[1, 2, 1], [2, 4, 2], [1, 2, 1]]),  # filter2d with a 2-D filter
    (4, 4, [0, 0, 0, 0], False, [1]),               # pure zero-insert then subsample
    (1, 1, [-2, -3, -1, 0], True, [[1, 2], [3, 4]]),  # crop only
]


@requires_gpu
@pytest.mark.parametrize('up,down,padding,flip,taps', GPU_FIR_CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
def test_upfirdn2d_kernel_equals_reference(gpu, up, down, padding, flip, taps, dtype, layout):
    x, f = _fir_inputs(taps, dtype=dtype, device=gpu, shape=(2, 5, 11, 13))
    if layout == 'channels_last':
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    elif layout == 'strided':
        x = x.detach()[:, :, ::2, 1:].requires_grad_(True)  # a view: strides the kernel must follow
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=1.7)
    y = upfirdn2d.upfirdn2d(x, f, impl='cuda', **kwargs)
    y_ref = upfirdn2d.upfirdn2d(x, f, impl='ref', **kwargs)
    _assert_close(y, y_ref, dtype)
    if layout == 'channels_last' and f.ndim == 2:
        assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(y)
    dx, = torch.autograd.grad(y, x, dy)
    dx_ref, = torch.autograd.grad(y_ref, x, dy)
    _assert_close(dx, dx_ref, dtype)


# The tiled kernels (4x4 filters, up or down 2): patches that do not divide the plane, several patches
# per axis, padding and cropping, a non-symmetric filter; on planes of each tile shape (see
# launch_tiled_for_plane): 32x32 outputs or more, up to 16x16, up to 8x8.
TILED_CASES = [  # up, down, padding
    (1, 1, [1, 2, 1, 2]), (1, 1, [2, 2, 2, 2]), (1, 1, [-3, 1, 0, -2]),
    (2, 1, [2, 1, 2, 1]), (2, 1, [1, 2, 0, 3]), (2, 1, [-2, -1, 3, 0]),
    (1, 2, [1, 1, 1, 1]), (1, 2, [2, 2, 2, 2]), (1, 2, [0, 3, -1, 1]),
]
TILED_INPUT_HW = {  # plane: {(up, down): input height, width}
    'large': {(1, 1): (40, 150), (2, 1): (21, 40), (1, 2): (40, 150)},
    'medium': {(1, 1): (14, 13), (2, 1): (7, 6), (1, 2): (28, 26)},
    'small': {(1, 1): (6, 6), (2, 1): (3, 4), (1, 2): (12, 14)},
}


@requires_gpu
@pytest.mark.parametrize('up,down,padding', TILED_CASES)
@pytest.mark.parametrize('flip', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('layout', ['contiguous', 'strided'])
@pytest.mark.parametrize('plane', list(TILED_INPUT_HW))
def test_upfirdn2d_tiled_kernel_equals_reference(gpu, up, down, padding, flip, dtype, layout, plane):
    gen = torch.Generator().manual_seed(up * 10 + down)
    height, width = TILED_INPUT_HW[plane][up, down]
    x = torch.randn([2, 3, height * (2 if layout == 'strided' else 1), width], generator=gen).to(gpu, dtype)
    x = (x[:, :, ::2] if layout == 'strided' else x).requires_grad_(True)
    f = (torch.rand([4, 4], generator=gen) + 0.1).to(gpu)  # not symmetric: a flipped tap would show
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=up * up * 1.3)
    y = upfirdn2d.upfirdn2d(x, f, impl='cuda', **kwargs)
    y_ref = upfirdn2d.upfirdn2d(x, f, impl='ref', **kwargs)
    out_h, out_w = y.shape[2:]
    assert {'large': out_h * out_w >= 1024, 'medium': 8 < max(out_h, out_w) <= 16 and out_h * out_w < 1024,
            'small': max(out_h, out_w) <= 8}[plane], (plane, y.shape)
    _assert_close(y, y_ref, dtype, scale=4)
    dy = torch.randn_like(y)
    (dx,), (dx_ref,) = torch.autograd.grad(y, x, dy), torch.autograd.grad(y_ref, x, dy)
    _assert_close(dx, dx_ref, dtype, scale=4)


@requires_gpu
@pytest.mark.parametrize('up,down,padding,flip,taps', FIR_CASES[:5])
def test_upfirdn2d_kernel_gradcheck_and_gradgradcheck(gpu, up, down, padding, flip, taps):
    x, f = _fir_inputs(taps, dtype=torch.float64, device=gpu, shape=(1, 2, 5, 6))

    def fn(x):
        return upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=2.0, impl='cuda')
    assert torch.autograd.gradcheck(fn, [x])
    assert torch.autograd.gradgradcheck(fn, [x])


def _bias_act_inputs(dtype, device, layout, act='linear', clamp=None, shape=(4, 6, 5, 7)):
    """x and b whose pre-activations z = x + b stay clear of the kinks (z = 0, |act(z) * gain| = clamp):
    near one, fp16 rounding or a finite difference could land on the other side and flip a gradient."""
    gen = torch.Generator().manual_seed(4)
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64) * 0.1
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    z = z + 0.05 * torch.sign(z)
    if clamp is not None:
        spec = bias_act.activation_funcs[act]
        for _ in range(10):
            near_edge = ((spec.func(z, spec.def_alpha) * spec.def_gain).abs() - clamp).abs() < 0.05
            z = torch.where(near_edge, z + 0.13, z)
    x = z - b.reshape([1, -1] + [1] * (len(shape) - 2))
    x, b = x.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)
    if layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    elif layout == 'strided':
        x = torch.cat([x, x], dim=-1)[..., ::2]  # a non-dense view: the binding makes it dense
    return x.requires_grad_(True), b.requires_grad_(True)


@requires_gpu
@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('clamp', [None, 1.5])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
def test_bias_act_kernel_equals_reference(gpu, act, clamp, dtype, layout):
    x, b = _bias_act_inputs(dtype, gpu, layout, act, clamp)
    y = bias_act.bias_act(x, b, act=act, clamp=clamp, impl='cuda')
    y_ref = bias_act.bias_act(x, b, act=act, clamp=clamp, impl='ref')
    _assert_close(y, y_ref, dtype)
    if layout == 'channels_last':
        assert y.is_contiguous(memory_format=torch.channels_last)
    # First derivatives (w.r.t. x and b), then second ones through <grad, v>, as R1 does.
    def fn(x, b):
        return bias_act.bias_act(x, b, act=act, clamp=clamp, impl='cuda')

    def fn_ref(x, b):
        return bias_act.bias_act(x, b, act=act, clamp=clamp, impl='ref')
    terms_per_bias = (x.numel() // b.numel()) ** 0.5  # a bias gradient sums x.numel()/b.numel() rounded terms
    for order in (1, 2):
        (dx, db), (dx_ref, db_ref) = _grads(fn, [x, b], order), _grads(fn_ref, [x, b], order)
        _assert_close(dx, dx_ref, dtype)
        _assert_close(db, db_ref, dtype, scale=terms_per_bias)


@requires_gpu
@pytest.mark.parametrize('act', ['linear', 'lrelu', 'tanh'])  # both compile-time activations and a runtime one
# Rows of 680 and 5120 elements (16-byte packets), 289 (odd: one element per access), 4096 (two blocks per row)
@pytest.mark.parametrize('shape', [(3, 5, 17, 40), (2, 3, 64, 80), (2, 3, 17, 17), (2, 4, 64, 64)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_bias_act_row_kernel_equals_reference(gpu, act, shape, dtype):
    # Planar feature maps (bias stride >= 256) take the row kernel: one bias value per row.
    x, b = _bias_act_inputs(dtype, gpu, 'contiguous', act, 1.5, shape=shape)
    for order in (0, 1, 2):
        if order == 0:
            out = bias_act.bias_act(x, b, act=act, clamp=1.5, impl='cuda')
            ref = bias_act.bias_act(x, b, act=act, clamp=1.5, impl='ref')
            _assert_close(out, ref, dtype)
            continue
        def fn(x, b, impl='cuda'):
            return bias_act.bias_act(x, b, act=act, clamp=1.5, impl=impl)
        (dx, db), (dx_ref, db_ref) = _grads(fn, [x, b], order), _grads(lambda x, b: fn(x, b, 'ref'), [x, b], order)
        _assert_close(dx, dx_ref, dtype)
        _assert_close(db, db_ref, dtype, scale=(x.numel() // b.numel()) ** 0.5)


@requires_gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_bias_act_row_kernel_on_storage_not_16_byte_aligned(gpu, dtype):
    # A dense view starting one element into its storage: the packet loads must fall back to scalars.
    shape = (2, 3, 32, 32)
    base = torch.randn(1 + 2 * 3 * 32 * 32, device=gpu, dtype=dtype)
    x = base[1:].view(shape).requires_grad_(True)
    assert x.data_ptr() % 16 != 0
    b = torch.randn(3, device=gpu, dtype=dtype, requires_grad=True)

    def fn(x, b, impl='cuda'):
        return bias_act.bias_act(x, b, act='lrelu', impl=impl)
    _assert_close(fn(x, b), fn(x, b, 'ref'), dtype)
    (dx, db), (dx_ref, db_ref) = _grads(fn, [x, b], 1), _grads(lambda x, b: fn(x, b, 'ref'), [x, b], 1)
    _assert_close(dx, dx_ref, dtype)
    _assert_close(db, db_ref, dtype, scale=(x.numel() // b.numel()) ** 0.5)


@requires_gpu
@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('clamp', [None, 1.5])
def test_bias_act_kernel_gradcheck_and_gradgradcheck(gpu, act, clamp):
    x, b = _bias_act_inputs(torch.float64, gpu, 'contiguous', act, clamp, shape=(2, 3, 4))

    def fn(x, b):
        return bias_act.bias_act(x, b, act=act, clamp=clamp, impl='cuda')
    assert torch.autograd.gradcheck(fn, [x, b])
    assert torch.autograd.gradgradcheck(fn, [x, b])


@requires_gpu
@pytest.mark.parametrize('dim,shape', [(0, (7,)), (1, (3, 8)), (2, (2, 3, 9, 4)), (-1, (2, 3, 5))])
def test_bias_act_kernel_bias_along_any_dim(gpu, dim, shape):
    x = torch.randn(shape, device=gpu, requires_grad=True)
    b = torch.randn(shape[dim], device=gpu, requires_grad=True)
    y = bias_act.bias_act(x, b, dim=dim, act='lrelu', impl='cuda')
    y_ref = bias_act.bias_act(x, b, dim=dim, act='lrelu', impl='ref')
    _assert_close(y, y_ref, torch.float32)
    db, = torch.autograd.grad(y.sum(), b)
    db_ref, = torch.autograd.grad(y_ref.sum(), b)
    _assert_close(db, db_ref, torch.float32)


@requires_gpu
def test_bias_act_kernel_fp16_input_with_fp32_bias_like_the_layers(gpu):
    x = torch.randn(4, 8, 6, 6, device=gpu, dtype=torch.float16)
    b = torch.randn(8, device=gpu, requires_grad=True)
    y = bias_act.bias_act(x, b, act='lrelu', clamp=256, impl='cuda')
    assert y.dtype == torch.float16
    db, = torch.autograd.grad(y.float().sum(), b)
    assert db.dtype == torch.float32
    _assert_close(y, bias_act.bias_act(x, b, act='lrelu', clamp=256, impl='ref'), torch.float16)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA GPUs')
def test_kernels_reject_tensors_on_another_gpu_by_name(gpu):
    # The kernels read every pointer on x's GPU: a bias or gradient elsewhere must be refused, not read.
    plugin = cuda_build.get_plugin(required=True)
    x, other = torch.zeros(4, 3, device='cuda:0'), torch.device('cuda:1')
    with pytest.raises(RuntimeError, match="bias_act: b is on cuda:1 but x is on cuda:0; move b to x's device"):
        plugin.bias_act(x, torch.zeros(3, device=other), None, 0, 1, 0, 0.0, 1.0, -1.0, False)
    with pytest.raises(RuntimeError, match="bias_act: grad is on cuda:1 but x is on cuda:0; move grad"):
        plugin.bias_act(x, None, torch.ones(4, 3, device=other), 1, 1, 0, 0.0, 1.0, -1.0, False)
    with pytest.raises(RuntimeError, match="upfirdn2d: f is on cuda:1 but x is on cuda:0; move f"):
        plugin.upfirdn2d(torch.zeros(1, 1, 4, 4, device='cuda:0'), torch.ones(2, 2, device=other),
                         1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)


@requires_gpu
def test_kernels_handle_empty_tensors(gpu):
    x = torch.zeros(0, 3, 8, 8, device=gpu)
    assert upfirdn2d.upfirdn2d(x, upfirdn2d.setup_filter([1, 3, 3, 1], device=gpu), up=2,
                               padding=[2, 1, 2, 1], impl='cuda').shape == (0, 3, 16, 16)
    assert bias_act.bias_act(x, torch.zeros(3, device=gpu), act='relu', impl='cuda').shape == x.shape


@requires_gpu
def test_auto_on_gpu_runs_the_kernels_and_env_ref_turns_them_off(gpu, monkeypatch):
    calls = []
    original = functions.bias_act_cuda
    monkeypatch.setattr(functions, 'bias_act_cuda', lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, bias_act.MIN_KERNEL_NUMEL // 2, device=gpu)
    bias_act.bias_act(x, act='relu')
    assert calls == [1]
    monkeypatch.setenv(cuda_build.ENV_VAR, 'ref')
    bias_act.bias_act(x, act='relu')
    assert calls == [1]


@requires_gpu
@pytest.mark.parametrize('fp16', [False, True])
def test_networks_give_the_same_images_logits_and_r1_on_both_paths(gpu, monkeypatch, fp16):
    from stylegan2_fair.networks import Discriminator, Generator
    torch.manual_seed(0)
    num_fp16_res = 4 if fp16 else 0
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                  synthesis_kwargs=dict(channel_base=1024, channel_max=64, num_fp16_res=num_fp16_res,
                                        conv_clamp=256)).to(gpu)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=64,
                      num_fp16_res=num_fp16_res, conv_clamp=256).to(gpu)
    z = torch.randn(4, 32, device=gpu)
    results = {}
    for mode in ('ref', 'cuda'):
        monkeypatch.setenv(cuda_build.ENV_VAR, mode)
        img = G(z, None, noise_mode='const')  # same weights, fixed noise: only the ops differ
        real = img.detach().requires_grad_(True)
        logits = D(real, None)
        r1_grad, = torch.autograd.grad(logits.sum(), real, create_graph=True)
        r1 = r1_grad.square().sum()
        r1_param_grad = torch.autograd.grad(r1, [p for p in D.parameters() if p.requires_grad][0])[0]
        results[mode] = (img, logits, r1, r1_param_grad)
    max_relative_error = 2e-2 if fp16 else 1e-4
    for name, a, b in zip(('image', 'logits', 'r1', 'r1 grad'), results['cuda'], results['ref']):
        error = float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12))
        assert error < max_relative_error, f'{name}: relative error {error:.2e}'
