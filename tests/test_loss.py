"""The loss terms against hand computations on tiny stand-in networks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylegan2_fair import stats
from stylegan2_fair.loss import StyleGAN2Loss


class LinearD(torch.nn.Module):
    """D(x) = <w, x> + b: its input gradient is w, so R1 has a closed form."""

    def __init__(self, shape):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, img, c):
        return (img * self.w).sum([1, 2, 3], keepdim=False).unsqueeze(1) + self.b


class LinearG(torch.nn.Module):
    """mapping: ws = z repeated num_ws times; synthesis: img = A @ mean(ws)."""
    z_dim = w_dim = 3
    num_ws = 2

    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.randn(1 * 2 * 2, 3, dtype=torch.float64))
        self.mapping = lambda z, c, skip_w_avg_update=False: z.unsqueeze(1).repeat(1, self.num_ws, 1)
        self.synthesis = lambda ws: (ws.mean(1) @ self.A.T).reshape(-1, 1, 2, 2)


def make_loss(**kwargs):
    torch.manual_seed(0)
    G, D = LinearG(), LinearD([1, 1, 2, 2])
    return G, D, StyleGAN2Loss('cpu', G, D, style_mixing_prob=0, **kwargs)


def test_r1_penalty_matches_closed_form():
    G, D, loss = make_loss(r1_gamma=10)
    real = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    stats.collect()
    loss.accumulate_gradients('Dreg', real, torch.zeros(4, 0), None, None, gain=16)
    got = stats.collect()
    r1 = float(D.w.detach().square().sum())  # ||grad_x D||^2 = ||w||^2 for every sample
    assert np.isclose(got['Loss/r1_penalty']['mean'], r1)
    assert np.isclose(got['Loss/D/reg']['mean'], r1 * 10 / 2)
    # d/dw [gain * gamma/2 * ||w||^2] = gain * gamma * w
    assert torch.allclose(D.w.grad, 16 * 10 * D.w.detach())


def test_d_main_is_softplus_of_fake_plus_softplus_of_minus_real():
    G, D, loss = make_loss()
    real = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    z = torch.randn(3, 3, dtype=torch.float64)
    stats.collect()
    loss.accumulate_gradients('Dmain', real, torch.zeros(3, 0), z, torch.zeros(3, 0), gain=1)
    got = stats.collect()
    with torch.no_grad():
        fake_logits = D(G.synthesis(G.mapping(z, None)), None)
        expected = (F.softplus(fake_logits) + F.softplus(-D(real, None))).mean()
    assert np.isclose(got['Loss/D/loss']['mean'], float(expected))
    assert G.A.grad is None  # D phases never train G


def test_g_main_is_nonsaturating_and_reaches_g():
    G, D, loss = make_loss()
    z = torch.randn(5, 3, dtype=torch.float64)
    stats.collect()
    loss.accumulate_gradients('Gmain', None, None, z, torch.zeros(5, 0), gain=1)
    got = stats.collect()
    with torch.no_grad():
        expected = F.softplus(-D(G.synthesis(G.mapping(z, None)), None)).mean()
    assert np.isclose(got['Loss/G/loss']['mean'], float(expected))
    assert G.A.grad is not None and G.A.grad.abs().sum() > 0


def test_hinge_loss_terms_match_their_definitions():
    G, D, loss = make_loss(gan_loss='hinge')
    real = torch.randn(6, 1, 2, 2, dtype=torch.float64) * 3
    z = torch.randn(6, 3, dtype=torch.float64) * 3
    stats.collect()
    loss.accumulate_gradients('Dmain', real, torch.zeros(6, 0), z, torch.zeros(6, 0), gain=1)
    loss.accumulate_gradients('Gmain', None, None, z, torch.zeros(6, 0), gain=1)
    got = stats.collect()
    with torch.no_grad():
        fake_logits = D(G.synthesis(G.mapping(z, None)), None)
        real_logits = D(real, None)
    assert (fake_logits.abs() > 1).any() and (real_logits.abs() < 1).any()  # both sides of the margins
    expected_D = (F.relu(1 + fake_logits) + F.relu(1 - real_logits)).mean()
    assert np.isclose(got['Loss/D/loss']['mean'], float(expected_D))
    assert np.isclose(got['Loss/G/loss']['mean'], float(-fake_logits.mean()))
    # G's hinge gradient is that of -mean D(G(z)): d/dA of -mean <w, A z'> with z' = z.
    assert torch.allclose(G.A.grad, -(D.w.detach().reshape(-1, 1) * z.mean(0)[None]), atol=1e-12)


def test_unknown_gan_loss_is_refused():
    with pytest.raises(ValueError, match="unknown gan_loss 'wgan'"):
        make_loss(gan_loss='wgan')


def test_path_length_mean_moves_by_decay_and_penalty_matches():
    G, D, loss = make_loss(pl_weight=2, pl_decay=0.01, pl_batch_shrink=2)
    loss.pl_mean = loss.pl_mean.double()  # the stand-in G computes in float64
    torch.manual_seed(1)
    z = torch.randn(4, 3, dtype=torch.float64).requires_grad_(True)  # ws must need grad, as with a trainable mapping
    stats.collect()
    torch.manual_seed(7)
    loss.accumulate_gradients('Greg', None, None, z, torch.zeros(4, 0), gain=4)
    got = stats.collect()
    # Recompute by hand with the same noise: img = A @ mean(ws), so d<img,noise>/d ws_i = A^T noise / num_ws.
    torch.manual_seed(7)
    noise = torch.randn(2, 1, 2, 2, dtype=torch.float64) / np.sqrt(4)
    grad = noise.reshape(2, -1) @ G.A.detach() / G.num_ws  # [n, w_dim], the same for every ws entry
    lengths = grad.square().sum(1).sqrt()
    pl_mean = 0.01 * lengths.mean()
    assert np.isclose(float(loss.pl_mean), float(pl_mean))
    assert np.isclose(got['Loss/pl_penalty']['mean'], float((lengths - pl_mean).square().mean()))


def test_extra_loss_fn_terms_are_added_with_the_phase_gain():
    seen = []

    def extra(phase, batch):
        seen.append((phase, batch.gen_img is not None))
        return (batch.gen_img ** 2).mean() * 0 + G.A.sum() if phase == 'Gmain' else None

    G, D, loss = make_loss(extra_loss_fn=lambda p, b: extra(p, b))
    z = torch.randn(2, 3, dtype=torch.float64)
    loss.accumulate_gradients('Gmain', None, None, z, torch.zeros(2, 0), gain=1)
    with_extra = G.A.grad.clone()
    G.A.grad = None
    loss.extra_loss_fn = None
    loss.accumulate_gradients('Gmain', None, None, z, torch.zeros(2, 0), gain=1)
    assert seen == [('Gmain', True)]
    assert torch.allclose(with_extra - G.A.grad, torch.ones_like(G.A))  # d(sum A)/dA = 1
