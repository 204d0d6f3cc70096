"""Adaptive discriminator augmentation (ADA): the augmentation pipeline and its p controller.

Implements Appendix B of Karras et al. 2020, "Training Generative Adversarial Networks with
Limited Data". Each of the 18 transforms fires independently per image with probability
p * strength. Stages run in the paper's order:

1. pixel blitting (x-flip, 90-degree rotation, integer translation) and general geometric
   transforms (isotropic scale, pre-rotation, anisotropic scale, fractional translation,
   post-rotation), composed into one 3x3 matrix per image and applied once;
2. colour (brightness, contrast, luma flip, hue rotation, saturation), one 4x4 matrix per image;
3. image-space filtering (random gains for 4 frequency bands);
4. additive RGB noise;
5. cutout.

Everything that touches pixels is built from ops with second derivatives (gather, index_select,
conv2d, grid_sample), so the R1 penalty can backpropagate through its own gradient.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .ops.grid_sample import grid_sample
from .ops.upfirdn2d import upfirdn2d, upsample2d

# Low-pass decomposition filter of the 'sym6' wavelet (12 taps). Its near-linear phase and
# strong stop band make the 2x up/down resampling around bilinear sampling nearly alias-free.
_SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
         0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
         -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# Low-pass filter of the 'sym2' wavelet (= db2), the base of the frequency-band filter bank.
_SYM2 = [(1 + math.sqrt(3)) / 8, (3 + math.sqrt(3)) / 8, (3 - math.sqrt(3)) / 8, (1 - math.sqrt(3)) / 8]

# Share of a natural image's power expected in each band, lowest first. With a 1/f amplitude
# spectrum every octave carries similar power, and the lowest band [0, pi/8] holds the mean plus
# all the coarse octaves, so it dominates. Used to normalise the random band gains (Appendix B).
_BAND_EXPECTED_POWER = (10.0, 1.0, 1.0, 1.0)

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
_FILTER = dict(imgfilter=1)
_NOISE = dict(noise=1)
_CUTOUT = dict(cutout=1)

# Official preset names (--augpipe); 'bgc' is the default for training.
augpipe_specs = {
    'blit': dict(_BLIT),
    'geom': dict(_GEOM),
    'color': dict(_COLOR),
    'filter': dict(_FILTER),
    'noise': dict(_NOISE),
    'cutout': dict(_CUTOUT),
    'bg': dict(**_BLIT, **_GEOM),
    'bgc': dict(**_BLIT, **_GEOM, **_COLOR),
    'bgcf': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER),
    'bgcfn': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE),
    'bgcfnc': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE, **_CUTOUT),
}


def _band_filter_bank(num_bands=4, taps=43):
    """Zero-phase 1-D filters splitting [0, pi] into octave bands [0, pi/8], ..., [pi/2, pi].

    The analysis-synthesis product of an orthogonal wavelet, P = h * reverse(h), is a half-band
    low-pass and delta - P the complementary high-pass; dilating P by 2, 4, ... splits the low
    band again. The bands sum to a delta, so equal gains leave the image unchanged.
    """
    h = np.array(_SYM2)
    low = np.convolve(h, h[::-1])
    high = -low
    high[len(low) // 2] += 1

    def dilate(f, k):
        out = np.zeros((len(f) - 1) * k + 1)
        out[::k] = f
        return out

    bands = []
    passed = np.ones(1)  # product of the low-passes of the coarser levels so far
    for level in range(num_bands - 1):
        bands.append(np.convolve(passed, dilate(high, 2 ** level)))
        passed = np.convolve(passed, dilate(low, 2 ** level))
    bands.append(passed)
    bank = np.zeros([num_bands, taps])
    for i, band in enumerate(reversed(bands)):  # lowest band first
        start = (taps - len(band)) // 2
        bank[i, start:start + len(band)] = band
    return torch.as_tensor(bank, dtype=torch.float32)


def _matrices(rows, n, ref):
    """A batch [n, k, k] of matrices from nested rows of Python scalars or [n] tensors."""
    entries = [torch.as_tensor(e, dtype=ref.dtype, device=ref.device).expand(n) for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(n, len(rows), len(rows[0]))


def _translate2(tx, ty, n, ref):
    return _matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, ref)


def _scale2(sx, sy, n, ref):
    return _matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, ref)


def _rotate2(cos, sin, n, ref):
    return _matrices([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], n, ref)


def _translate3(t, n, ref):
    return _matrices([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], n, ref)


def _scale3(s, n, ref):
    return _matrices([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], n, ref)


def _rotate3(axis, theta, n, ref):
    """Rotation by `theta` about the unit vector `axis` (Rodrigues' formula), homogeneous 4x4."""
    x, y, z = axis
    c, s = torch.cos(theta), torch.sin(theta)
    d = 1 - c
    return _matrices([[x * x * d + c, x * y * d - z * s, x * z * d + y * s, 0],
                      [y * x * d + z * s, y * y * d + c, y * z * d - x * s, 0],
                      [z * x * d - y * s, z * y * d + x * s, z * z * d + c, 0],
                      [0, 0, 0, 1]], n, ref)


def _gate(value, identity, prob):
    """Keep each image's random `value` with probability `prob`, else the no-op value `identity`."""
    keep = torch.rand(value.shape, device=value.device) < prob
    return torch.where(keep, value, torch.full_like(value, identity))


def _reflect_index(index, size):
    """Map any integer coordinate into [0, size) by mirroring at the borders (edge not repeated)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def _reflect_pad(images, px0, px1, py0, py1):
    """Reflection padding of any width (F.pad's 'reflect' stops at the image size)."""
    _, _, h, w = images.shape
    ix = _reflect_index(torch.arange(-px0, w + px1, device=images.device), w)
    iy = _reflect_index(torch.arange(-py0, h + py1, device=images.device), h)
    return images.index_select(3, ix).index_select(2, iy)


def _centred_grid(xs, ys, ref):
    """Homogeneous coordinates [3, len(ys) * len(xs)] of a grid, x varying fastest."""
    gy, gx = torch.meshgrid(ys.to(ref.dtype), xs.to(ref.dtype), indexing='ij')
    return torch.stack([gx.flatten(), gy.flatten(), torch.ones_like(gx.flatten())])


def _blit(images, G):
    """Apply integer-valued pull matrices exactly: every output pixel copies one input pixel."""
    n, c, h, w = images.shape
    xs = torch.arange(w, device=images.device) - (w - 1) / 2
    ys = torch.arange(h, device=images.device) - (h - 1) / 2
    src = G @ _centred_grid(xs, ys, G)
    ix = _reflect_index(torch.round(src[:, 0] + (w - 1) / 2).long(), w)
    iy = _reflect_index(torch.round(src[:, 1] + (h - 1) / 2).long(), h)
    index = (iy * w + ix)[:, None, :].expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def _resample(images, G, Hz):
    """Apply pull matrices G (output -> input, centred pixel units) with alias-suppressed sampling.

    Per Appendix B: pad by reflection, upsample 2x with the wavelet low-pass, sample bilinearly on
    the 2x grid, downsample 2x with the reversed filter (so the pair is zero-phase).
    """
    n, c, h, w = images.shape
    taps = Hz.shape[0]
    margin = taps // 2 - 1  # extra 2x samples per side so the final 2x downsample needs no padding
    # Centres of the 2x output grid in output pixel units: sample k sits at k/2 - 1/4.
    ux = (torch.arange(-margin, 2 * w + margin, device=images.device) / 2 - 0.25) - (w - 1) / 2
    uy = (torch.arange(-margin, 2 * h + margin, device=images.device) / 2 - 0.25) - (h - 1) / 2

    # Input region the sampling will touch, widened by the upsampling filter's reach and the
    # bilinear footprint; reflect-pad the input to cover it for the whole batch.
    corners = _centred_grid(ux[[0, -1]], uy[[0, -1]], G)
    reach = G @ corners
    slack = taps / 4 + 0.5
    x_lo = torch.floor(reach[:, 0].min() + (w - 1) / 2 - slack)
    x_hi = torch.ceil(reach[:, 0].max() + (w - 1) / 2 + slack)
    y_lo = torch.floor(reach[:, 1].min() + (h - 1) / 2 - slack)
    y_hi = torch.ceil(reach[:, 1].max() + (h - 1) / 2 + slack)
    # Cap the padding for extreme draws; beyond it grid_sample's own reflection takes over.
    px0, px1 = (int(min(max(v, 0), 2 * w)) for v in (-x_lo.item(), x_hi.item() - (w - 1)))
    py0, py1 = (int(min(max(v, 0), 2 * h)) for v in (-y_lo.item(), y_hi.item() - (h - 1)))
    padded = _reflect_pad(images, px0, px1, py0, py1)
    pw, ph = w + px0 + px1, h + py0 + py1
    upsampled = upsample2d(padded, Hz, up=2)

    # grid_sample's normalised coordinates (align_corners=False) span the padded image's edges,
    # which the 2x image shares: input pixel index t maps to (2t + 1) / size - 1.
    src = G @ _centred_grid(ux, uy, G)
    gx = (2 * (src[:, 0] + (w - 1) / 2 + px0) + 1) / pw - 1
    gy = (2 * (src[:, 1] + (h - 1) / 2 + py0) + 1) / ph - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(n, len(uy), len(ux), 2).to(images.dtype)
    sampled = grid_sample(upsampled, grid, padding_mode='reflection', align_corners=False)
    return upfirdn2d(sampled, Hz, down=2, flip_filter=True)


class AugmentPipe(torch.nn.Module):
    """ADA augmentations; each transform fires per image with probability p * its strength.

    Argument names, defaults and buffers (`p`, `Hz_geom`, `Hz_fbank`) follow the official
    AugmentPipe so official pickles load by name. `p` is a scalar buffer set by `adjust_p`.
    """

    def __init__(self, xflip=0, rotate90=0, xint=0, xint_max=0.125,
                 scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
                 brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
                 imgfilter=0, imgfilter_bands=(1, 1, 1, 1), imgfilter_std=1,
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5):
        super().__init__()
        self.init_kwargs = {k: v for k, v in locals().items() if k not in ('self', '__class__')}
        self.init_kwargs['imgfilter_bands'] = list(imgfilter_bands)
        self.register_buffer('p', torch.zeros([]))
        for name, value in self.init_kwargs.items():
            if name == 'imgfilter_bands':
                if len(value) != 4:
                    raise ValueError(f"imgfilter_bands needs one strength per band (4), got {value!r}")
                value = [float(v) for v in value]
            else:
                value = float(value)
            setattr(self, name, value)
        self.register_buffer('Hz_geom', torch.tensor(_SYM6, dtype=torch.float64).div(sum(_SYM6)).float())
        self.register_buffer('Hz_fbank', _band_filter_bank())

    @classmethod
    def from_preset(cls, name, **overrides):
        """Pipe for an official --augpipe preset name ('bgc', ...); `overrides` replace kwargs."""
        if name not in augpipe_specs:
            raise ValueError(f"unknown augment preset {name!r}; choose one of {sorted(augpipe_specs)}")
        return cls(**{**augpipe_specs[name], **overrides})

    def forward(self, images):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be an [N, C, H, W] tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        ref = torch.zeros([], dtype=torch.float64 if images.dtype == torch.float64 else torch.float32,
                          device=images.device)
        p = self.p.to(ref)
        images = self._geometric(images, p, ref)
        images = self._colour(images, p, ref)
        images = self._filter(images, p, ref)
        images = self._noise(images, p, ref)
        return self._cutout(images, p, ref)

    def _geometric(self, images, p, ref):
        n, _, h, w = images.shape
        rand = lambda *shape: torch.rand(shape, dtype=ref.dtype, device=ref.device)  # noqa: E731
        randn = lambda *shape: torch.randn(shape, dtype=ref.dtype, device=ref.device)  # noqa: E731
        # G pulls: input position = G @ output position. Each transform T appends its inverse, so
        # G = T1^-1 T2^-1 ... in the order the transforms apply to the image.
        G = torch.eye(3, dtype=ref.dtype, device=ref.device).repeat(n, 1, 1)
        identity = G.clone()

        if self.xflip > 0:
            flip = _gate(1 - 2 * torch.randint(2, [n], device=ref.device).to(ref.dtype), 1, p * self.xflip)
            G = G @ _scale2(flip, 1, n, ref)
        if self.rotate90 > 0:
            quarter = _gate(torch.randint(4, [n], device=ref.device).to(ref.dtype), 0, p * self.rotate90).long()
            # Exact integer cos/sin of -k*90 degrees (the inverse rotation), so blits stay exact.
            cos = torch.tensor([1, 0, -1, 0], dtype=ref.dtype, device=ref.device)[quarter]
            sin = torch.tensor([0, -1, 0, 1], dtype=ref.dtype, device=ref.device)[quarter]
            G = G @ _rotate2(cos, sin, n, ref)
        if self.xint > 0:
            t = _gate((rand(n, 2) * 2 - 1) * self.xint_max, 0, p * self.xint)
            G = G @ _translate2(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), n, ref)

        general = any(s > 0 for s in (self.scale, self.rotate, self.aniso, self.xfrac))
        # Pre- and post-rotation each fire with 1 - sqrt(1 - p) so that at least one does with p.
        p_rot = 1 - torch.sqrt((1 - p * self.rotate).clamp(0, 1))
        if self.scale > 0:
            s = _gate(torch.exp2(randn(n) * self.scale_std), 1, p * self.scale)
            G = G @ _scale2(1 / s, 1 / s, n, ref)
        if self.rotate > 0:
            theta = _gate((rand(n) * 2 - 1) * math.pi * self.rotate_max, 0, p_rot)
            G = G @ _rotate2(torch.cos(-theta), torch.sin(-theta), n, ref)
        if self.aniso > 0:
            s = _gate(torch.exp2(randn(n) * self.aniso_std), 1, p * self.aniso)
            G = G @ _scale2(1 / s, s, n, ref)
        if self.xfrac > 0:
            t = _gate(randn(n, 2) * self.xfrac_std, 0, p * self.xfrac)
            G = G @ _translate2(-t[:, 0] * w, -t[:, 1] * h, n, ref)
        if self.rotate > 0:
            theta = _gate((rand(n) * 2 - 1) * math.pi * self.rotate_max, 0, p_rot)
            G = G @ _rotate2(torch.cos(-theta), torch.sin(-theta), n, ref)

        moved = (G != identity).flatten(1).any(dim=1)
        if not moved.any():
            return images
        out = _resample(images, G, self.Hz_geom) if general else _blit(images, G)
        # Images whose draws were all no-ops keep their exact values (no resampling blur).
        return torch.where(moved[:, None, None, None], out, images)

    def _colour(self, images, p, ref):
        enabled = [self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation]
        if not any(s > 0 for s in enabled):
            return images
        n, c, h, w = images.shape
        if c not in (1, 3):
            raise ValueError(f"colour augmentation needs 1 (grey) or 3 (RGB) channels, got {c}; "
                             f"set brightness, contrast, lumaflip, hue and saturation to 0")
        randn = lambda *shape: torch.randn(shape, dtype=ref.dtype, device=ref.device)  # noqa: E731
        C = torch.eye(4, dtype=ref.dtype, device=ref.device).repeat(n, 1, 1)
        identity = C.clone()
        luma = torch.tensor([1, 1, 1, 0], dtype=ref.dtype, device=ref.device) / math.sqrt(3)
        luma_outer = torch.outer(luma, luma)

        if self.brightness > 0:
            b = _gate(randn(n) * self.brightness_std, 0, p * self.brightness)
            C = _translate3(b, n, ref) @ C
        if self.contrast > 0:
            s = _gate(torch.exp2(randn(n) * self.contrast_std), 1, p * self.contrast)
            C = _scale3(s, n, ref) @ C
        if self.lumaflip > 0:
            # Householder reflection across the plane orthogonal to the luma axis.
            flip = _gate(torch.randint(2, [n], device=ref.device).to(ref.dtype), 0, p * self.lumaflip)
            C = (torch.eye(4, dtype=ref.dtype, device=ref.device) - 2 * luma_outer * flip[:, None, None]) @ C
        if c == 3 and self.hue > 0:  # hue and saturation leave grey pixels unchanged
            theta = _gate((torch.rand(n, dtype=ref.dtype, device=ref.device) * 2 - 1) * math.pi * self.hue_max,
                          0, p * self.hue)
            C = _rotate3(luma[:3].tolist(), theta, n, ref) @ C
        if c == 3 and self.saturation > 0:
            s = _gate(torch.exp2(randn(n) * self.saturation_std), 1, p * self.saturation)
            C = (luma_outer + (torch.eye(4, dtype=ref.dtype, device=ref.device) - luma_outer) * s[:, None, None]) @ C

        if torch.equal(C, identity):
            return images
        C = C.to(images.dtype)
        pixels = images.reshape(n, c, h * w)
        if c == 3:
            out = C[:, :3, :3] @ pixels + C[:, :3, 3:]
        else:
            # A grey image is r = g = b; the matrices keep grey grey, so average the rows.
            out = C[:, :3, :3].sum(dim=(1, 2))[:, None, None] / 3 * pixels + C[:, :3, 3].mean(dim=1)[:, None, None]
        return out.reshape(n, c, h, w)

    def _filter(self, images, p, ref):
        if self.imgfilter <= 0:
            return images
        n, c, h, w = images.shape
        bands = self.Hz_fbank.shape[0]
        gains = torch.ones([n, bands], dtype=ref.dtype, device=ref.device)
        for band, strength in enumerate(self.imgfilter_bands):
            if strength > 0:
                g = torch.exp2(torch.randn(n, dtype=ref.dtype, device=ref.device) * self.imgfilter_std)
                gains[:, band] = _gate(g, 1, p * self.imgfilter * strength)
        changed = (gains != 1).any(dim=1)
        if not changed.any():
            return images
        # Rescale so the expected image power stays the same whatever the gains.
        power = torch.tensor(_BAND_EXPECTED_POWER, dtype=ref.dtype, device=ref.device)
        gains = gains / (gains.square() @ (power / power.sum())).sqrt()[:, None]
        taps = (gains @ self.Hz_fbank.to(ref.dtype)).to(images.dtype)  # [n, 43], one filter per image
        k = taps.shape[1]
        # Separable per-image filter: grouped conv over the N*C planes, reflection at the borders.
        x = _reflect_pad(images, k // 2, k // 2, k // 2, k // 2).reshape(1, n * c, h + k - 1, w + k - 1)
        weight = taps.repeat_interleave(c, dim=0)
        x = F.conv2d(x, weight[:, None, None, :], groups=n * c)
        x = F.conv2d(x, weight[:, None, :, None], groups=n * c)
        return torch.where(changed[:, None, None, None], x.reshape(n, c, h, w), images)

    def _noise(self, images, p, ref):
        if self.noise <= 0:
            return images
        n = images.shape[0]
        sigma = _gate(torch.randn(n, dtype=ref.dtype, device=ref.device).abs() * self.noise_std, 0, p * self.noise)
        if not (sigma != 0).any():
            return images
        return images + torch.randn_like(images) * sigma.to(images.dtype)[:, None, None, None]

    def _cutout(self, images, p, ref):
        if self.cutout <= 0:
            return images
        n, _, h, w = images.shape
        size = _gate(torch.full([n], self.cutout_size, dtype=ref.dtype, device=ref.device), 0, p * self.cutout)
        if not (size != 0).any():
            return images
        centre = torch.rand([n, 2], dtype=ref.dtype, device=ref.device)
        xs = (torch.arange(w, dtype=ref.dtype, device=ref.device) + 0.5) / w
        ys = (torch.arange(h, dtype=ref.dtype, device=ref.device) + 0.5) / h
        outside_x = (xs[None, :] - centre[:, :1]).abs() >= size[:, None] / 2
        outside_y = (ys[None, :] - centre[:, 1:]).abs() >= size[:, None] / 2
        keep = outside_x[:, None, None, :] | outside_y[:, None, :, None]  # zero (mid-grey) inside the box
        return images * keep.to(images.dtype)


def adjust_p(pipe, sign_mean, target, batch_size, interval=4, ada_kimg=500):
    """ADA's p controller, run every `interval` steps: returns the new p (also written to pipe.p).

    r_t = mean(sign(D(real))) measures D's overfitting (official target 0.6); p moves by
    sign(r_t - target) at a rate that could sweep 0 -> 1 within `ada_kimg` thousand real images,
    and never drops below 0.
    """
    if batch_size <= 0 or interval <= 0 or ada_kimg <= 0:
        raise ValueError(f"batch_size, interval and ada_kimg must be positive, got "
                         f"{batch_size}, {interval}, {ada_kimg}")
    step = batch_size * interval / (ada_kimg * 1000)
    adjust = float(np.sign(float(sign_mean) - target)) * step
    with torch.no_grad():
        pipe.p.copy_((pipe.p + adjust).clamp(min=0))
    return float(pipe.p)
