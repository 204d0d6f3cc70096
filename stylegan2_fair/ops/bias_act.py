"""Fused bias + activation + gain + clamp, the nonlinearity of every StyleGAN2 layer.

The reference path is plain torch ops, so autograd gives first and second derivatives (needed by
the R1 and path-length regularisers). For CUDA tensors the fused kernel of
ops/cuda/ runs instead when it builds; `_use_cuda` decides (see ops/cuda_build.py).
"""
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import cuda_build



class ActivationSpec(NamedTuple):
    """An activation with the alpha and gain used when the caller passes None."""
    func: Callable  # func(x, alpha) -> tensor
    def_alpha: float
    def_gain: float


# Default gains sqrt(2) for the rectifiers keep the signal's second moment roughly constant
# (He et al. 2015), which the equalised learning rate of StyleGAN relies on.
activation_funcs = {
    'linear':   ActivationSpec(lambda x, alpha: x,                           def_alpha=0,   def_gain=1),
    'relu':     ActivationSpec(lambda x, alpha: F.relu(x),                   def_alpha=0,   def_gain=math.sqrt(2)),
    'lrelu':    ActivationSpec(lambda x, alpha: F.leaky_relu(x, alpha),      def_alpha=0.2, def_gain=math.sqrt(2)),
    'tanh':     ActivationSpec(lambda x, alpha: torch.tanh(x),               def_alpha=0,   def_gain=1),
    'sigmoid':  ActivationSpec(lambda x, alpha: torch.sigmoid(x),            def_alpha=0,   def_gain=1),
    'elu':      ActivationSpec(lambda x, alpha: F.elu(x),                    def_alpha=0,   def_gain=1),
    'selu':     ActivationSpec(lambda x, alpha: F.selu(x),                   def_alpha=0,   def_gain=1),
    'softplus': ActivationSpec(lambda x, alpha: F.softplus(x),               def_alpha=0,   def_gain=1),
    'swish':    ActivationSpec(lambda x, alpha: torch.sigmoid(x) * x,        def_alpha=0,   def_gain=math.sqrt(2)),
}


# With impl='auto', tensors smaller than this stay on the reference ops even on the GPU: they are
# launch-bound, and the Python around the fused kernel's autograd Functions costs more than the
# reference's extra launches (the mapping network's [32, 512] ran at 0.7x of the reference through the
# kernel; benchmarks/results/gpu_speed.md). impl='cuda' still forces the kernel.
MIN_KERNEL_NUMEL = 1 << 16


def _use_cuda(x, impl):
    """Whether to run the fused CUDA kernel: for CUDA tensors unless impl='ref' or
    STYLEGAN2_FAIR_OPS=ref, and only if the kernels build (else one warning and the reference path;
    impl='cuda' or STYLEGAN2_FAIR_OPS=cuda make a failed build an error). See ops/cuda_build.py."""
    return cuda_build.use_cuda_kernels(x, impl)


def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='auto'):
    """y = clamp(act(x + b, alpha) * gain, -clamp, clamp).

    b: 1-D bias broadcast along axis `dim` of x (None = no bias). alpha, gain: None takes the
    activation's default from `activation_funcs`. clamp: None or negative turns clamping off.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if act not in activation_funcs:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(activation_funcs)}")
    if b is not None:
        if not -x.ndim <= dim < x.ndim:
            raise ValueError(f"dim={dim} is out of range for x with {x.ndim} dims")
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"b must be 1-D with x.shape[dim]={x.shape[dim]} entries (dim={dim}), "
                             f"got shape {tuple(b.shape)}")
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(clamp if clamp is not None else -1)
    if (impl != 'auto' or x.numel() >= MIN_KERNEL_NUMEL) and _use_cuda(x, impl):
        from .cuda.functions import bias_act_cuda
        return bias_act_cuda(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
    if b is not None:
        dim = dim % x.ndim
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x
