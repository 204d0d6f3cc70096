"""Specification of stylegan2_fair.networks: official names and numbers, architectures, training
features (freezing, truncation, fp16 fallback on CPU, double backward)."""
import json

import numpy as np
import pytest
import torch

from stylegan2_fair import networks
from stylegan2_fair.networks import (Conv2dLayer, Discriminator, FullyConnectedLayer, Generator,
                                     MappingNetwork, SynthesisLayer)

CASES = ['uncond-skip-resnet-32', 'cond5-skip-resnet-16-clamp']
TOL = 1e-4


def _official_case(fixtures_dir, case):
    meta = json.loads((fixtures_dir / f'{case}.json').read_text())
    with np.load(fixtures_dir / f'{case}.npz') as npz:
        arrays = {key: torch.from_numpy(npz[key]) for key in npz.files}
    state = {prefix: {key[len(prefix) + 1:]: value for key, value in arrays.items()
                      if key.startswith(prefix + '.')} for prefix in ('G', 'D')}
    return meta, arrays, state


@pytest.fixture(scope='module', params=CASES)
def official_case(request, official_fixtures):
    """(arrays, G, D) with the official weights loaded strictly, in eval mode."""
    meta, arrays, state = _official_case(official_fixtures, request.param)
    torch.manual_seed(0)
    G = Generator(**meta['G_kwargs']).eval()
    D = Discriminator(**meta['D_kwargs']).eval()
    G.load_state_dict(state['G'], strict=True)
    D.load_state_dict(state['D'], strict=True)
    return arrays, G, D


def _max_diff(a, b):
    return float((a.detach() - b).abs().max())


def _small_G(**synthesis_kwargs):
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                     mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=64, channel_max=8, **synthesis_kwargs))


def _small_D(c_dim=0, **kwargs):
    return Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=64,
                         channel_max=8, **kwargs)


# ---------------------------------------------------------------------------------------------
# Compatibility with the official networks (golden fixtures)

@pytest.mark.parametrize('case', CASES)
def test_state_dict_names_and_shapes_equal_official(official_fixtures, case):
    meta, _, state = _official_case(official_fixtures, case)
    for net, prefix in ((Generator(**meta['G_kwargs']), 'G'),
                        (Discriminator(**meta['D_kwargs']), 'D')):
        ours = {name: tuple(t.shape) for name, t in net.state_dict().items()}
        official = {name: tuple(t.shape) for name, t in state[prefix].items()}
        assert ours == official


def test_mapping_matches_official(official_case):
    arrays, G, _ = official_case
    with torch.no_grad():
        ws = G.mapping(arrays['z'], arrays['c'], truncation_psi=1)
        ws_trunc = G.mapping(arrays['z'], arrays['c'], truncation_psi=0.7)
    assert _max_diff(ws, arrays['ws']) <= TOL
    assert _max_diff(ws_trunc, arrays['ws_trunc07']) <= TOL


@pytest.mark.parametrize('ws_key, noise_mode, img_key', [
    ('ws', 'const', 'img'), ('ws_trunc07', 'const', 'img_trunc07'), ('ws', 'none', 'img_noise_none')])
def test_synthesis_matches_official(official_case, ws_key, noise_mode, img_key):
    arrays, G, _ = official_case
    with torch.no_grad():
        img = G.synthesis(arrays[ws_key], noise_mode=noise_mode)
    assert img.dtype == torch.float32
    assert _max_diff(img, arrays[img_key]) <= TOL


def test_synthesis_in_training_mode_matches_official(official_case):
    # Training mode uses the non-fused modulated conv: same numbers by another route.
    arrays, G, _ = official_case
    G.train()
    try:
        with torch.no_grad():
            img = G.synthesis(arrays['ws'], noise_mode='const')
    finally:
        G.eval()
    assert _max_diff(img, arrays['img']) <= TOL


def test_discriminator_matches_official(official_case):
    arrays, _, D = official_case
    with torch.no_grad():
        logits = D(arrays['img'], arrays['c'])
    assert logits.shape == (arrays['img'].shape[0], 1)
    assert _max_diff(logits, arrays['d_logits']) <= TOL


def test_generator_call_equals_mapping_then_synthesis(official_case):
    arrays, G, _ = official_case
    with torch.no_grad():
        img = G(arrays['z'], arrays['c'], truncation_psi=0.7, noise_mode='const')
    assert _max_diff(img, arrays['img_trunc07']) <= TOL


# ---------------------------------------------------------------------------------------------
# Architectures and training features

@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_generator_architectures_run_forward_and_backward(architecture):
    torch.manual_seed(0)
    G = _small_G(architecture=architecture)
    img = G(torch.randn([2, 8]), None)
    assert img.shape == (2, 3, 16, 16)
    img.square().mean().backward()
    assert all(p.grad is not None for p in G.parameters())


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_discriminator_architectures_run_forward_and_backward(architecture):
    torch.manual_seed(0)
    D = _small_D(c_dim=3, architecture=architecture, epilogue_kwargs=dict(mbstd_group_size=2))
    c = torch.eye(3)[[0, 2]]
    logits = D(torch.randn([2, 3, 16, 16]), c)
    assert logits.shape == (2, 1)
    logits.sum().backward()
    assert all(p.grad is not None for p in D.parameters())


def test_skip_architecture_has_torgb_in_every_block_and_orig_only_in_last():
    skip, orig = _small_G(architecture='skip'), _small_G(architecture='orig')
    assert all(hasattr(getattr(skip.synthesis, f'b{r}'), 'torgb') for r in (4, 8, 16))
    assert [hasattr(getattr(orig.synthesis, f'b{r}'), 'torgb') for r in (4, 8, 16)] == \
        [False, False, True]
    assert skip.num_ws == orig.num_ws == 6 == skip.mapping.num_ws == skip.synthesis.num_ws


def test_freeze_layers_moves_first_layers_into_buffers():
    # Layers count from the input: b16.fromrgb (0), b16.conv0 (1), b16.conv1 (2), b16.skip (3).
    D = _small_D(block_kwargs=dict(freeze_layers=2))
    params = dict(D.named_parameters())
    buffers = dict(D.named_buffers())
    for name in ('b16.fromrgb.weight', 'b16.fromrgb.bias', 'b16.conv0.weight', 'b16.conv0.bias'):
        assert name in buffers and name not in params
    for name in ('b16.conv1.weight', 'b16.skip.weight', 'b8.conv0.weight', 'b4.out.weight'):
        assert name in params and name not in buffers
    # The state dict (hence official snapshots) is unchanged by freezing.
    assert set(D.state_dict()) == set(_small_D().state_dict())


def test_truncation_cutoff_leaves_later_ws_untouched():
    torch.manual_seed(0)
    G = _small_G()
    G.mapping.w_avg.normal_()
    z = torch.randn([3, 8])
    ws = G.mapping(z, None)
    ws_cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.equal(ws_cut[:, 2:], ws[:, 2:])
    expected_head = G.mapping.w_avg + 0.5 * (ws[:, :2] - G.mapping.w_avg)
    assert torch.allclose(ws_cut[:, :2], expected_head, atol=1e-6)


def test_every_w_of_a_mixed_style_vector_reaches_the_image():
    # Style mixing swaps ws[:, cutoff:] for another z's: each of the num_ws entries must matter.
    torch.manual_seed(0)
    G = _small_G().eval()
    ws = G.mapping(torch.randn([1, 8]), None)
    with torch.no_grad():
        base = G.synthesis(ws, noise_mode='const')
        for idx in range(G.num_ws):
            mixed = ws.clone()
            mixed[:, idx:] = G.mapping(torch.randn([1, 8]), None)[:, idx:]
            assert not torch.allclose(G.synthesis(mixed, noise_mode='const'), base)


def test_w_avg_tracks_batch_mean_in_training_mode_only():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=4, num_layers=2)
    z = torch.randn([5, 8])
    mapping.eval()(z, None)
    assert torch.count_nonzero(mapping.w_avg) == 0
    mapping.train()(z, None, skip_w_avg_update=True)
    assert torch.count_nonzero(mapping.w_avg) == 0
    w = mapping.train()(z, None)[:, 0]
    assert torch.allclose(mapping.w_avg, (1 - 0.995) * w.detach().mean(0), atol=1e-7)


def test_fp16_blocks_run_in_float32_on_cpu():
    torch.manual_seed(0)
    G = _small_G(num_fp16_res=2, conv_clamp=256).eval()
    D = _small_D(num_fp16_res=2, conv_clamp=256)
    assert G.synthesis.b16.use_fp16 and G.synthesis.b8.use_fp16 and not G.synthesis.b4.use_fp16
    z = torch.randn([2, 8])
    img = G(z, None, noise_mode='const')
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    assert torch.equal(img, G(z, None, noise_mode='const', force_fp32=True))
    logits = D(img, None)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, D(img, None, force_fp32=True))


def test_conv_clamp_bounds_layer_outputs():
    torch.manual_seed(0)
    layer = SynthesisLayer(4, 4, w_dim=4, resolution=8, conv_clamp=0.5)
    with torch.no_grad():
        layer.bias.fill_(10.0)
        out = layer(torch.randn([2, 4, 8, 8]), torch.randn([2, 4]), noise_mode='none', gain=2)
    assert float(out.abs().max()) == pytest.approx(0.5 * 2)


def test_r1_double_backward_through_discriminator():
    torch.manual_seed(0)
    D = _small_D(c_dim=3, epilogue_kwargs=dict(mbstd_group_size=2))
    reals = torch.randn([2, 3, 16, 16], requires_grad=True)
    logits = D(reals, torch.eye(3)[[1, 2]])
    (grad,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
    grad.square().sum().backward()
    # Every parameter except the output bias (no effect on d logits / d reals) gets a gradient.
    without_grad = [name for name, p in D.named_parameters() if p.grad is None]
    assert without_grad == ['b4.out.bias']
    first_conv = D.b16.fromrgb.weight.grad
    assert torch.isfinite(first_conv).all() and float(first_conv.abs().max()) > 0


def test_path_length_double_backward_through_generator():
    torch.manual_seed(0)
    G = _small_G()
    ws = G.mapping(torch.randn([2, 8]), None)
    img = G.synthesis(ws)
    noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    grad.square().sum(2).mean(1).sqrt().mean().backward()
    assert G.synthesis.b16.conv1.weight.grad is not None
    assert float(G.synthesis.b16.conv1.weight.grad.abs().max()) > 0


# ---------------------------------------------------------------------------------------------
# Initialisation and bookkeeping

def test_initialisation_follows_official_scheme():
    torch.manual_seed(0)
    fc = FullyConnectedLayer(256, 512, lr_multiplier=0.01, bias_init=0.5)
    assert float(fc.weight.detach().std()) == pytest.approx(100, rel=0.02)  # randn / lr_multiplier
    assert fc.weight_gain == pytest.approx(0.01 / 16) and fc.bias_gain == 0.01
    assert torch.all(fc.bias == 0.5)
    layer = SynthesisLayer(16, 8, w_dim=4, resolution=8)
    assert torch.all(layer.affine.bias == 1) and float(layer.noise_strength.detach()) == 0
    assert torch.all(layer.bias == 0)
    taps = torch.tensor([1., 3., 3., 1.])
    assert torch.allclose(layer.resample_filter, torch.outer(taps, taps) / 64)
    conv = Conv2dLayer(16, 8, kernel_size=3)
    assert conv.weight_gain == pytest.approx(1 / 12)


def test_init_kwargs_record_arguments_by_name_and_rebuild_the_module():
    G = Generator(8, 0, 8, 16, 3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8))
    assert G.init_kwargs == dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                                 mapping_kwargs=dict(num_layers=2),
                                 synthesis_kwargs=dict(channel_base=64, channel_max=8))
    # **block_kwargs are recorded flat, as the official pickles store them.
    assert G.synthesis.init_kwargs['channel_base'] == 64
    for module in G.modules():
        rebuilt = type(module)(**module.init_kwargs)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
            {k: v.shape for k, v in module.state_dict().items()}


def test_every_official_class_name_exists():
    for name in ('FullyConnectedLayer', 'Conv2dLayer', 'MappingNetwork', 'SynthesisLayer',
                 'ToRGBLayer', 'SynthesisBlock', 'SynthesisNetwork', 'Generator',
                 'DiscriminatorBlock', 'MinibatchStdLayer', 'DiscriminatorEpilogue',
                 'Discriminator', 'modulated_conv2d'):
        assert callable(getattr(networks, name))


def test_bad_inputs_name_the_problem():
    G = _small_G()
    with pytest.raises(ValueError, match='ws has shape'):
        G.synthesis(torch.zeros([1, 3, 8]))
    with pytest.raises(ValueError, match='noise_mode'):
        G(torch.zeros([1, 8]), None, noise_mode='fixed')
    with pytest.raises(ValueError, match='conditional'):
        _small_D(c_dim=3)(torch.zeros([1, 3, 16, 16]), None)
    with pytest.raises(ValueError, match='mbstd_group_size'):
        _small_D()(torch.zeros([6, 3, 16, 16]), None)
