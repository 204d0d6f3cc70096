"""projector.py, style_mixing.py and generate.py --projected-w (stylegan2_fair/cli/projector.py, style_mixing.py,
generate.py) on the small official fixture network, with a random-weight stand-in vgg16.pt."""
import os
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from stylegan2_fair.checkpoint import load_network_pkl
from stylegan2_fair.cli.generate import generate, seed_latents, synthesize_ws
from stylegan2_fair.cli.projector import learning_rate_ramp, noise_autocorrelation, project, projector
from stylegan2_fair.cli.style_mixing import style_mixing
from stylegan2_fair.imaging import to_uint8
from stylegan2_fair.metrics import detectors

FIXTURE_PKL = 'uncond-skip-resnet-32-official-format.pkl'   # 32x32 RGB, num_ws=8, w_dim=64

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors: see conftest


@pytest.fixture(scope='module')
def network_pkl(official_fixtures):
    return str(official_fixtures / FIXTURE_PKL)


@pytest.fixture(scope='module')
def G(network_pkl):
    return load_network_pkl(network_pkl)['G_ema'].eval().requires_grad_(False)


@pytest.fixture(scope='module')
def vgg_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('detectors')
    detectors.save_standin_detector('vgg16', str(folder / 'vgg16.pt'), size=32, tiny=True)
    return str(folder)


@pytest.fixture(autouse=True)
def empty_dnnlib_cache(tmp_path, monkeypatch):
    """No detector from the user's own ~/.cache/dnnlib: a test sees only the files it passes."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib'))


def own_image(G, seed):
    """The image G makes from the w of `seed`, uint8 HWC, and that w [1, num_ws, w_dim]."""
    ws = G.mapping(seed_latents(G, [seed], 'cpu'), torch.zeros([1, G.c_dim]))
    return synthesize_ws(G, ws)[0], ws


def invoke(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_png(path):
    return np.array(PIL.Image.open(path))


def run_projector(network_pkl, vgg_dir, target, target_path, out, steps, *extra):
    """projector.py on `target` (saved to target_path first), CPU, the stand-in vgg16.pt."""
    PIL.Image.fromarray(target).save(target_path)
    return invoke(projector, ['--network', network_pkl, '--target', target_path, '--num-steps', steps, *extra,
                              '--outdir', out, '--device', 'cpu', '--detector', vgg_dir])


# ------------------------------------------------------------------------------------------------
# The projection itself

def test_schedules_follow_the_published_shape():
    assert learning_rate_ramp(0.0) == 0.0                          # linear warm-up from zero ...
    assert learning_rate_ramp(0.025) == pytest.approx(0.5)         # ... over the first 5%
    assert learning_rate_ramp(0.5) == pytest.approx(1.0)
    assert learning_rate_ramp(0.875) == pytest.approx(0.5)         # cosine cool-down over the last 25%
    white = [torch.randn([64, 64], generator=torch.Generator().manual_seed(0))]
    smooth = [torch.ones([64, 64])]
    assert float(noise_autocorrelation(white)) < 1e-3 < float(noise_autocorrelation(smooth))


def test_projection_of_an_own_image_lowers_the_feature_distance(G, vgg_dir):
    target, _ = own_image(G, 5)
    vgg = detectors.load_detector('vgg16', 'cpu', [vgg_dir])
    noise_before = G.synthesis.b8.conv0.noise_const.clone()
    ws, dists = project(G, torch.from_numpy(target.transpose(2, 0, 1).copy()), vgg, num_steps=20, w_avg_samples=1000)
    assert ws.shape == (20, G.num_ws, G.w_dim)
    assert torch.equal(ws[:, :1].expand_as(ws), ws)                # one w, broadcast to every layer
    assert float(dists[-1]) < 0.5 * float(dists[0])
    assert torch.equal(G.synthesis.b8.conv0.noise_const, noise_before)   # the caller's noise maps are untouched
    again, _ = project(G, torch.from_numpy(target.transpose(2, 0, 1).copy()), vgg, num_steps=20, w_avg_samples=1000)
    assert torch.equal(again, ws)                                    # --seed makes it reproducible


def test_projector_cli_writes_the_official_outputs_and_generate_reproduces_proj_png(G, network_pkl, vgg_dir, tmp_path):
    target, out = own_image(G, 7)[0], tmp_path / 'out'
    result = run_projector(network_pkl, vgg_dir, target, tmp_path / 'target-in.png', out, 8, '--save-video=false')
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ['proj.png', 'projected_w.npz', 'target.png']
    assert np.array_equal(read_png(out / 'target.png'), target)
    proj = read_png(out / 'proj.png')
    assert proj.shape == (32, 32, 3) and proj.dtype == np.uint8
    with np.load(out / 'projected_w.npz') as data:
        assert data.files == ['w']
        w = data['w']
    assert w.shape == (1, G.num_ws, G.w_dim) and w.dtype == np.float32
    assert np.array_equal(synthesize_ws(G, w)[0], proj)

    result = invoke(generate, ['--network', network_pkl, '--projected-w', out / 'projected_w.npz',
                               '--outdir', tmp_path / 'gen', '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_png(tmp_path / 'gen' / 'proj00.png'), proj)


def test_projector_rejects_a_missing_detector_and_a_bad_target(G, network_pkl, vgg_dir, tmp_path):
    target, _ = own_image(G, 1)
    PIL.Image.fromarray(target).save(tmp_path / 'target.png')
    base = ['--network', network_pkl, '--num-steps', 2, '--save-video=false', '--outdir', tmp_path / 'out',
            '--device', 'cpu']
    result = invoke(projector, base + ['--target', tmp_path / 'target.png'])
    assert result.exit_code != 0
    assert 'vgg16.pt' in result.output and '--detector' in result.output and 'downloaded' in result.output

    result = invoke(projector, base + ['--target', tmp_path / 'nope.png', '--detector', vgg_dir])
    assert result.exit_code != 0 and '--target' in result.output and 'no such file' in result.output
    (tmp_path / 'notes.png').write_text('not an image')
    result = invoke(projector, base + ['--target', tmp_path / 'notes.png', '--detector', vgg_dir])
    assert result.exit_code != 0 and 'not an image' in result.output
    assert not (tmp_path / 'out').exists()


def test_save_video_needs_imageio_and_fails_before_projecting(G, network_pkl, vgg_dir, tmp_path, monkeypatch):
    target, _ = own_image(G, 1)
    PIL.Image.fromarray(target).save(tmp_path / 'target.png')
    monkeypatch.setitem(sys.modules, 'imageio', None)    # as if not installed
    result = invoke(projector, ['--network', network_pkl, '--target', tmp_path / 'target.png', '--num-steps', 2,
                                '--outdir', tmp_path / 'out', '--device', 'cpu', '--detector', vgg_dir])
    assert result.exit_code != 0
    assert 'pip install imageio imageio-ffmpeg' in result.output and '--save-video=false' in result.output
    assert not (tmp_path / 'out').exists()


def test_save_video_writes_target_beside_projection_for_every_step(G, network_pkl, vgg_dir, tmp_path, monkeypatch):
    frames, settings = [], {}

    class FakeWriter:
        def __init__(self, path, **kwargs):
            self.path = path
            settings.update(kwargs)

        def append_data(self, frame):
            frames.append(np.array(frame))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            with open(self.path, 'wb') as f:
                f.write(b'mp4')

    monkeypatch.setitem(sys.modules, 'imageio', types.SimpleNamespace(get_writer=FakeWriter))
    monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', types.ModuleType('imageio_ffmpeg'))
    target, out = own_image(G, 2)[0], tmp_path / 'out'
    result = run_projector(network_pkl, vgg_dir, target, tmp_path / 'target.png', out, 3, '--save-video')
    assert result.exit_code == 0, result.output
    assert (out / 'proj.mp4').read_bytes() == b'mp4' and not list(out.glob('.partial*'))
    assert settings['fps'] == 10 and settings['codec'] == 'libx264'
    assert len(frames) == 3 and frames[0].shape == (32, 64, 3)
    assert all(np.array_equal(f[:, :32], target) for f in frames)
    assert np.array_equal(frames[-1][:, 32:], read_png(out / 'proj.png'))


# ------------------------------------------------------------------------------------------------
# Style mixing

def test_style_mixing_grid_and_mixed_images(G, network_pkl, tmp_path):
    out = tmp_path / 'mix'
    result = invoke(style_mixing, ['--network', network_pkl, '--rows', '1,2', '--cols', '3-5', '--styles', '0-2',
                                   '--trunc', 0.7, '--outdir', out, '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    grid = read_png(out / 'grid.png')
    assert grid.shape == (3 * 32, 4 * 32, 3)
    names = {p.name for p in out.iterdir()}
    assert {f'{r}-{c}.png' for r in (1, 2) for c in (3, 4, 5)} | {f'{s}-{s}.png' for s in range(1, 6)} <= names

    # Row seed 2 with layers 0, 1, 2 from column seed 4, computed here from scratch.
    z = lambda seed: torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    ws_row = G.mapping(z(2), torch.zeros([1, 0]), truncation_psi=0.7)
    ws_col = G.mapping(z(4), torch.zeros([1, 0]), truncation_psi=0.7)
    ws_row[:, 0:3] = ws_col[:, 0:3]
    expected = to_uint8(G.synthesis(ws_row, noise_mode='const').numpy(), (-1, 1))[0].transpose(1, 2, 0)
    assert np.array_equal(read_png(out / '2-4.png'), expected)
    assert not np.array_equal(read_png(out / '2-4.png'), read_png(out / '2-2.png'))

    tile = lambda i, j: grid[32 * i:32 * (i + 1), 32 * j:32 * (j + 1)]
    assert not tile(0, 0).any()                                          # black corner
    assert np.array_equal(tile(0, 2), read_png(out / '4-4.png'))        # column seeds across the top
    assert np.array_equal(tile(2, 0), read_png(out / '2-2.png'))        # row seeds down the left
    assert np.array_equal(tile(2, 2), expected)


def test_style_mixing_rejects_styles_beyond_the_network(network_pkl, tmp_path):
    result = invoke(style_mixing, ['--network', network_pkl, '--rows', 1, '--cols', 2, '--styles', '6-9',
                                   '--outdir', tmp_path / 'mix', '--device', 'cpu'])
    assert result.exit_code != 0
    assert '--styles' in result.output and '8, 9' in result.output and '0-7' in result.output
    assert not (tmp_path / 'mix').exists()


# ------------------------------------------------------------------------------------------------
# generate.py --projected-w

def test_projected_w_overrides_seeds_and_must_fit_the_network(G, network_pkl, tmp_path):
    np.savez(tmp_path / 'w.npz', w=np.zeros([1, G.num_ws, G.w_dim], np.float32))
    base = ['--network', network_pkl, '--outdir', tmp_path / 'out', '--device', 'cpu']
    # As in the official script, --seeds beside --projected-w is ignored with a warning.
    result = invoke(generate, base[:3] + [tmp_path / 'both'] + base[4:] + ['--projected-w', tmp_path / 'w.npz',
                                                                           '--seeds', '0-3'])
    assert result.exit_code == 0 and '--seeds is ignored' in result.output, result.output
    assert sorted(os.listdir(tmp_path / 'both')) == ['proj00.png']
    result = invoke(generate, base)
    assert result.exit_code != 0 and '--seeds' in result.output and '--projected-w' in result.output

    np.savez(tmp_path / 'short.npz', w=np.zeros([1, 5, G.w_dim], np.float32))
    result = invoke(generate, base + ['--projected-w', tmp_path / 'short.npz'])
    assert result.exit_code != 0 and 'num_ws=8' in result.output and '[1, 5, 64]' in result.output
    np.savez(tmp_path / 'other.npz', z=np.zeros([1, 8, 64], np.float32))
    result = invoke(generate, base + ['--projected-w', tmp_path / 'other.npz'])
    assert result.exit_code != 0 and 'no array named "w"' in result.output
    assert not (tmp_path / 'out').exists()

    result = invoke(generate, base + ['--projected-w', tmp_path / 'w.npz'])
    assert result.exit_code == 0, result.output
    assert read_png(tmp_path / 'out' / 'proj00.png').shape == (32, 32, 3)
