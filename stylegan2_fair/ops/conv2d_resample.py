"""2-D convolution fused with FIR up/down-sampling, as used by every resampling StyleGAN2 layer.

Definition (the slow path, `_conv2d_resample_slow`): with padding P adjusted like `upsample2d` /
`downsample2d` so that the output is exactly up/down times the input,
    y = subsample_down( conv(upfirdn2d(x, f, up, padding=P, gain=up**2), w) )
where conv is cross-correlation (flip_weight=True) or true convolution (flip_weight=False).
Filtering and a valid convolution commute, so the fast paths below reorder them: a strided
transposed convolution replaces "zero-insert then conv", a strided convolution replaces "conv then
subsample", and 1x1 kernels resample on the low-resolution side of the conv.
"""
import torch
import torch.nn.functional as F

from . import upfirdn2d as _fir


def _conv(x, w, stride=1, padding=0, groups=1, flip_weight=True):
    """conv2d where flip_weight=False means true convolution (weights flipped)."""
    if not flip_weight:
        w = w.flip([2, 3])
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _conv_transpose(x, w, stride, groups, flip_weight):
    """Strided transposed conv equal to "zero-insert by `stride`, then `_conv`" (up to borders).

    conv_transpose2d scatters each input pixel times the kernel, i.e. it convolves the zero-inserted
    input with the unflipped kernel: true convolution already, so flip only for correlation.
    """
    out_channels, in_per_group, kh, kw = w.shape
    # [O, I/g, kh, kw] -> [I, O/g, kh, kw], the layout conv_transpose2d expects.
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    if flip_weight:
        w = w.flip([2, 3])
    return F.conv_transpose2d(x, w, stride=stride, groups=groups)


def _check_args(x, w, f, up, down, groups):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError("x must be a 4-D [N, C, H, W] tensor")
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        raise ValueError("w must be a 4-D [out_channels, in_channels // groups, kh, kw] tensor")
    if w.dtype != x.dtype:
        raise ValueError(f"w ({w.dtype}) and x ({x.dtype}) must have the same dtype; cast one of them")
    if f is not None and (not isinstance(f, torch.Tensor) or f.ndim not in (1, 2)):
        raise ValueError("f must be None or a 1-D/2-D filter tensor from upfirdn2d.setup_filter()")
    for name, value in (('up', up), ('down', down), ('groups', groups)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f"channel mismatch: x has {x.shape[1]} channels, w has shape {tuple(w.shape)} "
                         f"and groups={groups}; need x channels == w.shape[1] * groups and "
                         f"w.shape[0] divisible by groups")


def _resample_padding(f, up, down, padding):
    """User padding plus what upsample2d/downsample2d add to make the output size exact."""
    px0, px1, py0, py1 = _fir._parse_padding(padding)
    fw, fh = _fir._get_filter_size(f)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    return px0, px1, py0, py1


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve x [N, C, H, W] with w [O, C // groups, kh, kw], upsampling by `up` before or
    downsampling by `down` after, with FIR filter f (None = nearest / plain subsampling).

    padding: int, [x, y] or [x0, x1, y0, y1] as for a plain conv; with up=down=1, f is unused.
    flip_weight=False computes a true convolution instead of cross-correlation.
    """
    _check_args(x, w, f, up, down, groups)
    kh, kw = w.shape[2:]
    px0, px1, py0, py1 = _resample_padding(f, up, down, padding)

    # 1x1 kernel: the conv is per pixel, so resample on the input when downsampling and on the
    # output when upsampling (the low-resolution side), where it costs the least.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = _fir.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return _fir.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling: filter, then conv with stride instead of computing pixels only to drop them.
    if down > 1 and up == 1:
        x = _fir.upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: the transposed conv skips the multiplications by inserted zeros. Its output is the
    # valid conv of the zero-inserted input extended by (k - 1) zeros on both sides, so shift the
    # padding by k - 1 on the left and by k - up on the right (upfirdn2d crops where negative).
    if up > 1 and down == 1:
        x = _conv_transpose(x, w, stride=up, groups=groups, flip_weight=flip_weight)
        padding = [px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)]
        return _fir.upfirdn2d(x, f, padding=padding, gain=up ** 2, flip_filter=flip_filter)

    # No resampling: a plain conv, which pads symmetric non-negative amounts itself.
    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
        x = _fir.upfirdn2d(x, None, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    return _conv2d_resample_slow(x, w, f, up, down, (px0, px1, py0, py1), groups, flip_weight, flip_filter)


def _conv2d_resample_slow(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """The definition: zero-insert + pad + filter, valid conv, subsample (padding already adjusted)."""
    if up == 1 and down == 1:
        f = None  # no resampling, nothing to anti-alias
    x = _fir.upfirdn2d(x, f, up=up, padding=padding, gain=up ** 2, flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    return x[:, :, ::down, ::down]
