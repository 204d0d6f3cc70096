"""Metrics: known answers for each formula, and the whole path (detector files on disk, feature cache,
calc_metrics CLI) on the official fixture pickle with random-weight stand-in detectors.

Speed: the default stand-ins are `tiny=True` (a few conv layers with the official call signatures and
output sizes); the stand-ins with torchvision's full inception_v3 / vgg16 run in a test marked slow
(scripting and running Inception on 2 CPU cores takes minutes). Sample counts are 8-16 images.
"""
import contextlib
import json

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

from stylegan2_fair.metrics import (detectors, features, fid, inception_score, ivom, kid, metric_main, modes,
                                    nriqa, ppl, precision_recall, recon_error)
from stylegan2_fair.metrics.features import MetricOptions

FIXTURE_PKL = 'uncond-skip-resnet-32-official-format.pkl'


@contextlib.contextmanager
def one_thread():
    """These tests push tiny tensors through many small ops, where a second intra-op thread only adds
    synchronisation (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread():
    with one_thread():
        yield


@pytest.fixture(scope='session')
def tiny_detectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp('detectors')
    with one_thread():
        detectors.save_standin_detector('inception', str(folder / detectors.DETECTOR_FILES['inception']), size=32,
                                        tiny=True)
        detectors.save_standin_detector('vgg16', str(folder / detectors.DETECTOR_FILES['vgg16']), size=32, tiny=True)
    return str(folder)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / 'dnnlib'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(path))
    return path


@pytest.fixture(scope='session')
def fixture_G(official_fixtures):
    import stylegan2_fair
    return stylegan2_fair.load_network_pkl(str(official_fixtures / FIXTURE_PKL))['G_ema'].eval()


@pytest.fixture(scope='session')
def own_images_dataset(fixture_G, tmp_path_factory):
    """A folder dataset of the first 8 images the metrics will generate from fixture_G (lossless PNG), so
    that 'real' and generated sets are identical."""
    folder = tmp_path_factory.mktemp('own_images')
    with one_thread():
        images = features.generated_images(MetricOptions(G=fixture_G, progress=False), np.arange(8))
    images = images.permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / f'img{i:04d}.png')
    return str(folder)


def _calc(name, G, dataset, detector_dir, **kwargs):
    return metric_main.calc_metric(name, G=G, dataset_kwargs=dict(path=dataset) if dataset else {},
                                   detector_search=[detector_dir], batch_size=8, progress=False, **kwargs)['results']


# ----------------------------------------------------------------------------------------------
# Formulas

def test_fid_of_identical_feature_sets_is_zero():
    x = np.random.default_rng(0).normal(size=[40, 16])
    assert abs(fid.fid_from_features(x, x)) < 1e-8                     # covariance path (n >= dim)
    assert abs(fid.fid_from_features(x[:10], x[:10])) < 1e-8           # low-rank path (n < dim)


def test_fid_equals_the_squared_mean_shift_for_equal_covariances():
    x = np.random.default_rng(1).normal(size=[200, 8])
    shift = np.arange(8) / 4
    assert fid.fid_from_features(x, x + shift) == pytest.approx(np.square(shift).sum(), rel=1e-6)


@pytest.mark.parametrize('n', [300, 20])
def test_fid_matches_the_scipy_sqrtm_formula(n):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=[n, 30]), rng.normal(size=[n + 5, 30]) * 1.5 + 0.2
    (m1, s1), (m2, s2) = features.mean_cov(a), features.mean_cov(b)
    reference = np.square(m1 - m2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid.fid_from_features(a, b) == pytest.approx(reference, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=[400, 32]), rng.normal(size=[400, 32])
    same = kid.kernel_inception_distance(a, b, num_subsets=20, max_subset_size=200)
    different = kid.kernel_inception_distance(a, b + 0.5, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.02 * different
    assert different > 0


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score.inception_score(np.full([50, 1008], 1 / 1008), num_splits=5)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    probs = np.eye(7)[np.arange(70) % 7]
    mean, _ = inception_score.inception_score(probs, num_splits=2)
    assert mean == pytest.approx(7.0)


def test_precision_and_recall_are_one_for_identical_sets_and_zero_for_disjoint_ones():
    opts = MetricOptions(progress=False)
    x = np.random.default_rng(4).normal(size=[30, 5]).astype(np.float32)
    assert precision_recall.precision_recall(opts, x, x.copy(), nhood_size=3) == (1.0, 1.0)
    assert precision_recall.precision_recall(opts, x, x + 100, nhood_size=3) == (0.0, 0.0)


def test_partial_recall_separates_a_covered_group_from_a_missing_one():
    opts = MetricOptions(progress=False)
    rng = np.random.default_rng(5)
    real = np.concatenate([rng.normal(size=[20, 4]), rng.normal(size=[20, 4]) + 50]).astype(np.float32)
    fakes = (real[:20] + rng.normal(size=[20, 4]) * 0.01).astype(np.float32)   # only the first group is made
    _, inside = precision_recall.manifold_coverage(opts, fakes, real, nhood_size=3)
    groups = dict(majority=np.arange(40) < 20, minority=np.arange(40) >= 20)
    per_group = features.breakdown('partial_recall', inside, groups)
    assert per_group['partial_recall/majority'] > 0.8
    assert per_group['partial_recall/minority'] == 0.0


def test_mode_count_and_kl_for_disjoint_modes():
    ids = np.repeat(np.arange(0, 1000, 100), 5)          # 10 of 1000 modes, uniformly
    count, kl = modes.mode_statistics(ids, 1000)
    assert count == 10 and kl == pytest.approx(np.log(100))
    assert modes.mode_statistics(np.arange(1000), 1000) == (1000, pytest.approx(0.0))


def test_ppl_filtered_mean_drops_the_extreme_percentiles():
    values = np.concatenate([np.ones(298), [1e6, -1e6]])
    assert ppl.filtered_mean(values) == pytest.approx(1.0)


def test_slerp_interpolates_on_the_sphere():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = ppl.slerp(a, b, torch.tensor([0.5]))
    assert torch.allclose(mid, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5]]), atol=1e-6)


class TinyGenerator(torch.nn.Module):
    """The parts of Generator that IvOM uses (z_dim, c_dim, num_ws, mapping, synthesis), as two small MLPs."""
    z_dim, c_dim, num_ws = 8, 0, 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.map = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LeakyReLU(0.2), torch.nn.Linear(16, 8))
        self.synth = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 3 * 8 * 8))

    def mapping(self, z, c):
        return self.map(z)[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode='const'):
        return torch.tanh(4 * self.synth(ws[:, 0])).view(-1, 3, 8, 8)


@pytest.mark.parametrize('space', ['z', 'w'])
def test_ivom_finds_a_planted_latent(space):
    G = TinyGenerator().requires_grad_(False)
    z_planted = torch.randn([4, 8], generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        targets = G.synthesis(G.mapping(z_planted, None))
    _, start, _ = ivom.invert(G, targets, space=space, steps=0, seeds=[5, 6, 7, 8])
    _, end, _ = ivom.invert(G, targets, space=space, steps=100, lr=0.05, seeds=[5, 6, 7, 8])
    assert start.mean() > 0.02
    assert end.max() < 2e-3 and end.mean() < 0.05 * start.mean()


def test_ivom_with_lpips_measures_zero_for_the_target_itself():
    distance_to = ivom.lpips_distance('random')
    images = torch.rand([2, 3, 16, 16], generator=torch.Generator().manual_seed(0)) * 2 - 1
    distance = distance_to(images)
    assert torch.allclose(distance(images), torch.zeros(2), atol=1e-6)
    assert (distance(images.flip(0)) > 0).all()


def test_reconstruction_error_is_higher_for_images_unlike_the_training_fakes():
    stripes = torch.zeros([64, 1, 8, 8])
    stripes[:, :, ::2] = 1
    stripes += 0.05 * torch.rand(stripes.shape, generator=torch.Generator().manual_seed(0))
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float().expand(8, 1, 8, 8)
    cae = recon_error.train_autoencoder(stripes.clamp(0, 1), epochs=15, batch_size=16, lr=3e-3)
    seen = recon_error.reconstruction_error(cae, stripes[:8].clamp(0, 1)).mean()
    unseen = recon_error.reconstruction_error(cae, checker).mean()
    assert unseen > 2 * seen


def test_digit_mode_classifier_reads_stacked_digits():
    from stylegan2_fair import toy_data
    data = toy_data.stacked_digits(200, seed=7)
    clf = modes.DigitModeClassifier(train_size=2000)
    digits = clf.digits(torch.from_numpy(data.images).permute(0, 3, 1, 2))
    assert (digits == data.extras['channel_digits']).mean() > 0.9
    assert clf.num_modes == 1000


def test_niqe_scores_noise_worse_than_the_pristine_images():
    from stylegan2_fair import toy_data
    digits = torch.from_numpy(toy_data.colored_digits(50, majority=0.5, seed=1).images).permute(0, 3, 1, 2)
    mu, cov = nriqa.fit_pristine(digits[:40], patch=16)
    noise = torch.randint(0, 256, [10, 3, 32, 32], dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    held_out, _ = nriqa.niqe_scores(digits[40:50], mu, cov, patch=16)
    noisy, _ = nriqa.niqe_scores(noise, mu, cov, patch=16)
    assert noisy.mean() > 2 * held_out.mean()


# ----------------------------------------------------------------------------------------------
# Names

@pytest.mark.parametrize('name', [
    'fid50k_full', 'kid10k', 'pr50k3_full', 'pr64', 'is1k', 'ppl2_wend', 'ppl_zfull1k', 'ivom3k_w', 'modes240k',
    're50k_full', 'partial_recall10k', 'niqe1k', 'brisque64', 'fairness'])
def test_official_and_short_metric_names_are_valid(name):
    assert metric_main.is_valid_metric(name)


def test_unknown_metric_name_lists_the_known_ones():
    assert not metric_main.is_valid_metric('fid')
    with pytest.raises(ValueError, match='fid50k_full'):
        metric_main.find_metric('frechet')


def test_sample_counts_parse_with_and_without_k():
    assert metric_main.parse_count('50k') == 50000 and metric_main.parse_count('64') == 64
    m = metric_main.find_metric('pr50k3_full')[1]
    assert (m['num'], m['nhood'], m['full']) == ('50k', '3', '_full')


# ----------------------------------------------------------------------------------------------
# Detector files

def test_missing_detector_error_names_the_file_where_to_put_it_and_the_url(cache_dir):
    with pytest.raises(detectors.MissingDetectorError) as err:
        detectors.find_detector('inception')
    message = str(err.value)
    assert 'inception-2015-12-05.pt' in message
    assert str(cache_dir / 'downloads' / 'inception-2015-12-05.pt') in message
    assert detectors.DETECTOR_URLS['inception'] in message and '--detector' in message


def test_detector_is_found_under_the_official_md5_prefixed_cache_name(cache_dir):
    target = cache_dir / 'downloads' / ('0123abcd' * 4 + '_vgg16.pt')
    target.parent.mkdir(parents=True)
    target.write_bytes(b'x')
    assert detectors.find_detector('vgg16') == str(target)


def test_detector_argument_accepts_name_equals_path(tmp_path, cache_dir):
    path = tmp_path / 'my-weights.pt'
    path.write_bytes(b'x')
    assert detectors.find_detector('inception', [f'inception={path}']) == str(path)
    with pytest.raises(detectors.MissingDetectorError):
        detectors.find_detector('vgg16', [f'inception={path}'])


# ----------------------------------------------------------------------------------------------
# Whole path on the official fixture

def test_identical_real_and_generated_sets_give_fid_zero_and_full_precision_recall(
        fixture_G, own_images_dataset, tiny_detectors, cache_dir):
    assert abs(_calc('fid8', fixture_G, own_images_dataset, tiny_detectors)['fid8']) < 1e-3
    pr = _calc('pr8', fixture_G, own_images_dataset, tiny_detectors)
    assert pr == {'pr8_precision': 1.0, 'pr8_recall': 1.0}


def test_real_features_are_cached_and_reused(fixture_G, own_images_dataset, tiny_detectors, cache_dir, monkeypatch):
    first = _calc('kid8', fixture_G, own_images_dataset, tiny_detectors)
    cached = list((cache_dir / 'gan-metrics').glob('*-inception-*.npz'))
    assert len(cached) == 1
    calls = []
    real_images = features.real_images
    monkeypatch.setattr(features, 'real_images', lambda *a: calls.append(1) or real_images(*a))
    assert _calc('kid8', fixture_G, own_images_dataset, tiny_detectors) == first
    assert calls == []


def test_is_and_ppl_run_on_the_official_fixture(fixture_G, tiny_detectors, cache_dir):
    results = _calc('is10', fixture_G, None, tiny_detectors)
    assert results['is10_mean'] >= 1.0 and np.isfinite(results['is10_std'])
    ppl_result = _calc('ppl2_wend4', fixture_G, None, tiny_detectors)['ppl2_wend4']
    assert np.isfinite(ppl_result) and ppl_result > 0


def test_results_do_not_depend_on_batch_size(fixture_G, own_images_dataset, tiny_detectors, cache_dir):
    a = metric_main.calc_metric('kid6', G=fixture_G, dataset_kwargs=dict(path=own_images_dataset), cache=False,
                                detector_search=[tiny_detectors], batch_size=4, progress=False)
    b = metric_main.calc_metric('kid6', G=fixture_G, dataset_kwargs=dict(path=own_images_dataset), cache=False,
                                detector_search=[tiny_detectors], batch_size=6, progress=False)
    assert a['results']['kid6'] == pytest.approx(b['results']['kid6'], rel=1e-4, abs=1e-6)


def test_chunks_gathered_from_two_ranks_come_back_in_item_order(monkeypatch):
    compute = lambda items: torch.as_tensor(items, dtype=torch.float32)[:, None] * 10
    single = features.run_in_chunks(MetricOptions(progress=False), 23, compute, batch_size=4)
    parts = {}

    def fake_gather(rank):
        def gather(local):
            parts[rank] = local
            return torch.cat([parts.get(0, torch.zeros_like(local)), parts.get(1, torch.zeros_like(local))])
        return gather
    for rank in (1, 0):   # rank 1 first, so rank 0's gather sees both halves
        monkeypatch.setattr(features.distributed, 'all_gather_cat', fake_gather(rank))
        out = features.run_in_chunks(MetricOptions(num_gpus=2, rank=rank, progress=False), 23, compute, batch_size=4)
    assert torch.equal(out, single)
    assert torch.equal(single[:, 0], torch.arange(23, dtype=torch.float32) * 10)


@pytest.fixture(scope='session')
def colored_dataset(tmp_path_factory):
    """8 toy colored digits, 4 red and 4 green (attributes Red / Green), as a dataset zip."""
    from stylegan2_fair.cli.dataset_tool import convert
    data = str(tmp_path_factory.mktemp('colored') / 'colored.zip')
    result = CliRunner().invoke(convert, ['--source=toy:colored-digits', f'--dest={data}', '--num-images=8',
                                          '--majority=0.5'])
    assert result.exit_code == 0, result.output
    return data


def test_ivom_and_recon_error_report_per_attribute_values(fixture_G, colored_dataset, tiny_detectors, cache_dir):
    results = _calc('ivom4', fixture_G, colored_dataset, tiny_detectors, ivom_steps=1, ivom_distance='mse')
    assert {'ivom4', 'ivom4_std', 'ivom4_mse', 'ivom4_attr_std'} <= set(results)
    assert {k for k in results if '/' in k} >= {'ivom4/Red', 'ivom4/Green'}
    re = _calc('re8', fixture_G, colored_dataset, tiny_detectors, re_epochs=1)
    assert re['re8'] > 0 and {'re8/Red', 're8/Green'} <= set(re)


def test_partial_recall_reports_each_attribute(fixture_G, colored_dataset, tiny_detectors, cache_dir):
    results = _calc('partial_recall8', fixture_G, colored_dataset, tiny_detectors)
    assert set(results) >= {'partial_recall8', 'partial_recall8/Red', 'partial_recall8/Green'}
    assert all(0 <= v <= 1 for v in results.values())
    # 4 red + 4 green: the overall recall is the mean of the two halves.
    assert results['partial_recall8'] == pytest.approx(
        (results['partial_recall8/Red'] + results['partial_recall8/Green']) / 2)


def test_niqe_runs_with_a_pristine_model_from_the_reals(fixture_G, colored_dataset):
    results = metric_main.calc_metric('niqe4', G=fixture_G, dataset_kwargs=dict(path=colored_dataset),
                                      progress=False)['results']
    assert set(results) == {'niqe4', 'niqe4_std', 'niqe4_set'} and np.isfinite(results['niqe4'])


def test_brisque_scores_generated_images_with_piqs_model(fixture_G, monkeypatch, tmp_path):
    pytest.importorskip('piq')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    target = tmp_path / 'hub' / 'checkpoints' / nriqa.BRISQUE_FILE
    target.parent.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    torch.save((torch.randn([5], generator=gen), torch.randn([5, 36], generator=gen)), target)  # (sv_coef, sv)
    results = metric_main.calc_metric('brisque4', G=fixture_G, progress=False)['results']
    assert set(results) == {'brisque4', 'brisque4_std'} and np.isfinite(results['brisque4'])


def test_mode_metric_counts_what_the_given_classifier_sees(fixture_G):
    def bright(images):   # two "modes": dark and bright images
        return (images.float().mean(dim=(1, 2, 3)) > images.float().mean()).long().cpu().numpy()
    bright.num_modes = 2
    results = metric_main.calc_metric('modes8', G=fixture_G, mode_classifier=bright, progress=False)['results']
    ids = bright(features.generated_images(MetricOptions(G=fixture_G, progress=False), np.arange(8)))
    count, kl = modes.mode_statistics(ids, 2)
    assert results == {'modes8': count, 'modes8_kl': pytest.approx(kl), 'modes8_max': 2}


def test_calc_metrics_cli_writes_official_jsonl(official_fixtures, own_images_dataset, tiny_detectors, tmp_path,
                                                cache_dir):
    from stylegan2_fair.cli.calc_metrics import calc_metrics
    run_dir = tmp_path / 'run'
    result = CliRunner().invoke(calc_metrics, [
        f'--network={official_fixtures / FIXTURE_PKL}', f'--data={own_images_dataset}', '--metrics=fid8,kid8',
        f'--detector={tiny_detectors}', f'--run-dir={run_dir}', '--batch=8', '--device=cpu', '--verbose=0'])
    assert result.exit_code == 0, result.output
    line = json.loads((run_dir / 'metric-fid8.jsonl').read_text().splitlines()[-1])
    assert set(line) == {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'snapshot_pkl', 'timestamp'}
    assert line['metric'] == 'fid8' and 'fid8' in line['results'] and line['num_gpus'] == 1
    assert line['snapshot_pkl'].endswith(FIXTURE_PKL)
    assert (run_dir / 'metric-kid8.jsonl').is_file()


def test_calc_metrics_cli_passes_the_classifier_to_the_fairness_metric(official_fixtures, tmp_path, cache_dir):
    from stylegan2_fair.cli.calc_metrics import calc_metrics

    class RedOrGreen(torch.nn.Module):   # logits from the mean of the red and green channels
        def forward(self, images):
            return images[:, :2].mean(dim=(2, 3)) * 10
    clf_path = tmp_path / 'clf.pt'
    torch.jit.script(RedOrGreen()).save(str(clf_path))
    (tmp_path / 'clf.json').write_text(json.dumps(dict(class_names=['red', 'green'], resolution=32, channels=3)))
    result = CliRunner().invoke(calc_metrics, [
        f'--network={official_fixtures / FIXTURE_PKL}', '--metrics=fairness', f'--classifier=torchscript:{clf_path}',
        f'--run-dir={tmp_path}', '--device=cpu', '--verbose=0', '--batch=8', '--set=fairness_set_size=8',
        '--set=fairness_num_sets=2'])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / 'metric-fairness.jsonl').read_text())['results']
    assert set(results) >= {'fairness', 'fairness_count/red', 'fairness_count/green'}


def test_calc_metrics_cli_explains_a_missing_detector(official_fixtures, own_images_dataset, tmp_path, cache_dir):
    from stylegan2_fair.cli.calc_metrics import calc_metrics
    result = CliRunner().invoke(calc_metrics, [
        f'--network={official_fixtures / FIXTURE_PKL}', f'--data={own_images_dataset}', '--metrics=fid8',
        f'--run-dir={tmp_path}', '--device=cpu', '--verbose=0'])
    assert result.exit_code != 0
    assert 'inception-2015-12-05.pt' in result.output and detectors.DETECTOR_URLS['inception'] in result.output


@pytest.mark.parametrize('metric, file', [('brisque4', 'brisque_svm_weights.pt'), ('clipiqa4', 'RN50.pt')])
def test_quality_models_without_weights_say_where_to_put_them(fixture_G, monkeypatch, tmp_path, metric, file):
    pytest.importorskip('piq')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setenv('HOME', str(tmp_path))
    with pytest.raises(nriqa.MissingWeightsError, match=file):
        metric_main.calc_metric(metric, G=fixture_G, progress=False)


@pytest.mark.slow
def test_full_architecture_standins_run_fid_and_pr(fixture_G, own_images_dataset, tmp_path, cache_dir):
    """torchvision's inception_v3 and vgg16 (untrained) as TorchScript files: the real networks' shapes."""
    folder = tmp_path / 'full'
    detectors.save_standin_detector('inception', str(folder / 'inception-2015-12-05.pt'), size=75)
    detectors.save_standin_detector('vgg16', str(folder / 'vgg16.pt'), size=32, small=True)
    assert abs(_calc('fid8', fixture_G, own_images_dataset, str(folder))['fid8']) < 1e-2
    assert _calc('pr8', fixture_G, own_images_dataset, str(folder))['pr8_recall'] == 1.0


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(official_fixtures, own_images_dataset, tiny_detectors, tmp_path,
                                               cache_dir):
    """calc_metrics --gpus=2 on CPU (gloo): each process generates its share; gathered results match."""
    from stylegan2_fair.cli.calc_metrics import calc_metrics
    lines = {}
    for gpus in (1, 2):
        run_dir = tmp_path / f'run{gpus}'
        result = CliRunner().invoke(calc_metrics, [
            f'--network={official_fixtures / FIXTURE_PKL}', f'--data={own_images_dataset}', '--metrics=fid8,pr8',
            f'--detector={tiny_detectors}', f'--run-dir={run_dir}', '--batch=3', '--device=cpu', '--verbose=0',
            f'--gpus={gpus}', '--no-cache'])
        assert result.exit_code == 0, result.output
        lines[gpus] = [json.loads((run_dir / f'metric-{m}.jsonl').read_text())['results'] for m in ('fid8', 'pr8')]
    assert lines[1] == lines[2]
