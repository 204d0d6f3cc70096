"""FIR resampling of NCHW images: upsample (zero insertion), pad or crop, FIR filter, downsample.

The reference path below is built only from differentiable torch ops (reshape, F.pad, conv2d,
slicing), so autograd gives exact first and second derivatives on any torch 2.x. For CUDA tensors the
fused kernel of ops/cuda/ runs instead when it builds; `_use_cuda` decides (see ops/cuda_build.py).
"""
import numbers

import torch
import torch.nn.functional as F

from . import cuda_build



def _use_cuda(x, impl):
    """Whether to run the fused CUDA kernel: for CUDA tensors unless impl='ref' or
    STYLEGAN2_FAIR_OPS=ref, and only if the kernels build (else one warning and the reference path;
    impl='cuda' or STYLEGAN2_FAIR_OPS=cuda make a failed build an error). See ops/cuda_build.py."""
    return cuda_build.use_cuda_kernels(x, impl)


def _is_int(v):
    # `type is int` first: isinstance against the numbers ABCs costs microseconds, and these parsers run
    # several times per layer call (the CUDA path is otherwise launch-bound on small maps).
    return type(v) is int or isinstance(v, numbers.Integral)


def _parse_scaling(scaling, name):
    """int or [x, y] -> (sx, sy), both positive ints."""
    if _is_int(scaling):
        scaling = [scaling, scaling]
    scaling = list(scaling)
    if len(scaling) != 2 or not all(_is_int(s) and s >= 1 for s in scaling):
        raise ValueError(f"{name} must be a positive int or a pair [x, y] of positive ints, got {scaling!r}")
    return int(scaling[0]), int(scaling[1])


def _parse_padding(padding):
    """int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1); negative values crop."""
    if _is_int(padding):
        padding = [padding, padding]
    padding = list(padding)
    if len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    if len(padding) != 4 or not all(_is_int(p) for p in padding):
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1] of ints, got {padding!r}")
    return tuple(int(p) for p in padding)


def _get_filter_size(f):
    """(width, height) of a filter; None is the 1x1 identity, a 1-D filter is used along both axes."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D (separable) or 2-D [height, width], got shape {tuple(f.shape)}")
    return (f.shape[-1], f.shape[0]) if f.ndim == 2 else (f.shape[0], f.shape[0])


def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a list/array/tensor of taps into a float32 filter tensor for `upfirdn2d`.

    A 1-D filter with fewer than 8 taps becomes its 2-D outer product (as the official buffers,
    e.g. `resample_filter` of shape [4, 4] for [1, 3, 3, 1]); longer ones stay 1-D and are applied
    separably (cheaper), unless `separable` says otherwise. The result sums to 1 when `normalize`,
    then is scaled by gain**(ndim/2) so that the overall 2-D gain is `gain` either way.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter taps must be a non-empty 1-D or 2-D array, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if separable and f.ndim != 1:
        raise ValueError("separable=True needs a 1-D filter; pass the 1-D taps or separable=None")
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Upsample by `up` (zero insertion), pad by `padding` (negative crops), FIR filter with `f`,
    then keep every `down`-th pixel.

    x: [N, C, H, W]; f: 1-D (separable) or 2-D [fh, fw] filter from `setup_filter`, or None for
    identity. The filter is convolved (not correlated) unless `flip_filter`; `gain` scales it.
    Output size per axis: (in * up + pad0 + pad1 - taps) // down + 1.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a 4-D [N, C, H, W] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if not isinstance(f, torch.Tensor):
        raise ValueError("f must be a tensor from setup_filter() or None")
    _get_filter_size(f)  # validates ndim
    upx, upy = _parse_scaling(up, 'up')
    downx, downy = _parse_scaling(down, 'down')
    padding = _parse_padding(padding)
    if _use_cuda(x, impl) and not f.requires_grad:  # the kernel gives no filter gradient
        from .cuda.functions import upfirdn2d_cuda
        return upfirdn2d_cuda(x, f, upx, upy, downx, downy, padding, flip_filter, gain)
    return _upfirdn2d_ref(x, f, upx, upy, downx, downy, padding, flip_filter, gain)


def _upfirdn2d_ref(x, f, upx, upy, downx, downy, padding, flip_filter, gain):
    batch, channels, in_h, in_w = x.shape
    px0, px1, py0, py1 = padding
    fw, fh = _get_filter_size(f)
    out_w = (in_w * upx + px0 + px1 - fw) // downx + 1
    out_h = (in_h * upy + py0 + py1 - fh) // downy + 1
    if in_w * upx + px0 + px1 < fw or in_h * upy + py0 + py1 < fh:
        raise ValueError(f"padding {padding} leaves the upsampled {in_h * upy}x{in_w * upx} input smaller than "
                         f"the {fh}x{fw} filter; use less cropping (negative padding) or a larger input")

    # Zero insertion: each pixel followed by up-1 zeros along each axis.
    if upx > 1 or upy > 1:
        x = x.reshape(batch, channels, in_h, 1, in_w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(batch, channels, in_h * upy, in_w * upx)

    # Constant pad with negative amounts crops, and its backward is again a pad: twice differentiable.
    if any(padding):
        x = F.pad(x, [px0, px1, py0, py1])

    # conv2d correlates; flipping the taps makes it a true convolution, the FIR convention.
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(channels, 1, fh, fw), groups=channels)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(channels, 1, 1, fw), groups=channels)
        x = F.conv2d(x, f[None, None, :, None].expand(channels, 1, fh, 1), groups=channels)

    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    assert x.shape[2:] == (out_h, out_w)
    return x


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='auto'):
    """FIR filter keeping the image size (with padding=0): pads by half the filter size."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Upsample by exactly `up` (with padding=0); gain up**2 restores the zero-inserted energy."""
    upx, upy = _parse_scaling(up, 'up')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    # in*up + pad0 + pad1 - taps + 1 == in*up when pad0 + pad1 == taps - 1, split to centre the filter.
    padding = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
               py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=padding, flip_filter=flip_filter,
                     gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Downsample by exactly `down` (with padding=0 and sizes divisible by `down`)."""
    downx, downy = _parse_scaling(down, 'down')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    # (in + pad0 + pad1 - taps) // down + 1 == in / down when pad0 + pad1 == taps - down.
    padding = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
               py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=padding, flip_filter=flip_filter,
                     gain=gain, impl=impl)
