"""TensorFlow StyleGAN2 / StyleGAN2-ADA pickles (G, D, Gs), converted to this package's networks.

A TF pickle is a tuple of three `dnnlib.tflib.network.Network` objects. Each one pickles a plain
dict: version, name, static_kwargs (the build function's keyword arguments), components (nested
Networks: G's mapping and synthesis), build_func_name, variables (a list of (name, numpy array))
and build_module_src, the Python source of the module that builds the graph. TensorFlow runs that
source when it loads the pickle; here the restricted reader turns each Network into an inert
`TFNetworkRecord`, and only static_kwargs, components and variables are read. The source is
never executed, compiled or even parsed.

Supported: the StyleGAN2 configs E/F networks (G_main with G_mapping and G_synthesis_stylegan2,
D_stylegan2), unconditional only, and StyleGAN2-ADA TensorFlow networks (G_main with G_mapping and
G_synthesis, D_main), conditional or not, with every architecture, mixed precision, conv clamping
and Freeze-D. Anything else (StyleGAN1, progressive configs A-D, ADA comparison methods, changed
capacity formulas) is refused with an error that names the reason.

Run-time defaults of TF networks are not part of the result: TF's Gs applies truncation_psi=0.5
unless told otherwise, our Generator applies none (pass truncation_psi yourself).

Command line: `python -m stylegan2_fair.tf_convert SRC.pkl DEST.pkl` writes a stylegan2-fair
snapshot; every loader of this package also reads the TF pickle directly.
"""
import argparse
import sys

import numpy as np
import torch

from .checkpoint import (CheckpointError, UnsafePickleError, _describe_source, _fill, read_pickle_safely,
                         save_network_pkl)

# Build functions by network; the flavour decides TF defaults that differ between the two code bases.
_GENERATOR_FUNCS = {'G_main'}
_MAPPING_FUNCS = {'G_mapping'}
_SYNTHESIS_FLAVOURS = {'G_synthesis': 'ada', 'G_synthesis_stylegan2': 'stylegan2'}
_DISCRIMINATOR_FLAVOURS = {'D_main': 'ada', 'D_stylegan2': 'stylegan2'}
_REFUSED_FUNCS = {   # known TF build functions that this package has no equivalent for
    'G_style': 'a StyleGAN (v1) generator',
    'D_basic': 'a StyleGAN (v1) / ProGAN discriminator',
    'G_synthesis_stylegan_revised': 'a progressive StyleGAN2 config A-D synthesis network',
    'D_stylegan': 'a progressive StyleGAN2 config A-D discriminator',
}


class TFNetworkRecord:
    """Stand-in for dnnlib.tflib.network.Network: holds the pickled state dict and nothing else."""
    __slots__ = ('state',)

    def __setstate__(self, state):
        # TF's own __setstate__ execs state['build_module_src']; keeping the dict is all we do.
        if not isinstance(state, dict):
            raise UnsafePickleError(f'a TF Network pickles a dict state, this one a {type(state).__name__}')
        self.state = state

    def __repr__(self):
        state = getattr(self, 'state', {})
        return f'TFNetworkRecord({state.get("name")!r}, {state.get("build_func_name")!r})'


def is_tf_pickle(data):
    """True for what read_pickle_safely returns on a TF pickle: a tuple holding TF Network records."""
    return isinstance(data, tuple) and any(isinstance(item, TFNetworkRecord) for item in data)


# ----------------------------------------------------------------------------------------------
# Reading the records

def _check_record(record, where):
    state = getattr(record, 'state', None) if isinstance(record, TFNetworkRecord) else None
    if state is None:   # not a Network, or one pickled without its state
        raise CheckpointError(f'{where}: expected a TF Network with its state, got {record!r:.80}')
    version = state.get('version')
    if not isinstance(version, int):
        raise CheckpointError(f'{where}: TF Network version {version!r} is not a number; the pickle is damaged')
    if version < 4:
        raise CheckpointError(f'{where}: TF Network pickle version {version} is too old (StyleGAN1/ProGAN era); '
                              f'only version 4 (StyleGAN2) and 5 (StyleGAN2-ADA) pickles can be converted')
    for field, kind in (('static_kwargs', dict), ('components', dict), ('variables', list),
                        ('build_func_name', str)):
        if not isinstance(state.get(field), kind):
            raise CheckpointError(f'{where}: TF Network field {field!r} is a {type(state.get(field)).__name__}, '
                                  f'not a {kind.__name__}; the pickle is damaged or not a StyleGAN network')
    # Other fields (ADA's input/output shapes and names, build_module_src) are never read.
    return state


def _collect_variables(record, where, prefix='', parents=()):
    """{'mapping/Dense0/weight': array, ...}: own variables plus components' under '<key>/'."""
    state = _check_record(record, where)
    if any(record is parent for parent in parents):   # pickle memos can tie a network into a loop
        raise CheckpointError(f'{where}: a TF Network is its own component; the pickle is damaged')
    found = {}
    for item in state['variables']:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError(f'{where}: a TF variable entry is not a (name, array) pair: {item!r:.80}')
        name, value = prefix + item[0], item[1]
        if not isinstance(value, (np.ndarray, np.generic)) or value.dtype.kind not in 'fiub':
            raise CheckpointError(f'{where}: TF variable {name} is a {type(value).__name__}, not a numeric array')
        if name in found:
            raise CheckpointError(f'{where}: TF variable {name} appears twice')
        found[name] = np.asarray(value)
    for key, component in state['components'].items():
        found.update(_collect_variables(component, f'{where}/{key}', f'{prefix}{key}/', parents + (record,)))
    return found


def _flavour(state, table, where, role):
    func = state['build_func_name']
    if func in table:
        return table[func] if isinstance(table, dict) else func
    if func in _REFUSED_FUNCS:
        raise CheckpointError(f'{where}: build function {func} is {_REFUSED_FUNCS[func]}, which stylegan2-fair '
                              f'cannot rebuild; only StyleGAN2 config E/F and StyleGAN2-ADA networks convert')
    raise CheckpointError(f'{where}: unknown TF {role} build function {func!r} (supported: {sorted(table)}); '
                          f'a modified architecture cannot be converted safely')


class _Kwargs:
    """The static kwargs of a TF network, read one by one so that leftovers can be reported."""

    def __init__(self, kwargs, where):
        self.kwargs, self.where, self.used = dict(kwargs), where, set()

    def get(self, name, default=None):
        self.used.add(name)
        return self.kwargs.get(name, default)

    def ignore(self, *names):
        """Kwargs that change nothing in the weights or the maths (run-time or training-only)."""
        self.used.update(names)

    def int(self, name, default, minimum=0):
        value = self.get(name, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise CheckpointError(f'{self.where}: TF kwarg {name}={value!r} is not an integer >= {minimum}')
        return int(value)

    def number(self, name, default, allow_none=False):
        value = self.get(name, default)
        if value is None and allow_none:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise CheckpointError(f'{self.where}: TF kwarg {name}={value!r} is not a number')
        return float(value) if isinstance(value, (float, np.floating)) else int(value)

    def choice(self, name, default, choices):
        value = self.get(name, default)
        if value not in choices:
            raise CheckpointError(f'{self.where}: TF kwarg {name}={value!r} is not supported; '
                                  f'stylegan2-fair knows {sorted(choices)}')
        return value

    def only_default(self, name, default, why):
        """A kwarg this package supports only at its TF default value."""
        value = self.get(name, default)
        if value != default:
            raise CheckpointError(f'{self.where}: TF kwarg {name}={value!r} is not supported ({why}); '
                                  f'only {name}={default!r} can be converted')

    def finish(self):
        unknown = sorted(set(self.kwargs) - self.used)
        if unknown:
            shown = ', '.join(f'{name}={self.kwargs[name]!r:.40}' for name in unknown)
            raise CheckpointError(f'{self.where}: unknown TF kwargs {shown}; this converter does not know how '
                                  f'they change the network, so it refuses rather than guess')


def _activation(kw, name):
    from .ops.bias_act import activation_funcs
    return kw.choice(name, 'lrelu', set(activation_funcs))


def _resample_filter(kw):
    kernel = kw.get('resample_kernel', [1, 3, 3, 1])
    if kernel is None:
        return [1, 1]   # TF's upfirdn ops read None as a box filter of the resampling factor (2)
    if not isinstance(kernel, (list, tuple)) or not kernel or \
            not all(isinstance(v, (int, float, np.integer, np.floating)) for v in kernel):
        raise CheckpointError(f'{kw.where}: TF kwarg resample_kernel={kernel!r} is not a list of numbers')
    return [v.item() if isinstance(v, np.generic) else v for v in kernel]


def _capacity(kw):
    """fmap_* -> (channel_base, channel_max). TF's nf(stage) = fmap_base / 2**stage, so base doubles."""
    kw.only_default('fmap_decay', 1, 'our channel counts halve exactly once per resolution')
    kw.only_default('fmap_min', 1, 'our channel counts have no lower bound')
    return 2 * kw.int('fmap_base', 16384, minimum=1), kw.int('fmap_max', 512, minimum=1)


# ----------------------------------------------------------------------------------------------
# Static kwargs -> constructor kwargs

def _generator_kwargs(state, synthesis_flavour, where):
    kw = _Kwargs(state['static_kwargs'], where)
    stylegan2 = synthesis_flavour == 'stylegan2'
    z_dim = kw.int('latent_size', 512, minimum=1)
    c_dim = kw.int('label_size', 0)
    w_dim = kw.int('dlatent_size', 512, minimum=1)
    if stylegan2 and c_dim:
        raise CheckpointError(f'{where}: conditional StyleGAN2 (label_size={c_dim}) concatenates labels '
                              f'to z without an embedding layer; only StyleGAN2-ADA conditional networks convert')
    channel_base, channel_max = _capacity(kw)
    resolution = kw.int('resolution', 1024, minimum=4)
    fmap_const = kw.get('fmap_const')
    if fmap_const is not None and fmap_const != min(channel_base // 4, channel_max):
        raise CheckpointError(f'{where}: TF kwarg fmap_const={fmap_const!r} is not supported (our 4x4 const has '
                              f'as many channels as the 4x4 convolution); only fmap_const=None converts')
    kw.only_default('normalize_latents', True, 'our mapping network always normalizes z')
    # The original StyleGAN2 G_mapping defaults to 512 mapping features; ADA to dlatent_size.
    layer_features = kw.get('mapping_fmaps', 512 if stylegan2 else None)
    label_fmaps = kw.get('label_fmaps')   # None: as wide as z
    # dlatent_avg_beta is TF's name; w_avg_beta is accepted too because the official converter reads it.
    beta = kw.get('dlatent_avg_beta', kw.get('w_avg_beta', 0.995))
    # The func kwargs only pick the components, whose build functions were checked already.
    kw.ignore('mapping_func', 'synthesis_func', 'dlatent_broadcast',
              # evaluation-time and training-time settings, not weights
              'truncation_psi', 'truncation_cutoff', 'truncation_psi_val', 'truncation_cutoff_val',
              'style_mixing_prob', 'randomize_noise', 'fused_modconv', 'dtype', 'structure')
    kwargs = dict(
        z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution,
        img_channels=kw.int('num_channels', 3, minimum=1),
        mapping_kwargs=dict(
            num_layers=kw.int('mapping_layers', 8),
            embed_features=z_dim if label_fmaps is None else _as_int(label_fmaps, 'label_fmaps', where),
            layer_features=None if layer_features is None else _as_int(layer_features, 'mapping_fmaps', where),
            activation=_activation(kw, 'mapping_nonlinearity'),
            lr_multiplier=kw.number('mapping_lrmul', 0.01),
            w_avg_beta=1 if beta is None else _as_number(beta, 'dlatent_avg_beta', where)),  # None: no update
        synthesis_kwargs=dict(
            channel_base=channel_base, channel_max=channel_max,
            num_fp16_res=kw.int('num_fp16_res', 0),
            conv_clamp=kw.number('conv_clamp', None, allow_none=True),
            architecture=kw.choice('architecture', 'skip', {'orig', 'skip', 'resnet'}),
            resample_filter=_resample_filter(kw),
            use_noise=bool(kw.choice('use_noise', True, {True, False})),
            activation=_activation(kw, 'nonlinearity')))
    kw.finish()
    return kwargs


def _discriminator_kwargs(state, flavour, where):
    kw = _Kwargs(state['static_kwargs'], where)
    c_dim = kw.int('label_size', 0)
    if flavour == 'stylegan2' and c_dim:
        raise CheckpointError(f'{where}: conditional StyleGAN2 D (label_size={c_dim}) has no projection layer; '
                              f'only StyleGAN2-ADA conditional networks convert')
    channel_base, channel_max = _capacity(kw)
    activation = _activation(kw, 'nonlinearity')
    # Label mapping width: TF's None means nf(0) = min(fmap_base, fmap_max).
    cmap_dim = kw.get('mapping_fmaps')
    cmap_dim = min(channel_base // 2, channel_max) if cmap_dim is None else _as_int(cmap_dim, 'mapping_fmaps', where)
    if flavour == 'stylegan2':
        # D_stylegan2: group size 4 by default, and a group size <= 1 switches the layer off.
        group, features = kw.int('mbstd_group_size', 4), kw.int('mbstd_num_features', 1)
        mbstd = dict(mbstd_group_size=group, mbstd_num_channels=features if group > 1 else 0)
    else:
        group = kw.get('mbstd_group_size')   # D_main: None = the whole minibatch is one group
        mbstd = dict(mbstd_group_size=None if group is None else kw.int('mbstd_group_size', None, minimum=1),
                     mbstd_num_channels=kw.int('mbstd_num_features', 1))
    for name, default in (('use_pagan', False), ('use_spectral_norm', False), ('adaptive_dropout', 0),
                          ('score_size', 1), ('score_max', 1)):
        kw.only_default(name, default, 'a comparison method of the StyleGAN2-ADA paper')
    # augment_strength and pagan_* only feed the comparison methods refused above.
    kw.ignore('augment_strength', 'pagan_num', 'pagan_fade', 'dtype', 'structure')
    kwargs = dict(
        c_dim=c_dim, img_resolution=kw.int('resolution', 1024, minimum=8),
        img_channels=kw.int('num_channels', 3, minimum=1),
        architecture=kw.choice('architecture', 'resnet', {'orig', 'skip', 'resnet'}),
        channel_base=channel_base, channel_max=channel_max,
        num_fp16_res=kw.int('num_fp16_res', 0),
        conv_clamp=kw.number('conv_clamp', None, allow_none=True),
        cmap_dim=cmap_dim,
        block_kwargs=dict(activation=activation, resample_filter=_resample_filter(kw),
                          freeze_layers=kw.int('freeze_layers', 0)),
        mapping_kwargs=dict(num_layers=kw.int('mapping_layers', 0), embed_features=cmap_dim,
                            layer_features=cmap_dim, activation=activation,
                            lr_multiplier=kw.number('mapping_lrmul', 0.1)),
        epilogue_kwargs=dict(activation=activation, **mbstd))
    kw.finish()
    return kwargs


def _as_int(value, name, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CheckpointError(f'{where}: TF kwarg {name}={value!r} is not a positive integer')
    return int(value)


def _as_number(value, name, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CheckpointError(f'{where}: TF kwarg {name}={value!r} is not a number')
    return float(value)


# ----------------------------------------------------------------------------------------------
# TF variables -> our tensors. Each source is (our name, TF name, layout); layouts turn TF arrays
# (dense [in, out], conv [kh, kw, in, out]) into ours ([out, in], [out, in, kh, kw]).

def _dense(value):
    return value.T if value.ndim == 2 else None


def _conv(value):
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else None


def _conv_up(value):
    # TF runs upsampling convolutions as transposed convolutions, our layers as true convolutions
    # of the upsampled input: the same kernel turned by 180 degrees.
    return _conv(value[::-1, ::-1]) if value.ndim == 4 else None


def _style_bias(value):
    return value + 1   # TF adds the constant 1 after the style bias, we fold it into the bias


def _const(value):
    return value[0] if value.ndim == 4 and value.shape[0] == 1 else None   # [1, C, 4, 4] -> [C, 4, 4]


def _noise(value):
    return value[0, 0] if value.ndim == 4 and value.shape[:2] == (1, 1) else None   # [1, 1, H, W] -> [H, W]


def _as_is(value):
    return value


_LAYOUT_TEXT = {_dense: 'dense [in, out]', _conv: 'conv [kh, kw, in, out]', _conv_up: 'conv [kh, kw, in, out]',
                _const: 'const [1, C, 4, 4]', _noise: 'noise [1, 1, H, W]'}


def _affine_layer(ours, tf, layout):
    """weight/bias of a layer; modulated ones add their style affine (mod_weight, mod_bias)."""
    yield f'{ours}.weight', f'{tf}/weight', layout
    yield f'{ours}.bias', f'{tf}/bias', _as_is


def _modulated(ours, tf, layout):
    yield from _affine_layer(ours, tf, layout)
    yield f'{ours}.affine.weight', f'{tf}/mod_weight', _dense
    yield f'{ours}.affine.bias', f'{tf}/mod_bias', _style_bias


def _mapping_sources(mapping, ours, tf, dense_scope):
    if mapping.c_dim:
        yield from _affine_layer(f'{ours}.embed', f'{tf}LabelEmbed', _dense)
    for idx in range(mapping.num_layers):
        yield from _affine_layer(f'{ours}.fc{idx}', f'{tf}{dense_scope}{idx}', _dense)


def _generator_sources(G):
    yield 'mapping.w_avg', 'dlatent_avg', _as_is
    yield from _mapping_sources(G.mapping, 'mapping', 'mapping/', 'Dense')
    layer_idx = 0   # TF numbers the noise inputs noise0, noise1, ... over all conv layers
    for res in G.synthesis.block_resolutions:
        block, ours, tf = getattr(G.synthesis, f'b{res}'), f'synthesis.b{res}', f'synthesis/{res}x{res}'
        if res == 4:
            yield f'{ours}.const', f'{tf}/Const/const', _const
            convs = [('conv1', 'Conv', _conv)]
        else:
            convs = [('conv0', 'Conv0_up', _conv_up), ('conv1', 'Conv1', _conv)]
        for name, tf_name, layout in convs:
            yield from _modulated(f'{ours}.{name}', f'{tf}/{tf_name}', layout)
            if getattr(block, name).use_noise:
                yield f'{ours}.{name}.noise_strength', f'{tf}/{tf_name}/noise_strength', _as_is
                yield f'{ours}.{name}.noise_const', f'synthesis/noise{layer_idx}', _noise
            layer_idx += 1
        if hasattr(block, 'torgb'):
            yield from _modulated(f'{ours}.torgb', f'{tf}/ToRGB', _conv)
        if hasattr(block, 'skip'):
            yield f'{ours}.skip.weight', f'{tf}/Skip/weight', _conv_up


def _discriminator_sources(D):
    for res in D.block_resolutions:
        block, ours, tf = getattr(D, f'b{res}'), f'b{res}', f'{res}x{res}'
        if hasattr(block, 'fromrgb'):
            yield from _affine_layer(f'{ours}.fromrgb', f'{tf}/FromRGB', _conv)
        yield from _affine_layer(f'{ours}.conv0', f'{tf}/Conv0', _conv)
        yield from _affine_layer(f'{ours}.conv1', f'{tf}/Conv1_down', _conv)   # downsampling: no flip
        if hasattr(block, 'skip'):
            yield f'{ours}.skip.weight', f'{tf}/Skip/weight', _conv
    if D.c_dim:
        yield from _mapping_sources(D.mapping, 'mapping', '', 'Mapping')
    if hasattr(D.b4, 'fromrgb'):
        yield from _affine_layer('b4.fromrgb', '4x4/FromRGB', _conv)
    yield from _affine_layer('b4.conv', '4x4/Conv', _conv)
    yield from _affine_layer('b4.fc', '4x4/Dense0', _dense)
    yield from _affine_layer('b4.out', 'Output', _dense)


def _convert_variables(module, sources, variables, ignored, where):
    """{our name: tensor} from the TF variables; every TF variable must be used or known to be unused."""
    targets = module.state_dict()
    tensors, used, problems = {}, set(), []
    for ours, tf, layout in sources:
        if tf not in variables:
            problems.append(f'TF variable {tf} (for {ours}) is missing')
            continue
        used.add(tf)
        value = layout(variables[tf])
        expected = tuple(targets[ours].shape)
        if value is None or tuple(value.shape) != expected:
            layout_text = _LAYOUT_TEXT.get(layout, 'shape')
            problems.append(f'TF variable {tf} has shape {list(variables[tf].shape)}, which does not give '
                            f'{ours} {list(expected)} (TF layout {layout_text})')
            continue
        tensors[ours] = torch.from_numpy(np.array(value, dtype=np.float32, order='C'))   # copy: owns its memory
    unused = sorted(set(variables) - used - set(ignored))
    if unused:
        problems.append(f'TF variables not used by any layer: {", ".join(unused)}')
    if problems:
        raise CheckpointError(f'{where}: the TF variables do not fit {type(module).__name__}'
                              f'({module.init_kwargs}):\n  ' + '\n  '.join(problems) +
                              '\n  The pickle holds a modified architecture or does not match its static kwargs.')
    # FIR filter buffers are constants our constructors compute themselves; TF keeps no copy.
    tensors.update((name, value) for name, value in targets.items()
                   if name.endswith('resample_filter') and name not in tensors)
    return tensors


def _build(cls, kwargs, sources_of, variables, ignored, where):
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f'{where}: cannot build {cls.__name__}({kwargs}) from the TF static kwargs: '
                              f'{error}') from error
    tensors = _convert_variables(module, sources_of(module), variables, ignored, where)
    _fill(module, tensors, where)   # also checks that the sources covered every tensor of ours
    return module.eval().requires_grad_(False)


def convert_generator(record, where='G'):
    """A TF G/Gs record (G_main) -> our Generator with its weights."""
    from .networks import Generator
    state = _check_record(record, where)
    _flavour(state, _GENERATOR_FUNCS, where, 'generator')
    components = state['components']
    if sorted(components) != ['mapping', 'synthesis']:
        raise CheckpointError(f'{where}: a TF G_main has components mapping and synthesis, this one '
                              f'{sorted(components)}')
    _flavour(_check_record(components['mapping'], f'{where}/mapping'), _MAPPING_FUNCS, f'{where}/mapping', 'mapping')
    flavour = _flavour(_check_record(components['synthesis'], f'{where}/synthesis'), _SYNTHESIS_FLAVOURS,
                       f'{where}/synthesis', 'synthesis')
    kwargs = _generator_kwargs(state, flavour, where)
    # StyleGAN2's G_main keeps a 'lod' scalar left over from progressive growing; it is always 0 there.
    return _build(Generator, kwargs, _generator_sources, _collect_variables(record, where), {'lod'}, where)


def convert_discriminator(record, where='D'):
    """A TF D record (D_main or D_stylegan2) -> our Discriminator with its weights."""
    from .networks import Discriminator
    state = _check_record(record, where)
    flavour = _flavour(state, _DISCRIMINATOR_FLAVOURS, where, 'discriminator')
    if state['components']:
        raise CheckpointError(f'{where}: a TF discriminator has no components, this one {sorted(state["components"])}')
    kwargs = _discriminator_kwargs(state, flavour, where)
    return _build(Discriminator, kwargs, _discriminator_sources, _collect_variables(record, where), (), where)


def convert_tf_pickle(data, source='<pickle>', device='cpu'):
    """(G, D, Gs) TF records, as read_pickle_safely returns them -> load_network_pkl's dict."""
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, TFNetworkRecord) for net in data)):
        kinds = [type(item).__name__ for item in data] if isinstance(data, tuple) else type(data).__name__
        raise CheckpointError(f'{source}: a TF StyleGAN pickle holds the tuple (G, D, Gs) of Networks, this one '
                              f'{kinds}; it cannot be converted')
    tf_G, tf_D, tf_Gs = data
    result = dict(G=convert_generator(tf_G, f'{source}:G'), D=convert_discriminator(tf_D, f'{source}:D'),
                  G_ema=convert_generator(tf_Gs, f'{source}:Gs'), augment_pipe=None, training_set_kwargs=None)
    for key in ('G', 'D', 'G_ema'):
        result[key] = result[key].to(device)
    return result


def load_tf_network_pkl(path_or_file, device='cpu'):
    """Read a TF StyleGAN pickle with the restricted reader and convert it (nothing in it is run)."""
    return convert_tf_pickle(read_pickle_safely(path_or_file), _describe_source(path_or_file), device)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m stylegan2_fair.tf_convert',
        description='Convert a TensorFlow StyleGAN2(-ADA) pickle (G, D, Gs) to a stylegan2-fair snapshot, '
                    'without TensorFlow and without running code from the pickle.')
    parser.add_argument('source', help='TF network pickle, e.g. stylegan2-ffhq-config-f.pkl')
    parser.add_argument('dest', help='output .pkl (stylegan2-fair snapshot format)')
    args = parser.parse_args(argv)
    try:
        save_network_pkl(args.dest, load_tf_network_pkl(args.source))
    except (CheckpointError, UnsafePickleError, OSError) as error:
        sys.exit(f'error: {error}')
    print(f'wrote {args.dest}')


if __name__ == '__main__':
    main()
