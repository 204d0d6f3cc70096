"""Fair generation without retraining (stylegan2_fair/fair_generation.py): balanced rejection sampling,
class truncation, the centroid cache, and their CLI options."""
import copy
import math
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stylegan2_fair import fair_generation as fg
from stylegan2_fair.classifiers import Classifier
from stylegan2_fair.metrics.fairness import fairness_metric

SKEWED = [0.5, 0.3, 0.15, 0.05]


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors: see conftest


class ClassCodeG(torch.nn.Module):
    """A generator whose class is known: w = z (identity mapping), and the image spells out the class
    d = bucket of Phi(w_0) under the cumulative `probs`, as a one-hot over the first K pixels. So G draws
    class d with probability probs[d] exactly."""

    def __init__(self, probs, z_dim=3, num_ws=2):
        super().__init__()
        self.z_dim = self.w_dim = z_dim
        self.c_dim, self.num_ws, self.img_resolution, self.img_channels = 0, num_ws, 4, 1
        self.register_buffer('edges', torch.tensor(np.cumsum(probs)[:-1], dtype=torch.float32))
        self.register_buffer('w_avg', torch.zeros(z_dim))
        self.num_classes = len(probs)

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        ws = z.float().unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.w_avg.lerp(ws, truncation_psi) if truncation_psi != 1 else ws

    def classes_of(self, ws):
        u = 0.5 * (1 + torch.erf(ws[:, 0, 0] / math.sqrt(2)))
        return torch.bucketize(u, self.edges)

    def synthesis(self, ws, noise_mode='const'):
        img = -torch.ones([len(ws), 1, 4, 4], device=ws.device)
        img.view(len(ws), -1)[torch.arange(len(ws)), self.classes_of(ws)] = 1
        return img

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const'):
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode)


class PixelReader(Classifier):
    """Reads the class ClassCodeG wrote (a sharp softmax over the first K pixels)."""

    def __init__(self, num_classes):
        super().__init__([f'c{i}' for i in range(num_classes)])
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def class_probabilities(self, images):
        return (self.scale * images.flatten(1)[:, :self.num_classes]).softmax(dim=1)


def balanced(probs, target=None, seed=0, **kwargs):
    G = ClassCodeG(probs)
    kwargs.setdefault('calib', 4000)
    return fg.BalancedSampler(G, PixelReader(len(probs)), target=target, batch=500,
                              generator=torch.Generator().manual_seed(seed), **kwargs)


# ------------------------------------------------------------------------------------------------
# The acceptance rule and targets

def test_acceptance_is_target_over_p_scaled_so_the_best_class_is_always_accepted():
    p, target = np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.25] * 4)
    a = fg.balance_acceptance(p, target)
    ratio = target / p
    assert np.allclose(a, ratio / ratio.max())
    assert a[3] == 1.0 and a.argmax() == 3
    # The expected acceptance rate is 1 / max ratio = min_k p(k) / target(k).
    assert (p * a).sum() == pytest.approx(min(p / target))


def test_min_acceptance_always_accepts_starved_classes_and_bounds_the_rate():
    p, target = np.array([0.7, 0.299, 0.001]), np.array([1 / 3] * 3)
    a = fg.balance_acceptance(p, target, min_acceptance=0.05)
    assert a[2] == 1.0                            # rarer than 0.05 * 1/3: always kept
    assert a[0] == pytest.approx(0.05 * (1 / 3) / 0.7)
    assert (p * a).sum() == pytest.approx(0.05 * 2 / 3 + 0.001)


def test_target_parsing_weights_names_and_errors():
    names = ['a', 'b', 'c', 'd']
    assert np.allclose(fg.resolve_target(None, names), 0.25)
    assert np.allclose(fg.resolve_target('1,1,2,4', names), [0.125, 0.125, 0.25, 0.5])
    assert np.allclose(fg.resolve_target('d=0.4,a=0.3', names), [0.3, 0.15, 0.15, 0.4])
    assert np.allclose(fg.resolve_target({'a': 1, 'b': 1, 'c': 1, 'd': 1}, names), 0.25)
    with pytest.raises(ValueError, match='3 shares but the classifier has 4'):
        fg.resolve_target('1,1,1', names)
    with pytest.raises(ValueError, match="not classes of the classifier"):
        fg.resolve_target('e=0.5', names)
    with pytest.raises(ValueError, match='more than 1'):
        fg.resolve_target('a=0.8,b=0.5', names)


# ------------------------------------------------------------------------------------------------
# Balanced sampling on a generator with known class proportions

def test_each_class_is_accepted_at_the_rate_of_the_formula():
    sampler = balanced(SKEWED)
    _, _, stats = sampler.sample(1500)
    empirical = np.array(stats['accepted_per_class']) / np.array(stats['proposed_per_class'])
    expected = fg.balance_acceptance(SKEWED, [0.25] * 4)
    assert np.allclose(empirical, expected, atol=0.03), (empirical, expected)
    assert stats['acceptance_rate'] == pytest.approx(0.2, abs=0.02)      # min_k p(k) / target(k)
    assert np.allclose(stats['p_estimate'], SKEWED, atol=0.015)            # running counts of all candidates


@pytest.mark.parametrize('target', [None, [0.1, 0.2, 0.3, 0.4]])
def test_output_histogram_converges_to_the_target(target):
    sampler = balanced(SKEWED, target=target, seed=1)
    images, classes, stats = sampler.sample(2000)
    want = np.full(4, 0.25) if target is None else np.array(target)
    shares = np.bincount(classes.numpy(), minlength=4) / 2000
    assert np.abs(shares - want).max() < 0.03, shares
    assert stats['histogram'] == np.bincount(classes.numpy(), minlength=4).tolist()
    # The returned classes are those of the returned images.
    assert torch.equal(PixelReader(4)(images).argmax(1), classes)
    plain = np.bincount(ClassCodeG(SKEWED).classes_of(torch.randn(2000, 1, 3)), minlength=4) / 2000
    assert np.abs(plain - want).max() > 0.2   # G alone is far from it


def test_balanced_sampler_feeds_the_fairness_metric():
    G, clf = ClassCodeG(SKEWED), PixelReader(4)
    plain = fairness_metric(G, clf, num_sets=2, set_size=800, batch=400)
    fair = fairness_metric(None, clf, num_sets=2, set_size=800, batch=400, sampler=balanced(SKEWED))
    assert plain['fairness_mean'] == pytest.approx(np.linalg.norm(np.array(SKEWED) - 0.25), abs=0.04)
    assert fair['fairness_mean'] < 0.06


class MeanPixelD(torch.nn.Module):
    """A stand-in discriminator: logit = 4 x the mean pixel, so images of higher classes (one-hot further
    right, same mean) score alike and DRS acts as a class-blind filter."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, img, c):
        self.calls += 1
        return 4 * img.mean(dim=[1, 2, 3]).unsqueeze(1) + 0.1 * torch.randn(len(img), 1)


def test_balance_composes_with_drs():
    D = MeanPixelD()
    sampler = balanced(SKEWED, seed=2, calib=2000, drs_D=D, drs_burn_in=3)
    _, classes, stats = sampler.sample(800)
    assert 0 < stats['drs_acceptance_rate'] < 1          # DRS rejected some candidates first
    assert D.calls > 3
    shares = np.bincount(classes.numpy(), minlength=4) / 800
    assert np.abs(shares - 0.25).max() < 0.05, shares


def test_starved_class_raises_a_clear_error_without_min_acceptance():
    sampler = balanced([0.999, 0.001], calib=500, max_proposals=3000)
    with pytest.raises(RuntimeError, match='min_acceptance'):
        sampler.sample(1000)


# ------------------------------------------------------------------------------------------------
# Class truncation

def centroids_for(G, clf, n=6000):
    return fg.estimate_class_centroids(G, clf, num_samples=n, batch=1000)


def test_class_centroids_are_the_mean_w_of_each_class():
    G, clf = ClassCodeG(SKEWED), PixelReader(4)
    cent = centroids_for(G, clf, n=20000)
    # w_0 of class d is a standard normal restricted to the bucket of d: its mean is analytic.
    edges = np.concatenate([[-np.inf], [float(np.sqrt(2) * torch.erfinv(torch.tensor(2 * e - 1))) for e in
                                        np.cumsum(SKEWED)[:-1]], [np.inf]])
    pdf = lambda x: np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi) if np.isfinite(x) else 0.0  # noqa: E731
    expected = [(pdf(a) - pdf(b)) / p for a, b, p in zip(edges[:-1], edges[1:], SKEWED)]
    assert np.allclose(cent.centroids[0, :, 0].numpy(), expected, atol=0.06)
    assert np.allclose(cent.centroids[0, :, 1:].numpy(), 0, atol=0.1)
    assert cent.counts.sum() == 20000


def test_class_truncation_at_psi_0_returns_the_centroid_of_the_predicted_class():
    G, clf = ClassCodeG(SKEWED), PixelReader(4)
    cent = centroids_for(G, clf)
    cands = fg.CandidateGenerator(G, truncation_psi=0, trunc_mode='class', centroids=cent, classifier=clf,
                                  keep_class=False)
    z = torch.randn(300, G.z_dim)
    ws, _, classes = cands.class_truncated(z, torch.zeros(300, 0))
    assert torch.equal(classes, G.classes_of(G.mapping(z, None)))
    assert torch.allclose(ws, cent.centroids[0][classes][:, None, :].expand(-1, G.num_ws, -1))
    assert len(set(classes.tolist())) == 4


def test_class_truncation_keeps_the_class_mix_that_global_truncation_collapses():
    G, clf = ClassCodeG(SKEWED), PixelReader(4)
    cent = centroids_for(G, clf)
    z = torch.randn(2000, G.z_dim)
    c = torch.zeros(2000, 0)
    shares = {}
    for mode in ('global', 'class'):
        cands = fg.CandidateGenerator(G, truncation_psi=0.3, trunc_mode=mode, centroids=cent, classifier=clf,
                                      keep_class=False)
        shares[mode] = np.bincount(clf(cands.images_for(z, c)).argmax(1).numpy(), minlength=4) / 2000
    untruncated = np.bincount(G.classes_of(G.mapping(z, None)).numpy(), minlength=4) / 2000
    assert np.abs(shares['class'] - untruncated).max() < 0.02
    # w_avg = 0 lies between the two majority classes: global truncation removes the minority classes.
    assert shares['global'][2:].sum() < 0.01 and untruncated[2:].sum() > 0.15


class RingG(ClassCodeG):
    """Two classes that are not convex in w: class 1 is |w_0| > 0.6745 (both tails, half of all samples), so
    its centroid (w_0 about 0) lies in class 0."""

    def __init__(self):
        super().__init__([0.5, 0.5])

    def classes_of(self, ws):
        return (ws[:, 0, 0].abs() > 0.6745).long()


def test_keep_class_backs_off_where_the_path_to_the_centroid_leaves_the_class():
    G, clf = RingG(), PixelReader(2)
    cent = centroids_for(G, clf)
    z = torch.randn(1000, G.z_dim)
    c = torch.zeros(1000, 0)
    before = G.classes_of(G.mapping(z, None))
    plain = fg.CandidateGenerator(G, truncation_psi=0.3, trunc_mode='class', centroids=cent, classifier=clf,
                                  keep_class=False)
    assert (clf(plain.images_for(z, c)).argmax(1) != before).float().mean() > 0.3   # the formula alone
    keep = fg.CandidateGenerator(G, truncation_psi=0.3, trunc_mode='class', centroids=cent, classifier=clf)
    ws, images, classes = keep.class_truncated(z, c)
    assert torch.equal(clf(images).argmax(1), before) and torch.equal(classes, before)
    # Each sample sits at psi 0.3, the retry psi 0.65, or untouched (psi 1) on the way to its centroid.
    w, centre = G.mapping(z, None)[:, 0, 0], cent.centroids[0, before, 0]
    psi_used = (ws[:, 0, 0] - centre) / (w - centre)
    assert all(min(abs(p - q) for q in (0.3, 0.65, 1.0)) < 1e-4 for p in psi_used.tolist())
    assert (psi_used < 0.99).float().mean() > 0.5 and keep.class_changes > 0


def test_conditional_centroids_are_per_label_and_class():
    class CondG(ClassCodeG):
        """Label l shifts w_1 by 10 l: each label has its own region of w."""
        def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
            ws = super().mapping(z, c)
            ws[:, :, 1] += 10 * c.argmax(1).float()[:, None]
            return ws
    G, clf = CondG(SKEWED), PixelReader(4)
    G.c_dim = 2
    cent = centroids_for(G, clf, n=4000)
    assert tuple(cent.centroids.shape) == (2, 4, 3)
    assert np.allclose(cent.centroids[1, :, 1] - cent.centroids[0, :, 1], 10, atol=0.4)
    cands = fg.CandidateGenerator(G, truncation_psi=0, trunc_mode='class', centroids=cent, classifier=clf,
                                  keep_class=False)
    c = torch.nn.functional.one_hot(torch.tensor([0, 1, 1]), 2).float()
    ws, _, classes = cands.class_truncated(torch.randn(3, 3), c)
    assert torch.allclose(ws[:, 0], cent.centroids[torch.tensor([0, 1, 1]), classes])


# ------------------------------------------------------------------------------------------------
# Official-format pickle, the centroid cache, CLIs

def random_classifier(seed=0):
    """A small untrained CNN whose logits are centred on the fixture G's images (so it uses every class)."""
    if seed not in _CLASSIFIERS:
        _CLASSIFIERS[seed] = _make_random_classifier(seed)
    return copy.deepcopy(_CLASSIFIERS[seed])


_CLASSIFIERS = {}


def _make_random_classifier(seed):
    from stylegan2_fair.classifiers.small_cnn import LabelClassifier
    torch.manual_seed(seed)
    clf = LabelClassifier(['a', 'b', 'c'], resolution=32, channels=3, width=4).freeze()
    G = _fixture_G()
    with torch.no_grad():
        logits = clf.logits(G(torch.randn(32, G.z_dim, generator=torch.Generator().manual_seed(seed)), None))
        scale = logits.std(0)   # per class: logits become (logit - mean) / std
        clf.net.head.weight.div_(scale[:, None])
        clf.net.head.bias.sub_(logits.mean(0)).div_(scale)
    return clf


_FIXTURE_G = {}


def _fixture_G():
    from stylegan2_fair import load_network_pkl
    from conftest import _fixtures_dir
    if 'G' not in _FIXTURE_G:
        path = _fixtures_dir() / 'uncond-skip-resnet-32-official-format.pkl'
        _FIXTURE_G['G'] = load_network_pkl(path)['G_ema'].eval()
    return _FIXTURE_G['G']


@pytest.fixture()
def official_pkl(official_fixtures, tmp_path):
    path = tmp_path / 'network.pkl'
    shutil.copy(official_fixtures / 'uncond-skip-resnet-32-official-format.pkl', path)
    return path


def test_both_work_on_an_official_pickle(official_pkl):
    from stylegan2_fair import load_network_pkl
    G = load_network_pkl(official_pkl)['G_ema'].eval()
    clf = random_classifier()
    cent = fg.estimate_class_centroids(G, clf, num_samples=8, batch=8)
    cands = fg.CandidateGenerator(G, truncation_psi=0, trunc_mode='class', centroids=cent, classifier=clf, batch=8,
                                  keep_class=False)
    ws, _, classes = cands.class_truncated(torch.randn(8, G.z_dim), torch.zeros(8, 0))
    assert torch.allclose(ws, cent.centroids[0][classes][:, None].expand(-1, G.num_ws, -1))
    sampler = fg.BalancedSampler(G, clf, calib=16, min_acceptance=0.05, batch=8,
                                 generator=torch.Generator().manual_seed(0))
    images, classes, stats = sampler.sample(6)
    assert images.shape == (6, 3, 32, 32) and len(classes) == 6
    assert stats['num_proposed'] >= 6 and 0 < stats['acceptance_rate'] <= 1


def test_centroid_cache_is_reused_and_invalidated_when_the_checkpoint_changes(official_pkl, monkeypatch):
    from stylegan2_fair import load_network_pkl
    G = load_network_pkl(official_pkl)['G_ema'].eval()
    clf = random_classifier()
    calls = []
    real_estimate = fg.estimate_class_centroids
    monkeypatch.setattr(fg, 'estimate_class_centroids', lambda *a, **k: calls.append(1) or real_estimate(*a, **k))
    first = fg.load_or_estimate_centroids(G, clf, official_pkl, num_samples=8, batch=8)
    cache = fg.centroid_cache_path(official_pkl, clf)
    assert os.path.isfile(cache) and len(calls) == 1
    again = fg.load_or_estimate_centroids(G, clf, official_pkl, num_samples=8, batch=8)
    assert len(calls) == 1 and torch.equal(first.centroids, again.centroids)
    assert not [n for n in os.listdir(official_pkl.parent) if n.startswith('.')]   # no temp files left
    # A rewritten checkpoint (new mtime) invalidates the cache.
    st = os.stat(official_pkl)
    os.utime(official_pkl, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    fg.load_or_estimate_centroids(G, clf, official_pkl, num_samples=8, batch=8)
    assert len(calls) == 2
    # Another classifier gets its own cache file.
    other = random_classifier(seed=1)
    assert fg.centroid_cache_path(official_pkl, other) != cache
    fg.load_or_estimate_centroids(G, other, official_pkl, num_samples=8, batch=8)
    assert len(calls) == 3


@pytest.fixture()
def classifier_file(tmp_path):
    path = tmp_path / 'clf.pt'
    random_classifier().save(path)
    return path


def test_generate_cli_balance_and_class_truncation(official_pkl, classifier_file, tmp_path):
    from stylegan2_fair.cli.generate import generate
    out = tmp_path / 'out'
    runner = CliRunner()
    res = runner.invoke(generate, ['--network', str(official_pkl), '--seeds', '0-5', '--outdir', str(out),
                                   '--device', 'cpu', '--balance', '--classifier', f'labels:{classifier_file}',
                                   '--calib', '16', '--min-acceptance', '0.05', '--target', 'a=0.5'])
    assert res.exit_code == 0, res.output
    assert 'acceptance rate' in res.output and len(os.listdir(out)) == 6
    res = runner.invoke(generate, ['--network', str(official_pkl), '--seeds', '3,4', '--outdir', str(out / 'trunc'),
                                   '--device', 'cpu', '--trunc', '0.5', '--trunc-mode', 'class',
                                   '--classifier', f'labels:{classifier_file}', '--centroid-samples', '8'])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out / 'trunc')) == ['seed0003.png', 'seed0004.png']
    assert os.path.isfile(fg.centroid_cache_path(official_pkl, random_classifier()))
    res = runner.invoke(generate, ['--network', str(official_pkl), '--seeds', '0', '--outdir', str(out),
                                   '--device', 'cpu', '--balance'])
    assert res.exit_code != 0 and '--classifier' in res.output


def test_fairness_metric_scores_the_fair_samplers(official_pkl, classifier_file):
    from stylegan2_fair import load_network_pkl
    from stylegan2_fair.metrics import metric_main
    G = load_network_pkl(official_pkl)['G_ema']
    common = dict(G=G, classifier=f'labels:{classifier_file}', batch_size=8, progress=False, fairness_num_sets=1,
                  fairness_set_size=16)
    fair = metric_main.calc_metric('fairness', balance=True, balance_calib=16, balance_min_acceptance=0.1,
                                   **common)['results']
    assert 0 < fair['fairness_acceptance_rate'] <= 1
    trunc = metric_main.calc_metric('fairness', G_kwargs=dict(truncation_psi=0.5), trunc_mode='class',
                                    centroid_samples=8, network_pkl=str(official_pkl), **common)['results']
    assert 'fairness_acceptance_rate' not in trunc
    assert os.path.isfile(fg.centroid_cache_path(official_pkl, random_classifier()))
    assert sum(v for k, v in trunc.items() if k.startswith('fairness_count/')) == 16


def test_calc_metrics_cli_forwards_the_fair_sampling_options(official_pkl, classifier_file, monkeypatch, tmp_path):
    from stylegan2_fair.cli.calc_metrics import calc_metrics
    from stylegan2_fair.metrics import metric_main
    seen = {}
    monkeypatch.setattr(metric_main, 'calc_metric', lambda metric, **kw: seen.update(kw) or dict(
        results={}, metric=metric, total_time=0, total_time_str='0s', num_gpus=1))
    res = CliRunner().invoke(calc_metrics, ['--network', str(official_pkl), '--metrics', 'fairness', '--device', 'cpu',
                                            '--classifier', f'labels:{classifier_file}', '--balance', '--target',
                                            'a=0.5', '--calib', '64', '--trunc', '0.7', '--trunc-mode', 'class',
                                            '--run-dir', str(tmp_path)])
    assert res.exit_code == 0, res.output
    forwarded = (seen['balance'], seen['balance_target'], seen['balance_calib'], seen['trunc_mode'])
    assert forwarded == (True, 'a=0.5', 64, 'class')
    assert seen['network_pkl'] == str(official_pkl) and seen['G_kwargs'] == dict(truncation_psi=0.7)


def test_generate_cli_balance_after_drs(official_pkl, classifier_file, tmp_path, monkeypatch):
    from stylegan2_fair import checkpoint, load_network_pkl
    from stylegan2_fair.cli.generate import generate
    data = load_network_pkl(official_pkl)
    pkl = tmp_path / 'dia.pkl'
    checkpoint.save_network_pkl(pkl, dict(G=data['G'], D=data['D'], G_ema=data['G_ema'], D_aux=data['D']))
    built = []

    class QuickBurnIn(fg.CandidateGenerator):   # one burn-in batch instead of 50 keeps the test fast
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **dict(kwargs, drs_burn_in=1))
            built.append(self)
    monkeypatch.setattr(fg, 'CandidateGenerator', QuickBurnIn)
    res = CliRunner().invoke(generate, ['--network', str(pkl), '--seeds', '0-3', '--outdir', str(tmp_path / 'out'),
                                        '--device', 'cpu', '--balance', '--drs', '--drs-percentile', '50',
                                        '--classifier', f'labels:{classifier_file}', '--calib', '8',
                                        '--min-acceptance', '0.2'])
    assert res.exit_code == 0, res.output
    assert 'DRS acceptance' in res.output and len(os.listdir(tmp_path / 'out')) == 4
    assert built and 0 < built[0].drs_acceptance_rate < 1
