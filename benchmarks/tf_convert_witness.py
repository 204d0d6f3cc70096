"""Witness: our TensorFlow-pickle converter (stylegan2_fair/tf_convert.py) against the official legacy.py.

Both read the same TF-format pickles (built by tests/test_tf_convert.py's helpers from random-weight
networks: a config-F-like StyleGAN2, a conditional StyleGAN2-ADA with fp16 and clamping, ADA variants)
and every state_dict entry, image and D logit is compared. The official code is imported from a local
checkout (never copied here), as in official_probe.py; CPU only:

    PYTHONPATH=.official python benchmarks/tf_convert_witness.py

(.official: a checkout of NVlabs/stylegan2-ada-pytorch; `requests` is stubbed, dnnlib imports it for
downloads only.)
"""
import copy, io, os, sys, types
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.modules.setdefault("requests", types.ModuleType("requests"))
import warnings
import numpy as np, torch
import legacy   # noqa: E402  (official, from PYTHONPATH)
from stylegan2_fair import checkpoint
from stylegan2_fair.networks import Generator, Discriminator
import test_tf_convert as t

warnings.filterwarnings('ignore')
OFFICIAL_G_OK = {'latent_size', 'label_size', 'dlatent_size', 'resolution', 'num_channels', 'mapping_layers',
                 'label_fmaps', 'mapping_fmaps', 'mapping_nonlinearity', 'mapping_lrmul', 'w_avg_beta',
                 'fmap_base', 'fmap_max', 'num_fp16_res', 'conv_clamp', 'architecture', 'resample_kernel',
                 'use_noise', 'nonlinearity', 'truncation_psi', 'truncation_cutoff', 'style_mixing_prob', 'structure'}


def official_g_kwargs(G):   # the converter-neutral kwargs, limited to names legacy.py knows
    return {k: v for k, v in t.g_static_kwargs(G).items() if k in OFFICIAL_G_OK}


def compare(name, ours, official):
    a, b = ours.state_dict(), official.state_dict()
    assert sorted(a) == sorted(b), (name, sorted(set(a) ^ set(b)))
    diff = max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)
    shapes_equal = all(a[k].shape == b[k].shape for k in a)
    print(f'  {name:6s}: {len(a):3d} state_dict entries, same names, same shapes={shapes_equal}, max |ours - official| = {diff:.3g}')
    return diff


def run(case, nets, batch=4):
    data = t.dump_tf_pickle(nets)
    ours = checkpoint.load_network_pkl(io.BytesIO(data))
    official = legacy.load_network_pkl(io.BytesIO(data))
    print(case)
    for key in ('G', 'D', 'G_ema'):
        compare(key, ours[key], official[key])
    G, D, oG, oD = ours['G_ema'], ours['D'], official['G_ema'], official['D']
    torch.manual_seed(0)
    z = torch.randn([batch, G.z_dim])
    c = torch.nn.functional.one_hot(torch.arange(batch) % max(G.c_dim, 1), max(G.c_dim, 1)).float()[:, :G.c_dim]
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode='const')
        oimg = oG(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True)
        logits, ologits = D(img, c), oD(img, c, force_fp32=True)
    print(f'  outputs: max |img - official img| = {(img - oimg).abs().max().item():.3g}, '
          f'max |D logits - official| = {(logits - ologits).abs().max().item():.3g} (batch {batch})')


# A: config-F-like original StyleGAN2 (G_synthesis_stylegan2/D_stylegan2, version 4, 'lod' in G),
#    the real config-F mapping (512-d, 8 layers), resolution 32 and small fmaps.
torch.manual_seed(0)
G = t.randomized(Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=32, img_channels=3,
                           synthesis_kwargs=dict(channel_base=1024, channel_max=64)), 11)
Gs = t.randomized(copy.deepcopy(G), 12)
D = t.randomized(Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=64), 13)
gk = dict(num_channels=3, resolution=32, label_size=0, fmap_base=512, fmap_max=64)
dk = dict(num_channels=3, resolution=32, label_size=0, fmap_base=512, fmap_max=64)
lod = {'lod': np.float32(0)}
run('A config-F-like StyleGAN2 (v4, G_synthesis_stylegan2 + D_stylegan2, res 32, fmap_max 64)',
    (t.g_tf_state(G, kwargs=gk, version=4, synthesis_func='G_synthesis_stylegan2', extra_g_variables=lod),
     t.d_tf_state(D, kwargs=dk, version=4, func='D_stylegan2'),
     t.g_tf_state(Gs, name='Gs', kwargs=gk, version=4, synthesis_func='G_synthesis_stylegan2', extra_g_variables=lod)))

# B: StyleGAN2-ADA conditional, fixture cond5-skip-resnet-16-clamp architecture (fp16 res, clamp, D mapping).
G = t.randomized(Generator(z_dim=32, c_dim=5, w_dim=48, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=3),
                           synthesis_kwargs=dict(channel_base=2048, channel_max=64, num_fp16_res=2, conv_clamp=256)), 21)
Gs = t.randomized(copy.deepcopy(G), 22)
D = t.randomized(Discriminator(c_dim=5, img_resolution=16, img_channels=3, channel_base=2048, channel_max=64,
                               num_fp16_res=2, conv_clamp=256, mapping_kwargs=dict(num_layers=2),
                               epilogue_kwargs=dict(mbstd_group_size=2)), 23)
run('B StyleGAN2-ADA conditional (v5, G_synthesis + D_main, res 16, c 5, fp16 2, clamp 256)',
    (t.g_tf_state(G, kwargs=official_g_kwargs(G)), t.d_tf_state(D), t.g_tf_state(Gs, name='Gs', kwargs=official_g_kwargs(G))))

# C: StyleGAN2-ADA variants: G resnet without noise, relu; D skip with Freeze-D, no minibatch std.
for arch in ('resnet', 'orig'):
    G = t.randomized(Generator(z_dim=16, c_dim=3, w_dim=24, img_resolution=16, img_channels=1,
                               mapping_kwargs=dict(num_layers=2, embed_features=16, layer_features=20, activation='relu',
                                                   lr_multiplier=0.05),
                               synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture=arch,
                                                     use_noise=False, activation='relu')), 31)
    D = t.randomized(Discriminator(c_dim=3, img_resolution=16, img_channels=1, architecture='skip', channel_base=512,
                                   channel_max=32, cmap_dim=16, block_kwargs=dict(activation='relu', freeze_layers=2),
                                   mapping_kwargs=dict(num_layers=1, activation='relu', lr_multiplier=0.1),
                                   epilogue_kwargs=dict(mbstd_num_channels=0, activation='relu')), 32)
    run(f'C StyleGAN2-ADA variants (G {arch}, no noise, relu; D skip, freeze 2, no mbstd)',
        (t.g_tf_state(G, kwargs=official_g_kwargs(G)), t.d_tf_state(D), t.g_tf_state(G, name='Gs', kwargs=official_g_kwargs(G))))

# D: minibatch-std group default of D_stylegan2 pickles (TF: 4; legacy.py: None = whole batch).
data = t.dump_tf_pickle((t.g_tf_state(G, kwargs=official_g_kwargs(G)),
                         t.d_tf_state(t.randomized(Discriminator(c_dim=0, img_resolution=32, img_channels=3,
                                                                 channel_base=1024, channel_max=64), 41),
                                      kwargs=dict(num_channels=3, resolution=32, label_size=0, fmap_base=512, fmap_max=64),
                                      version=4, func='D_stylegan2'),
                         t.g_tf_state(G, kwargs=official_g_kwargs(G))))
ours, official = checkpoint.load_network_pkl(io.BytesIO(data))['D'], legacy.load_network_pkl(io.BytesIO(data))['D']
torch.manual_seed(1)
img = torch.randn([8, 3, 32, 32])
with torch.no_grad():
    for n in (4, 8):
        d = (ours(img[:n], None) - official(img[:n], None, force_fp32=True)).abs().max().item()
        print(f'D_stylegan2 without mbstd_group_size, batch {n}: ours group {ours.b4.mbstd.group_size}, '
              f'official {official.b4.mbstd.group_size}, max |logit diff| = {d:.3g}')
