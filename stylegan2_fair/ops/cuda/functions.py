"""Autograd Functions around the CUDA kernels, with the first and second derivatives training needs.

upfirdn2d is linear in x and its adjoint is again an upfirdn2d (up and down swapped, the filter
rotated by 180 degrees, the padding moved), so its backward applies the same Function: derivatives
of any order. bias_act's backward is a second Function, `_BiasActGrad`, whose own backward uses the
kernel's second-derivative mode: that is what R1 and path-length regularisation run (they
differentiate a gradient once more). Only if that second backward is itself recorded
(create_graph=True, for third derivatives) does it switch to autograd through the reference formula.
"""
import functools
from typing import NamedTuple

import torch

from .. import cuda_build
from ..bias_act import _bias_act_ref, activation_funcs


def _kernels():
    """The compiled extension (tests substitute a stand-in here)."""
    return cuda_build.get_plugin(required=True)


# ----------------------------------------------------------------------------------------------
# upfirdn2d

class FirArgs(NamedTuple):
    up_x: int
    up_y: int
    down_x: int
    down_y: int
    pad_x0: int
    pad_x1: int
    pad_y0: int
    pad_y1: int
    flip_filter: bool
    gain: float


def _adjoint_args(args, filter_hw, in_hw, out_hw):
    """Arguments of the upfirdn2d that computes dL/dx from dL/dy.

    Per axis the forward is: zero-insert by `up`, pad (p0, p1), correlate with taps w (k of them),
    keep every `down`-th sample. Its transpose: zero-insert dy by `down`, correlate with the
    reversed taps (i.e. flip_filter toggled) over a window padded by k-1-p0 before and by
    in*up + p0 - out*down after (which also absorbs the samples `down` skipped), keep every
    `up`-th sample. The output then has exactly the input's size.
    """
    (fh, fw), (in_h, in_w), (out_h, out_w) = filter_hw, in_hw, out_hw
    return FirArgs(up_x=args.down_x, up_y=args.down_y, down_x=args.up_x, down_y=args.up_y,
                   pad_x0=fw - 1 - args.pad_x0, pad_x1=in_w * args.up_x + args.pad_x0 - out_w * args.down_x,
                   pad_y0=fh - 1 - args.pad_y0, pad_y1=in_h * args.up_y + args.pad_y0 - out_h * args.down_y,
                   flip_filter=not args.flip_filter, gain=args.gain)


class _Upfirdn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, args):
        ctx.save_for_backward(f)
        ctx.args = args
        ctx.in_hw = tuple(x.shape[2:])
        return _kernels().upfirdn2d(x, f, *args)

    @staticmethod
    def backward(ctx, dy):
        f, = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            args = _adjoint_args(ctx.args, tuple(f.shape), ctx.in_hw, tuple(dy.shape[2:]))
            if torch.is_grad_enabled():  # create_graph=True: dx must be differentiable again
                dx = _Upfirdn2d.apply(dy, f, args)
            else:  # a plain backward: the kernel alone, without another Function's Python overhead
                dx = _kernels().upfirdn2d(dy, f, *args)
        return dx, None, None


def upfirdn2d_cuda(x, f, up_x, up_y, down_x, down_y, padding, flip_filter, gain):
    """`upfirdn2d` on the GPU; arguments already parsed by `ops.upfirdn2d.upfirdn2d`. f gets no gradient."""
    pad_x0, pad_x1, pad_y0, pad_y1 = padding
    fw, fh = (f.shape[-1], f.shape[0])
    if x.shape[3] * up_x + pad_x0 + pad_x1 < fw or x.shape[2] * up_y + pad_y0 + pad_y1 < fh:
        raise ValueError(f"padding {padding} leaves the upsampled {x.shape[2] * up_y}x{x.shape[3] * up_x} input "
                         f"smaller than the {fh}x{fw} filter; use less cropping (negative padding) or a larger input")
    f = f.to(device=x.device, dtype=torch.float32)
    if f.ndim == 1:
        # Separable: a horizontal then a vertical pass, each carrying sqrt(gain) like the reference.
        gain = gain ** 0.5
        x = _Upfirdn2d.apply(x, f[None, :], FirArgs(up_x, 1, down_x, 1, pad_x0, pad_x1, 0, 0, flip_filter, gain))
        return _Upfirdn2d.apply(x, f[:, None], FirArgs(1, up_y, 1, down_y, 0, 0, pad_y0, pad_y1, flip_filter, gain))
    return _Upfirdn2d.apply(x, f, FirArgs(up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1,
                                          flip_filter, gain))


# ----------------------------------------------------------------------------------------------
# bias_act

# act''(z) = 0 (almost everywhere) for these, so their gradient is linear in z's neighbourhood and
# the second-derivative pass can be skipped.
_PIECEWISE_LINEAR = ('linear', 'relu', 'lrelu')
_FORWARD, _GRAD, _SECOND_GRAD, _GRAD_FROM_Y = 0, 1, 2, 3


class BiasActArgs(NamedTuple):
    act: str
    act_code: int
    dim: int
    alpha: float
    gain: float
    clamp: float
    piecewise_linear: bool
    grad_from_y: bool  # the backward keeps y (which the next layer keeps anyway), not x: see _BiasAct

    @property
    def grad_mode(self):
        return _GRAD_FROM_Y if self.grad_from_y else _GRAD

    def kernel_args(self):
        return self.dim, self.act_code, self.alpha, self.gain, self.clamp


@functools.lru_cache(maxsize=None)
def _activation_code(kernels, act):
    return list(kernels.activation_names()).index(act)


def _sum_to_bias(dx, dim):
    other_dims = [i for i in range(dx.ndim) if i != dim]
    return dx.sum(dim=other_dims) if other_dims else dx


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, args):
        y = _kernels().bias_act(x, b, None, _FORWARD, *args.kernel_args(), False)[0]
        # For the rectifiers act'(z) follows the sign of y, so keeping y instead of x lets x be freed:
        # a layer's pre-activation costs no memory until the backward (the official op does the same).
        ctx.save_for_backward(*((y, None) if args.grad_from_y else (x, b)))
        ctx.args = args
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors  # (y, None) with args.grad_from_y
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None
        want_db = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True (R1, path length): the gradient must be differentiable
            dx, db = _BiasActGrad.apply(dy, x, b, ctx.args, want_db)
        else:  # a plain backward: the kernel alone, without a second Function's Python overhead
            dx, db = _kernels().bias_act(x, b, dy, ctx.args.grad_mode, *ctx.args.kernel_args(), bool(want_db))
        return (dx if ctx.needs_input_grad[0] else None), db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * act'(x + b) * gain * clamp_mask and, when asked, db = dx summed to the bias's shape
    (fused: the kernel sums while it writes dx); differentiable once more w.r.t. dy, x and b.
    With args.grad_from_y, x is the forward's output y and b is None (the rectifiers: act' from y's sign)."""

    @staticmethod
    def forward(ctx, dy, x, b, args, want_db):
        ctx.save_for_backward(dy, x, b)
        ctx.args = args
        ctx.set_materialize_grads(False)
        return _kernels().bias_act(x, b, dy, args.grad_mode, *args.kernel_args(), bool(want_db))

    @staticmethod
    def backward(ctx, ddx, ddb):
        dy, x, b = ctx.saved_tensors
        args, needs = ctx.args, ctx.needs_input_grad
        if ddb is not None:
            # db is dx summed over the non-bias dims, so its cotangent reaches dx broadcast back.
            ddb = ddb.reshape([-1 if i == args.dim else 1 for i in range(x.ndim)])
            ddx = ddb.expand_as(x) if ddx is None else ddx + ddb
        if ddx is None:
            return None, None, None, None, None
        d_dy = d_x = d_b = None
        if needs[0]:
            d_dy = _BiasActGrad.apply(ddx, x, b, args, False)[0]  # dx is linear in dy, with this very Function
        if args.piecewise_linear or not (needs[1] or needs[2]):
            return d_dy, None, None, None, None
        if torch.is_grad_enabled():
            # create_graph=True: the result will be differentiated again (a third derivative), which
            # the second-derivative kernel cannot provide; autograd through the reference can.
            d_x, d_b = _second_derivative_by_reference(ddx, dy, x, b, args, needs[1], needs[2])
        else:
            d_z = _second_derivative_by_kernel(ddx, dy, x, b, args)
            d_x = d_z.to(x.dtype) if needs[1] else None
            d_b = _sum_to_bias(d_z, args.dim).to(x.dtype) if needs[2] else None
        return d_dy, d_x, d_b, None, None


def _second_derivative_by_kernel(ddx, dy, x, b, args):
    """d_z = ddx * dy * act''(z) * gain * mask, in float32 for float16 inputs (the caller casts back).

    The kernel takes one incoming gradient in x's dtype, so float16 would round the product of two
    gradients to float16 first: products below 6e-8 (two gradients of 1e-4) vanish before act'' and
    the sum into d_b could scale them back into range. This path only runs for the smooth
    activations, never for lrelu training, so the float32 copies cost nothing that matters."""
    if x.dtype == torch.float16:
        x, b, ddx, dy = x.float(), (None if b is None else b.float()), ddx.float(), dy.float()
    return _kernels().bias_act(x, b, ddx * dy, _SECOND_GRAD, *args.kernel_args(), False)[0]


def _second_derivative_by_reference(ddx, dy, x, b, args, want_x, want_b):
    """The VJP of dx = dy * act'(z) * gain * mask (z = x + b) w.r.t. x and b, as a differentiable graph."""
    with torch.enable_grad():
        # A fresh node z: differentiating w.r.t. it follows only the act'(z) path, not dy's own
        # dependence on x (that part reaches x through d_dy and the forward's graph).
        z = x.view_as(x) if b is None else x + b.reshape([-1 if i == args.dim else 1 for i in range(x.ndim)])
        y = _bias_act_ref(z, None, args.dim, activation_funcs[args.act], args.alpha, args.gain, args.clamp)
        dx, = torch.autograd.grad(y, z, dy, create_graph=True)
        d_z, = torch.autograd.grad(dx, z, ddx, create_graph=True, allow_unused=True)
    d_z = torch.zeros_like(z) if d_z is None else d_z  # clamped everywhere: no dependence left
    return (d_z if want_x else None), (_sum_to_bias(d_z, args.dim) if want_b else None)


def bias_act_cuda(x, b, dim, act, alpha, gain, clamp):
    """`bias_act` on the GPU; arguments already validated by `ops.bias_act.bias_act`."""
    dim = dim % x.ndim if x.ndim else 0
    if b is not None:
        b = b.to(dtype=x.dtype)  # as the reference: the bias joins x's precision (its grad is cast back)
    piecewise_linear = act in _PIECEWISE_LINEAR
    args = BiasActArgs(act=act, act_code=_activation_code(_kernels(), act), dim=dim, alpha=float(alpha),
                       gain=float(gain), clamp=float(clamp), piecewise_linear=piecewise_linear,
                       grad_from_y=piecewise_linear and gain > 0 and alpha >= 0)
    return _BiasAct.apply(x, b, args)
