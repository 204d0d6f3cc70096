"""Fairness loss (model rebalancing), importance reweighting, and the fairness metric."""
import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylegan2_fair.classifiers import CLASSIFIER_OPTION, Classifier
from stylegan2_fair.loss import real_loss
from stylegan2_fair.metrics import registered_metrics
from stylegan2_fair.metrics.fairness import fairness_discrepancy, fairness_metric
from training_hooks import PhaseBatch
from training_hooks.fairness import FairnessLoss, class_weights, fairness_loss
from training_hooks.reweight import ImportanceReweighting, classify_dataset, importance_weights


class MeanColourClassifier(Classifier):
    """Fixed: p(red, green, blue) = softmax of 4 x the mean of each colour channel."""

    def __init__(self):
        super().__init__(['red', 'green', 'blue'])

    def class_probabilities(self, images):
        return (4 * images.mean(dim=(2, 3))).softmax(dim=1)


class TinyG(torch.nn.Module):
    """z -> 3x4x4 image, initially biased toward red."""
    z_dim, c_dim, img_resolution, img_channels = 8, 0, 4, 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(self.z_dim, 3 * 4 * 4)
        with torch.no_grad():
            self.fc.weight.mul_(0.3)
            self.fc.bias.view(3, 16)[:] = torch.tensor([1.5, -0.5, -1.0])[:, None]

    def forward(self, z, c=None, **kwargs):
        return torch.tanh(self.fc(z)).view(-1, 3, 4, 4)


class FakeRun:
    """The parts of TrainingRun the hooks use."""

    def __init__(self, G=None, training_set=None, gather=None, rank=0, world_size=1):
        self.G, self.training_set, self.rank, self.world_size = G, training_set, rank, world_size
        self.device, self.gan_loss = torch.device('cpu'), 'ns'
        self.reports = collections.defaultdict(list)
        self._gather = gather

    def real_loss(self, logits):
        return real_loss(logits, self.gan_loss)

    def report(self, name, value):
        self.reports[name].append(value)

    def all_gather(self, tensor):
        return tensor if self._gather is None else self._gather(tensor)


def make_fairness_hook(G, **kwargs):
    hook = FairnessLoss(classifier=MeanColourClassifier(), **kwargs)
    run = FakeRun(G)
    hook.setup(run)
    return hook, run


def gen_batch(G, z):
    return PhaseBatch('Gmain', 1.0, gen_z=z, gen_img=G(z))


def expected_shares(G, classifier, n=4096):
    with torch.no_grad():
        return classifier(G(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(123)))).mean(0)


# ----------------------------------------------------------------------------------------------
# Fairness loss

def test_fairness_loss_has_a_nonzero_gradient_wrt_G():
    G = TinyG()
    hook, run = make_fairness_hook(G)
    loss = hook.phase_loss(run, 'Gmain', gen_batch(G, torch.randn(16, G.z_dim)))
    assert loss.item() > 0
    loss.backward()
    assert G.fc.weight.grad.abs().sum() > 0 and G.fc.bias.grad.abs().sum() > 0


def test_gradient_steps_on_the_fairness_loss_raise_the_under_represented_shares():
    G = TinyG()
    hook, run = make_fairness_hook(G, ema=0.9)
    clf = MeanColourClassifier()
    before = expected_shares(G, clf)
    assert before[0] > 0.5  # red dominates
    opt = torch.optim.Adam(G.parameters(), lr=0.02)
    for _ in range(25):
        opt.zero_grad()
        hook.phase_loss(run, 'Gmain', gen_batch(G, torch.randn(32, G.z_dim))).backward()
        opt.step()
    after = expected_shares(G, clf)
    assert after[1] > before[1] and after[2] > before[2]
    assert fairness_discrepancy(after) < 0.6 * fairness_discrepancy(before)


def test_class_weights_are_inverse_to_the_running_share_and_average_one():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    weights = class_weights(p)
    assert torch.isclose(weights.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(weights * p, (weights * p)[0].expand(3))  # lambda_d proportional to 1 / p_d
    assert torch.allclose(class_weights(torch.full([4], 0.25)), torch.ones(4))
    assert class_weights(torch.tensor([1.0, 0.0])).max() <= 2  # bounded by |D| when a class vanishes


def test_only_classes_below_their_fair_share_are_penalised():
    share = torch.tensor([0.5, 0.3, 0.2])
    loss = fairness_loss(share, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.isclose(loss, torch.tensor(2 * (1 / 3 - 0.3) + 3 * (1 / 3 - 0.2)))


def test_running_estimate_is_an_ema_of_batch_shares_and_survives_state_dict():
    hook = FairnessLoss(classifier='unused:x', ema=0.75)
    a, b = torch.tensor([0.6, 0.4]), torch.tensor([0.2, 0.8])
    hook.update_running_estimate(a)
    hook.update_running_estimate(b)
    assert torch.allclose(hook.p_running, (0.75 * a + 0.25 * b).double())
    restored = FairnessLoss(classifier='unused:x')
    restored.load_state_dict(hook.state_dict())
    assert torch.equal(restored.p_running, hook.p_running) and restored.num_updates == 2


def test_fairness_hook_reports_its_loss_and_class_shares_and_ignores_other_phases():
    G = TinyG()
    hook, run = make_fairness_hook(G)
    for phase in ('Greg', 'Dmain', 'Dreg'):
        assert hook.phase_loss(run, phase, PhaseBatch(phase, 1.0, gen_img=G(torch.randn(2, 8)))) is None
    hook.phase_loss(run, 'Gmain', gen_batch(G, torch.randn(8, G.z_dim)))
    assert set(run.reports) == {'Fairness/loss', 'Fairness/p_class0', 'Fairness/p_class1', 'Fairness/p_class2'}
    assert math.isclose(sum(run.reports[f'Fairness/p_class{d}'][0] for d in range(3)), 1, rel_tol=1e-5)


def test_two_process_gradient_equals_the_gradient_of_the_global_batch():
    clf = MeanColourClassifier()
    z = [torch.randn(8, TinyG.z_dim, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    G = TinyG()
    with torch.no_grad():
        shares = [clf(G(zr)).mean(0) for zr in z]

    def grads(loss):
        G.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in G.parameters()])

    single, run = make_fairness_hook(G)
    loss_single = single.phase_loss(run, 'Gmain', gen_batch(G, torch.cat(z)))
    g_single = grads(loss_single)
    per_rank = []
    for rank in (0, 1):
        hook = FairnessLoss(classifier=clf)
        gather = lambda t, r=rank: torch.stack([t[0] if i == r else shares[i] for i in (0, 1)])  # noqa: E731
        run = FakeRun(G, gather=gather, rank=rank, world_size=2)
        hook.setup(run)
        loss = hook.phase_loss(run, 'Gmain', gen_batch(G, z[rank]))
        assert torch.isclose(loss, loss_single, atol=1e-6)
        per_rank.append(grads(loss))
    assert torch.allclose((per_rank[0] + per_rank[1]) / 2, g_single, atol=1e-6)


def test_fairness_hook_needs_a_classifier():
    with pytest.raises(ValueError, match='--classifier'):
        FairnessLoss()


def test_cli_options_reach_the_hooks_and_share_one_classifier_option():
    from stylegan2_fair.cli.train import hook_kwargs_for
    cli = dict(classifier='labels:clf.pt', fair_weight=2.0, fairness_ema=0.9, reweight_soft=True)
    assert hook_kwargs_for('fairness', cli) == dict(classifier='labels:clf.pt', fair_weight=2.0, ema=0.9)
    assert hook_kwargs_for('reweight', cli) == dict(classifier='labels:clf.pt', soft=True)
    assert CLASSIFIER_OPTION in FairnessLoss.cli_options and CLASSIFIER_OPTION in ImportanceReweighting.cli_options


# ----------------------------------------------------------------------------------------------
# Importance reweighting

class LabelledImages:
    """Dataset items (uint8 CHW, label, idx) whose pixel value encodes the class: 40 * label."""

    def __init__(self, labels):
        self.labels = list(labels)
        self.resolution = 4

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return np.full([3, 4, 4], 40 * self.labels[idx], dtype=np.uint8), np.zeros([0], np.float32), idx


class PixelValueClassifier(Classifier):
    """Returns the label stored in the pixel value, one-hot (a perfect classifier of LabelledImages)."""

    def __init__(self, num_classes=3):
        super().__init__([f'c{k}' for k in range(num_classes)])

    def class_probabilities(self, images):
        label = torch.round((images[:, 0, 0, 0] + 1) * 127.5 / 40).long()
        return F.one_hot(label, self.num_classes).float()


def test_reweight_weights_are_uniform_share_over_class_share_with_mean_one():
    labels = [0] * 6 + [1] * 3 + [2]
    hook = ImportanceReweighting(classifier=PixelValueClassifier())
    hook.setup(FakeRun(training_set=LabelledImages(labels)))
    expected = torch.tensor([(1 / 3) / {0: 0.6, 1: 0.3, 2: 0.1}[k] for k in labels])
    assert torch.allclose(hook.weights, expected / expected.mean())
    assert torch.isclose(hook.weights.mean(), torch.tensor(1.0))
    assert torch.allclose(hook.p_bias, torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))


def test_reweight_hard_weights_keep_mean_one_when_a_class_is_never_predicted():
    probs = F.one_hot(torch.tensor([0, 0, 0, 1]), 3).float()  # class 2 never predicted
    weights, p_bias = importance_weights(probs)
    assert torch.isclose(weights.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert p_bias[2] == 0 and torch.isclose(weights[3] / weights[0], torch.tensor(3.0, dtype=torch.float64))


def test_reweight_soft_weights_mix_the_class_ratios_by_probability():
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    weights, p_bias = importance_weights(probs, soft=True)
    ratio = 0.5 / probs.double().mean(0)
    raw = probs.double() @ ratio
    assert torch.allclose(weights, raw / raw.mean())


@pytest.mark.parametrize('gan_loss', ['ns', 'hinge'])
def test_reweight_term_turns_the_real_loss_into_a_weighted_one(gan_loss):
    labels = [0, 0, 0, 1]
    hook = ImportanceReweighting(classifier=PixelValueClassifier(2))
    run = FakeRun(training_set=LabelledImages(labels))
    run.gan_loss = gan_loss
    hook.setup(run)
    idx = torch.tensor([3, 0, 1])
    logits = torch.tensor([[0.3], [-1.2], [2.0]])
    batch = PhaseBatch('Dmain', 1.0, real_idx=idx, real_logits=logits)
    per_sample = F.relu(1 - logits) if gan_loss == 'hinge' else F.softplus(-logits)  # the loop's real loss
    total = per_sample.mean() + hook.phase_loss(run, 'Dmain', batch)
    assert torch.isclose(total, (hook.weights[idx] * per_sample.flatten()).mean())
    assert hook.phase_loss(run, 'Gmain', PhaseBatch('Gmain', 1.0)) is None


def test_classify_dataset_splits_work_over_processes_and_gathers_in_order():
    data = LabelledImages([0, 1, 2, 0, 1])
    clf = PixelValueClassifier()
    full = classify_dataset(data, clf, 'cpu')
    parts = [classify_dataset(data, clf, 'cpu', rank=r, world_size=2, gather=None, batch_size=2) for r in (0, 1)]
    assert [len(p) for p in parts] == [3, 3]  # equal parts (the last one zero-padded) for all_gather
    gathered = torch.cat(parts)
    assert torch.equal(classify_dataset(data, clf, 'cpu', rank=0, world_size=2, gather=lambda t: gathered), full)


# ----------------------------------------------------------------------------------------------
# Fairness metric

class CyclingColourG(torch.nn.Module):
    """Emits solid-colour images whose classes follow a fixed cycle, whatever z is."""
    z_dim, c_dim, img_resolution = 4, 0, 4

    def __init__(self, cycle, num_classes):
        super().__init__()
        self.cycle, self.num_classes, self.count = list(cycle), num_classes, 0

    def forward(self, z, c, truncation_psi=1, noise_mode='const'):
        classes = [self.cycle[(self.count + i) % len(self.cycle)] for i in range(len(z))]
        self.count += len(z)
        values = torch.tensor(classes, dtype=torch.float32) * 40 / 127.5 - 1
        return values[:, None, None, None].expand(-1, 3, 4, 4).clone()


def test_metric_equals_the_analytic_value_for_known_class_proportions(tmp_path):
    G = CyclingColourG([0, 0, 0, 0, 0, 1, 1, 1, 2, 2], num_classes=4)  # shares 0.5, 0.3, 0.2, 0
    result = fairness_metric(G, PixelValueClassifier(4), num_sets=3, set_size=1000, batch=64,
                             plot_path=tmp_path / 'hist.png')
    analytic = math.sqrt((0.25 - 0.5) ** 2 + (0.25 - 0.3) ** 2 + (0.25 - 0.2) ** 2 + 0.25 ** 2)
    assert result['fairness_mean'] == pytest.approx(analytic)
    assert result['fairness_std'] == pytest.approx(0)
    assert result['fairness_soft_mean'] == pytest.approx(analytic)
    assert result['histogram'] == [1500, 900, 600, 0]
    assert result['class_names'] == ['c0', 'c1', 'c2', 'c3']
    assert (tmp_path / 'hist.png').stat().st_size > 1000


def test_metric_counts_classes_with_zero_images():
    G = CyclingColourG([2], num_classes=4)
    result = fairness_metric(G, PixelValueClassifier(4), num_sets=2, set_size=100)
    # With the zero-count classes dropped (the authors' script) this would be 0.75.
    assert result['fairness_mean'] == pytest.approx(math.sqrt(0.75 ** 2 + 3 * 0.25 ** 2))


def test_metric_uses_the_samples_of_every_process(monkeypatch):
    import stylegan2_fair.metrics.fairness as fairness_module
    other_rank = lambda t: torch.cat([t, F.one_hot(torch.ones(len(t), dtype=torch.long), 2).float()])  # noqa: E731
    monkeypatch.setattr(fairness_module.distributed, 'all_gather_cat', other_rank)
    G = CyclingColourG([0], num_classes=2)
    result = fairness_metric(G, PixelValueClassifier(2), num_sets=1, set_size=100, rank=0, world_size=2)
    assert result['histogram'] == [50, 50] and result['fairness_mean'] == pytest.approx(0)


def test_metric_spread_over_sets_of_random_samples():
    G = TinyG()
    with torch.no_grad():
        G.fc.bias.zero_()  # a mix of classes, so sets differ
    result = fairness_metric(G, MeanColourClassifier(), num_sets=4, set_size=200, seed=1)
    assert min(result['histogram']) > 0
    assert len(result['fairness_per_set']) == 4
    assert result['fairness_std'] == pytest.approx(np.std(result['fairness_per_set'])) and result['fairness_std'] > 0
    again = fairness_metric(G, MeanColourClassifier(), num_sets=4, set_size=200, seed=1)
    assert again['fairness_per_set'] == result['fairness_per_set']  # same seed, same latents


def test_metric_takes_a_sampler_instead_of_G():
    sampler = lambda n: torch.full([n, 3, 4, 4], 40 / 127.5 - 1)  # noqa: E731  (all class 1)
    result = fairness_metric(None, PixelValueClassifier(2), num_sets=1, set_size=10, sampler=sampler)
    assert result['histogram'] == [0, 10]


def test_fairness_is_registered_for_calc_metrics():
    from stylegan2_fair.metrics.features import MetricOptions
    metric = registered_metrics()['fairness']
    opts = MetricOptions(G=CyclingColourG([0, 1], num_classes=2), classifier=PixelValueClassifier(2), batch_size=10)
    results = metric(opts, fairness_num_sets=2, fairness_set_size=20)
    assert results['fairness'] == pytest.approx(0) and results['fairness_count/c0'] == 20
