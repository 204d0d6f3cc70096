"""TensorFlow StyleGAN2(-ADA) pickles: converted exactly, and read without running anything in them.

No real TF pickle is available offline, so the tests write TF-format pickles themselves: a stand-in
class registered as `dnnlib.tflib.network.Network` pickles the same state dict a TF Network does,
with variables made from one of our networks by the inverse of the TF layouts (dense [in, out];
conv [kh, kw, in, out], upsampling kernels turned by 180 degrees; const [1, C, 4, 4]; noise
[1, 1, H, W]; style bias stored without its +1). The round trip ours -> TF -> ours must then be
exact.
"""
import contextlib
import copy
import json
import os
import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch

from stylegan2_fair import checkpoint, tf_convert
from stylegan2_fair.checkpoint import CheckpointError, UnsafePickleError
from stylegan2_fair.networks import Discriminator, Generator
try:
    from tests import malicious_pickles as mp
except ImportError:   # tests/ is not a package: pytest put tests/ itself on sys.path
    import malicious_pickles as mp

FIXTURE_CASES = ['uncond-skip-resnet-32', 'cond5-skip-resnet-16-clamp']
HARMLESS_SRC = '# the TF build module would be here\n'


# ----------------------------------------------------------------------------------------------
# Writing TF-format pickles

@contextlib.contextmanager
def fake_tflib():
    """Make `dnnlib.tflib.network.Network` a picklable stand-in for as long as the block runs."""
    names = ['dnnlib', 'dnnlib.tflib', 'dnnlib.tflib.network']
    saved = {name: sys.modules.get(name) for name in names}

    class Network:
        def __init__(self, state):
            self.state = state

        def __getstate__(self):
            return self.state

    Network.__module__, Network.__qualname__ = 'dnnlib.tflib.network', 'Network'
    modules = {name: types.ModuleType(name) for name in names}
    modules['dnnlib'].tflib = modules['dnnlib.tflib']
    modules['dnnlib.tflib'].network = modules['dnnlib.tflib.network']
    modules['dnnlib.tflib.network'].Network = Network
    sys.modules.update(modules)
    try:
        yield Network
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def tf_state(name, func, kwargs, variables, components=None, version=5, src=HARMLESS_SRC):
    state = dict(version=version, name=name, static_kwargs=dict(kwargs), components=dict(components or {}),
                 build_module_src=src, build_func_name=func,
                 variables=[(key, np.asarray(value, dtype=np.float32)) for key, value in variables.items()])
    if version >= 5:   # StyleGAN2-ADA's dnnlib also records the graph's inputs and outputs
        state.update(input_shapes=[[None, 1]], output_shapes=[[None, 1]], input_names=['x'], output_names=['y'])
    return state


def dump_tf_pickle(nets, protocol=3):
    """nets: (G, D, Gs) TF state dicts (components holding state dicts too) -> pickle bytes."""
    with fake_tflib() as Network:
        def wrap(state):
            state = dict(state)
            state['components'] = {key: wrap(value) for key, value in state['components'].items()}
            return Network(state)
        return pickle.dumps(tuple(wrap(state) for state in nets), protocol=protocol)


# Inverse layouts: our tensor -> TF array.
def _dense(t):
    return t.T


def _conv(t):
    return t.permute(2, 3, 1, 0)


def _conv_up(t):
    return t.permute(2, 3, 1, 0).flip(0, 1)


_G_LAYOUT = [   # (pattern on our name, TF name template, inverse layout)
    (r'mapping\.w_avg', 'dlatent_avg', None),
    (r'mapping\.embed\.(weight|bias)', 'mapping/LabelEmbed/{1}', _dense),
    (r'mapping\.fc(\d+)\.(weight|bias)', 'mapping/Dense{1}/{2}', _dense),
    (r'synthesis\.b4\.const', 'synthesis/4x4/Const/const', lambda t: t[None]),
    (r'synthesis\.b4\.conv1\.(weight|bias|noise_strength)', 'synthesis/4x4/Conv/{1}', _conv),
    (r'synthesis\.b(\d+)\.conv0\.(weight|bias|noise_strength)', 'synthesis/{1}x{1}/Conv0_up/{2}', _conv_up),
    (r'synthesis\.b(\d+)\.conv1\.(weight|bias|noise_strength)', 'synthesis/{1}x{1}/Conv1/{2}', _conv),
    (r'synthesis\.b(\d+)\.torgb\.(weight|bias)', 'synthesis/{1}x{1}/ToRGB/{2}', _conv),
    (r'synthesis\.b(\d+)\.skip\.weight', 'synthesis/{1}x{1}/Skip/weight', _conv_up),
]
_STYLE = {'4': 'Conv', 'conv0': 'Conv0_up', 'conv1': 'Conv1', 'torgb': 'ToRGB'}
_D_LAYOUT = [
    (r'b(\d+)\.fromrgb\.(weight|bias)', '{1}x{1}/FromRGB/{2}', _conv),
    (r'b(\d+)\.conv0\.(weight|bias)', '{1}x{1}/Conv0/{2}', _conv),
    (r'b(\d+)\.conv1\.(weight|bias)', '{1}x{1}/Conv1_down/{2}', _conv),
    (r'b(\d+)\.skip\.weight', '{1}x{1}/Skip/weight', _conv),
    (r'b4\.conv\.(weight|bias)', '4x4/Conv/{1}', _conv),
    (r'b4\.fc\.(weight|bias)', '4x4/Dense0/{1}', _dense),
    (r'b4\.out\.(weight|bias)', 'Output/{1}', _dense),
    (r'mapping\.embed\.(weight|bias)', 'LabelEmbed/{1}', _dense),
    (r'mapping\.fc(\d+)\.(weight|bias)', 'Mapping{1}/{2}', _dense),
]


def _apply(table, name, tensor):
    for pattern, template, layout in table:
        match = re.fullmatch(pattern, name)
        if match:
            tf_name = template.format(*([match.group(0)] + list(match.groups())))
            # Only weights and the const have a layout; biases and scalars are stored as they are.
            has_layout = layout is not None and name.endswith(('weight', 'const'))
            return tf_name, layout(tensor) if has_layout else tensor
    raise AssertionError(f'test inverse mapping has no rule for {name}')


def g_variables(G):
    """Our Generator -> {TF variable name: array} over G, mapping/ and synthesis/."""
    out = {}
    for name, tensor in G.state_dict().items():
        match = re.fullmatch(r'synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(affine\.weight|affine\.bias|noise_const)', name)
        if name.endswith('resample_filter'):
            continue
        if match:
            res, layer, what = int(match.group(1)), match.group(2), match.group(3)
            if what == 'noise_const':   # TF numbers noise inputs over all conv layers: 4x4 is 0
                index = 0 if res == 4 else 2 * int(np.log2(res)) - (5 if layer == 'conv0' else 4)
                out[f'synthesis/noise{index}'] = tensor[None, None]
                continue
            scope = _STYLE['4'] if res == 4 and layer == 'conv1' else _STYLE[layer]
            tf_name = f'synthesis/{res}x{res}/{scope}/' + ('mod_weight' if what == 'affine.weight' else 'mod_bias')
            out[tf_name] = tensor.T if what == 'affine.weight' else tensor - 1
            continue
        tf_name, value = _apply(_G_LAYOUT, name, tensor)
        out[tf_name] = value
    return {key: value.detach().numpy().copy() for key, value in out.items()}


def d_variables(D):
    return {tf_name: value.detach().numpy().copy() for tf_name, value in
            (_apply(_D_LAYOUT, name, tensor) for name, tensor in D.state_dict().items()
             if not name.endswith('resample_filter'))}


def g_static_kwargs(G):
    """Our Generator's constructor kwargs -> TF G_main static kwargs (explicit where defaults differ)."""
    kw = G.init_kwargs
    mk, sk = kw.get('mapping_kwargs') or {}, kw.get('synthesis_kwargs') or {}
    tf = dict(latent_size=kw['z_dim'], label_size=kw['c_dim'], dlatent_size=kw['w_dim'],
              resolution=kw['img_resolution'], num_channels=kw['img_channels'],
              mapping_layers=mk.get('num_layers', 8), mapping_lrmul=mk.get('lr_multiplier', 0.01),
              label_fmaps=mk.get('embed_features') or kw['w_dim'],   # ours: w_dim, TF: latent_size
              mapping_fmaps=mk.get('layer_features'), dlatent_avg_beta=mk.get('w_avg_beta', 0.995),
              mapping_nonlinearity=mk.get('activation', 'lrelu'),
              fmap_base=sk.get('channel_base', 32768) // 2, fmap_max=sk.get('channel_max', 512),
              num_fp16_res=sk.get('num_fp16_res', 0), conv_clamp=sk.get('conv_clamp'),
              architecture=sk.get('architecture', 'skip'), use_noise=sk.get('use_noise', True),
              nonlinearity=sk.get('activation', 'lrelu'),
              resample_kernel=None if list(sk.get('resample_filter', [1, 3, 3, 1])) == [1, 1]
              else list(sk.get('resample_filter', [1, 3, 3, 1])),
              truncation_psi=0.5, style_mixing_prob=0.9, randomize_noise=True)   # run-time only
    return tf


def d_static_kwargs(D):
    kw = D.init_kwargs
    bk, mk, ek = (kw.get(key) or {} for key in ('block_kwargs', 'mapping_kwargs', 'epilogue_kwargs'))
    channel_base, channel_max = kw.get('channel_base', 32768), kw.get('channel_max', 512)
    cmap_dim = kw.get('cmap_dim') or min(channel_base // 4, channel_max)
    assert mk.get('embed_features') in (None, cmap_dim) and mk.get('layer_features') in (None, cmap_dim)
    return dict(label_size=kw['c_dim'], resolution=kw['img_resolution'], num_channels=kw['img_channels'],
                architecture=kw.get('architecture', 'resnet'), fmap_base=channel_base // 2, fmap_max=channel_max,
                num_fp16_res=kw.get('num_fp16_res', 0), conv_clamp=kw.get('conv_clamp'),
                mapping_layers=mk.get('num_layers', 8), mapping_fmaps=cmap_dim,
                mapping_lrmul=mk.get('lr_multiplier', 0.01), nonlinearity=bk.get('activation', 'lrelu'),
                resample_kernel=list(bk.get('resample_filter', [1, 3, 3, 1])),
                freeze_layers=bk.get('freeze_layers', 0), mbstd_group_size=ek.get('mbstd_group_size', 4),
                mbstd_num_features=ek.get('mbstd_num_channels', 1))


def g_tf_state(G, name='G', kwargs=None, version=5, src=HARMLESS_SRC, synthesis_func='G_synthesis',
               extra_g_variables=None):
    variables = g_variables(G)
    parts = {'': {}, 'mapping/': {}, 'synthesis/': {}}
    for key, value in variables.items():
        prefix = next((p for p in ('mapping/', 'synthesis/') if key.startswith(p)), '')
        parts[prefix][key[len(prefix):]] = value
    parts[''].update(extra_g_variables or {})
    kwargs = g_static_kwargs(G) if kwargs is None else kwargs
    mapping = tf_state('G_mapping', 'G_mapping', dict(kwargs, dlatent_broadcast=G.num_ws), parts['mapping/'],
                       version=version, src=src)
    synthesis = tf_state('G_synthesis', synthesis_func, kwargs, parts['synthesis/'], version=version, src=src)
    return tf_state(name, 'G_main', kwargs, parts[''], dict(mapping=mapping, synthesis=synthesis),
                    version=version, src=src)


def d_tf_state(D, kwargs=None, version=5, src=HARMLESS_SRC, func='D_main'):
    return tf_state('D', func, d_static_kwargs(D) if kwargs is None else kwargs, d_variables(D),
                    version=version, src=src)


def randomized(module, seed):
    """`module` with every tensor random (zero biases or noise strengths would hide layout errors)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not name.endswith('resample_filter'):
                tensor.copy_(torch.randn_like(tensor) * 0.5 + (1 if name.endswith('affine.bias') else 0))
    return module.eval().requires_grad_(False)


def write(tmp_path, data, name='tf.pkl'):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_same_state(ours, loaded):
    expected, got = ours.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def assert_same_outputs(G, D, G2, D2, batch=4):
    torch.manual_seed(123)
    z = torch.randn([batch, G.z_dim])
    c = torch.nn.functional.one_hot(torch.arange(batch) % max(G.c_dim, 1), max(G.c_dim, 1)).float()[:, :G.c_dim]
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode='const')
        img2 = G2(z, c, truncation_psi=0.7, noise_mode='const')
        assert torch.equal(img, img2)
        assert torch.equal(D(img, c), D2(img, c))


# ----------------------------------------------------------------------------------------------
# Round trips

@pytest.fixture(params=FIXTURE_CASES)
def fixture_nets(request, official_fixtures):
    """(G, D, Gs) of our classes, random weights, with the official fixture architecture."""
    config = json.loads((official_fixtures / f'{request.param}.json').read_text())
    G = randomized(Generator(**config['G_kwargs']), 1)
    Gs = randomized(copy.deepcopy(G), 2)
    D = randomized(Discriminator(**config['D_kwargs']), 3)
    return G, D, Gs


def fixture_pickle(G, D, Gs, **g_options):
    return dump_tf_pickle((g_tf_state(G, **g_options), d_tf_state(D), g_tf_state(Gs, name='Gs', **g_options)))


def test_tf_pickle_of_fixture_architectures_round_trips_exactly(tmp_path, fixture_nets):
    G, D, Gs = fixture_nets
    loaded = checkpoint.load_network_pkl(write(tmp_path, fixture_pickle(G, D, Gs)))
    assert type(loaded['G']) is Generator and type(loaded['G_ema']) is Generator
    assert type(loaded['D']) is Discriminator
    assert loaded['augment_pipe'] is None and loaded['training_set_kwargs'] is None
    assert_same_state(G, loaded['G'])
    assert_same_state(Gs, loaded['G_ema'])   # G_ema comes from Gs, not from G
    assert_same_state(D, loaded['D'])
    assert_same_outputs(G, D, loaded['G'], loaded['D'])
    assert_same_outputs(Gs, D, loaded['G_ema'], loaded['D'])
    assert not loaded['G'].training and not any(p.requires_grad for p in loaded['G'].parameters())


def test_converted_kwargs_rebuild_the_same_architecture(tmp_path, fixture_nets):
    G, D, Gs = fixture_nets
    loaded = checkpoint.load_network_pkl(write(tmp_path, fixture_pickle(G, D, Gs)))
    for ours, got in ((G, loaded['G']), (D, loaded['D'])):
        shapes = {name: value.shape for name, value in type(ours)(**got.init_kwargs).state_dict().items()}
        assert shapes == {name: value.shape for name, value in ours.state_dict().items()}
    assert loaded['D'].b4.mbstd.group_size == D.b4.mbstd.group_size


def test_stylegan2_config_f_flavour_uses_its_own_defaults(tmp_path):
    # A small config-F-like pickle of the original StyleGAN2 (version 4, G_synthesis_stylegan2,
    # D_stylegan2): only the dataset kwargs and capacity are stored, so the defaults of that code
    # base apply (mapping_fmaps=512, mbstd_group_size=4), and G_main carries a 'lod' variable.
    G = randomized(Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                             mapping_kwargs=dict(num_layers=2, layer_features=512, lr_multiplier=0.01),
                             synthesis_kwargs=dict(channel_base=1024, channel_max=32)), 4)
    D = randomized(Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=32), 5)
    g_kwargs = dict(num_channels=3, resolution=32, label_size=0, latent_size=32, dlatent_size=32,
                    mapping_layers=2, fmap_base=512, fmap_max=32, truncation_psi=0.5)
    d_kwargs = dict(num_channels=3, resolution=32, label_size=0, fmap_base=512, fmap_max=32, mbstd_num_features=1)
    lod = {'lod': np.float32(0)}
    nets = (g_tf_state(G, kwargs=g_kwargs, version=4, synthesis_func='G_synthesis_stylegan2', extra_g_variables=lod),
            d_tf_state(D, kwargs=d_kwargs, version=4, func='D_stylegan2'),
            g_tf_state(G, name='Gs', kwargs=g_kwargs, version=4, synthesis_func='G_synthesis_stylegan2',
                       extra_g_variables=lod))
    with open(write(tmp_path, dump_tf_pickle(nets, protocol=4)), 'rb') as file:   # file objects work too
        loaded = checkpoint.load_network_pkl(file)
    assert loaded['G'].mapping.fc0.out_features == 512
    assert loaded['D'].b4.mbstd.group_size == 4
    assert_same_state(G, loaded['G_ema'])
    assert_same_state(D, loaded['D'])
    assert_same_outputs(G, D, loaded['G_ema'], loaded['D'], batch=8)


@pytest.mark.parametrize('g_architecture', ['orig', 'resnet'])
def test_ada_variants_convert_exactly(tmp_path, g_architecture):
    # Conditional, relu, box filter, no noise (G); skip, Freeze-D, no minibatch std (D); and the
    # TF default label embedding width (latent_size, where ours defaults to w_dim).
    act = 'relu'
    G = randomized(Generator(z_dim=16, c_dim=3, w_dim=24, img_resolution=16, img_channels=1,
                             mapping_kwargs=dict(num_layers=2, embed_features=16, layer_features=20,
                                                 activation=act, lr_multiplier=0.05, w_avg_beta=0.99),
                             synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture=g_architecture,
                                                   use_noise=False, resample_filter=[1, 1], activation=act)), 6)
    D = randomized(Discriminator(c_dim=3, img_resolution=16, img_channels=1, architecture='skip', channel_base=512,
                                 channel_max=32, cmap_dim=16,
                                 block_kwargs=dict(activation=act, freeze_layers=2, resample_filter=[1, 3, 3, 1]),
                                 mapping_kwargs=dict(num_layers=1, activation=act, lr_multiplier=0.1),
                                 epilogue_kwargs=dict(mbstd_num_channels=0, activation=act)), 7)
    g_kwargs = g_static_kwargs(G)
    del g_kwargs['label_fmaps']
    data = dump_tf_pickle((g_tf_state(G, kwargs=g_kwargs), d_tf_state(D), g_tf_state(G, kwargs=g_kwargs)))
    loaded = checkpoint.load_network_pkl(write(tmp_path, data))
    assert not hasattr(loaded['G'].synthesis.b8.conv0, 'noise_const')
    assert hasattr(loaded['G'].synthesis.b8, 'skip') == (g_architecture == 'resnet')
    assert 'b16.fromrgb.weight' in dict(loaded['D'].named_buffers())   # frozen layers are buffers
    assert loaded['D'].b4.mbstd is None
    assert_same_state(G, loaded['G'])
    assert_same_state(D, loaded['D'])
    assert_same_outputs(G, D, loaded['G'], loaded['D'])


@pytest.fixture
def small_nets():
    G = randomized(Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                             mapping_kwargs=dict(num_layers=1),
                             synthesis_kwargs=dict(channel_base=64, channel_max=8)), 8)
    D = randomized(Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8), 9)
    return G, D


def test_ada_default_minibatch_group_is_the_whole_batch(tmp_path, small_nets):
    G, D = small_nets
    d_kwargs = d_static_kwargs(D)
    del d_kwargs['mbstd_group_size']
    data = dump_tf_pickle((g_tf_state(G), d_tf_state(D, kwargs=d_kwargs), g_tf_state(G)))
    assert checkpoint.load_network_pkl(write(tmp_path, data))['D'].b4.mbstd.group_size is None


def test_command_line_writes_a_snapshot_of_ours(tmp_path, small_nets, capsys):
    G, D = small_nets
    source = write(tmp_path, fixture_pickle(G, D, G))
    tf_convert.main([str(source), str(tmp_path / 'converted.pkl')])
    assert 'wrote' in capsys.readouterr().out
    converted = checkpoint.load_network_pkl(tmp_path / 'converted.pkl')
    assert_same_state(G, converted['G_ema'])
    assert_same_state(D, converted['D'])


# ----------------------------------------------------------------------------------------------
# Safety

def test_build_module_src_is_never_executed(tmp_path, small_nets):
    G, D = small_nets
    marker = tmp_path / 'build_module_src_ran'
    src = f'open({os.fspath(marker)!r}, "w").close()\ndef G_main(*args, **kwargs):\n    pass\n'
    data = dump_tf_pickle((g_tf_state(G, src=src), d_tf_state(D, src=src), g_tf_state(G, src=src)))
    loaded = checkpoint.load_network_pkl(write(tmp_path, data))
    assert loaded['G_ema'] is not None and not marker.exists()
    assert not [name for name in sys.modules if name.split('.')[0] == 'dnnlib']
    # Control: the embedded source is live; TF's own loader execs it and would create the marker.
    exec(compile(src, '<build_module_src>', 'exec'), {})
    assert marker.exists()


def test_other_tflib_globals_are_refused_with_a_hint(tmp_path):
    data = mp.dumps((mp.Call(mp.Global('dnnlib.tflib.optimizer', 'Optimizer')),))
    with pytest.raises(UnsafePickleError, match=r'refused global dnnlib\.tflib\.optimizer\.Optimizer.*'
                                                r'only dnnlib\.tflib\.network\.Network'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_tf_network_state_must_be_a_dict(tmp_path):
    with fake_tflib() as Network:
        data = pickle.dumps((Network(['not', 'a', 'dict']),) * 3, protocol=3)
    with pytest.raises(UnsafePickleError, match='pickles a dict state, this one a list'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_payload_inside_tf_variables_is_refused(tmp_path, small_nets):
    G, D = small_nets
    marker = tmp_path / 'payload_ran'
    state = d_tf_state(D)
    state['variables'][0] = ('4x4/Conv/weight', mp.Call(mp.Global('os', 'system'), f'touch {marker}'))
    with fake_tflib() as Network:
        # The test pickler writes Global/Call objects; the Networks themselves pickle normally.
        data = mp.dumps((Network(g_tf_state(G) | {'components': {}}), Network(state), Network(state)))
    with pytest.raises(UnsafePickleError, match='refused global os.system'):
        checkpoint.load_network_pkl(write(tmp_path, data))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Clear refusals

def _with_kwarg(G, D, net, key, value):
    g_kwargs, d_kwargs = g_static_kwargs(G), d_static_kwargs(D)
    (g_kwargs if net == 'G' else d_kwargs)[key] = value
    return dump_tf_pickle((g_tf_state(G, kwargs=g_kwargs), d_tf_state(D, kwargs=d_kwargs),
                           g_tf_state(G, kwargs=g_kwargs)))


@pytest.mark.parametrize('net, key, value, message', [
    ('G', 'attention_layers', 2, r'G: unknown TF kwargs attention_layers=2'),
    ('G', 'fmap_decay', 0.5, r'G: TF kwarg fmap_decay=0.5 is not supported .*only fmap_decay=1'),
    ('G', 'normalize_latents', False, r'TF kwarg normalize_latents=False is not supported'),
    ('G', 'architecture', 'transformer', r"TF kwarg architecture='transformer' is not supported; .*'resnet'"),
    ('G', 'mapping_nonlinearity', 'gelu', r"mapping_nonlinearity='gelu' is not supported"),
    ('G', 'fmap_const', 5, r'fmap_const=5 is not supported'),
    ('D', 'use_spectral_norm', True, r'D: TF kwarg use_spectral_norm=True is not supported \(a comparison method'),
    ('D', 'use_pagan', True, r'use_pagan=True is not supported'),
    ('D', 'resolution', 8.5, r'resolution=8.5 is not an integer'),
])
def test_unsupported_static_kwarg_is_refused_by_name(tmp_path, small_nets, net, key, value, message):
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_network_pkl(write(tmp_path, _with_kwarg(*small_nets, net, key, value)))


@pytest.mark.parametrize('where, func, message', [
    ('G', 'G_style', r'G_style is a StyleGAN \(v1\) generator'),
    ('synthesis', 'G_synthesis_stylegan_revised', r'progressive StyleGAN2 config A-D'),
    ('D', 'D_stylegan', r'progressive StyleGAN2 config A-D discriminator'),
    ('D', 'D_custom', r"unknown TF discriminator build function 'D_custom'"),
])
def test_unsupported_build_function_is_refused(tmp_path, small_nets, where, func, message):
    G, D = small_nets
    g_state, d_state = g_tf_state(G), d_tf_state(D)
    target = {'G': g_state, 'D': d_state, 'synthesis': g_state['components']['synthesis']}[where]
    target['build_func_name'] = func
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_network_pkl(write(tmp_path, dump_tf_pickle((g_state, d_state, g_state))))


def test_conditional_original_stylegan2_is_refused(tmp_path, small_nets):
    G, D = small_nets
    g_state = g_tf_state(G, synthesis_func='G_synthesis_stylegan2')
    g_state['static_kwargs']['label_size'] = 4
    with pytest.raises(CheckpointError, match=r'conditional StyleGAN2 \(label_size=4\) concatenates labels'):
        checkpoint.load_network_pkl(write(tmp_path, dump_tf_pickle((g_state, d_tf_state(D), g_state))))


def test_old_pickle_version_is_refused(tmp_path, small_nets):
    G, D = small_nets
    data = dump_tf_pickle((g_tf_state(G), d_tf_state(D, version=3), g_tf_state(G)))
    with pytest.raises(CheckpointError, match=r':D: TF Network pickle version 3 is too old'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_network_that_contains_itself_is_refused(tmp_path, small_nets):
    G, D = small_nets
    with fake_tflib() as Network:
        g_state = g_tf_state(G)
        g_state['components'] = {key: Network(value) for key, value in g_state['components'].items()}
        g = Network(g_state)
        g_state['components']['synthesis'].state['components'] = {'loop': g}   # a cycle, through the memo
        data = pickle.dumps((g, Network(d_tf_state(D)), g), protocol=3)
    with pytest.raises(CheckpointError, match=r':G/synthesis/loop: a TF Network is its own component'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_pickle_must_hold_g_d_gs(tmp_path, small_nets):
    G, D = small_nets
    with pytest.raises(CheckpointError, match=r'holds the tuple \(G, D, Gs\) of Networks, this one'):
        checkpoint.load_network_pkl(write(tmp_path, dump_tf_pickle((g_tf_state(G), d_tf_state(D)))))


def _edit_synthesis(G, D, edit):
    g_state = g_tf_state(G)
    synthesis = g_state['components']['synthesis']
    variables = dict(synthesis['variables'])
    edit(variables)
    synthesis['variables'] = list(variables.items())
    return dump_tf_pickle((g_tf_state(G), d_tf_state(D), g_state))


def test_missing_variable_is_named(tmp_path, small_nets):
    data = _edit_synthesis(*small_nets, lambda v: v.pop('8x8/Conv1/weight'))
    with pytest.raises(CheckpointError, match=r'(?s):Gs: .*TF variable synthesis/8x8/Conv1/weight '
                                              r'\(for synthesis\.b8\.conv1\.weight\) is missing'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_variable_with_wrong_shape_is_named(tmp_path, small_nets):
    data = _edit_synthesis(*small_nets, lambda v: v.update({'8x8/ToRGB/mod_weight': np.zeros([8, 5], np.float32)}))
    with pytest.raises(CheckpointError, match=r'TF variable synthesis/8x8/ToRGB/mod_weight has shape \[8, 5\], '
                                              r'which does not give synthesis\.b8\.torgb\.affine\.weight \[8, 8\]'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_unknown_variable_is_named(tmp_path, small_nets):
    data = _edit_synthesis(*small_nets, lambda v: v.update({'8x8/Attention/weight': np.zeros([3], np.float32)}))
    with pytest.raises(CheckpointError, match=r'TF variables not used by any layer: synthesis/8x8/Attention/weight'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_static_kwargs_that_disagree_with_the_variables_are_reported(tmp_path, small_nets):
    G, D = small_nets
    data = _with_kwarg(G, D, 'G', 'fmap_max', 4)   # a narrower network than the variables hold
    with pytest.raises(CheckpointError, match=r'(?s)do not fit Generator.*has shape .* which does not give'):
        checkpoint.load_network_pkl(write(tmp_path, data))


def test_train_finetunes_a_tf_pickle_with_its_own_architecture(tmp_path, small_nets, toy_zip, monkeypatch):
    from stylegan2_fair.cli.train import setup_training_options
    from stylegan2_fair.training_loop import TrainingLoop
    G, D = small_nets
    pkl = str(write(tmp_path, fixture_pickle(G, D, G)))
    _, args = setup_training_options(data=toy_zip, cfg='tiny', workers=0, device='cpu', aug='noaug', resume=pkl,
                                     resume_arch=True, lr_scale=0.1)
    for key in ('num_gpus', 'fair_method', 'hook_kwargs'):
        args.pop(key)
    args.update(batch_size=4, batch_gpu=4, total_kimg=0.008, kimg_per_tick=0.008, image_snapshot_ticks=0,
                network_snapshot_ticks=1)
    monkeypatch.setattr(TrainingLoop, '_save_fakes', lambda self, filename: None)
    TrainingLoop(run_dir=str(tmp_path / 'run'), progress=False, **args).train()   # 2 iterations
    tuned = checkpoint.load_network_pkl(tmp_path / 'run' / 'network-snapshot-000000.pkl')
    for name, net in (('G', G), ('D', D)):
        before, after = net.state_dict(), tuned[name].state_dict()
        assert before.keys() == after.keys()
        moved = max(float((after[k] - before[k]).abs().max()) for k, _ in net.named_parameters())
        assert 0 < moved < 0.01, name   # started from the TF weights; Adam at lr 2.5e-4 moved them a little
