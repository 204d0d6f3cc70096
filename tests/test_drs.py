"""Discriminator Rejection Sampling (stylegan2_fair/drs.py) and `generate.py --drs`."""
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stylegan2_fair import checkpoint
from stylegan2_fair.cli.generate import generate
from stylegan2_fair.drs import aux_discriminator, drs_acceptance, drs_sample
from stylegan2_fair.networks import Discriminator, Generator


def numpy_acceptance(logits, d_max, percentile, eps=1e-6):
    """The rule written out by hand (Azadi et al. 2019, Eq. 8 with gamma a batch percentile)."""
    logits = np.asarray(logits, dtype=np.float64)
    f = (logits - d_max) - np.log(1 - np.exp(logits - d_max - eps))
    gamma = np.percentile(f, percentile)
    return 1 / (1 + np.exp(-(f - gamma)))


class ToyG(torch.nn.Module):
    """Images that are flat grey levels tanh(z_0), plus 0.1 * class index when conditional."""

    def __init__(self, c_dim=0):
        super().__init__()
        self.z_dim, self.c_dim = 4, c_dim
        self.anchor = torch.nn.Parameter(torch.zeros([]))  # gives the module a device

    def forward(self, z, c, truncation_psi=1, noise_mode='const'):
        level = torch.tanh(z[:, 0])
        if self.c_dim:
            level = level + 0.1 * c.argmax(dim=1)
        return level.view(-1, 1, 1, 1).expand(-1, 3, 8, 8) + self.anchor


class ToyD(torch.nn.Module):
    """Logit = 3 x mean pixel: we know every logit, and log every batch it scores."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, img, c):
        logits = 3 * img.mean(dim=[1, 2, 3], keepdim=True)[:, :, 0, 0]
        self.batches.append(logits.flatten().double())
        return logits


def test_acceptance_probability_matches_the_formula():
    logits = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 1.7, 2.5])
    d_max = 2.5
    prob, f, gamma = drs_acceptance(logits, d_max, percentile=80)
    assert np.allclose(prob.numpy(), numpy_acceptance(logits.numpy(), d_max, 80), atol=1e-9)
    assert gamma == pytest.approx(np.percentile(f.numpy(), 80))
    assert prob[-1] > prob[0]  # the higher D's logit, the likelier the acceptance
    with pytest.raises(ValueError, match='running max'):
        drs_acceptance(logits, d_max=1.0)


def test_sampler_accepts_at_the_formula_rate_with_a_burn_in_and_running_max():
    D = ToyD()
    burn_in, batch = 4, 32
    result = drs_sample(ToyG(), D, n=300, batch=batch, burn_in=burn_in * batch - 5, percentile=80,
                        generator=torch.Generator().manual_seed(0))
    # Replay: D_max starts as the max over the burn-in batches, then runs over the proposals.
    d_max = max(float(b.max()) for b in D.batches[:burn_in])
    expected, variance = 0.0, 0.0
    for logits in D.batches[burn_in:]:
        d_max = max(d_max, float(logits.max()))
        p = numpy_acceptance(logits.numpy(), d_max, 80)
        expected, variance = expected + p.sum(), variance + (p * (1 - p)).sum()
    assert result.d_max == pytest.approx(d_max)
    assert result.num_proposed == batch * (len(D.batches) - burn_in)
    assert abs(result.num_accepted - expected) < 4 * np.sqrt(variance)
    assert result.acceptance_rate == pytest.approx(result.num_accepted / result.num_proposed)
    # Accepted images lean towards what D finds real (here: brighter).
    proposals = torch.cat(D.batches[burn_in:])
    assert float(3 * result.images.mean()) > float(proposals.mean())
    assert result.images.shape == (300, 3, 8, 8) and result.z.shape == (300, 4)


def test_per_image_labels_are_kept_for_a_conditional_generator():
    labels = torch.eye(3)[torch.tensor([0, 2, 1, 2, 0, 1, 1])]
    result = drs_sample(ToyG(c_dim=3), ToyD(), n=7, c=labels, batch=8, burn_in=2,
                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(result.labels, labels)
    # Each image was generated with its label (ToyG adds 0.1 x class to tanh(z_0)).
    level = torch.tanh(result.z[:, 0]) + 0.1 * labels.argmax(dim=1)
    assert torch.allclose(result.images[:, 0, 0, 0], level, atol=1e-6)
    with pytest.raises(ValueError, match='conditional'):
        drs_sample(ToyG(c_dim=3), ToyD(), n=2, batch=8)


def test_seeded_generator_gives_the_same_images():
    a = drs_sample(ToyG(), ToyD(), n=20, batch=16, burn_in=1, generator=torch.Generator().manual_seed(5))
    b = drs_sample(ToyG(), ToyD(), n=20, batch=16, burn_in=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.images, b.images) and a.num_proposed == b.num_proposed


# generate.py --drs --------------------------------------------------------------------------------

def tiny_snapshot(path, with_aux):
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=128, channel_max=16,
                      epilogue_kwargs=dict(mbstd_group_size=4))
    data = dict(G=G, D=D, G_ema=G)
    if with_aux:
        data['D_aux'] = D
    checkpoint.save_network_pkl(path, data)
    return path


def test_generate_drs_without_an_aux_discriminator_names_the_fix(tmp_path):
    pkl = tiny_snapshot(tmp_path / 'plain.pkl', with_aux=False)
    result = CliRunner().invoke(generate, ['--network', str(pkl), '--seeds=0-3', '--outdir', str(tmp_path / 'out'),
                                           '--device=cpu', '--drs'])
    assert result.exit_code != 0 and 'Traceback' not in result.output
    assert 'D_aux' in result.output and '--fair-method=dia' in result.output
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match='D_aux'):
        aux_discriminator(dict(G=None, D=None))


def test_generate_drs_writes_the_requested_images_and_the_acceptance_rate(tmp_path, monkeypatch):
    import stylegan2_fair.drs
    seen = {}

    def quick_drs(*args, **kwargs):  # a burn-in of 1 batch instead of 50 keeps the test fast
        seen.update(kwargs)
        return drs_sample(*args, **dict(kwargs, burn_in=1))
    monkeypatch.setattr(stylegan2_fair.drs, 'drs_sample', quick_drs)
    pkl = tiny_snapshot(tmp_path / 'dia.pkl', with_aux=True)
    out = tmp_path / 'out'
    result = CliRunner().invoke(generate, ['--network', str(pkl), '--seeds=0-4', '--outdir', str(out),
                                           '--device=cpu', '--drs', '--drs-percentile=50'])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == [f'drs{i:04d}.png' for i in range(5)]
    assert 'acceptance rate' in result.output and seen['percentile'] == 50


def test_generate_drs_that_stalls_names_the_percentile_option_and_writes_nothing(tmp_path, monkeypatch):
    import stylegan2_fair.drs
    monkeypatch.setattr(stylegan2_fair.drs, 'drs_sample',
                        lambda *args, **kwargs: drs_sample(*args, **dict(kwargs, burn_in=1, max_proposals=1)))
    pkl = tiny_snapshot(tmp_path / 'dia.pkl', with_aux=True)
    out = tmp_path / 'out'
    result = CliRunner().invoke(generate, ['--network', str(pkl), '--seeds=0-40', '--outdir', str(out),
                                           '--device=cpu', '--drs', '--drs-percentile=100'])
    assert result.exit_code != 0 and 'Traceback' not in result.output
    assert '--drs-percentile' in result.output and not out.exists()
