"""Inclusive GAN / IMLE-GAN hook (`--fair-method=imle`) and its LPIPS wrapper."""
import json
import math
import os
import types
import urllib.error

import numpy as np
import PIL.Image
import pytest
import torch

from stylegan2_fair.dataset import ImageFolderDataset
from stylegan2_fair.lpips_features import VGG16_FILE, CountSketch, LPIPSBackboneMissing, LPIPSFeatures, load_lpips
from stylegan2_fair.networks import Discriminator, Generator
from training_hooks.base import PhaseBatch
from training_hooks.imle import InclusiveGAN, RematchSchedule, parse_subgroup, slerp, subgroup_indices

NUM_IMAGES = 12
ATTRIBUTES = ['Even', 'Third', 'Never']  # i % 2 == 0, i % 3 == 0, never


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('imle-data')
    rng = np.random.RandomState(0)
    values, labels = [], []
    for i in range(NUM_IMAGES):
        name = f'{i:05d}.png'
        PIL.Image.fromarray(rng.randint(0, 256, [8, 8, 3], dtype=np.uint8)).save(root / name)
        values.append([name, [int(i % 2 == 0), int(i % 3 == 0), 0]])
        labels.append([name, i % 3])
    meta = dict(labels=labels, attributes=dict(names=ATTRIBUTES, values=values))
    (root / 'dataset.json').write_text(json.dumps(meta))
    return root


def make_run(dataset_dir, tmp_path, cond=False, xflip=False):
    dataset = ImageFolderDataset(str(dataset_dir), use_labels=cond, xflip=xflip)
    torch.manual_seed(0)
    c_dim = dataset.label_dim
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=8, img_channels=3,
                  mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    D = Discriminator(c_dim=c_dim, img_resolution=8, img_channels=3, channel_base=64, channel_max=8)
    reports = {}
    run = types.SimpleNamespace(
        G=G.train().requires_grad_(False), D=D, training_set=dataset, device=torch.device('cpu'), rank=0,
        world_size=1, cur_nimg=0, random_seed=0, run_dir=str(tmp_path), batch_gpu=4, batch_size=4,
        report=lambda name, value: reports.setdefault(name, []).append(value), all_gather=lambda t: t)
    run.reports = reports
    return run


def make_hook(run, **kwargs):
    kwargs = dict(dict(lpips_backbone='random', proj_dim=64, pool_factor=2, render_batch=12), **kwargs)
    hook = InclusiveGAN(**kwargs)
    hook.setup(run)
    return hook


def gmain(hook, run, round_size=4):
    return hook.phase_loss(run, 'Gmain', PhaseBatch('Gmain', 1.0, gen_z=torch.randn(round_size, run.G.z_dim)))


@pytest.fixture(scope='module')
def matched(dataset_dir, tmp_path_factory):
    """(run, hook) after the first round of Gmain, which matched the data at kimg 0."""
    run = make_run(dataset_dir, tmp_path_factory.mktemp('imle-run'))
    hook = make_hook(run)
    gmain(hook, run)
    return run, hook


# Re-match schedule -------------------------------------------------------------------------------

def test_paper_schedule_rematches_at_epochs_0_10_20_40_80():
    schedule = RematchSchedule('double:10', epoch_nimg=1000)
    assert [schedule.nimg_of(k) for k in range(5)] == [0, 10_000, 20_000, 40_000, 80_000]


def test_fixed_schedules_in_epochs_and_kimg():
    assert [RematchSchedule('epochs:5', 100).nimg_of(k) for k in range(3)] == [0, 500, 1000]
    assert [RematchSchedule('kimg:2', 100).nimg_of(k) for k in range(3)] == [0, 2000, 4000]


@pytest.mark.parametrize('spec', ['weekly:3', 'double:-1', 'epochs:x'])
def test_bad_schedule_spec_names_the_accepted_forms(spec):
    with pytest.raises(ValueError, match='double:EPOCHS'):
        InclusiveGAN(rematch=spec)


def test_hook_rematches_when_the_schedule_says(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path)
    hook = make_hook(run)
    seen = []
    hook.rematch = lambda run: (seen.append(run.cur_nimg), setattr(hook, 'matched_index', torch.zeros(1)))
    hook.phase_loss = lambda run, phase, batch: hook._maybe_rematch(run)
    for nimg in range(0, 45 * NUM_IMAGES, 8):
        run.cur_nimg = nimg
        gmain(hook, run)
    assert seen == [0, 10 * NUM_IMAGES, 20 * NUM_IMAGES, 40 * NUM_IMAGES]


# Gradients reach G ------------------------------------------------------------------------------

@pytest.mark.parametrize('term', ['reconstruction', 'interpolation'])
def test_each_term_alone_gives_gradients_to_every_synthesis_weight(matched, term, monkeypatch):
    run, hook = matched
    monkeypatch.setattr(hook, 'recon_weight', 1.0 if term == 'reconstruction' else 0.0)
    monkeypatch.setattr(hook, 'interp_weight', 1.0 if term == 'interpolation' else 0.0)
    run.G.requires_grad_(True)  # as the loop does in G phases
    try:
        loss = gmain(hook, run)
        assert loss.requires_grad
        loss.backward()
        synthesis_weights = {name: p for name, p in run.G.synthesis.named_parameters() if name.endswith('.weight')}
        assert synthesis_weights
        zero = [name for name, p in synthesis_weights.items() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not zero, f'no gradient from the {term} term on {zero}'
    finally:
        run.G.requires_grad_(False)
        run.G.zero_grad(set_to_none=True)


def test_losses_and_match_distance_are_reported_and_the_grid_written(matched):
    run, hook = matched
    gmain(hook, run)
    for name in ('IMLE/match_dist', 'IMLE/recon_loss', 'IMLE/interp_loss'):
        assert name in run.reports
    assert 'IMLE/match_dist_subgroup' not in run.reports
    assert os.path.isfile(os.path.join(run.run_dir, 'imle-matches-000000.png'))


def test_interpolation_weights_go_with_the_nearer_end():
    # Eq. 10 with slerp: alpha = 1 gives the first latent's direction, alpha = 0 the second's.
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    unit = lambda z: z / z.norm(dim=1, keepdim=True)
    assert torch.allclose(unit(slerp(b, a, torch.ones(5))), unit(a), atol=1e-4)
    assert torch.allclose(unit(slerp(b, a, torch.zeros(5))), unit(b), atol=1e-4)
    mid = unit(slerp(b, a, torch.full([5], 0.5)))
    assert torch.allclose((mid * unit(a)).sum(1), (mid * unit(b)).sum(1), atol=1e-4)


# The loss terms, exactly (Eq. 6-10 and Algorithm 1) -------------------------------------------------

ALPHAS = torch.tensor([1.0, 0.0, 0.25, 0.8, 1.0, 0.6])  # the interpolation weights of one round, fixed


def linear_render(z_dim, seed=3):
    """A stand-in for G: a fixed linear map z -> 3x8x8 image, so distances can be recomputed by hand."""
    weight = torch.randn(z_dim, 3 * 8 * 8, generator=torch.Generator().manual_seed(seed)) * 0.3
    return lambda z: (z.float() @ weight).reshape(-1, 3, 8, 8)


def stub_networks(hook, run):
    """G -> linear_render and LPIPS -> the identity embedding (one 'layer': the image itself), so each
    distance in the terms is a plain squared pixel distance. Returns the list of (z, c) of each render."""
    render, renders = linear_render(run.G.z_dim), []
    hook._render = lambda run_, z, c, noise_mode: (renders.append((z.detach().clone(), c.clone())), render(z))[1]
    hook.lpips = types.SimpleNamespace(layer_embeddings=lambda images: [images])
    return renders


def give_known_matches(hook, run):
    """Distinct matched latents at a typical z's norm (so a perturbation of 0 keeps them as they are),
    and no re-match due before epoch 10."""
    z = torch.randn(len(hook.recon_pos), run.G.z_dim, generator=torch.Generator().manual_seed(4))
    hook.matched_z = z / z.norm(dim=1, keepdim=True) * math.sqrt(run.G.z_dim)
    hook.matched_index = torch.zeros(len(hook.queries), dtype=torch.int64)
    hook.num_rematches = 1


def record_pair_draws(hook):
    """Let the hook draw its pairs as usual, and keep what it drew."""
    drawn, draw = [], hook._draw_pairs
    hook._draw_pairs = lambda pairs: drawn.append(draw(pairs)) or drawn[-1]
    return drawn


def real_images(run, hook, items):
    """Reconstruction-set items as float images, read from the dataset (not through the hook)."""
    images = [run.training_set[int(hook.recon_indices[i])][0] for i in items]
    return torch.from_numpy(np.stack(images)).float() / 127.5 - 1


def sq_dist(a, b):
    return (a - b).square().flatten(1).sum(1)


def angle(a, b):
    cos = (a.double() * b.double()).sum(1) / (a.double().norm(dim=1) * b.double().norm(dim=1))
    return torch.acos(cos.clamp(-1, 1))


@pytest.mark.parametrize('interp, cond', [('slerp', False), ('lerp', True)])
def test_loss_terms_are_eq_6_to_10_on_the_papers_batch(dataset_dir, tmp_path, interp, cond):
    run = make_run(dataset_dir, tmp_path, cond=cond)
    pairs = len(ALPHAS)
    hook = make_hook(run, perturb=0.0, interp=interp, pairs=pairs)
    renders = stub_networks(hook, run)
    give_known_matches(hook, run)
    drawn = record_pair_draws(hook)
    hook._draw_alpha = lambda count, device: ALPHAS
    torch.manual_seed(2)  # a seed whose draws give x != x~ where alpha = 1
    loss = gmain(hook, run)

    (z, c), = renders                                      # one render: 2 mb reconstructions + mb interpolations
    assert z.shape[0] == 3 * pairs
    (first, second), = drawn
    assert (first != second)[ALPHAS == 1].all(), 'x and x~ must differ where alpha = 1 (x~ drawn apart from x)'
    assert torch.allclose(z[:2 * pairs], hook.matched_z[torch.cat([first, second])], atol=1e-5)
    z_first, z_second, z_mix = z[:pairs], z[pairs:2 * pairs], z[2 * pairs:]
    x_first, x_second = real_images(run, hook, first), real_images(run, hook, second)
    render = linear_render(run.G.z_dim)

    recon = run.reports['IMLE/recon_loss'][-1]             # Eq. 6 on both ends of every pair
    assert recon.shape == (2 * pairs,)
    assert torch.allclose(recon, sq_dist(render(z[:2 * pairs]), torch.cat([x_first, x_second])), rtol=1e-5)
    interp_loss = run.reports['IMLE/interp_loss'][-1]      # Eq. 8-9
    mix = render(z_mix)
    want = ALPHAS * sq_dist(mix, x_first) + (1 - ALPHAS) * sq_dist(mix, x_second)
    assert torch.allclose(interp_loss, want, rtol=1e-5)
    # Eq. 10: alpha = 1 is z*(x) itself, so the interpolation term is the reconstruction of x; alpha = 0 that of x~.
    assert torch.allclose(interp_loss[ALPHAS == 1], recon[:pairs][ALPHAS == 1], rtol=1e-5)
    assert torch.allclose(interp_loss[ALPHAS == 0], recon[pairs:][ALPHAS == 0], rtol=1e-5)
    if interp == 'lerp':                                   # Eq. 10 as printed
        assert torch.allclose(z_mix, ALPHAS[:, None] * z_first + (1 - ALPHAS[:, None]) * z_second, atol=1e-5)
    else:                                                  # on the great circle, alpha of the way from z*(x~)
        full = angle(z_first, z_second)
        assert torch.allclose(angle(z_second, z_mix), ALPHAS.double() * full, atol=1e-3)
        assert torch.allclose(angle(z_mix, z_first), (1 - ALPHAS.double()) * full, atol=1e-3)
    labels = torch.cat([hook.query_labels[hook.recon_pos[first]], hook.query_labels[hook.recon_pos[second]]])
    assert torch.equal(c, torch.cat([labels, labels[:pairs]]))
    if cond:
        assert torch.equal(labels[:pairs], labels[pairs:]), 'a pair must share its label'
    assert torch.allclose(loss, 2.5 * recon.mean() + 1.0 * interp_loss.mean())  # lambda 2.5, beta 1.0


def test_matched_latents_are_perturbed_a_twentieth_of_the_way_to_a_random_latent(dataset_dir, tmp_path):
    # methods-facts: Algorithm 1's delta is, in the authors' code, slerp(z*, randn, 0.05) at the norm of a
    # typical z; 0.05 is the hook's default.
    run = make_run(dataset_dir, tmp_path)
    hook = make_hook(run, pairs=4)
    renders = stub_networks(hook, run)
    give_known_matches(hook, run)
    drawn = record_pair_draws(hook)
    noise = torch.randn(8, run.G.z_dim, generator=torch.Generator().manual_seed(5))
    hook._draw_noise = lambda z: noise
    gmain(hook, run)

    (z, _), = renders
    (first, second), = drawn
    matched, perturbed = hook.matched_z[torch.cat([first, second])], z[:8]
    full = angle(matched, noise)
    assert torch.allclose(angle(matched, perturbed), 0.05 * full, atol=1e-4)
    assert torch.allclose(angle(perturbed, noise), 0.95 * full, atol=1e-4)
    assert torch.allclose(perturbed.norm(dim=1), torch.full([8], math.sqrt(run.G.z_dim)), rtol=1e-5)


# Minority subgroup -----------------------------------------------------------------------------

def test_subgroup_parsing_handles_and_and_negation():
    assert parse_subgroup('Narrow_Eyes & !Heavy_Makeup') == [('Narrow_Eyes', True), ('Heavy_Makeup', False)]
    with pytest.raises(ValueError, match='empty attribute name'):
        parse_subgroup('Eyeglasses & ')


@pytest.mark.parametrize('spec, problem', [
    ('!!Male', 'more than one "!"'), ('Eyeglasses & !Ma!le', 'more than one "!"'),
    ('Eyeglasses | Male', r"'\|' is not supported; only AND \(\"&\"\) and NOT"),
    ('Eyeglasses, Male', "',' is not supported; only AND"),
])
def test_subgroup_syntax_beyond_and_and_one_not_is_refused(spec, problem):
    with pytest.raises(ValueError, match=problem):
        parse_subgroup(spec)


def test_subgroup_filtering_is_the_and_of_the_terms(dataset_dir):
    dataset = ImageFolderDataset(str(dataset_dir))
    assert list(subgroup_indices(dataset, 'Even')) == [i for i in range(NUM_IMAGES) if i % 2 == 0]
    assert list(subgroup_indices(dataset, 'Even & Third')) == [i for i in range(NUM_IMAGES) if i % 6 == 0]
    assert list(subgroup_indices(dataset, 'Even & !Third')) == [i for i in range(NUM_IMAGES) if i % 2 == 0 and i % 3]


def test_unknown_attribute_lists_the_available_ones(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path)
    with pytest.raises(ValueError, match="unknown attribute.*'Eyeglasses'.*Even, Third, Never"):
        make_hook(run, subgroup='Even & Eyeglasses')


def test_empty_subgroup_is_refused_at_setup(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path)
    with pytest.raises(ValueError, match=r'selects no image.*Even: 6, !Third: 8, Never: 0.*Even, Third, Never'):
        make_hook(run, subgroup='Even & !Third & Never')


def test_only_subgroup_images_are_reconstructed(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path)
    hook = make_hook(run, subgroup='Third')
    subgroup = set(range(0, NUM_IMAGES, 3))
    assert set(hook.recon_indices.tolist()) == subgroup
    assert hook.pool_size == 2 * len(subgroup)  # pool_factor 2
    loaded = []
    images = hook._images
    hook._images = lambda run, positions: (loaded.append(hook.queries[positions.numpy()]), images(run, positions))[1]
    gmain(hook, run)                          # re-matches (loads every query image), then trains
    loaded.clear()
    gmain(hook, run)
    assert loaded and set(np.concatenate(loaded).tolist()) <= subgroup
    assert 'IMLE/match_dist_subgroup' in run.reports


def test_mirrored_copies_count_once_in_the_recon_set_pool_and_epoch(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path, xflip=True)
    dataset = run.training_set
    assert len(dataset) == 2 * NUM_IMAGES
    hook = make_hook(run)                                     # pool_factor 2
    assert sorted(dataset.raw_index(i) for i in hook.recon_indices.tolist()) == list(range(NUM_IMAGES))
    assert not any(dataset.get_details(i).xflip for i in hook.recon_indices.tolist())
    assert hook.pool_size == 2 * NUM_IMAGES
    assert hook.schedule.nimg_of(1) == 10 * NUM_IMAGES         # epoch 10 of the raw images
    subgroup = make_hook(run, subgroup='Even')
    assert [dataset.raw_index(i) for i in subgroup.recon_indices.tolist()] == list(range(0, NUM_IMAGES, 2))
    assert subgroup.pool_size == NUM_IMAGES


def test_conditional_pool_without_a_candidate_for_some_label_is_refused(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path, cond=True)          # 12 images, labels i % 3
    problem = r'--imle-pool-factor=0.2: .*\(2 candidates .* no candidate with 1 of the 3 labels .*class 2.* 1 or more'
    with pytest.raises(ValueError, match=problem):
        InclusiveGAN(lpips_backbone='random', pool_factor=0.2).check_dataset(run.training_set)
    with pytest.raises(ValueError, match=problem):
        make_hook(run, pool_factor=0.2)
    hook = make_hook(run, pool_factor=0.5)                    # 6 candidates: two per label
    hook.rematch(run)
    assert (hook.matched_index >= 0).all()


def test_conditional_matches_stay_within_the_real_images_label(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path, cond=True)
    hook = make_hook(run)
    gmain(hook, run)
    matched_labels = hook.pool_labels[hook.matched_index]
    assert torch.equal(matched_labels, hook.query_labels)


# Resume ----------------------------------------------------------------------------------------

def test_resume_restores_matches_and_schedule_without_rematching(matched, tmp_path):
    run, hook = matched
    path = tmp_path / 'state.pt'
    torch.save(hook.state_dict(), path)
    state = torch.load(path, weights_only=True)

    resumed = make_hook(run)
    resumed.load_state_dict(state)
    assert resumed.num_rematches == hook.num_rematches == 1
    assert torch.equal(resumed.matched_index, hook.matched_index)
    assert torch.equal(resumed.matched_dist, hook.matched_dist)
    assert torch.equal(resumed.matched_z, hook.matched_z)
    resumed.rematch = lambda run: pytest.fail('re-matched although the schedule says not yet')
    assert gmain(resumed, run) is not None


def test_resume_with_another_subgroup_rematches(matched):
    run, hook = matched
    other = make_hook(run, subgroup='Even')
    other.load_state_dict(hook.state_dict())
    assert other.force_rematch


# Checks before the run dir exists (check_dataset) --------------------------------------------------

@pytest.fixture(scope='module')
def plain_dataset_dir(tmp_path_factory):
    """Four images, no dataset.json: no labels, no attributes."""
    root = tmp_path_factory.mktemp('plain-data')
    for i in range(4):
        PIL.Image.fromarray(np.full([8, 8, 3], 40 * i, dtype=np.uint8)).save(root / f'{i}.png')
    return root


@pytest.mark.parametrize('subgroup, problem', [
    ('Even & Eyeglasses', r"unknown attribute.*'Eyeglasses'.*Even, Third, Never"),
    ('Even & Never', r'selects no image.*Never: 0'),
    ('Eyeglasses', r"unknown attribute.*'Eyeglasses'.*no attributes \(add them with dataset_tool"),
])
def test_check_dataset_refuses_a_subgroup_the_data_cannot_serve(dataset_dir, plain_dataset_dir, subgroup, problem):
    data = plain_dataset_dir if 'no attributes' in problem else dataset_dir
    with pytest.raises(ValueError, match=problem):
        InclusiveGAN(subgroup=subgroup, lpips_backbone='random').check_dataset(ImageFolderDataset(str(data)))


def test_check_dataset_finds_the_lpips_weights_without_building_lpips(dataset_dir, tmp_path, monkeypatch):
    import training_hooks.imle as imle_module
    monkeypatch.setattr(imle_module, 'LPIPSFeatures', lambda *a, **k: pytest.fail('check_dataset built LPIPS'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file',
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError('no network')))
    dataset = ImageFolderDataset(str(dataset_dir))
    InclusiveGAN(lpips_backbone='random').check_dataset(dataset)          # needs no file

    with pytest.raises(ValueError, match=r'--lpips-backbone=\S*nope.pth is not a file'):
        InclusiveGAN(lpips_backbone=str(tmp_path / 'nope.pth')).check_dataset(dataset)
    with pytest.raises(ValueError) as info:                                # default, offline, not cached
        InclusiveGAN().check_dataset(dataset)
    assert str(tmp_path / 'hub' / 'checkpoints' / VGG16_FILE) in str(info.value)
    assert '--lpips-backbone=PATH' in str(info.value)

    cached = tmp_path / 'hub' / 'checkpoints' / VGG16_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)  # find_backbone_file made it for the download
    cached.write_bytes(b'')
    InclusiveGAN().check_dataset(dataset)                                  # found: no download, no load
    InclusiveGAN(lpips_backbone=str(cached)).check_dataset(dataset)


@pytest.mark.parametrize('case', ['unknown-attribute', 'missing-backbone'])
def test_bad_imle_options_are_a_clear_cli_error_and_write_nothing(tmp_path, toy_zip, case):
    from click.testing import CliRunner
    from stylegan2_fair.cli.train import train
    outdir = tmp_path / 'out'
    args = ['--outdir', str(outdir), '--data', toy_zip, '--cfg=tiny', '--kimg=1', '--workers=0', '--device=cpu',
            '--fair-method=imle']
    if case == 'unknown-attribute':
        args += ['--imle-subgroup=Green & Eyeglasses', '--lpips-backbone=random']
        expect = "unknown attribute(s) ['Eyeglasses']; the dataset has: Red, Green"
    else:
        args += ['--lpips-backbone', str(tmp_path / 'vgg16.pth')]
        expect = 'vgg16.pth is not a file'
    result = CliRunner().invoke(train, args)
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    assert expect in result.output, result.output
    assert not outdir.exists() or not os.listdir(outdir)


# LPIPS -----------------------------------------------------------------------------------------

def test_missing_vgg_weights_offline_say_which_file_goes_where(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(LPIPSBackboneMissing) as info:
        load_lpips(None)
    message = str(info.value)
    assert 'vgg16-397923af.pth' in message
    assert str(tmp_path / 'hub' / 'checkpoints') in message
    assert '--lpips-backbone' in message


def test_backbone_file_is_loaded_into_the_vgg_trunk(tmp_path):
    trunk = load_lpips('random').net
    fake = {}
    for slice_module in trunk.children():
        for index, layer in slice_module.named_children():
            for name, p in layer.named_parameters():
                fake[f'features.{index}.{name}'] = torch.full_like(p, float(index))
    path = tmp_path / 'vgg16.pth'
    torch.save(fake, path)
    loaded = load_lpips(str(path)).net
    assert float(getattr(loaded.slice1, '2').weight.mean()) == 2.0
    assert float(getattr(loaded.slice5, '28').bias.mean()) == 28.0


def test_embedding_distance_equals_lpips_and_small_images_are_upsampled():
    reference = load_lpips('random')
    features = LPIPSFeatures('random')
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1
    want = reference(x, y).flatten()
    assert torch.allclose(features.distance(x, y), want, rtol=1e-4, atol=1e-6)
    assert torch.allclose((features.embed(x) - features.embed(y)).square().sum(1), want, rtol=1e-4, atol=1e-6)
    small = features.distance(x[:, :, ::2, ::2], y[:, :, ::2, ::2])  # 8x8 would fail inside VGG
    assert small.shape == (3,) and torch.isfinite(small).all()


def test_count_sketch_keeps_squared_norms_on_average():
    sketch = CountSketch(256, seed=1)
    vectors = torch.randn(200, 5000, generator=torch.Generator().manual_seed(0))
    ratio = sketch(vectors).square().sum(1) / vectors.square().sum(1)
    assert abs(float(ratio.mean()) - 1) < 0.03
    assert float(ratio.std()) < 0.15                      # ~sqrt(2 / 256) = 0.09
    assert torch.equal(CountSketch(256, seed=1)(vectors), sketch(vectors))


def test_lazy_interval_skips_steps_and_scales_the_terms(matched, monkeypatch):
    run, hook = matched
    monkeypatch.setattr(run, 'cur_nimg', 3 * run.batch_size)
    monkeypatch.setattr(hook, 'interval', 2)
    assert gmain(hook, run) is None                     # step 3: not a multiple of 2
    monkeypatch.setattr(run, 'cur_nimg', 2 * run.batch_size)
    torch.manual_seed(5)
    lazy = gmain(hook, run)
    monkeypatch.setattr(hook, 'interval', 1)
    torch.manual_seed(5)
    every_step = gmain(hook, run)
    assert torch.allclose(lazy, 2 * every_step)


def test_pixel_space_matches_are_the_nearest_renders_by_mse(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path)
    hook = make_hook(run, match_space='pixels', proj_dim=0)
    with torch.no_grad():
        hook.rematch(run)
        renders = hook._render(run, hook.pool_z, hook.pool_labels, 'const')
        reals = hook._images(run, torch.arange(len(hook.queries)))
    mse = (reals[:, None] - renders[None]).square().mean([2, 3, 4])
    assert torch.equal(hook.matched_index, mse.argmin(1))
    assert torch.allclose(hook.matched_dist, mse.min(1).values, rtol=1e-4)


def test_discriminator_feature_space_matches_every_image(dataset_dir, tmp_path):
    run = make_run(dataset_dir, tmp_path)
    hook = make_hook(run, match_space='dfeat')
    hook.rematch(run)
    assert ((hook.matched_index >= 0) & (hook.matched_index < hook.pool_size)).all()
    assert torch.isfinite(hook.matched_dist).all()


def _rematch_on_rank(rank, world_size, port, dataset_dir, out_dir):
    from stylegan2_fair import distributed
    distributed.init_process_group(rank, world_size, '127.0.0.1', port, 'cpu')
    try:
        run = make_run(dataset_dir, out_dir)
        run.rank, run.world_size, run.all_gather = rank, world_size, distributed.all_gather_cat
        hook = make_hook(run)
        hook.rematch(run)
        torch.save(dict(index=hook.matched_index, dist=hook.matched_dist), os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_split_the_pool_and_agree_with_one(dataset_dir, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rematch_on_rank, args=(2, port, str(dataset_dir), str(tmp_path)), nprocs=2)
    run = make_run(dataset_dir, tmp_path)
    hook = make_hook(run)
    hook.rematch(run)
    for rank in range(2):
        got = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert torch.equal(got['index'], hook.matched_index)
        assert torch.allclose(got['dist'], hook.matched_dist, rtol=1e-4)
