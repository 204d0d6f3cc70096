"""StyleGAN2-ADA generator and discriminator, name- and number-compatible with the official ones.

Class names, constructor arguments and state-dict names follow the official code, so that an
official snapshot maps onto these modules by class name and init kwargs and then loads with
`load_state_dict(strict=True)`. The maths follows Karras et al. 2020 (StyleGAN2): modulated
convolution with weight demodulation (Sec. 2.2, Eq. 1-3), skip/residual architectures (Sec. 4.1),
equalised learning rate (runtime weight gains), minibatch standard deviation and projection
conditioning in the discriminator.

Mixed precision: blocks at the `num_fp16_res` highest resolutions (never below 8x8) run in
float16 on CUDA only. On any other device they run in float32 by themselves (the official code
needs `force_fp32=True` there), so CPU inference just works.
"""
import copy
import functools
import inspect

import numpy as np
import torch

from .ops.bias_act import activation_funcs, bias_act
from .ops.conv2d_resample import conv2d_resample
from .ops import upfirdn2d

SQRT_HALF = np.sqrt(0.5)  # residual branches are summed with this gain to keep unit variance


# ----------------------------------------------------------------------------------------------
# Helpers

def records_init_kwargs(cls):
    """Class decorator: store the constructor's arguments as `self.init_kwargs`.

    Positional arguments are stored under their parameter names and `**extra` kwargs are merged
    in flat, so `type(m)(**m.init_kwargs)` rebuilds an equivalent module (snapshots rely on it).
    Defaults that the caller did not pass are not recorded, as in the official pickles.
    """
    original_init = cls.__init__
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def init_and_record(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        recorded = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f'{cls.__name__} takes no *args; pass keyword arguments instead')
            else:
                recorded[name] = value
        original_init(self, *args, **kwargs)
        self.init_kwargs = copy.deepcopy(recorded)

    cls.__init__ = init_and_record
    return cls


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale each row to unit mean square (StyleGAN's 'pixel norm' of z and the embedded c)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _compute_dtype(use_fp16, force_fp32, device):
    # float16 only where the official code would use it AND the device can run it (CUDA).
    if use_fp16 and not force_fp32 and device.type == 'cuda':
        return torch.float16
    return torch.float32


def _check_shape(tensor, expected, what, fix):
    """Raise a ValueError naming `what` when `tensor` does not match `expected` (None = any)."""
    shape = tuple(tensor.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))
    if not ok:
        want = '[' + ', '.join('N' if e is None else str(e) for e in expected) + ']'
        raise ValueError(f'{what} has shape {list(shape)}, expected {want}; {fix}')


def _new_weight(shape, memory_format=torch.contiguous_format):
    return torch.randn(shape).to(memory_format=memory_format)


def _register(module, name, tensor, trainable):
    # Frozen layers keep weight/bias as buffers (as the official `--freezed` does) so that they
    # appear in the state dict but never in the optimiser.
    if trainable:
        setattr(module, name, torch.nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


# ----------------------------------------------------------------------------------------------
# Modulated convolution (StyleGAN2 Sec. 2.2)

def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True, fused_modconv=True):
    """Convolve x [N,I,H,W] with weight [O,I,k,k] scaled per sample by styles [N,I].

    Modulation w'_ijk = s_i * w_ijk (Eq. 1); demodulation divides each output channel by
    sqrt(sum w'^2 + eps) (Eq. 3). `fused_modconv` folds the per-sample weights into one grouped
    convolution; otherwise the styles scale the activations before and after a shared conv
    (same result, cheaper in training where batches are large).
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape

    if x.dtype == torch.float16 and demodulate:
        # Rescale both factors before they meet so that float16 cannot overflow; demodulation
        # removes the scale again, so the result is unchanged.
        weight = weight * (1 / np.sqrt(in_channels * kh * kw)
                           / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)

    per_sample_weight = None
    demod_coefs = None
    if demodulate or fused_modconv:
        per_sample_weight = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)
    if demodulate:
        demod_coefs = (per_sample_weight.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N,O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down,
                             padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * demod_coefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if demodulate:
        per_sample_weight = per_sample_weight * demod_coefs.reshape(batch_size, -1, 1, 1, 1)
    # One grouped convolution: the batch becomes the group dimension.
    x = x.reshape(1, -1, *x.shape[2:])
    grouped_weight = per_sample_weight.reshape(-1, in_channels, kh, kw).to(x.dtype)
    x = conv2d_resample(x, grouped_weight, f=resample_filter, up=up, down=down, padding=padding,
                         groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ----------------------------------------------------------------------------------------------
# Basic layers (equalised learning rate: weights stored at unit scale, scaled at run time)

@records_init_kwargs
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer; `lr_multiplier` slows its effective learning rate (mapping network)."""

    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1,
                 bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = (torch.nn.Parameter(torch.full([out_features], np.float32(bias_init)))
                     if bias else None)
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        weight = self.weight.to(x.dtype) * self.weight_gain
        bias = self.bias
        if bias is not None:
            bias = bias.to(x.dtype)
            if self.bias_gain != 1:
                bias = bias * self.bias_gain
        if self.activation == 'linear' and bias is not None:
            return torch.addmm(bias.unsqueeze(0), x, weight.t())
        return bias_act(x.matmul(weight.t()), bias, act=self.activation)


@records_init_kwargs
class Conv2dLayer(torch.nn.Module):
    """Plain convolution with optional FIR up/downsampling, bias, activation and clamp."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1,
                 down=1, resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False,
                 trainable=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_funcs[activation].def_gain
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        _register(self, 'weight',
                  _new_weight([out_channels, in_channels, kernel_size, kernel_size],
                              memory_format=memory_format), trainable)
        if bias:
            _register(self, 'bias', torch.zeros([out_channels]), trainable)
        else:
            self.bias = None

    def forward(self, x, gain=1):
        weight = self.weight * self.weight_gain
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        # Upsampling layers run as a true convolution (flipped kernel), as the official ones do.
        x = conv2d_resample(x, weight.to(x.dtype), f=self.resample_filter, up=self.up,
                             down=self.down, padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


# ----------------------------------------------------------------------------------------------
# Mapping network: z (and c) -> w

@records_init_kwargs
class MappingNetwork(torch.nn.Module):
    """MLP from z (and the embedded label c) to w, broadcast to `num_ws` layers.

    Also serves as the discriminator's label embedding (z_dim=0, num_ws=None, w_avg_beta=None).
    """

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None,
                 layer_features=None, activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        widths = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(widths[idx], widths[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        parts = []
        if self.z_dim > 0:
            if z is None:
                raise ValueError(f'z is None; pass latents of shape [N, {self.z_dim}]')
            _check_shape(z, [None, self.z_dim], 'z', f'pass latents of shape [N, {self.z_dim}]')
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f'this network is conditional: pass labels c of shape '
                                 f'[N, {self.c_dim}] (one-hot for class labels)')
            _check_shape(c, [None, self.c_dim], 'c',
                         f'pass labels of shape [N, {self.c_dim}] (one-hot for class labels)')
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        # Running mean of w: the centre that truncation pulls towards (updated in training only).
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError('truncation needs w_avg, which this mapping network does not '
                                 'track (w_avg_beta=None); use truncation_psi=1')
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                # Truncate only the first `truncation_cutoff` layers (coarse styles).
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


# ----------------------------------------------------------------------------------------------
# Synthesis network: w -> image

@records_init_kwargs
class SynthesisLayer(torch.nn.Module):
    """3x3 modulated conv (optionally 2x upsampling), per-pixel noise, bias and activation."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1,
                 use_noise=True, activation='lrelu', resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 channels_last=False):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            _new_weight([out_channels, in_channels, kernel_size, kernel_size],
                        memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f"noise_mode={noise_mode!r} is unknown; use 'random', 'const' or "
                             f"'none'")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution],
                                device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation,
                         gain=self.act_gain * gain, clamp=clamp)


@records_init_kwargs
class ToRGBLayer(torch.nn.Module):
    """1x1 modulated conv to image channels, without demodulation (StyleGAN2 Fig. 7)."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None,
                 channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            _new_weight([out_channels, in_channels, kernel_size, kernel_size],
                        memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        # Without demodulation the weight gain must be applied explicitly (via the styles).
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


@records_init_kwargs
class SynthesisBlock(torch.nn.Module):
    """One resolution of the generator: [const | conv0 (up 2)], conv1, torgb / skip."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last,
                 architecture='skip', resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False,
                 fp16_channels_last=False, **layer_kwargs):
        super().__init__()
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture={architecture!r} is unknown; use 'orig', 'skip' or "
                             f"'resnet'")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        shared = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp,
                      channels_last=self.channels_last)

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2,
                                        resample_filter=resample_filter, **shared, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **shared, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        w_iter = iter(ws.unbind(dim=1))
        dtype = _compute_dtype(self.use_fp16, force_fp32, ws.device)
        memory_format = (torch.channels_last if self.channels_last and not force_fp32
                         else torch.contiguous_format)
        if fused_modconv is None:
            # Grouped conv is fastest at inference; in float16 only for batch 1 (overflow risk).
            fused_modconv = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == 'resnet':
            x = x.to(dtype=dtype, memory_format=memory_format)
            shortcut = self.skip(x, gain=SQRT_HALF)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=SQRT_HALF,
                           **layer_kwargs)
            x = shortcut + x
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            rgb = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            rgb = rgb.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + rgb if img is not None else rgb
        return x, img


@records_init_kwargs
class SynthesisNetwork(torch.nn.Module):
    """Blocks b4 .. b{img_resolution}; consumes ws [N, num_ws, w_dim]."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_fp16_res=0, **block_kwargs):
        super().__init__()
        resolution_log2 = int(np.log2(img_resolution))
        if img_resolution < 4 or 2 ** resolution_log2 != img_resolution:
            raise ValueError(f'img_resolution={img_resolution} is not supported; use a power of '
                             f'two >= 4')
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = resolution_log2
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res],
                                   w_dim=w_dim, resolution=res, img_channels=img_channels,
                                   is_last=is_last, use_fp16=(res >= fp16_resolution),
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f'b{res}', block)

    def forward(self, ws, **block_kwargs):
        _check_shape(ws, [None, self.num_ws, self.w_dim], 'ws',
                     f'pass ws of shape [N, {self.num_ws}, {self.w_dim}] as returned by G.mapping')
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            # A block's torgb shares its w with the next block's first conv.
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, **block_kwargs)
        return img


@records_init_kwargs
class Generator(torch.nn.Module):
    """G(z, c) = synthesis(mapping(z, c))."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None,
                 synthesis_kwargs=None):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Synthesis first: its num_ws sizes the mapping, and the official parameter init order
        # (hence the random stream) is synthesis then mapping.
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution,
                                          img_channels=img_channels, **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------------------------
# Discriminator

@records_init_kwargs
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: [fromrgb], conv0, conv1 (down 2), [skip (down 2)]."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels,
                 first_layer_idx, architecture='resnet', activation='lrelu',
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False,
                 fp16_channels_last=False, freeze_layers=0):
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(f'in_channels={in_channels} must be 0 (first block) or equal '
                             f'tmp_channels={tmp_channels}')
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture={architecture!r} is unknown; use 'orig', 'skip' or "
                             f"'resnet'")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))

        # Layers are numbered across the whole D from the input side; the first
        # `freeze_layers` of them are frozen (transfer learning with --freezed, Mo et al. 2020).
        self.num_layers = 0

        def next_trainable():
            trainable = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return trainable

        common = dict(activation=activation, conv_clamp=conv_clamp,
                      channels_last=self.channels_last)
        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1,
                                       trainable=next_trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3,
                                 trainable=next_trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2,
                                 trainable=next_trainable(), resample_filter=resample_filter,
                                 **common)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=next_trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        device = (x if x is not None else img).device
        dtype = _compute_dtype(self.use_fp16, force_fp32, device)
        memory_format = (torch.channels_last if self.channels_last and not force_fp32
                         else torch.contiguous_format)
        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == 'skip':
            img = img.to(dtype=dtype, memory_format=memory_format)
            from_img = self.fromrgb(img)
            x = x + from_img if x is not None else from_img
            img = (upfirdn2d.downsample2d(img, self.resample_filter)
                   if self.architecture == 'skip' else None)

        if self.architecture == 'resnet':
            shortcut = self.skip(x, gain=SQRT_HALF)
            x = self.conv0(x)
            x = self.conv1(x, gain=SQRT_HALF)
            x = shortcut + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


@records_init_kwargs
class MinibatchStdLayer(torch.nn.Module):
    """Append the std of features over sample groups as extra channels (ProGAN Sec. 3).

    Sample n belongs to group n % (N // G), matching the official grouping.
    """

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        group = min(self.group_size, n) if self.group_size is not None else n
        if n % group != 0:
            raise ValueError(f'batch size {n} is not divisible by the minibatch-std group size '
                             f'{group}; use a batch that is a multiple of mbstd_group_size')
        f = self.num_channels
        y = x.reshape(group, -1, f, c // f, h, w)        # [G, N/G, F, C/F, H, W]
        y = y - y.mean(dim=0)                            # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()       # std over the group
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)   # average over channels and pixels
        y = y.repeat(group, 1, h, w)                     # back to [N, F, H, W]
        return torch.cat([x, y], dim=1)


@records_init_kwargs
class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head of D: [fromrgb], minibatch std, conv, fc, out, projection with cmap."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet',
                 mbstd_group_size=4, mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1,
                                       activation=activation)
        self.mbstd = (MinibatchStdLayer(group_size=mbstd_group_size,
                                        num_channels=mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels,
                                      activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        # The head always runs in float32.
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == 'skip':
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            # Projection discriminator (Miyato & Koyama 2018): <phi(x), embed(c)>, scaled.
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


@records_init_kwargs
class Discriminator(torch.nn.Module):
    """D(img, c) -> logits [N, 1]."""

    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet',
                 channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
                 cmap_dim=None, block_kwargs=None, mapping_kwargs=None, epilogue_kwargs=None):
        super().__init__()
        resolution_log2 = int(np.log2(img_resolution))
        if img_resolution < 8 or 2 ** resolution_log2 != img_resolution:
            raise ValueError(f'img_resolution={img_resolution} is not supported; use a power of '
                             f'two >= 8')
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = resolution_log2
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max)
                    for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0,
                                       channels[res], channels[res // 2], resolution=res,
                                       first_layer_idx=layer_idx,
                                       use_fp16=(res >= fp16_resolution),
                                       **(block_kwargs or {}), **common)
            layer_idx += block.num_layers
            setattr(self, f'b{res}', block)
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None,
                                          w_avg_beta=None, **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4,
                                        **(epilogue_kwargs or {}), **common)

    def forward(self, img, c, **block_kwargs):
        _check_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution],
                     'img', f'pass images of shape [N, {self.img_channels}, '
                            f'{self.img_resolution}, {self.img_resolution}]')
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
